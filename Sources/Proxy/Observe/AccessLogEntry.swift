import NIOCore
#if canImport(Glibc)
import Glibc
import Workloads
#endif

/// One line of the access log: a finished connection (or, on L7 paths, request).
/// Field names are the operator-facing contract in DESIGN.md §6.
public struct AccessLogEntry: Sendable, Equatable {
    public enum Direction: String, Sendable { case outbound, inbound }
    public enum TLSMode: String, Sendable { case mutual, none }
    public enum Action: String, Sendable { case allow, deny }

    public var time: Double
    // The parties and how they talk: the same for every request of a
    // connection. They are kept in one shared box (copy on write), so copying
    // an entry retains one reference rather than each address and name, and
    // their part of the line can be built once (`cachingParties()`).
    public var direction: Direction {
        get { parties.value.direction }
        set { changeParties { $0.direction = newValue } }
    }
    public var sourceAddress: SocketAddress? {
        get { parties.value.sourceAddress }
        set { changeParties { $0.sourceAddress = newValue } }
    }
    public var sourceWorkload: String? {
        get { parties.value.sourceWorkload }
        set { changeParties { $0.sourceWorkload = newValue } }
    }
    public var sourceIdentity: String? {
        get { parties.value.sourceIdentity }
        set { changeParties { $0.sourceIdentity = newValue } }
    }
    public var destinationAddress: SocketAddress? {
        get { parties.value.destinationAddress }
        set { changeParties { $0.destinationAddress = newValue } }
    }
    public var destinationWorkload: String? {
        get { parties.value.destinationWorkload }
        set { changeParties { $0.destinationWorkload = newValue } }
    }
    public var destinationIdentity: String? {
        get { parties.value.destinationIdentity }
        set { changeParties { $0.destinationIdentity = newValue } }
    }
    public var tls: TLSMode {
        get { parties.value.tls }
        set { changeParties { $0.tls = newValue } }
    }
    public var `protocol` = "tcp"
    public var action: Action
    public var policy: String?
    /// The index of the rule in `policy` that decided (`spec.rules[N]`).
    public var rule: Int?
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
    /// The index of that policy's rule, when a rule would have decided.
    public var auditRule: Int?
    /// HTTP requests only (`protocol: http`).
    public var method: String?
    public var path: String?
    public var status: Int?
    /// `iss/sub` of the request's verified JWT.
    public var requestPrincipal: String?
    /// The line is for one HTTP request on an inspected connection, not for
    /// a connection (whose `protocol` is "http" too). Not written.
    public var isRequest = false
    /// The entry of a connection just admitted, before its end: the graph
    /// sees the edge at once (a new edge is reported while the connection
    /// lasts), counting nothing yet. Never written.
    public var isOpening = false
    private var parties: PartiesStorage

    public init(time: Double, direction: Direction, tls: TLSMode, action: Action, reason: String) {
        self.time = time
        self.parties = PartiesStorage(Parties(direction: direction, tls: tls))
        self.action = action
        self.reason = reason
    }

    /// This entry with its parties' part of the line built, for the entries
    /// made from it (`requestEntry`) to share: an inspected connection's
    /// requests then each format only what is their own.
    package func cachingParties() -> AccessLogEntry {
        var entry = self
        var json = JSONObjectWriter()
        parties.value.write(to: &json)
        entry.parties = PartiesStorage(parties.value, json: json.fields)
        return entry
    }

    /// Changes the parties in a box of this entry's own; what was built of
    /// the line from them is dropped.
    private mutating func changeParties(_ change: (inout Parties) -> Void) {
        if isKnownUniquelyReferenced(&parties) {
            change(&parties.value)
            parties.json = nil
        } else {
            var value = parties.value
            change(&value)
            parties = PartiesStorage(value)
        }
    }

    /// A request's entry on this connection, starting from the connection's
    /// (this entry): same parties and decision, no bytes yet.
    func requestEntry(at time: Double) -> AccessLogEntry {
        var entry = self
        entry.time = time
        entry.protocol = "http"
        entry.isRequest = true
        entry.bytesSent = 0
        entry.bytesReceived = 0
        return entry
    }

    /// The entry as one JSON object on one line, ending in a newline.
    public func jsonLine() -> String {
        String(decoding: jsonLineBytes(), as: UTF8.self)
    }

