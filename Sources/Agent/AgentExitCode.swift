import LinuxNet
import Netfilter
import Policy

/// Exit codes of `mesh-agent`, from sysexits(3) so that systemd and scripts can
/// tell a bad config from a missing kernel feature.
public enum AgentExitCode {
    public static let failure: Int32 = 1
    public static let unavailable: Int32 = 69
    public static let notPermitted: Int32 = 77
    public static let badConfig: Int32 = 78

    public static func `for`(_ error: Error) -> Int32 {
        switch error {
        case is YAMLError, is PolicyLoadError: return badConfig
        case AgentError.notRoot: return notPermitted
        case is NetfilterError, is CgroupError: return unavailable
        default: return failure
        }
    }
}
