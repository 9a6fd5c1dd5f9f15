import Testing
@testable import Proxy

/// The first request line of an inspected connection, judged as its bytes arrive.
@Suite struct RequestLineScanTests {
    static func verdicts(_ chunks: [String], maximumLength: Int = 1024) -> [RequestLineScan.Verdict] {
        var scan = RequestLineScan(maximumLength: maximumLength)
        return chunks.map { chunk in Array(chunk.utf8).withUnsafeBytes { scan.next($0) } }
    }

    @Test(arguments: ["GET /\r\n", "GET /\n", "GET /index.html\r\n", "\r\nGET /\r\n"])
    func aLineWithoutAVersionIsRefusedWhenItEnds(line: String) {
        #expect(Self.verdicts([line]) == [.noVersion])
    }

    @Test(arguments: ["hello there\r\n", "DELETE /x HTTP\r\n", "GET\r\n", " /\r\n", "GET  /\r\n"])
    func aLineThatIsNoRequestLineIsMalformed(line: String) {
        #expect(Self.verdicts([line]) == [.malformed])
    }

    @Test func aVersionSplitAcrossReadsIsFound() {
        #expect(Self.verdicts(["GET /orders HT", "TP/1.1\r\nHost: a\r\n\r\n"]) == [.pass, .pass])
        #expect(Self.verdicts(["GET /orders", " HTTP/1.1", "\r\n"]) == [.pass, .pass, .pass])
    }

    @Test func nothingIsJudgedBeforeTheLineEnds() {
        #expect(Self.verdicts(["GET /", "x"]) == [.pass, .pass])
    }

    @Test func onlyTheFirstLineIsRead() {
        // A header or a later line without " HTTP/" is the decoder's business.
        #expect(Self.verdicts(["GET / HTTP/1.1\r\nX: y\r\n\r\nGET /\r\n"]) == [.pass])
        #expect(Self.verdicts(["GET / HTTP/1.1\r\n", "GET /\r\n"]) == [.pass, .pass])
    }

    @Test func anOverlongLineIsLeftToTheDecoder() {
        #expect(Self.verdicts([String(repeating: "a", count: 40), "\r\n"], maximumLength: 16) == [.pass, .pass])
    }
}
