import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// One line of the access log: a finished connection (or, on L7 paths, request).
/// Field names are the operator-facing contract in DESIGN.md §6.
public struct AccessLogEntry: Sendable, Equatable {
    public enum Direction: String, Sendable { case outbound, inbound }
    public enum TLSMode: String, Sendable { case mutual, none }
    public enum Action: String, Sendable { case allow, deny }

    public var time: Double
    public var direction: Direction
    public var sourceAddress: SocketAddress?
    public var sourceWorkload: String?
    public var sourceIdentity: String?
    public var destinationAddress: SocketAddress?
    public var destinationWorkload: String?
    public var destinationIdentity: String?
    public var tls: TLSMode
    public var `protocol` = "tcp"
    public var action: Action
    public var policy: String?
    public var reason: String
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var durationMilliseconds: Double = 0
    /// AUDIT policies that matched, comma-separated.
    public var audited: String?
    /// What dry-run policies would have decided, when that differs from what
    /// was enforced ("allow" or "deny"), and the policy that would have decided.
    public var audit: String?
    public var auditPolicy: String?
    /// HTTP requests only (`protocol: http`).
    public var method: String?
    public var path: String?
    public var status: Int?
    /// `iss/sub` of the request's verified JWT.
    public var requestPrincipal: String?

    public init(time: Double, direction: Direction, tls: TLSMode, action: Action, reason: String) {
        self.time = time
        self.direction = direction
        self.tls = tls
        self.action = action
        self.reason = reason
    }

    /// The entry as one JSON object on one line, ending in a newline.
    public func jsonLine() -> String {
        var json = JSONObjectWriter()
        json.add("time", iso8601(time))
        json.add("direction", direction.rawValue)
        json.add("src_addr", sourceAddress.map(Self.format))
        json.add("src_workload", sourceWorkload)
        json.add("src_identity", sourceIdentity)
        json.add("dst_addr", destinationAddress.map(Self.format))
        json.add("dst_workload", destinationWorkload)
        json.add("dst_identity", destinationIdentity)
        json.add("tls", tls.rawValue)
        json.add("protocol", self.protocol)
        json.add("action", action.rawValue)
        json.add("policy", policy)
        json.add("reason", reason)
        json.add("bytes_sent", bytesSent)
        json.add("bytes_received", bytesReceived)
        json.add("duration_ms", (durationMilliseconds * 1000).rounded() / 1000)
        // Present only when they say something, to keep plain TCP lines short.
        json.addIfPresent("audited", audited)
        json.addIfPresent("audit", audit)
        json.addIfPresent("audit_policy", auditPolicy)
        json.addIfPresent("method", method)
        json.addIfPresent("path", path)
        json.addIfPresent("request_principal", requestPrincipal)
        if let status { json.add("status", UInt64(max(0, status))) }
        return json.finish() + "\n"
    }

    /// `ip:port`, with IPv6 in brackets, as `:authority` and URLs write it.
    public static func format(_ address: SocketAddress) -> String {
        switch address {
        case .v6:
            return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        default:
            return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        }
    }
}

/// Builds one JSON object without Foundation's encoder: the access log is written
/// once per connection and must stay cheap.
struct JSONObjectWriter {
    private var text: String
    private var first = true

    init() {
        text = "{"
        // An access-log line is a few hundred bytes: one allocation, not a dozen.
        text.reserveCapacity(640)
    }

    private mutating func key(_ name: String) {
        text += first ? "\"" : ",\""
        first = false
        text += name
        text += "\":"
    }

    mutating func add(_ name: String, _ value: String?) {
        key(name)
        guard let value else {
            text += "null"
            return
        }
        text += "\""
        // Most values need no escaping: append them whole, not scalar by scalar.
        if !value.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            text += value
            text += "\""
            return
        }
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\r": text += "\\r"
            case "\t": text += "\\t"
            case let control where control.value < 0x20:
                text += "\\u00" + String(control.value, radix: 16).leftPadded(to: 2)
            default: text.unicodeScalars.append(scalar)
            }
        }
        text += "\""
    }

    mutating func addIfPresent(_ name: String, _ value: String?) {
        guard let value else { return }
        add(name, value)
    }

    mutating func add(_ name: String, _ value: UInt64) {
        key(name)
        text += String(value)
    }

    mutating func add(_ name: String, _ value: Double) {
        key(name)
        text += value.isFinite ? String(value) : "null"
    }

    func finish() -> String { text + "}" }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-22T23:41:07.123Z`.
func iso8601(_ secondsSinceEpoch: Double) -> String {
    // Whole milliseconds first: `.123` is 0.12299… as a Double, and must not
    // come out as 122.
    let total = Int64((secondsSinceEpoch * 1000).rounded(.down))
    var seconds = time_t(total / 1000)
    let millis = Int(total % 1000)
    var parts = tm()
    gmtime_r(&seconds, &parts)
    func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
    let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
}

extension AccessLogEntry {
    /// How the access log writes a time (seconds since the epoch).
    public static func formatTime(_ secondsSinceEpoch: Double) -> String {
        iso8601(secondsSinceEpoch)
    }
}
