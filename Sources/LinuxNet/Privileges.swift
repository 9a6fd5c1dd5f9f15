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

/// How many file descriptors this process may hold (RLIMIT_NOFILE).
public enum DescriptorLimit {
    /// The limit in force; nil if the kernel does not say.
    public static var soft: UInt64? {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return nil }
        return UInt64(limit.rlim_cur)
    }

    /// Raises the soft limit to the hard one. A proxied connection holds two
    /// sockets (six descriptors when the kernel splices it: two pipes), and
    /// the soft limit systemd and shells start with (1024) would refuse
    /// connections long before `limits.maxConnections`.
    public static func raiseToHard() {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(RLIMIT_NOFILE_VALUE, &limit)
    }
}

#if canImport(Glibc)
private let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
#else
private let RLIMIT_NOFILE_VALUE = RLIMIT_NOFILE
#endif
