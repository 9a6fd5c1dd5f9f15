/// The checks an inbound HTTP request head passes before policy sees it and
/// before it is forwarded, on top of what the wire readers (the agent's strict
/// HTTP/1.1 reader, NIOHTTP2's header-block checks) refuse by themselves.
///
/// Whatever two HTTP parsers could read differently is refused, not repaired: the
/// agent and the workload must agree on where each request ends (request
/// smuggling) and on which resource it names (policy bypass). The HTTP/1.1
/// reader frames bodies by `bodyFraming` here; the field checks are made again
/// so that a request described to `explain`, or arriving over HTTP/2, meets
/// the same ones.
///
/// Part of the request decision (`WorkloadPolicy.decide(_:on:now:)`), so that a
/// request described to `agentctl policy explain` meets the same checks as one
/// that arrives.
public enum RequestHeadCheck {
    /// What the request decision needs from a head, or why it is refused.
    public static func check(_ head: RequestHead, pathRules: HTTPPath.Rules = .standard) -> Result<CheckedRequest, RequestRefusal> {
        guard head.version == .http1_1 || head.version == .http1_0 else {
            return .failure(RequestRefusal(.httpVersionNotSupported, "HTTP/\(head.version.major).\(head.version.minor) is not supported; use HTTP/1.1"))
        }
        guard HTTPSyntax.isToken(head.method) else {
            return .failure(RequestRefusal(.badRequest, "method is not an HTTP token"))
        }
        for (index, field) in head.fields.enumerated() {
            if let refusal = checkField(name: field.name, value: field.value, index: index) { return .failure(refusal) }
        }

        let fields = FramingFields(head)
        let body: CheckedRequest.Body
        switch bodyFraming(fields, version: head.version) {
        case .success(let framing): body = framing
        case .failure(let refusal): return .failure(refusal)
        }

        let host: String?
        switch checkHost(fields, version: head.version) {
        case .success(let value): host = value
        case .failure(let refusal): return .failure(refusal)
        }

        if fields.upgradesToH2C {
            // After an h2c upgrade the client speaks HTTP/2 to the workload, where this
            // filter sees no more requests.
            return .failure(RequestRefusal(.badRequest, "upgrade to cleartext HTTP/2 (h2c) is not allowed through the mesh"))
        }

        if head.method == "CONNECT" {
            return .failure(RequestRefusal(.notImplemented, "CONNECT is not forwarded to workloads"))
        }
        let target: NormalizedTarget
        switch HTTPPath.normalize(head.target, rules: pathRules) {
        case .success(let normalized): target = normalized
        case .failure(let error): return .failure(RequestRefusal(.badRequest, error.description))
        }
        if target.form == .asterisk && head.method != "OPTIONS" {
            return .failure(RequestRefusal(.badRequest, "request-target '*' is only for OPTIONS, not \(head.method.prefix(32))"))
        }
        return .success(CheckedRequest(target: target, host: host, body: body))
    }

    /// Names are tokens; values have no CR, LF, NUL or other control byte but
    /// horizontal tab, so a forwarded field can never become two.
    private static func checkField(name: String, value: String, index: Int) -> RequestRefusal? {
        guard HTTPSyntax.isToken(name) else {
            return RequestRefusal(.badRequest, "header field \(index + 1) has a name that is not an HTTP token")
        }
        for byte in value.utf8 where byte == 0x7F || (byte < 0x20 && byte != UInt8(ascii: "\t")) {
            let what: String
            switch byte {
            case UInt8(ascii: "\r"): what = "CR"
            case UInt8(ascii: "\n"): what = "LF"
            case 0: what = "NUL"
            default: what = "control byte 0x" + String(byte, radix: 16, uppercase: true)
            }
            return RequestRefusal(.badRequest, "header \(name.prefix(64)) has \(what) in its value")
        }
        return nil
    }

    /// One body framing both sides agree on. Identical repeated Content-Length values
    /// are refused too, though RFC 9112 lets a recipient merge them: no client
    /// sends them. The HTTP/1.1 reader frames bodies by this too, so a body is
    /// read the way the decision judged it.
    public static func bodyFraming(_ head: RequestHead) -> Result<CheckedRequest.Body, RequestRefusal> {
        bodyFraming(FramingFields(head), version: head.version)
    }

    private static func bodyFraming(_ fields: FramingFields, version: RequestHead.Version) -> Result<CheckedRequest.Body, RequestRefusal> {
        if fields.lengths > 0 && fields.encodings > 0 {
            return .failure(RequestRefusal(.badRequest, "request has both Content-Length and Transfer-Encoding"))
        }
        if let encoding = fields.firstEncoding {
            guard version == .http1_1 else {
                return .failure(RequestRefusal(.badRequest, "Transfer-Encoding in an HTTP/1.0 request"))
            }
            guard fields.encodings == 1 else {
                return .failure(RequestRefusal(.badRequest, "request has \(fields.encodings) Transfer-Encoding fields"))
            }
            guard trimmed(encoding[...]).lowercased() == "chunked" else {
                return .failure(RequestRefusal(.notImplemented, "Transfer-Encoding other than exactly \"chunked\" is not supported"))
            }
            return .success(.chunked)
        }
        guard let length = fields.firstLength else { return .success(.none) }
        guard fields.lengths == 1 else {
            return .failure(RequestRefusal(.badRequest, "request has \(fields.lengths) Content-Length fields"))
        }
        let digits = trimmed(length[...])
        guard !digits.isEmpty, digits.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
              let value = Int64(digits)
        else {
            return .failure(RequestRefusal(.badRequest, "Content-Length is not a plain decimal number below 2^63"))
        }
        return .success(.length(value))
    }

