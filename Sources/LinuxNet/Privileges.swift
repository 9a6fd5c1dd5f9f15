#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What this process may do.
public enum Privileges {
    /// The effective uid is 0 (needed for nftables, setns, SO_ORIGINAL_DST on
    /// other namespaces and cgroup writes).
    public static var isRoot: Bool { geteuid() == 0 }
}
