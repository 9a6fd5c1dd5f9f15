import NIOCore
import Policy

/// Reads a workload's responses, strictly, as `HTTP1RequestReader` reads
/// requests: each head whole (passed on as received), then its body as
/// slices. Responses are framed by the request each answers, so the requests
/// sent are told to it in order (`expectResponse(toHEAD:)`). Anything it
/// cannot frame for certain ends the exchange: the client must never read a
/// response where the agent read another.
struct HTTP1ResponseReader {
    enum Part {
        /// A response head: its status, and its bytes as received.
        case head(status: Int, bytes: ByteBuffer)
        case body(HTTP1BodyPart)
    }

    private var lines = HTTP1Lines()
    private var budget: HTTP1HeadBudget
    private var status: Int?
    private var contentLength: Int?
    private var contentLengths = 0
    private var transferCodings: [UInt8] = []
    private var transferEncoded = false
    private var body: HTTP1BodyReader?
    /// For each request sent and not yet answered: whether it was a HEAD.
    private var awaiting: [Bool] = []

    /// How large a response head may be: a workload's heads carry cookies and
    /// more, and it is not the party the request limit guards against.
    static let headLimit = HTTPHeadSizeLimit(maximumBytes: 256 * 1024, maximumFields: 500)

    init(limit: HTTPHeadSizeLimit = Self.headLimit) {
        budget = HTTP1HeadBudget(
            limit, exceeded: Self.malformed("its head is over \(limit.maximumBytes) bytes or \(limit.maximumFields) fields"))
    }

    /// A request went to the workload; its response comes after those before it.
    mutating func expectResponse(toHEAD: Bool) {
        awaiting.append(toHEAD)
    }

    /// The next part from `buffer`, consuming what it returns; nil when more
    /// bytes are needed.
    mutating func read(_ buffer: inout ByteBuffer) throws(RequestRefusal) -> Part? {
        if var reading = body {
            let part = try reading.read(&buffer)
            if case .end? = part { body = nil } else { body = reading }
            return part.map(Part.body)
        }
        while let line = try lines.next(in: buffer, maximumLength: budget.maximumLineLength, tooLong: budget.exceeded) {
            guard let status else {
                // Blank lines before a status line are dropped, as before a request line.
                if line.isEmpty {
                    lines.drop(from: &buffer)
                    continue
                }
                self.status = try buffer.withUnsafeReadableBytes { bytes throws(RequestRefusal) in
                    try Self.statusLine(UnsafeRawBufferPointer(rebasing: bytes[line]))
                }
                guard !awaiting.isEmpty else { throw Self.malformed("a response came that no request asked for") }
                continue
            }
            if line.isEmpty {
                return .head(status: status, bytes: try headEnded(status, bytes: lines.take(from: &buffer)))
            }
            try buffer.withUnsafeReadableBytes { bytes throws(RequestRefusal) in
                let field = try HTTP1FieldLine(UnsafeRawBufferPointer(rebasing: bytes[line]), index: budget.fields)
                try budget.add(lineLength: line.count, counted: field.name.count + field.value.count, isField: true)
                try framingField(field)
            }
        }
        return nil
    }

    /// The workload closed its side: true when that ends the response being
    /// read (one delimited by the close; its `.end` is next).
    mutating func inputEnded() -> Bool {
        guard var reading = body, reading.inputEnded() else { return false }
        body = reading
        return true
    }

    private mutating func framingField(_ field: HTTP1FieldLine) throws(RequestRefusal) {
        if field.named("content-length") {
            guard let length = field.value.decimal else { throw Self.malformed("its Content-Length is not a plain decimal number") }
            contentLength = length
            contentLengths += 1
        } else if field.named("transfer-encoding") {
            if transferEncoded { transferCodings.append(UInt8(ascii: ",")) }
            transferCodings.append(contentsOf: field.value)
            transferEncoded = true
        }
    }

    private mutating func headEnded(_ status: Int, bytes: ByteBuffer) throws(RequestRefusal) -> ByteBuffer {
        defer {
            self.status = nil
            contentLength = nil
            contentLengths = 0
            transferCodings.removeAll(keepingCapacity: true)
            transferEncoded = false
            budget = budget.renewed
        }
        // An interim response (1xx) has no body, and the final one follows.
        if status < 200 { return bytes }
        let answersHEAD = awaiting.removeFirst()
        body = HTTP1BodyReader(try framing(status: status, answersHEAD: answersHEAD), trailers: budget.renewed)
        return bytes
    }

    /// RFC 9112 6.3, with every ambiguity refused rather than resolved.
    private func framing(status: Int, answersHEAD: Bool) throws(RequestRefusal) -> HTTP1BodyReader.Framing {
        if answersHEAD || status == 204 || status == 304 { return .none }
        if transferEncoded {
            guard contentLengths == 0 else { throw Self.malformed("it has both Content-Length and Transfer-Encoding") }
            let last = transferCodings.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false).last ?? []
            let coding = last.withUnsafeBytes { $0.trimmingWhitespace.equalsIgnoringASCIICase("chunked") }
            // A response whose last coding is not chunked ends when the connection does.
            return coding ? .chunked : .untilClose
        }
        guard contentLengths <= 1 else { throw Self.malformed("it has \(contentLengths) Content-Length fields") }
        return contentLength.map { .length(Int64($0)) } ?? .untilClose
    }

    /// `HTTP/1.x SP 3DIGIT SP reason`, the reason possibly empty or, with its
    /// space, missing.
    private static func statusLine(_ line: UnsafeRawBufferPointer) throws(RequestRefusal) -> Int {
        guard line.count >= 12, line.starts(with: "HTTP/1.".utf8), line[7] == UInt8(ascii: "1") || line[7] == UInt8(ascii: "0"),
            line[8] == UInt8(ascii: " "), let status = UnsafeRawBufferPointer(rebasing: line[9..<12]).decimal,
            line.count == 12 || line[12] == UInt8(ascii: " "),
            !line.contains(where: { $0 == 0x7F || ($0 < 0x20 && $0 != UInt8(ascii: "\t")) })
        else { throw malformed("its status line is not HTTP/1.x with a three-digit status") }
        guard status >= 100 else { throw malformed("its status is below 100") }
        return status
    }

    private static func malformed(_ what: String) -> RequestRefusal {
        RequestRefusal(.badRequest, "the workload's response is malformed: \(what)")
    }
}
