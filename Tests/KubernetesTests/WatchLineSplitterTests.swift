import Testing
@testable import Kubernetes

@Suite struct WatchLineSplitterTests {
    static func complete(_ text: String) -> WatchLineSplitter.Line { .complete(Array(text.utf8)) }

    @Test func linesSplitAcrossChunksAtEveryByte() {
        let text = "{\"a\":1}\n{\"b\":2}\r\n\n  \n{\"c\":3}\n"
        var splitter = WatchLineSplitter()
        var lines: [WatchLineSplitter.Line] = []
        for byte in text.utf8 {
            lines += splitter.append([byte])
        }
        #expect(lines == [Self.complete("{\"a\":1}"), Self.complete("{\"b\":2}"), Self.complete("{\"c\":3}")], "CRLF ends a line too; blank lines are skipped")
        #expect(splitter.finish() == nil)
    }

    @Test func manyLinesInOneChunk() {
        var splitter = WatchLineSplitter()
        let lines = splitter.append(Array("1\n2\n3\n4".utf8))
        #expect(lines == ["1", "2", "3"].map(Self.complete))
        #expect(splitter.bufferedBytes == 1)
        #expect(splitter.append(Array("\n".utf8)) == [Self.complete("4")])
    }

    @Test func aTruncatedLastLineIsReportedNotDecoded() {
        var splitter = WatchLineSplitter()
        #expect(splitter.append(Array("{\"type\":\"ADDED\"}\n{\"type\":\"MOD".utf8)) == [Self.complete("{\"type\":\"ADDED\"}")])
        #expect(splitter.finish() == 12)
        #expect(splitter.finish() == nil, "finish forgets the rest")
    }

    @Test func anOversizedLineIsDroppedAsItComesAndTheNextOneIsRead() {
        var splitter = WatchLineSplitter(maximumLineBytes: 16)
        var lines: [WatchLineSplitter.Line] = []
        lines += splitter.append(Array("{\"ok\":1}\n0123456789".utf8))
        #expect(splitter.bufferedBytes == 10)
        for _ in 0..<100 {
            lines += splitter.append(Array("0123456789".utf8))
            #expect(splitter.bufferedBytes <= 16, "never holds more than the limit")
        }
        lines += splitter.append(Array("xyz\n{\"ok\":2}\n".utf8))
        #expect(lines == [Self.complete("{\"ok\":1}"), .oversized(byteCount: 1013), Self.complete("{\"ok\":2}")])
    }

    @Test func aLineOfExactlyTheLimitIsKept() {
        var splitter = WatchLineSplitter(maximumLineBytes: 4)
        #expect(splitter.append(Array("abcd\nabcde\n".utf8)) == [Self.complete("abcd"), .oversized(byteCount: 5)])
    }

    @Test func anOversizedUnfinishedLineAtTheEnd() {
        var splitter = WatchLineSplitter(maximumLineBytes: 4)
        #expect(splitter.append(Array("abcdefgh".utf8)) == [])
        #expect(splitter.finish() == 8)
    }
}
