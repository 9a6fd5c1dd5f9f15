import Glibc
import LinuxNet

/// Errors of the Netfilter module; each description says what failed and what to do.
public enum NetfilterError: Error, CustomStringConvertible, Equatable, Sendable {
    /// nf_tables (or nfnetlink) is missing from the kernel.
    case unavailable(detail: String)
    /// The operation needs CAP_NET_ADMIN in the network namespace.
    case permissionDenied(operation: String)
    /// The ruleset or request is invalid; nothing was sent to the kernel.
    case invalidRuleset(String)
    /// The kernel refused a message; the whole transaction was aborted.
    case rejected(operation: String, errno: Int32, kernelMessage: String?)
    /// A reply could not be parsed.
    case malformedReply(String)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// The kernel did not acknowledge every message of a request in time.
    case noAcknowledgement(operation: String)
    /// The ruleset kept changing while it was being read.
    case inconsistentDump
    /// libnftnl could not allocate memory.
    case outOfMemory

    public var description: String {
        switch self {
        case .unavailable(let detail):
            return "nf_tables is not available in this kernel: load it with 'modprobe nf_tables' (\(detail))"
        case .permissionDenied(let operation):
            return "\(operation) was refused: changing or reading nftables needs CAP_NET_ADMIN; run mesh-agent as root or grant it CAP_NET_ADMIN"
        case .invalidRuleset(let reason):
            return "invalid nftables ruleset: \(reason)"
        case .rejected(let operation, let code, let message):
            let detail = message.map { " (\($0))" } ?? ""
            return "nf_tables rejected \(operation): \(errnoText(code))\(detail); the transaction was aborted and nothing was changed"
        case .malformedReply(let what):
            return "malformed netlink reply from nf_tables: \(what)"
        case .system(let call, let code):
            return "\(call) failed: \(errnoText(code))"
        case .noAcknowledgement(let operation):
            return "nf_tables did not acknowledge \(operation)"
        case .inconsistentDump:
            return "the nftables ruleset kept changing while it was being read; try again"
        case .outOfMemory:
            return "libnftnl could not allocate memory"
        }
    }

    /// The errno of a kernel rejection or failed system call.
    public var errno: Int32? {
        switch self {
        case .rejected(_, let code, _), .system(_, let code): return code
        default: return nil
        }
    }
}

extension NetfilterError {
    /// The kernel's refusal of `operation`.
    static func refused(_ operation: String, _ answer: NetlinkAcknowledgement) -> NetfilterError {
        if answer.errno == EPERM { return .permissionDenied(operation: operation) }
        return .rejected(operation: operation, errno: answer.errno, kernelMessage: answer.message)
    }
}

/// How the shared netlink code reports its failures in this module's words.
extension NetfilterError: NetlinkClientError {
    /// The socket has no send timeout and receives report silence as no
    /// answer, so this is only reached if the kernel stops taking requests.
    package static var timeout: NetfilterError { .system(call: "sendto(netlink)", errno: ETIMEDOUT) }

    package static func system(operation: String, errno: Int32) -> NetfilterError {
        .system(call: operation, errno: errno)
    }

    package static func truncated(expected: Int, actual: Int) -> NetfilterError {
        .malformedReply("truncated: needs \(expected) bytes, has \(actual)")
    }

    package static func malformed(_ why: String) -> NetfilterError { .malformedReply(why) }

    package static func cannotOpen(protocolName: String, errno code: Int32) -> NetfilterError {
        switch code {
        case EPROTONOSUPPORT, EAFNOSUPPORT:
            return .unavailable(detail: "no \(protocolName) sockets: \(errnoText(code)); nfnetlink is missing")
        case EPERM, EACCES:
            return .permissionDenied(operation: "opening a netfilter netlink socket")
        default:
            return .system(call: "socket(AF_NETLINK, \(protocolName))", errno: code)
        }
    }

    package static func cannotSend(errno code: Int32) -> NetfilterError {
        if code == EPERM || code == EACCES { return .permissionDenied(operation: "sending to nf_tables") }
        return .system(call: "sendto(netlink)", errno: code)
    }
}

func errnoText(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
