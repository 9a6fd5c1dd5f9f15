/// What went wrong between the agent and a container engine's API. Each case
/// names the request or the input, says what was wrong with it, and what to
/// check; none of them is fatal to the agent (the source reconnects).
public enum EngineAPIError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The engine's socket cannot be reached (missing, refused, no permission).
    case unreachable(socket: String, reason: String)
    /// The engine answered a request with a status other than 200.
    case status(code: Int, request: String, message: String?)
    /// A response body that is not the JSON this agent understands.
    case undecodable(what: String, reason: String)
    /// A response body larger than the agent reads for that request.
    case responseTooLarge(request: String, limit: Int)
    /// The engine did not answer in time.
    case timeout(request: String, seconds: Int)
    /// The event stream broke: a truncated or oversized line, or one that is
    /// not an event.
    case eventStream(EventStreamError)
    /// The engine closed the event stream (it restarted, or it drops idle
    /// watchers); the source reconnects and lists again.
    case eventStreamEnded(request: String)
    /// The connection failed in the middle of a request.
    case connection(request: String, reason: String)

    public var description: String {
        switch self {
        case .unreachable(let socket, let reason):
            return "cannot connect to the engine API at \(socket): \(reason); check that the engine's API service runs (podman: systemctl start podman.socket, or podman system service) and that the socket path in workloadSources is right"
        case .status(let code, let request, let message):
            let detail = message.map { ": \(EngineText.quoted($0))" } ?? ""
            return "the engine answered \(request) with HTTP \(code)\(detail); check that the socket serves the Podman or Docker Engine API of a supported version"
        case .undecodable(let what, let reason):
            return "\(what) is not what this agent understands: \(reason); check that the socket serves the Podman (4.0 or later) or Docker Engine API"
        case .responseTooLarge(let request, let limit):
            return "the engine's answer to \(request) is larger than \(limit) bytes; the agent does not read further (too many containers on one node?)"
        case .timeout(let request, let seconds):
            return "the engine did not answer \(request) within \(seconds) s; the engine may be overloaded or hung"
        case .eventStream(let error):
            return error.description
        case .eventStreamEnded(let request):
            return "the engine closed the event stream (\(request)); reconnecting and listing again"
        case .connection(let request, let reason):
            return "the connection to the engine failed during \(request): \(reason)"
        }
    }
}

/// Text from the engine shown in errors and logs: quoted, control characters
/// escaped, so a label value cannot forge or break a log line, and cut short
/// so a megabyte label does not become a megabyte log line.
enum EngineText {
    static let maxShown = 120

    static func quoted(_ text: some StringProtocol) -> String {
        "\"" + escaped(text, quotes: true) + "\""
    }

    /// Control characters (and, with `quotes`, quotes and backslashes)
    /// escaped the way Swift writes them, at most `limit` characters kept.
    static func escaped(_ text: some StringProtocol, quotes: Bool = false, limit: Int = maxShown) -> String {
        var out = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count == limit {
                out += "…"
                break
            }
            count += 1
            switch scalar {
            case "\"" where quotes: out += "\\\""
            case "\\" where quotes: out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }
}
