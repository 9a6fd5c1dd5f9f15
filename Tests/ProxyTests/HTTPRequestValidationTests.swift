import NIOCore
import NIOHTTP1
@testable import Policy
import Testing
@testable import Proxy

/// Real bytes through the agent's HTTP/1.1 request reader, configured as the
/// agent configures it, and then through `RequestHeadCheck`: what the agent
/// would do with them.
private enum Outcome: Equatable {
    case accepted([Validated])
    /// The reader refused the bytes; heads read before it passed validation.
    case refusedByReader(RequestRefusal)
    case refusedByValidation(RequestRefusal)

    var status: UInt? {
        switch self {
        case .accepted: nil
        case .refusedByReader(let refusal), .refusedByValidation(let refusal): UInt(refusal.status.rawValue)
        }
    }
}

/// A head that passed the checks, and what the checks made of it.
private struct Validated: Equatable {
    var head: RequestHead
    var checked: CheckedRequest
    var target: NormalizedTarget { checked.target }
    var host: String? { checked.host }
    var body: CheckedRequest.Body { checked.body }
    /// The request-target the workload is asked for (what the inspector forwards).
    var forwardedURI: String { checked.target.target }
}

private struct Read {
    var heads: [ReceivedRequestHead] = []
    var bodies: [String] = []
    /// Each request's bytes as they would be forwarded unchanged: head, payload, framing.
    var forwarded: [UInt8] = []
    var ends = 0
    var refusal: RequestRefusal?
}

/// The bytes in `chunks`, read as the gate reads them: what a read leaves
/// over waits for the next one.
private func read(_ chunks: [[UInt8]], limit: HTTPHeadSizeLimit = HTTPHeadSizeLimit()) -> Read {
    var reader = HTTP1RequestReader(limit: limit)
    var result = Read()
    var body = ""
    var unread = ByteBuffer()
    for chunk in chunks {
        unread.writeBytes(chunk)
        do {
            while let part = try reader.read(&unread) {
                switch part {
                case .head(let head):
                    result.heads.append(head)
                    result.forwarded += Array(head.bytes.readableBytesView)
                case .body(.payload(let bytes)):
                    body += String(buffer: bytes)
                    result.forwarded += Array(bytes.readableBytesView)
                case .body(.framing(let bytes)):
                    result.forwarded += Array(bytes.readableBytesView)
                case .body(.end):
                    result.bodies.append(body)
                    body = ""
                    result.ends += 1
                }
            }
        } catch {
            result.refusal = error
            break
        }
    }
    return result
}

private func outcome(_ chunks: [[UInt8]], limit: HTTPHeadSizeLimit = HTTPHeadSizeLimit()) -> Outcome {
    let read = read(chunks, limit: limit)
    var validated: [Validated] = []
    for head in read.heads {
        switch RequestHeadCheck.check(head.head) {
        case .success(let request): validated.append(Validated(head: head.head, checked: request))
        case .failure(let refusal): return .refusedByValidation(refusal)
        }
    }
    if let refusal = read.refusal {
        return .refusedByReader(refusal)
    }
    return .accepted(validated)
}

private func outcome(_ text: String) -> Outcome {
    outcome([Array(text.utf8)])
}

private func validate(_ head: HTTPRequestHead) -> Result<CheckedRequest, RequestRefusal> {
    RequestHeadCheck.check(RequestHead(head))
}

@Suite struct HTTPRequestValidationTests {
    // MARK: Smuggling and malformed requests, with who refuses them.

