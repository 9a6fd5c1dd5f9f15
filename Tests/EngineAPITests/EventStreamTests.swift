import Testing

@testable import EngineAPI

@Suite struct EventDecodingTests {
    @Test func recordedLibpodEventsDecode() throws {
        let events = try decodeAll(try Recorded.bytes("libpod-events.jsonl"))
        #expect(events.count == 73)
        let first = try #require(events.first)
        #expect(first.kind == .container && first.action == "create" && first.id == Recorded.ordersInfra)
        #expect(first.attributes["podId"] == Recorded.ordersPod)
        #expect(first.attributes["istio.io/dataplane-mode"] == "ambient", "a container's labels come as attributes")
        #expect(first.affectedIDs == [Recorded.ordersInfra, Recorded.ordersPod])
        #expect(events.contains { $0.kind == .pod && $0.action == "remove" && $0.id == Recorded.reviewsPod })
        #expect(events.contains { $0.kind == .container && $0.action == "died" })
        #expect(events.contains { $0.kind == .other("image") && !$0.changesWorkloads }, "image pulls change no workload")
    }

    @Test func recordedDockerEventsUseDockersDie() throws {
        let events = try decodeAll(try Recorded.bytes("docker-events.jsonl"))
        #expect(events.count == 73)
        let dies = events.filter { $0.action == "die" }
        #expect(!dies.isEmpty && dies.allSatisfy(\.changesWorkloads))
        #expect(!events.contains { $0.action == "died" })
    }

    @Test func whichEventsChangeWorkloads() {
        #expect(EngineEvent(kind: .container, action: "start", id: "a").changesWorkloads)
        #expect(EngineEvent(kind: .container, action: "destroy", id: "a").changesWorkloads)
        #expect(EngineEvent(kind: .pod, action: "create", id: "p").changesWorkloads)
        #expect(EngineEvent(kind: .network, action: "connect", id: "n", attributes: ["container": "a"]).changesWorkloads)
        #expect(!EngineEvent(kind: .container, action: "exec_start: sh", id: "a").changesWorkloads)
        #expect(!EngineEvent(kind: .container, action: "health_status: healthy", id: "a").changesWorkloads)
        #expect(!EngineEvent(kind: .container, action: "attach", id: "a").changesWorkloads)
        #expect(!EngineEvent(kind: .other("volume"), action: "create", id: "v").changesWorkloads)
        #expect(EngineEvent(kind: .network, action: "connect", id: "n", attributes: ["container": "a"]).affectedIDs == ["n", "a"])
    }

