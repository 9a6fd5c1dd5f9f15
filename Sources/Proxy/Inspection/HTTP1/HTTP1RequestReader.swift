import NIOCore
import Policy

/// A request head as it arrived: what the request decision reads, and the
/// bytes to pass on when nothing in it changes.
struct ReceivedRequestHead {
    /// Method, target, version and fields (names lowercased, values trimmed).
    var head: RequestHead
    /// From the request line to the blank line after the fields, as received.
    var bytes: ByteBuffer
    /// Whether the request line is exactly `method SP target SP version`. One
    /// with more spaces is written anew, never passed on as it came.
    var canonicalRequestLine: Bool

    /// Whether the client may send another request after this one's answer:
    /// HTTP/1.1 unless it says `Connection: close`, HTTP/1.0 only if it says
    /// `keep-alive`.
    var isKeepAlive: Bool {
        let wanted = head.version == .http1_0 ? "keep-alive" : "close"
        let said = head.fields.contains { field in
            field.name == "connection"
                && field.value.split(separator: ",").contains { $0.lowercased().filter { $0 != " " && $0 != "\t" } == wanted }
        }
        return head.version == .http1_0 ? said : !said
    }

    /// The head to send to the workload: the bytes received when it asks for
    /// `target` as sent and keeps every field, else a new request line and
    /// the received field lines but those named in `removing`.
    func forwarded(_ forwarding: HTTPRequestInspector.Forwarding) -> ByteBuffer {
        if canonicalRequestLine, forwarding.target == head.target, forwarding.removing.isEmpty { return bytes }
        var written = ByteBuffer()
        written.reserveCapacity(bytes.readableBytes + forwarding.target.utf8.count)
        written.writeString("\(head.method) \(forwarding.target) HTTP/\(head.version.major).\(head.version.minor)\r\n")
        bytes.withUnsafeReadableBytes { raw in
            var lines = raw.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropFirst()
            // The last two pieces are the blank line's CR and what follows its LF.
            lines = lines.dropLast(2)
            for (field, line) in zip(head.fields, lines) where !forwarding.removing.contains(field.name) {
                written.writeBytes(UnsafeRawBufferPointer(rebasing: line))
                written.writeInteger(UInt8(ascii: "\n"))
            }
        }
        written.writeStaticString("\r\n")
        return written
    }
}

/// A request line, read.
struct RequestLine {
    var method: String
    var target: String
    var version: RequestHead.Version
    /// Exactly one space between the method and the target.
    var canonical: Bool
}

/// Reads requests from a client's bytes, strictly (`HTTP1Lines`): each head
/// whole, then its body as slices of what arrived. What it refuses it refuses
/// with the status and reason to answer with; the connection cannot go on
/// after that, since where the next request begins is in doubt.
struct HTTP1RequestReader {
    enum Part {
        case head(ReceivedRequestHead)
        case body(HTTP1BodyPart)
    }

    private var lines = HTTP1Lines()
    private var budget: HTTP1HeadBudget
    private var requestLine: RequestLine?
    private var fields: [HTTPField] = []
    private var body: HTTP1BodyReader?

    init(limit: HTTPHeadSizeLimit) {
        budget = HTTP1HeadBudget(limit)
    }

    /// Bytes of heads searched for line ends so far.
    var headBytesSearched: Int { lines.bytesSearched }

    /// The next part from `buffer`, consuming what it returns; nil when more
    /// bytes are needed. A head is consumed only once it is complete.
    mutating func read(_ buffer: inout ByteBuffer) throws(RequestRefusal) -> Part? {
        if var reading = body {
            let part = try reading.read(&buffer)
            if case .end? = part { body = nil } else { body = reading }
            return part.map(Part.body)
        }
        while let line = try lines.next(in: buffer, maximumLength: budget.maximumLineLength, tooLong: budget.exceeded) {
            guard let requestLine else {
                // Blank lines before a request line are allowed (RFC 9112 2.2), and dropped.
                if line.isEmpty {
                    lines.drop(from: &buffer)
                    continue
                }
                let parsed = try buffer.withUnsafeReadableBytes { bytes throws(RequestRefusal) in
                    try Self.requestLine(UnsafeRawBufferPointer(rebasing: bytes[line]))
                }
                try budget.add(lineLength: line.count, counted: parsed.target.utf8.count, isField: false)
                self.requestLine = parsed
                continue
            }
            if line.isEmpty {
                return .head(try headEnded(requestLine, bytes: lines.take(from: &buffer)))
            }
            let field = try buffer.withUnsafeReadableBytes { bytes throws(RequestRefusal) in
                let field = try HTTP1FieldLine(UnsafeRawBufferPointer(rebasing: bytes[line]), index: fields.count)
                try budget.add(lineLength: line.count, counted: field.name.count + field.value.count, isField: true)
                return HTTPField(name: field.name.asciiLowercased, value: String(decoding: field.value, as: UTF8.self))
            }
            fields.append(field)
        }
        return nil
    }