    /// One Host field in HTTP/1.1 (at most one in HTTP/1.0), holding a host name,
    /// IPv4 address or bracketed IPv6 address, and an optional port.
    private static func checkHost(_ fields: FramingFields, version: RequestHead.Version) -> Result<String?, RequestRefusal> {
        guard fields.hosts <= 1 else {
            return .failure(RequestRefusal(.badRequest, "request has \(fields.hosts) Host fields"))
        }
        guard let raw = fields.firstHost else {
            if version == .http1_0 { return .success(nil) }
            return .failure(RequestRefusal(.badRequest, "HTTP/1.1 request has no Host"))
        }
        let host = trimmed(raw[...])
        guard isHostAndPort(host) else {
            return .failure(RequestRefusal(.badRequest, "Host is not host[:port] (letters, digits, '-', '.', '_', '~' or a bracketed IPv6 address, port 0-65535)"))
        }
        return .success(String(host))
    }

    static func isHostAndPort(_ text: Substring) -> Bool {
        let bytes = text.utf8
        let afterHost: Substring.UTF8View.SubSequence
        if bytes.first == UInt8(ascii: "[") {
            let literalStart = bytes.index(after: bytes.startIndex)
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")), close > literalStart else { return false }
            let isIPLiteralByte: (UInt8) -> Bool = { HTTPSyntax.hexValue($0) != nil || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }
            guard bytes[literalStart..<close].allSatisfy(isIPLiteralByte) else { return false }
            afterHost = bytes[bytes.index(after: close)...]
        } else {
            let hostEnd = bytes.firstIndex(of: UInt8(ascii: ":")) ?? bytes.endIndex
            let name = bytes[..<hostEnd]
            guard !name.isEmpty, name.count <= 253, name.allSatisfy(isHostNameByte) else { return false }
            afterHost = bytes[hostEnd...]
        }
        guard let separator = afterHost.first else { return true }
        guard separator == UInt8(ascii: ":") else { return false }
        let port = afterHost.dropFirst()
        guard (1...5).contains(port.count), port.allSatisfy(isDigit) else { return false }
        return port.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) } <= 65535
    }

    private static func trimmed(_ text: Substring) -> Substring {
        let isWhitespace: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        guard let first = text.utf8.firstIndex(where: { !isWhitespace($0) }), let last = text.utf8.lastIndex(where: { !isWhitespace($0) }) else {
            return text[text.endIndex...]
        }
        return text[first...last]
    }

    private static func isHostNameByte(_ byte: UInt8) -> Bool {
        isDigit(byte) || isLetter(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "~")
    }

    private static func isDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }

    private static func isLetter(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }
}

/// The fields the checks read, gathered in one pass over a head: how many
/// of each there are, and the first one's value.
private struct FramingFields {
    var lengths = 0
    var firstLength: String?
    var encodings = 0
    var firstEncoding: String?
    var hosts = 0
    var firstHost: String?
    /// An `Upgrade` naming h2c, or an `HTTP2-Settings` field.
    var upgradesToH2C = false

    init(_ head: RequestHead) {
        for field in head.fields {
            switch field.name {
            case "content-length":
                lengths += 1
                if firstLength == nil { firstLength = field.value }
            case "transfer-encoding":
                encodings += 1
                if firstEncoding == nil { firstEncoding = field.value }
            case "host":
                hosts += 1
                if firstHost == nil { firstHost = field.value }
            case "upgrade":
                if field.value.split(separator: ",").contains(where: { $0.lowercased().filter { $0 != " " && $0 != "\t" } == "h2c" }) {
                    upgradesToH2C = true
                }
            case "http2-settings":
                upgradesToH2C = true
            default:
                break
            }
        }
    }
}

/// What the request decision takes from a head that passed `RequestHeadCheck`.
public struct CheckedRequest: Equatable, Sendable {
    /// How the request's body is delimited; the agent and the workload agree on it.
    public enum Body: Equatable, Sendable {
        /// Neither Content-Length nor Transfer-Encoding: no body.
        case none
        case length(Int64)
        case chunked
    }

    /// The normalized target: what policy matches (`path`) and what is
    /// forwarded (`target`), so the workload is asked for what policy checked.
    public var target: NormalizedTarget
    /// The Host value without surrounding whitespace; nil only for HTTP/1.0 without one.
    public var host: String?
    public var body: Body
}

/// Why an inbound request is refused before policy: the status to answer with
/// and a reason that is safe to log (it never quotes the request's bytes). The
/// connection is closed after the answer: once a head is in doubt, so is where
/// the next one begins.
public struct RequestRefusal: Error, Equatable, Sendable, CustomStringConvertible {
    /// The statuses a refused head is answered with.
    public enum Status: Int, Sendable {
        case badRequest = 400
        case requestHeaderFieldsTooLarge = 431
        case notImplemented = 501
        case httpVersionNotSupported = 505
    }

    public var status: Status
    public var reason: String

    public init(_ status: Status, _ reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { "\(status.rawValue) \(reason)" }
}
