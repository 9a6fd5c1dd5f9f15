#if canImport(Glibc)
import Glibc
#endif

/// Where the tests run. Tests that need root (network namespaces, nftables,
/// cgroups) skip on a developer's machine without it, but never in CI: there
/// a skipped test would let the suite pass without testing anything, so they
/// run, and fail for the missing privilege.
public enum TestEnvironment {
    public static let isRoot = geteuid() == 0
    public static let inCI = getenv("CI").map { String(cString: $0) } == "true"
    /// Whether tests that need root run.
    public static let privilegedTestsRun = isRoot || inCI
}
