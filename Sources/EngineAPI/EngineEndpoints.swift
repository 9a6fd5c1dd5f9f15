/// The requests a source makes, per engine. Podman's libpod endpoints need a
/// version prefix (Podman 4.3 answers 404 without one; v4.0.0 is the oldest
/// libpod API it serves, and later versions still accept it). Docker's are
/// left unversioned, so that an engine that dropped old API versions (Docker
/// 29 serves 1.44 and later only) answers with its current one, whose list and
/// inspect fields this agent reads have not changed.
extension EngineFlavor {
    static let libpodPrefix = "/v4.0.0/libpod"

    var containerListPath: String {
        switch self {
        case .podman: return "\(Self.libpodPrefix)/containers/json?all=true"
        case .docker: return "/containers/json?all=true"
        }
    }

    /// Nil for Docker, which has no pods.
    var podListPath: String? {
        switch self {
        case .podman: return "\(Self.libpodPrefix)/pods/json"
        case .docker: return nil
        }
    }

    var eventsPath: String {
        switch self {
        case .podman: return "\(Self.libpodPrefix)/events?stream=true"
        case .docker: return "/events"
        }
    }

    func containerInspectPath(_ id: String) -> String {
        switch self {
        case .podman: return "\(Self.libpodPrefix)/containers/\(Self.pathSegment(id))/json"
        case .docker: return "/containers/\(Self.pathSegment(id))/json"
        }
    }

    func podInspectPath(_ id: String) -> String {
        "\(Self.libpodPrefix)/pods/\(Self.pathSegment(id))/json"
    }

    /// Ids are hex, but they come from outside: anything else is escaped, so
    /// an id can never reach another endpoint.
    static func pathSegment(_ id: String) -> String {
        var out = ""
        for byte in id.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}
