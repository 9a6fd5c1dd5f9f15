import NIOCore
import Policy
import Testing
@testable import Proxy

/// What the agent forwards of an allowed request's head, and how it reads a
/// workload's responses: framed by the request each answers, passed on as
/// received, and refused whole when their framing is in doubt.
@Suite struct HTTP1ReaderTests {
    static func head(_ text: String) throws -> ReceivedRequestHead {
        var reader = HTTP1RequestReader(limit: HTTPHeadSizeLimit())
        var buffer = ByteBuffer(string: text)
        guard case .head(let head)? = try reader.read(&buffer) else {
            throw TestFailure("no head in \(text.debugDescription)")
        }
        return head
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    // MARK: Forwarding a head

    @Test func aHeadNothingChangesIsForwardedAsTheBytesReceived() throws {
        let text = "GET /orders?id=7 HTTP/1.1\r\nHost: orders\r\nX-Mixed-Case:  kept as sent \r\n\r\n"
        let received = try Self.head(text)
        let forwarded = received.forwarded(.init(target: "/orders?id=7", removing: []))
        #expect(String(buffer: forwarded) == text)
        // The very slice received, not a copy.
        #expect(forwarded.withUnsafeReadableBytes { $0.baseAddress } == received.bytes.withUnsafeReadableBytes { $0.baseAddress })
    }

    @Test func aNormalizedTargetGetsANewRequestLineAndTheFieldsAsReceived() throws {
        let received = try Self.head("GET /public/../orders HTTP/1.0\r\nHost: orders\r\nX-A: 1\r\n\r\n")
        let forwarded = received.forwarded(.init(target: "/orders", removing: []))
        #expect(String(buffer: forwarded) == "GET /orders HTTP/1.0\r\nHost: orders\r\nX-A: 1\r\n\r\n")
    }

    @Test func fieldsCarryingAConsumedTokenAreLeftOut() throws {
        let received = try Self.head("GET / HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer x\r\nX-A: 1\r\nauthorization: Bearer y\r\n\r\n")
        let forwarded = received.forwarded(.init(target: "/", removing: ["authorization"]))
        #expect(String(buffer: forwarded) == "GET / HTTP/1.1\r\nHost: o\r\nX-A: 1\r\n\r\n")
    }

    @Test func aRequestLineWithExtraSpacesIsWrittenAnew() throws {
        let received = try Self.head("GET   / HTTP/1.1\r\nHost: o\r\n\r\n")
        #expect(!received.canonicalRequestLine)
        #expect(String(buffer: received.forwarded(.init(target: "/", removing: []))) == "GET / HTTP/1.1\r\nHost: o\r\n\r\n")
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: o\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nHost: o\r\nConnection: keep-alive, Close\r\n\r\n", false),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
    ])
    func keepAliveFollowsTheVersionAndConnection(text: String, keepAlive: Bool) throws {
        #expect(try Self.head(text).isKeepAlive == keepAlive)
    }

    @Test func blankLinesBeforeARequestAreDroppedNotForwarded() throws {
        let received = try Self.head("\r\n\r\nGET / HTTP/1.1\r\nHost: o\r\n\r\n")
        #expect(String(buffer: received.bytes) == "GET / HTTP/1.1\r\nHost: o\r\n\r\n")
    }

    /// A long header line sent a byte at a time is searched once for its
    /// end, not again from its start at every byte.
    @Test func aLineArrivingByteByByteIsSearchedOnce() throws {
        let head = Array("GET / HTTP/1.1\r\nHost: o\r\nX-Long: \(String(repeating: "v", count: 60_000))\r\n\r\n".utf8)
        var reader = HTTP1RequestReader(limit: HTTPHeadSizeLimit())
        var unread = ByteBuffer()
        var heads = 0
        for byte in head {
            unread.writeInteger(byte)
            if case .head? = try reader.read(&unread) { heads += 1 }
        }
        #expect(heads == 1)
        #expect(reader.headBytesSearched <= head.count, "searched \(reader.headBytesSearched) bytes of a \(head.count)-byte head")
    }

    // MARK: Responses