    @Test(arguments: [
        ("CL.TE: Content-Length with Transfer-Encoding",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", UInt(400)),
        ("TE.CL: Transfer-Encoding with Content-Length",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
        ("Transfer-Encoding: chunked, identity (chunked not last)",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501),
        ("Transfer-Encoding: identity, chunked",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
        ("Transfer-Encoding: xchunked",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
        ("Transfer-Encoding: identity",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        ("Transfer-Encoding: gzip, chunked",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ("Transfer-Encoding in HTTP/1.0",
         "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("space before the colon",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        ("obs-fold continuation line",
         "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400),
        ("obs-fold hiding Transfer-Encoding",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
        ("Content-Length: +5",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
        ("Content-Length: -1",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        ("Content-Length: 0x5",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400),
        ("Content-Length: 5, 6 (a list)",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
        ("Content-Length: 5, 5 (a list of identical values)",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
        ("two Content-Length fields",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        ("two identical Content-Length fields",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
        ("Content-Length overflowing 64 bits",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
        ("chunk size overflow",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n", 400),
        ("invalid chunk size characters",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n", 400),
        ("negative chunk size",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
        ("0x-prefixed chunk size",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
        ("chunk data longer than its size",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
        ("NUL in a header value",
         "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\u{0}b\r\n\r\n", 400),
        ("lone CR in a header value",
         "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
        ("control byte in a header value",
         "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\u{1}b\r\n\r\n", 400),
        ("a header name that is not a token",
         "GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400),
        ("an empty header name",
         "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
        ("HTTP/0.9 request line without a version",
         "GET /\r\n\r\n", 505),
        ("HTTP/0.9 request line",
         "GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        ("HTTP/2.0 request line",
         "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("HTTP/1.2 request line",
         "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        ("HTTP/2 connection preface (PRI is no HTTP/1.1 method)",
         "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        ("an unknown method",
         "FROB / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a lower-case method",
         "get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("two Transfer-Encoding fields",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("non-ASCII in the request-target",
         "GET /café HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a space in the request-target",
         "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a bare CR ending the request line",
         "GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        ("a request line with a tab for a space",
         "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a request line ending in a space",
         "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
        ("a header line without a colon",
         "GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
        ("a control byte in a chunk extension",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\u{1}\r\nhello\r\n0\r\n\r\n", 400),
        ("obs-fold in a trailer",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    ] as [(String, String, UInt)])
    func theReaderRefuses(name: String, request: String, status: UInt) {
        let result = outcome(request)
        guard case .refusedByReader = result else {
            Issue.record("\(name): expected the reader to refuse, got \(result)")
            return
        }
        #expect(result.status == status, "\(name)")
        // Refused at once, whatever arrives after: at every split of its bytes too.
        let bytes = Array(request.utf8)
        for split in 1..<bytes.count {
            #expect(outcome([Array(bytes[..<split]), Array(bytes[split...])]) == result, "\(name), split at \(split)")
        }
    }

    @Test(arguments: [
        ("missing Host in HTTP/1.1",
         "GET / HTTP/1.1\r\n\r\n", 400),
        ("two Host fields",
         "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("an empty Host",
         "GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
        ("a Host with a space",
         "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("a Host with user info",
         "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
        ("a Host with a path",
         "GET / HTTP/1.1\r\nHost: a/admin\r\n\r\n", 400),
        ("a Host that is a list",
         "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
        ("a Host with a bad port",
         "GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400),
        ("a Host with a port over 65535",
         "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400),
        ("a Host with non-ASCII",
         "GET / HTTP/1.1\r\nHost: café\r\n\r\n", 400),
        ("absolute-form request-target",
         "GET http://a/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("authority-form request-target with CONNECT",
         "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
        ("an escaped '/' in the path",
         "GET /public%2F..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("an escaped backslash in the path",
         "GET /admin%5Cx HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a backslash in the path",
         "GET /public\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a malformed escape in the path",
         "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a fragment",
         "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a Tomcat-style '..;' segment",
         "GET /public/..;/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("'*' for a method other than OPTIONS",
         "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("an h2c upgrade",
         "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", 400),
        ("the second of two pipelined requests",
         "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 400),
    ] as [(String, String, UInt)])
    func ourValidationRefuses(name: String, request: String, status: UInt) {
        let result = outcome(request)
        guard case .refusedByValidation = result else {
            Issue.record("\(name): expected our validation to refuse, got \(result)")
            return
        }
        #expect(result.status == status, "\(name)")
    }

    // MARK: Bare LF.

    /// A bare LF ends no line. A parser that took it for a line end would see
    /// the head's fields (and so its framing) differently from one that does
    /// not, and the head is forwarded as received.
    @Test(arguments: [
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\n\r\n",
    ])
    func bareLineFeedsAreRefusedByTheReader(request: String) {
        let result = outcome(request)
        guard case .refusedByReader = result else {
            Issue.record("expected the reader to refuse, got \(result)")
            return
        }
        #expect(result.status == 400)
    }

    // MARK: The size of the head.

    @Test func aHeaderValueOverTheLimitIsRefusedByTheReader() {
        let limit = HTTPHeadSizeLimit(maximumBytes: 4096)
        let value = String(repeating: "v", count: 4097)
        let result = outcome([Array("GET / HTTP/1.1\r\nHost: a\r\nX-A: \(value)\r\n\r\n".utf8)], limit: limit)
        #expect(result == .refusedByReader(RequestRefusal(.requestHeaderFieldsTooLarge, "request head is over 4096 bytes or 100 fields")))
    }

    @Test func manyHeadersAddingUpOverTheLimitAreRefusedByTheReader() {
        let fields = (0..<80).map { "X-\($0): \(String(repeating: "v", count: 1000))\r\n" }.joined()
        let request = "GET / HTTP/1.1\r\nHost: a\r\n\(fields)\r\n"
        // Sent in small reads, as a slow client would: the count must not reset between reads.
        let chunks = Array(request.utf8).chunked(into: 1000)
        #expect(outcome(chunks).status == 431)
        guard case .accepted = outcome(chunks, limit: HTTPHeadSizeLimit(maximumBytes: 128 * 1024)) else {
            Issue.record("refused under a 128 KiB limit")
            return
        }
    }

    @Test func theDefaultLimitIs64KiB() {
        let limit = HTTPHeadSizeLimit()
        #expect(limit.maximumBytes == 64 * 1024)
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX-A: "
        let counted = 1 + "Host".count + 1 + "X-A".count  // the target, names and values
        let fits = head + String(repeating: "v", count: limit.maximumBytes - counted) + "\r\n\r\n"
        guard case .accepted(let requests) = outcome([Array(fits.utf8)]) else {
            Issue.record("a head of exactly the limit was refused")
            return
        }
        #expect(requests.count == 1)
        let over = head + String(repeating: "v", count: limit.maximumBytes - counted + 1) + "\r\n\r\n"
        #expect(outcome([Array(over.utf8)]).status == 431)
    }

    @Test func aLongRequestTargetCountsTowardsTheLimit() {
        let target = "/" + String(repeating: "a", count: 5000)
        let result = outcome([Array("GET \(target) HTTP/1.1\r\nHost: a\r\n\r\n".utf8)], limit: HTTPHeadSizeLimit(maximumBytes: 4096))
        #expect(result.status == 431)
    }

    @Test func tooManyFieldsAreRefusedByTheReader() {
        let fields = (0..<100).map { "X-\($0): v\r\n" }.joined()
        let result = outcome("GET / HTTP/1.1\r\nHost: a\r\n\(fields)\r\n")
        #expect(result.status == 431)
        let fewer = (0..<99).map { "X-\($0): v\r\n" }.joined()
        guard case .accepted = outcome("GET / HTTP/1.1\r\nHost: a\r\n\(fewer)\r\n") else {
            Issue.record("100 fields were refused")
            return
        }
    }

    @Test func trailersCountTowardsTheLimit() {
        let trailers = (0..<101).map { "X-\($0): v\r\n" }.joined()
        let result = outcome("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\(trailers)\r\n")
        #expect(result.status == 431)
    }

    /// Whitespace before a value does not count, but it is buffered: a line
    /// that passes the limit is refused before its end arrives.
    @Test func whitespaceBeforeAValueCannotGrowALineWithoutBound() {
        let limit = HTTPHeadSizeLimit(maximumBytes: 16 * 1024)
        var chunks = [Array("GET / HTTP/1.1\r\nHost: a\r\nX-A:".utf8)]
        chunks += Array(repeating: Array(repeating: UInt8(ascii: " "), count: 4096), count: 8)
        chunks.append(Array("v\r\n\r\n".utf8))
        let read = read(chunks, limit: limit)
        #expect(read.refusal?.status == .requestHeaderFieldsTooLarge)
        #expect(read.heads.isEmpty)
    }

    /// Nor can padding spread over many fields: what the head adds beyond
    /// its counted bytes is bounded per line.
    @Test func paddingEveryFieldIsBoundedToo() {
        let limit = HTTPHeadSizeLimit(maximumBytes: 16 * 1024)
        let padded = (0..<90).map { "X-\($0):\(String(repeating: " ", count: 1000))v\r\n" }.joined()
        #expect(outcome([Array("GET / HTTP/1.1\r\nHost: a\r\n\(padded)\r\n".utf8)], limit: limit).status == 431)
        let lightly = (0..<90).map { "X-\($0):  v  \r\n" }.joined()
        guard case .accepted = outcome([Array("GET / HTTP/1.1\r\nHost: a\r\n\(lightly)\r\n".utf8)], limit: limit) else {
            Issue.record("a head with a little spacing was refused")
            return
        }
    }

    // MARK: Requests that pass.

    @Test func aGetPasses() {
        guard case .accepted(let requests) = outcome("GET /public/../orders?id=7 HTTP/1.1\r\nHost: orders.shop:8080\r\nAccept: */*\r\n\r\n") else {
            Issue.record("refused")
            return
        }
        #expect(requests.count == 1)
        let request = requests[0]
        #expect(request.target.path == "/orders")
        #expect(request.target.query == "id=7")
        #expect(request.forwardedURI == "/orders?id=7", "the workload gets the path policy checked")
        #expect(request.head.method == "GET")
        #expect(request.head.values(of: "accept") == ["*/*"])
        #expect(request.host == "orders.shop:8080")
        #expect(request.body == .none)
    }

    @Test func aPostWithContentLengthPasses() {
        let read = read([Array("POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".utf8)])
        #expect(read.refusal == nil)
        #expect(read.bodies == ["hello"])
        guard case .accepted(let requests) = outcome("POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello") else {
            Issue.record("refused")
            return
        }
        #expect(requests.map(\.body) == [.length(5)])
    }

    @Test func aChunkedPostWithExtensionsAndTrailersPasses() {
        let request = "POST /orders HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5;note=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n"
        let read = read([Array(request.utf8)])
        #expect(read.refusal == nil)
        #expect(read.bodies == ["hello world"])
        #expect(read.forwarded == Array(request.utf8), "chunk lines and trailers pass as they came")
        guard case .accepted(let requests) = outcome(request) else {
            Issue.record("refused")
            return
        }
        #expect(requests.map(\.body) == [.chunked])
    }

    @Test func pipelinedRequestsPassOneByOne() {
        let request = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
            + "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
            + "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
            + "GET /%64 HTTP/1.1\r\nHost: a\r\n\r\n"
        // Every split point, so that no boundary between reads changes the outcome.
        let bytes = Array(request.utf8)
        for split in 1..<bytes.count {
            let read = read([Array(bytes[..<split]), Array(bytes[split...])])
            #expect(read.refusal == nil)
            #expect(read.heads.map(\.head.target) == ["/a", "/b", "/c", "/%64"])
            #expect(read.bodies == ["", "xyz", "hi", ""])
            #expect(read.forwarded == bytes, "split at \(split): the requests pass as the bytes they came as")
        }
        guard case .accepted(let requests) = outcome(request) else {
            Issue.record("refused")
            return
        }
        #expect(requests.map(\.target.path) == ["/a", "/b", "/c", "/d"])
        #expect(requests.map(\.body) == [.none, .length(3), .chunked, .none])
    }

    @Test func anHTTP10GetWithoutHostPasses() {
        guard case .accepted(let requests) = outcome("GET /index.html HTTP/1.0\r\n\r\n") else {
            Issue.record("refused")
            return
        }
        #expect(requests.map(\.host) == [nil])
        #expect(requests.map(\.head.version) == [.http1_0])
    }

    @Test(arguments: [
        "GET / HTTP/1.1\r\nHost: 10.77.0.2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [fd77::2]:8080\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: orders.shop.svc.cluster.local\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:   a   \r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  5 \r\n\r\nhello",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab: a\tb\r\nX-Latin: caf\u{E9}\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        // As llhttp reads it; the request line is written anew when forwarded.
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    ])
    func otherAcceptableRequestsPass(request: String) {
        let result = outcome(request)
        guard case .accepted(let requests) = result else {
            Issue.record("refused: \(result)")
            return
        }
        #expect(requests.count == 1)
    }

    // MARK: Validation alone, on heads the decoder never produces.

    /// The decoder refuses all of these first; validation refuses them again so that
    /// no head reaches policy on the strength of llhttp's defaults alone.
    @Test(arguments: [
        ("both framings", [("Host", "a"), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")], UInt(400)),
        ("two lengths", [("Host", "a"), ("Content-Length", "5"), ("Content-Length", "5")], 400),
        ("a list of lengths", [("Host", "a"), ("Content-Length", "5, 5")], 400),
        ("a signed length", [("Host", "a"), ("Content-Length", "+5")], 400),
        ("an empty length", [("Host", "a"), ("Content-Length", "")], 400),
        ("a length over 2^63", [("Host", "a"), ("Content-Length", "9223372036854775808")], 400),
        ("non-ASCII digits", [("Host", "a"), ("Content-Length", "٣")], 400),
        ("xchunked", [("Host", "a"), ("Transfer-Encoding", "xchunked")], 501),
        ("chunked, identity", [("Host", "a"), ("Transfer-Encoding", "chunked, identity")], 501),
        ("CR LF in a value", [("Host", "a"), ("X-A", "a\r\nTransfer-Encoding: chunked")], 400),
        ("NUL in a value", [("Host", "a"), ("X-A", "a\u{0}")], 400),
        ("a space in a name", [("Host", "a"), ("X A", "b")], 400),
        ("a colon in a name", [("Host", "a"), ("X:A", "b")], 400),
        ("LF in a name", [("Host", "a"), ("X\nA", "b")], 400),
        ("an empty name", [("Host", "a"), ("", "b")], 400),
    ] as [(String, [(String, String)], UInt)])
    func validationRefusesWhatTheDecoderAlreadyDoes(name: String, fields: [(String, String)], status: UInt) {
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/", headers: HTTPHeaders(fields))
        guard case .failure(let refusal) = validate(head) else {
            Issue.record("\(name): accepted")
            return
        }
        #expect(UInt(refusal.status.rawValue) == status, "\(name)")
    }

    @Test(arguments: [
        HTTPVersion(major: 2, minor: 0), HTTPVersion(major: 0, minor: 9), HTTPVersion(major: 1, minor: 2), HTTPVersion(major: 3, minor: 0),
    ])
    func versionsOtherThan10And11Are505(version: HTTPVersion) {
        let head = HTTPRequestHead(version: version, method: .GET, uri: "/", headers: ["Host": "a"])
        guard case .failure(let refusal) = validate(head) else {
            Issue.record("accepted")
            return
        }
        #expect(refusal.status == .httpVersionNotSupported)
    }

    @Test func aMethodThatIsNotATokenIsRefused() {
        let head = HTTPRequestHead(version: .http1_1, method: .RAW(value: "GE T"), uri: "/", headers: ["Host": "a"])
        #expect(validate(head).failure?.status == .badRequest)
    }

    @Test func reasonsNeverQuoteTheRequest() {
        let head = HTTPRequestHead(
            version: .http1_1, method: .GET, uri: "/a?token=hunter2 x",
            headers: ["Host": "a", "Authorization": "Bearer hunter2\u{1}"])
        let refusal = validate(head).failure
        // Names are lowercased, as HTTP/2 writes them, so both protocols log one way.
        #expect(refusal?.reason == "header authorization has control byte 0x1 in its value")
        #expect(refusal.map { !$0.description.contains("hunter2") } == true)
    }

    @Test(arguments: [
        ("a", true), ("a:80", true), ("A-b_c.d~e:65535", true), ("10.0.0.1:0", true), ("[::1]", true), ("[fd77::2]:443", true),
        ("", false), (":80", false), ("a:", false), ("a:+80", false), ("a:123456", false), ("[::1", false), ("[]", false),
        ("[::1]x", false), ("[::1]:", false), ("[fe80::1%25eth0]", false), ("a%2Eb", false), ("a:80:80", false),
        ("a!b", false), ("a;b", false),
    ])
    func hostSyntax(host: String, valid: Bool) {
        #expect(RequestHeadCheck.isHostAndPort(host[...]) == valid)
    }
}

extension Result {
    fileprivate var failure: Failure? {
        if case .failure(let failure) = self { return failure }
        return nil
    }
}

extension Array {
    fileprivate func chunked(into size: Int) -> [[Element]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}