    @Test func unknownTypesAndOldShapesDecode() throws {
        let future = try EngineEvent.decode(line: Array(#"{"Type":"secret","Action":"create","Actor":{"ID":"s1","Attributes":{"n":1,"name":"x"}}}"#.utf8))
        #expect(future.kind == .other("secret"))
        #expect(future.attributes == ["name": "x"], "a non-string attribute is left out, not fatal")
        let old = try EngineEvent.decode(line: Array(#"{"status":"start","id":"abc","from":"busybox"}"#.utf8))
        #expect(old.kind == .other("") && old.action == "start" && old.id == "abc")
        let empty = try EngineEvent.decode(line: Array("{}".utf8))
        #expect(empty.kind == .other("") && empty.id == "" && empty.affectedIDs.isEmpty)
    }

    @Test func aLineThatIsNotAnEventIsAnError() {
        for line in ["not json", "[1,2]", "\"text\"", #"{"Type":5}"#, "{\"Type\":\"container\""] {
            #expect(throws: EventStreamError.self, "\(line)") { try EngineEvent.decode(line: Array(line.utf8)) }
        }
        do {
            _ = try EngineEvent.decode(line: Array("oops\u{1b}[31m".utf8))
            Issue.record("decoded")
        } catch {
            #expect(!error.description.contains("\u{1b}"), "the excerpt is escaped: \(error)")
            #expect(error.description.contains("oops"))
        }
    }

    func decodeAll(_ bytes: [UInt8]) throws -> [EngineEvent] {
        var splitter = EventLineSplitter()
        let lines = try splitter.append(bytes)
        try splitter.finish()
        return try lines.map { line throws(EventStreamError) in try EngineEvent.decode(line: line) }
    }
}

@Suite struct EventLineSplitterTests {
    @Test func linesSplitAcrossChunksAtEveryBoundary() throws {
        let bytes = Array(try Recorded.bytes("libpod-events.jsonl").prefix(2000))
        var whole = EventLineSplitter()
        let expected = try whole.append(bytes)
        #expect(expected.count >= 3)
        let lastNewline = try #require(bytes.lastIndex(of: UInt8(ascii: "\n")))
        let leftover = bytes.count - lastNewline - 1
        #expect(leftover > 0, "the prefix ends inside a line")
        for cut in 0...bytes.count {
            var splitter = EventLineSplitter()
            var lines = try splitter.append(bytes[..<cut])
            lines += try splitter.append(bytes[cut...])
            #expect(lines == expected, "cut at \(cut)")
            #expect(throws: EventStreamError.truncatedLine(bytes: leftover)) { try splitter.finish() }
        }
    }

    @Test func byteByByteIsTheSameAsAtOnce() throws {
        let bytes = try Recorded.bytes("docker-events.jsonl")
        var whole = EventLineSplitter()
        let expected = try whole.append(bytes)
        var splitter = EventLineSplitter()
        var lines: [[UInt8]] = []
        for byte in bytes { lines += try splitter.append([byte]) }
        try splitter.finish()
        #expect(lines == expected)
        #expect(lines.count == 73)
    }

    @Test func crlfAndBlankLines() throws {
        var splitter = EventLineSplitter()
        let lines = try splitter.append(Array("{\"a\":1}\r\n\r\n  \n{\"b\":2}\n".utf8))
        #expect(lines == [Array("{\"a\":1}".utf8), Array("{\"b\":2}".utf8)])
        try splitter.finish()
    }

    @Test func aTruncatedFinalLineIsAnError() throws {
        var splitter = EventLineSplitter()
        #expect(try splitter.append(Array("{\"a\":1}\n{\"Type\":\"cont".utf8)).count == 1)
        #expect(throws: EventStreamError.truncatedLine(bytes: 13)) { try splitter.finish() }
        #expect(throws: EventStreamError.truncatedLine(bytes: 13), "a failed splitter stays failed") {
            _ = try splitter.append(Array("x\n".utf8))
        }
    }

    @Test func trailingWhitespaceIsNoTruncation() throws {
        var splitter = EventLineSplitter()
        _ = try splitter.append(Array("{\"a\":1}\n \r".utf8))
        try splitter.finish()
    }

    @Test func anOversizedLineIsBoundedAndFails() throws {
        var splitter = EventLineSplitter(maxLineBytes: 16)
        #expect(try splitter.append(Array("0123456789abcdef\n".utf8)).count == 1, "exactly the limit is allowed")
        _ = try splitter.append(Array("0123456789".utf8))
        #expect(throws: EventStreamError.lineTooLong(limit: 16)) { _ = try splitter.append(Array("abcdefg".utf8)) }
        #expect(throws: EventStreamError.lineTooLong(limit: 16)) { _ = try splitter.append(Array("\n".utf8)) }

        var single = EventLineSplitter(maxLineBytes: 16)
        #expect(throws: EventStreamError.lineTooLong(limit: 16), "a long line inside one chunk") {
            _ = try single.append(Array("{}\n0123456789abcdefg\n".utf8))
        }
    }

    @Test func errorsSayWhatHappened() {
        #expect(EventStreamError.truncatedLine(bytes: 5).description.contains("ended in the middle of an event"))
        #expect(EventStreamError.lineTooLong(limit: 16).description.contains("longer than 16 bytes"))
    }
}