    enum Seen: Equatable {
        case head(Int)
        case payload(String)
        case framing(String)
        case end
        case refused
    }

    /// The responses in `text`, for requests that were HEAD or not in the
    /// order of `heads`, read in pieces of `piece` bytes; the input's end
    /// after them when `closed`.
    static func responses(_ text: String, heads: [Bool] = [false], piece: Int = .max, closed: Bool = false) -> (seen: [Seen], passed: String) {
        var reader = HTTP1ResponseReader()
        for head in heads { reader.expectResponse(toHEAD: head) }
        var seen: [Seen] = []
        var passed = ""
        var unread = ByteBuffer()
        let bytes = Array(text.utf8)
        func drain() throws {
            while let part = try reader.read(&unread) {
                switch part {
                case .head(let status, let bytes):
                    seen.append(.head(status))
                    passed += String(buffer: bytes)
                case .body(.payload(let bytes)):
                    if case .payload(let before)? = seen.last {
                        seen[seen.count - 1] = .payload(before + String(buffer: bytes))
                    } else {
                        seen.append(.payload(String(buffer: bytes)))
                    }
                    passed += String(buffer: bytes)
                case .body(.framing(let bytes)):
                    passed += String(buffer: bytes)
                case .body(.end):
                    seen.append(.end)
                }
            }
        }
        do {
            for start in stride(from: 0, to: bytes.count, by: min(piece, max(bytes.count, 1))) {
                unread.writeBytes(bytes[start..<min(start + piece, bytes.count)])
                try drain()
            }
            if closed, reader.inputEnded() { try drain() }
        } catch {
            seen.append(.refused)
        }
        return (seen, passed)
    }

    static let pipelined = "HTTP/1.1 100 Continue\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        + "HTTP/1.1 204 No Content\r\n\r\n"
        + "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"

    @Test func responsesAreFramedByTheRequestTheyAnswerAndPassAsReceived() {
        let expected: [Seen] = [
            .head(100), .head(200), .payload("hello"), .end, .head(200), .end, .head(204), .end, .head(304), .end,
            .head(200), .payload("abc"), .end,
        ]
        // The second request was a HEAD: its Content-Length announces a body that does not come.
        for piece in [Int.max, 1, 2, 7] {
            let read = Self.responses(Self.pipelined, heads: [false, true, false, false, false], piece: piece)
            #expect(read.seen == expected, "pieces of \(piece)")
            #expect(read.passed == Self.pipelined, "pieces of \(piece)")
        }
    }

    @Test func aResponseWithoutLengthEndsWhenTheWorkloadCloses() {
        let read = Self.responses("HTTP/1.0 200 OK\r\n\r\nall of it", closed: true)
        #expect(read.seen == [.head(200), .payload("all of it"), .end])
        #expect(Self.responses("HTTP/1.0 200 OK\r\n\r\nall of it").seen == [.head(200), .payload("all of it")])
        let notChunkedLast = Self.responses("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", closed: true)
        #expect(notChunkedLast.seen == [.head(200), .payload("zz"), .end])
    }

    @Test func aResponseCutShortByTheCloseHasNoEnd() {
        #expect(Self.responses("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhal", closed: true).seen == [.head(200), .payload("hal")])
    }

    @Test(arguments: [
        ("both Content-Length and Transfer-Encoding", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("two Content-Length fields", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("a signed Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc"),
        ("a bare LF", "HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\nabc"),
        ("obs-fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"),
        ("not a status line", "HTTP/2 200\r\n\r\n"),
        ("a two-digit status", "HTTP/1.1 20 OK\r\n\r\n"),
        ("a bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n"),
        ("CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n"),
    ])
    func responsesWhoseFramingIsInDoubtAreRefused(name: String, text: String) {
        #expect(Self.responses(text).seen.last == .refused, "\(name)")
    }

    @Test func aResponseNoRequestAskedForIsRefused() {
        #expect(Self.responses("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", heads: []).seen == [.refused])
        let twice = Self.responses("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(twice.seen == [.head(200), .end, .refused])
    }

    @Test func aStatusLineWithoutAReasonIsRead() {
        #expect(Self.responses("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").seen == [.head(200), .end])
    }
}