    /// `jsonLine()` as UTF-8, which is what the access log writes.
    public func jsonLineBytes() -> [UInt8] {
        var json = JSONObjectWriter()
        json.addTime("time", time)
        if let built = parties.json {
            json.addFields(built)
        } else {
            parties.value.write(to: &json)
        }
        json.add("protocol", self.protocol)
        json.add("action", action.rawValue)
        json.add("policy", policy)
        if let rule { json.add("rule", UInt64(max(0, rule))) }
        json.add("reason", reason)
        json.add("bytes_sent", bytesSent)
        json.add("bytes_received", bytesReceived)
        json.addMilliseconds("duration_ms", durationMilliseconds)
        // Present only when they say something, to keep plain TCP lines short.
        json.addIfPresent("audited", audited)
        json.addIfPresent("audit", audit)
        json.addIfPresent("audit_policy", auditPolicy)
        if let auditRule { json.add("audit_rule", UInt64(max(0, auditRule))) }
        json.addIfPresent("method", method)
        json.addIfPresent("path", path)
        json.addIfPresent("request_principal", requestPrincipal)
        if let status { json.add("status", UInt64(max(0, status))) }
        return json.finishLine()
    }

}

/// Who talked to whom, and how: the fields of an entry that are the same for
/// every request of a connection.
private struct Parties: Equatable, Sendable {
    var direction: AccessLogEntry.Direction
    var sourceAddress: SocketAddress?
    var sourceWorkload: String?
    var sourceIdentity: String?
    var destinationAddress: SocketAddress?
    var destinationWorkload: String?
    var destinationIdentity: String?
    var tls: AccessLogEntry.TLSMode

    init(direction: AccessLogEntry.Direction, tls: AccessLogEntry.TLSMode) {
        self.direction = direction
        self.tls = tls
    }

    /// The line's fields from `direction` to `tls`.
    func write(to json: inout JSONObjectWriter) {
        json.add("direction", direction.rawValue)
        json.add("src_addr", sourceAddress)
        json.add("src_workload", sourceWorkload)
        json.add("src_identity", sourceIdentity)
        json.add("dst_addr", destinationAddress)
        json.add("dst_workload", destinationWorkload)
        json.add("dst_identity", destinationIdentity)
        json.add("tls", tls.rawValue)
    }
}

/// The box entries share their parties in. It is changed only while one
/// entry alone holds it (`changeParties`), the discipline of copy on write,
/// so no thread ever sees it change under it.
private final class PartiesStorage: Equatable, @unchecked Sendable {
    var value: Parties
    /// `value`'s part of the line, once built.
    var json: [UInt8]?

    init(_ value: Parties, json: [UInt8]? = nil) {
        self.value = value
        self.json = json
    }

    /// Entries are equal by their parties, whatever was built of the line.
    static func == (left: PartiesStorage, right: PartiesStorage) -> Bool {
        left === right || left.value == right.value
    }
}