    private mutating func headEnded(_ line: RequestLine, bytes: ByteBuffer) throws(RequestRefusal) -> ReceivedRequestHead {
        let head = RequestHead(method: line.method, target: line.target, version: line.version, fields: fields)
        requestLine = nil
        fields.removeAll(keepingCapacity: true)
        budget = budget.renewed
        // The one framing the request decision also checks (`RequestHeadCheck`).
        let framing = try RequestHeadCheck.bodyFraming(head).get()
        body = HTTP1BodyReader(HTTP1BodyReader.Framing(framing), trailers: budget.renewed)
        return ReceivedRequestHead(head: head, bytes: bytes, canonicalRequestLine: line.canonical)
    }

    /// `method SP request-target SP HTTP-version`. A line with no version is
    /// HTTP/0.9 (505 as soon as the line ends, where a parser waiting for
    /// fields would hang); spaces between the method and the target may be
    /// more than one, as llhttp reads them.
    static func requestLine(_ line: UnsafeRawBufferPointer) throws(RequestRefusal) -> RequestLine {
        let notRequestLine = RequestRefusal(.badRequest, "malformed HTTP/1.1 request: not a request line")
        guard let methodEnd = line.firstIndex(of: UInt8(ascii: " ")), methodEnd > 0 else { throw notRequestLine }
        let method = UnsafeRawBufferPointer(rebasing: line[..<methodEnd])
        guard let methodName = knownMethod(method) else {
            throw RequestRefusal(.badRequest, "malformed HTTP/1.1 request: the method is not one HTTP/1.1 parsers know")
        }
        guard let targetStart = line[methodEnd...].firstIndex(where: { $0 != UInt8(ascii: " ") }) else { throw notRequestLine }
        let rest = UnsafeRawBufferPointer(rebasing: line[targetStart...])
        guard let targetEnd = rest.firstIndex(of: UInt8(ascii: " ")) else {
            if rest.first == UInt8(ascii: "/"), rest.allSatisfy(isTargetByte) {
                throw RequestRefusal(.httpVersionNotSupported, "request line has an unsupported or malformed HTTP version; use HTTP/1.1")
            }
            throw notRequestLine
        }
        let target = UnsafeRawBufferPointer(rebasing: rest[..<targetEnd])
        let versionBytes = UnsafeRawBufferPointer(rebasing: rest[(targetEnd + 1)...])
        guard target.allSatisfy(isTargetByte) else {
            throw RequestRefusal(.badRequest, "malformed HTTP/1.1 request: the request-target has a byte outside visible ASCII")
        }
        let version: RequestHead.Version
        if versionBytes.elementsEqual("HTTP/1.1".utf8) {
            version = .http1_1
        } else if versionBytes.elementsEqual("HTTP/1.0".utf8) {
            version = .http1_0
        } else if Self.isVersion(versionBytes) {
            throw RequestRefusal(.httpVersionNotSupported, "request line has an unsupported or malformed HTTP version; use HTTP/1.1")
        } else {
            throw notRequestLine
        }
        return RequestLine(method: methodName, target: String(decoding: target, as: UTF8.self), version: version, canonical: targetStart == methodEnd + 1)
    }

    /// `HTTP/` DIGIT `.` DIGIT: a version, if not one the agent speaks.
    private static func isVersion(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let isDigit = { (byte: UInt8) in byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
        return bytes.count == 8 && bytes.starts(with: "HTTP/".utf8) && isDigit(bytes[5]) && bytes[6] == UInt8(ascii: ".") && isDigit(bytes[7])
    }

    /// Visible ASCII: what a request-target is made of.
    private static func isTargetByte(_ byte: UInt8) -> Bool {
        byte > 0x20 && byte < 0x7F
    }

    /// The methods HTTP/1.1 parsers agree on (llhttp's list, without `PRI`,
    /// which only starts HTTP/2's preface): a method outside it is refused,
    /// as the decoder the agent used before refused it.
    private static func knownMethod(_ bytes: UnsafeRawBufferPointer) -> String? {
        let name = String(decoding: bytes, as: UTF8.self)
        // A switch compares these small strings without hashing them.
        switch name {
        case "GET", "POST", "HEAD", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL",
            "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE",
            "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY":
            return name
        default:
            return nil
        }
    }
}

extension HTTP1BodyReader.Framing {
    init(_ body: CheckedRequest.Body) {
        switch body {
        case .none: self = .none
        case .length(let length): self = .length(length)
        case .chunked: self = .chunked
        }
    }
}
