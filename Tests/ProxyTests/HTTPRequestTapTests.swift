import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Policy
import Testing

@testable import Proxy

@Suite struct HTTPRequestTapTests {
    /// A channel with a tap, the requests it reports, and the bytes it passed on.
    private final class Harness {
        let channel = EmbeddedChannel()
        let tap: HTTPRequestTap
        private let seen = NIOLockedValueBox<[String]>([])

        init(rules: HTTPPath.Rules = .standard) throws {
            let seen = self.seen
            tap = HTTPRequestTap(HTTPRequestTap.Watch(pathRules: rules) { method, path in
                seen.withLockedValue { $0.append("\(method) \(path ?? "-")") }
            })
            try channel.pipeline.syncOperations.addHandler(tap)
        }

        var requests: [String] { seen.withLockedValue { $0 } }

        /// Sends `pieces` as separate reads and returns what came out the other side.
        func send(_ pieces: [String]) throws -> String {
            var passed = ""
            for piece in pieces {
                try channel.writeInbound(ByteBuffer(string: piece))
                while let out = try channel.readInbound(as: ByteBuffer.self) { passed += String(buffer: out) }
            }
            return passed
        }
    }

    @Test func requestHeadsAreReportedAndTheBytesPassUnchanged() throws {
        let harness = try Harness()
        let pieces = [
            "GET /orders/17?full=1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /orders HTTP/1.1\r\nHost: a\r\nContent-Le",
            "ngth: 11\r\n\r\nhello",
            " world",
            "PUT //a//b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\n",
            "GET http://elsewhere/x HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
        ]
        #expect(try harness.send(pieces) == pieces.joined())
        // A body that looks like a request line is a body; an absolute-form
        // target has no path of its own.
        #expect(harness.requests == ["GET /orders/17", "POST /orders", "PUT /a/b", "GET -"])
        #expect(harness.tap.isWatching)
    }

    @Test func headsSplitAtEveryByteAreFoundAllTheSame() throws {
        let stream =
            "\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n"
            + "POST /b HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"
            + "PATCH /c HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n3;ext=1\r\nxyz\r\n0\r\nTrailer: t\r\n\r\n"
            + "DELETE /d HTTP/1.1\n\n"
        let harness = try Harness()
        #expect(try harness.send(stream.map { String($0) }) == stream)
        #expect(harness.requests == ["GET /a", "POST /b", "PATCH /c", "DELETE /d"])
    }

    @Test(arguments: [
        "SSH-2.0-OpenSSH_9.2\r\n",
        "\u{16}\u{03}\u{01}\u{02}\u{00}\u{01}\u{00}\u{01}\u{fc}\u{03}\u{03}",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "PING\r\n",
        "GET /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "GET /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ])
    func otherProtocolsEndTheWatchingAndStillPass(opening: String) throws {
        let harness = try Harness()
        let pieces = [opening, "GET /after HTTP/1.1\r\n\r\n"]
        #expect(try harness.send(pieces) == pieces.joined())
        #expect(harness.requests.isEmpty)
        #expect(!harness.tap.isWatching)
    }

    /// A chunk size with a sign ("-a" reads as -10 to `Int(_:radix:)`) once
    /// moved the reader backwards and out of its buffer (found by fuzzing).
    @Test(arguments: ["-a", "+a", " ", "0x10", "g"])
    func aChunkSizeThatIsNotHexDigitsEndsTheWatching(size: String) throws {
        let harness = try Harness()
        let pieces = ["PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\n\u{1e}", "GET /b HTTP/1.1\r\n\r\n"]
        #expect(try harness.send(pieces) == pieces.joined())
        #expect(harness.requests == ["PUT /a"])
        #expect(!harness.tap.isWatching)
    }

    @Test func afterAnUpgradeTheBytesAreAnotherProtocols() throws {
        let harness = try Harness()
        let pieces = [
            "GET /socket HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /not-a-request HTTP/1.1\r\n\r\n",
        ]
        #expect(try harness.send(pieces) == pieces.joined())
        #expect(harness.requests == ["GET /socket"])
        #expect(!harness.tap.isWatching)
    }

    @Test func aHeadLargerThanTheLimitEndsTheWatching() throws {
        let harness = try Harness()
        let huge = "GET /x HTTP/1.1\r\nX-Fill: " + String(repeating: "a", count: HTTPRequestTap.maximumHeadBytes * 2)
        #expect(try harness.send([huge, "\r\n\r\n"]) == huge + "\r\n\r\n")
        #expect(harness.requests.isEmpty)
        #expect(!harness.tap.isWatching)
    }
}
