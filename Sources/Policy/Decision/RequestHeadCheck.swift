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

        let body: CheckedRequest.Body
        switch bodyFraming(head) {
        case .success(let framing): body = framing
        case .failure(let refusal): return .failure(refusal)
        }

        let host: String?
        switch checkHost(head) {
        case .success(let value): host = value
        case .failure(let refusal): return .failure(refusal)
        }

        let upgrade = head.values(of: "upgrade").flatMap { $0.split(separator: ",") }.map { trimmed($0).lowercased() }
        if upgrade.contains("h2c") || head.has("http2-settings") {
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
        let lengths = head.values(of: "content-length")
        let encodings = head.values(of: "transfer-encoding")
        if !lengths.isEmpty && !encodings.isEmpty {
            return .failure(RequestRefusal(.badRequest, "request has both Content-Length and Transfer-Encoding"))
        }
        if !encodings.isEmpty {
            guard head.version == .http1_1 else {
                return .failure(RequestRefusal(.badRequest, "Transfer-Encoding in an HTTP/1.0 request"))
            }
            guard encodings.count == 1 else {
                return .failure(RequestRefusal(.badRequest, "request has \(encodings.count) Transfer-Encoding fields"))
            }
            guard trimmed(encodings[0][...]).lowercased() == "chunked" else {
                return .failure(RequestRefusal(.notImplemented, "Transfer-Encoding other than exactly \"chunked\" is not supported"))
            }
            return .success(.chunked)
        }
        guard let length = lengths.first else { return .success(.none) }
        guard lengths.count == 1 else {
            return .failure(RequestRefusal(.badRequest, "request has \(lengths.count) Content-Length fields"))
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
    private static func checkHost(_ head: RequestHead) -> Result<String?, RequestRefusal> {
        let hosts = head.values(of: "host")
        guard hosts.count <= 1 else {
            return .failure(RequestRefusal(.badRequest, "request has \(hosts.count) Host fields"))
        }
        guard let raw = hosts.first else {
            if head.version == .http1_0 { return .success(nil) }
            return .failure(RequestRefusal(.badRequest, "HTTP/1.1 request has no Host"))
        }
        let host = trimmed(raw[...])
        guard isHostAndPort(host) else {
            return .failure(RequestRefusal(.badRequest, "Host is not host[:port] (letters, digits, '-', '.', '_', '~' or a bracketed IPv6 address, port 0-65535)"))
        }
        return .success(String(host))
    }

    static func isHostAndPort(_ text: Substring) -> Bool {
        let bytes = Array(text.utf8)
        let hostEnd: Int
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")), close > 1 else { return false }
            let isIPLiteralByte: (UInt8) -> Bool = { HTTPSyntax.hexValue($0) != nil || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }
            guard bytes[1..<close].allSatisfy(isIPLiteralByte) else { return false }
            hostEnd = close + 1
        } else {
            hostEnd = bytes.firstIndex(of: UInt8(ascii: ":")) ?? bytes.count
            let name = bytes[..<hostEnd]
            guard !name.isEmpty, name.count <= 253, name.allSatisfy(isHostNameByte) else { return false }
        }
        guard hostEnd < bytes.count else { return true }
        guard bytes[hostEnd] == UInt8(ascii: ":") else { return false }
        let port = bytes[(hostEnd + 1)...]
        guard (1...5).contains(port.count), port.allSatisfy(isDigit) else { return false }
        return Int(String(decoding: port, as: UTF8.self)).map { $0 <= 65535 } ?? false
    }

    private static func trimmed(_ text: Substring) -> Substring {
        let isWhitespace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = text.firstIndex(where: { !isWhitespace($0) }), let last = text.lastIndex(where: { !isWhitespace($0) }) else {
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