/// Builds one JSON object as UTF-8 bytes, without Foundation's encoder. The
/// access log writes a line per connection and per inspected request; building
/// it as a `String` (appends, interpolation, an address and a time formatted as
/// Strings first) cost about 12 µs a line, several percent of an L7 request.
/// The agent's other log lines (new graph edges) are built with it too.
package struct JSONObjectWriter {
    private var bytes: [UInt8]
    private var first = true

    package init() {
        // A line is a few hundred bytes: one allocation.
        bytes = []
        bytes.reserveCapacity(640)
        bytes.append(UInt8(ascii: "{"))
    }

    private mutating func key(_ name: StaticString) {
        append(first ? "\"" : ",\"")
        first = false
        append(name)
        append("\":")
    }

    private mutating func append(_ literal: StaticString) {
        literal.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    package mutating func add(_ name: StaticString, _ value: String?) {
        key(name)
        guard var value else { return append("null") }
        bytes.append(UInt8(ascii: "\""))
        value.withUTF8 { appendEscaped($0) }
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func addIfPresent(_ name: StaticString, _ value: String?) {
        guard value != nil else { return }
        add(name, value)
    }

    /// An address as `ip:port` (IPv6 in brackets), as a string.
    mutating func add(_ name: StaticString, _ address: SocketAddress?) {
        guard case .v4(let v4) = address else {
            return add(name, address.map(\.authority))
        }
        key(name)
        bytes.append(UInt8(ascii: "\""))
        // s_addr holds the address in network order: its bytes are the octets.
        withUnsafeBytes(of: v4.address.sin_addr.s_addr) { octets in
            for (index, octet) in octets.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ".")) }
                appendDecimal(UInt64(octet))
            }
        }
        bytes.append(UInt8(ascii: ":"))
        appendDecimal(UInt64(UInt16(bigEndian: v4.address.sin_port)))
        bytes.append(UInt8(ascii: "\""))
    }

    package mutating func add(_ name: StaticString, _ value: UInt64) {
        key(name)
        appendDecimal(value)
    }

    mutating func add(_ name: StaticString, _ value: Double) {
        key(name)
        guard value.isFinite else { return append("null") }
        bytes.append(contentsOf: value.description.utf8)
    }

    /// A duration in milliseconds to the microsecond, in the shortest form
    /// that keeps one decimal (`0.0`, `2.5`, `12.346`), written from integers:
    /// `Double.description` made a String for every line.
    mutating func addMilliseconds(_ name: StaticString, _ milliseconds: Double) {
        guard milliseconds.isFinite, milliseconds >= 0, milliseconds < 1e12 else {
            return add(name, (milliseconds * 1000).rounded() / 1000)
        }
        key(name)
        let microseconds = UInt64((milliseconds * 1000).rounded())
        appendDecimal(microseconds / 1000)
        bytes.append(UInt8(ascii: "."))
        var fraction = microseconds % 1000
        var width = 3
        while width > 1, fraction % 10 == 0 {
            fraction /= 10
            width -= 1
        }
        appendDecimalDigits(fraction, width: width, to: &bytes)
    }

    /// RFC 3339 UTC time with milliseconds, as a string.
    package mutating func addTime(_ name: StaticString, _ secondsSinceEpoch: Double) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        appendTime(secondsSinceEpoch, to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    /// Fields written by another writer (`fields`), as they are.
    mutating func addFields(_ fields: [UInt8]) {
        guard !fields.isEmpty else { return }
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(contentsOf: fields)
    }

    /// The fields written so far, without the object's braces.
    var fields: [UInt8] { Array(bytes.dropFirst()) }

    /// The object, closed, with the line's newline.
    package consuming func finishLine() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// JSON string content: quote, backslash and control bytes escaped; the rest
    /// (UTF-8 included) as it is.
    private mutating func appendEscaped(_ utf8: UnsafeBufferPointer<UInt8>) {
        // Most values need no escaping: append them whole, not byte by byte.
        guard utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else {
            bytes.append(contentsOf: utf8)
            return
        }
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "\""): append("\\\"")
            case UInt8(ascii: "\\"): append("\\\\")
            case UInt8(ascii: "\n"): append("\\n")
            case UInt8(ascii: "\r"): append("\\r")
            case UInt8(ascii: "\t"): append("\\t")
            case ..<0x20:
                append("\\u00")
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0x0f)])
            default: bytes.append(byte)
            }
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    private mutating func appendDecimal(_ value: UInt64) {
        appendDecimalDigits(value, to: &bytes)
    }
}

/// `value` in decimal, at least `width` digits (zero-padded).
private func appendDecimalDigits(_ value: UInt64, width: Int = 1, to bytes: inout [UInt8]) {
    // 32 bytes hold any UInt64's 20 digits.
    var digits: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    var count = 0
    var rest = value
    withUnsafeMutableBytes(of: &digits) { buffer in
        repeat {
            buffer[31 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
            count += 1
        } while rest > 0 || count < width
        bytes.append(contentsOf: buffer[(32 - count)...])
    }
}

/// Appends `secondsSinceEpoch` as RFC 3339 UTC with milliseconds.
private func appendTime(_ secondsSinceEpoch: Double, to bytes: inout [UInt8]) {
    // Whole milliseconds first: `.123` is 0.12299… as a Double, and must not
    // come out as 122.
    let total = Int64((secondsSinceEpoch * 1000).rounded(.down))
    var seconds = time_t(total / 1000)
    let millis = UInt64(total % 1000)
    var parts = tm()
    gmtime_r(&seconds, &parts)
    appendDecimalDigits(UInt64(max(0, parts.tm_year + 1900)), width: 4, to: &bytes)
    func twoDigits(after separator: Unicode.Scalar, _ value: Int32) {
        bytes.append(UInt8(ascii: separator))
        appendDecimalDigits(UInt64(max(0, value)), width: 2, to: &bytes)
    }
    twoDigits(after: "-", parts.tm_mon + 1)
    twoDigits(after: "-", parts.tm_mday)
    twoDigits(after: "T", parts.tm_hour)
    twoDigits(after: ":", parts.tm_min)
    twoDigits(after: ":", parts.tm_sec)
    bytes.append(UInt8(ascii: "."))
    appendDecimalDigits(millis, width: 3, to: &bytes)
    bytes.append(UInt8(ascii: "Z"))
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-22T23:41:07.123Z`.
func iso8601(_ secondsSinceEpoch: Double) -> String {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(24)
    appendTime(secondsSinceEpoch, to: &bytes)
    return String(decoding: bytes, as: UTF8.self)
}

extension AccessLogEntry {
    /// How the access log writes a time (seconds since the epoch).
    public static func formatTime(_ secondsSinceEpoch: Double) -> String {
        iso8601(secondsSinceEpoch)
    }
}
