import Logging
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing
@testable import Proxy

@Suite struct HBONERequestTests {
    @Test func connectToAnIPv4OrIPv6LiteralIsATarget() throws {
        let v4 = try HBONE.target(of: [":method": "CONNECT", ":authority": "10.77.0.2:8080"]).get()
        #expect(v4 == (try SocketAddress(ipAddress: "10.77.0.2", port: 8080)))
        let v6 = try HBONE.target(of: [":method": "CONNECT", ":authority": "[fd77::2]:443"]).get()
        #expect(v6 == (try SocketAddress(ipAddress: "fd77::2", port: 443)))
    }

    @Test func theRequestWeSendIsOneWeAccept() throws {
        for destination in [try SocketAddress(ipAddress: "10.77.1.2", port: 1), try SocketAddress(ipAddress: "fd77::1:2", port: 65535)] {
            #expect(try HBONE.target(of: HBONE.connectRequest(to: destination)).get() == destination)
        }
    }

    @Test(arguments: [
        ([":method": "GET", ":authority": "10.77.0.2:80", ":path": "/", ":scheme": "https"], "not CONNECT"),
        ([":authority": "10.77.0.2:80"], "no :method"),
        ([":method": "CONNECT"], "no :authority"),
        ([":method": "CONNECT", ":authority": "10.77.0.2:80", ":protocol": "websocket"], "extended CONNECT"),
        ([":method": "CONNECT", ":authority": "orders.shop:8080"], "not IP:PORT"),
    ] as [([String: String], String)])
    func otherRequestsAreBadRequests(fields: [String: String], reason: String) {
        let headers = HPACKHeaders(fields.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        guard case .failure(let refusal) = HBONE.target(of: headers) else {
            Issue.record("accepted \(fields)")
            return
        }
        #expect(refusal.status == .badRequest)
        #expect(refusal.reason.contains(reason))
    }

    @Test(arguments: [
        "10.77.0.2", "10.77.0.2:", "10.77.0.2:0", "10.77.0.2:65536", "10.77.0.2:+80", "10.77.0.2:8080x",
        "fd77::2:80", "[fd77::2]", "[fd77::2]80", "[10.77.0.2]:80", ":80", "[]:80", "10.77.0.2:080000",
        "localhost:80", "10.77.0.2:٣", " 10.77.0.2:80",
    ])
    func malformedAuthoritiesAreRefused(authority: String) {
        #expect(HBONE.parseAuthority(authority) == nil)
    }
}

@Suite struct TunnelPoolStateTests {
    @Test func streamsPackOntoOneConnectionUntilItIsFull() {
        var pool = TunnelPoolState<String>(maximumStreamsPerConnection: 3)
        #expect(pool.acquire("a") == .open(0))
        #expect(pool.acquire("a") == .wait(0), "a burst waits for the connection being made")
        #expect(pool.acquire("a") == .wait(0))
        #expect(pool.acquire("a") == .open(1), "the fourth stream needs a second connection")
        pool.connected(0)
        pool.connected(1)
        #expect(pool.release(0) == .none)
        #expect(pool.acquire("a") == .use(0), "the busiest connection with room is preferred")
        #expect(pool.acquire("b") == .open(2), "keys never share connections")
        #expect(pool.connectionCount(for: "a") == 2)
    }

    @Test func anIdleConnectionClosesOnlyIfNothingUsedItSince() {
        var pool = TunnelPoolState<String>(maximumStreamsPerConnection: 10)
        _ = pool.acquire("a")
        pool.connected(0)
        guard case .startIdleTimer(let id, let first) = pool.release(0) else {
            Issue.record("no idle timer for an idle connection")
            return
        }
        #expect(pool.acquire("a") == .use(id))
        guard case .startIdleTimer(_, let second) = pool.release(0) else {
            Issue.record("no idle timer after the second stream")
            return
        }
        let staleClosed = pool.idleTimerFired(id, generation: first)
        #expect(!staleClosed, "a timer from an earlier idle period is stale")
        let currentClosed = pool.idleTimerFired(id, generation: second)
        #expect(currentClosed)
        #expect(pool.connectionCount(for: "a") == 0)
        #expect(pool.acquire("a") == .open(1))
    }

    @Test func aBusyConnectionIsNotClosedByItsTimer() {
        var pool = TunnelPoolState<String>(maximumStreamsPerConnection: 10)
        _ = pool.acquire("a")
        pool.connected(0)
        guard case .startIdleTimer(_, let generation) = pool.release(0) else {
            Issue.record("no idle timer")
            return
        }
        _ = pool.acquire("a")
        let closed = pool.idleTimerFired(0, generation: generation)
        #expect(!closed)
        #expect(pool.connectionCount(for: "a") == 1)
    }

    @Test func aRemovedConnectionIsNeverChosenAgain() {
        var pool = TunnelPoolState<String>(maximumStreamsPerConnection: 10)
        _ = pool.acquire("a")
        pool.remove(0)
        #expect(pool.release(0) == .none, "releasing a slot of a failed connection is harmless")
        #expect(pool.acquire("a") == .open(1))
    }
}

/// A tunnel connection's stream table on an in-memory channel, without the
/// HTTP/2 codec: frames go in and come out as `HTTP2Frame`s.
private final class StreamTableHarness {
    let connection = EmbeddedChannel()
    private let opened = OpenedStreams()

    private final class OpenedStreams {
        var streams: [TunnelStreamChannel] = []
    }

    init() throws {
        let opened = self.opened
        try connection.pipeline.syncOperations.addHandler(TunnelStreams(role: .server { stream, _ in opened.streams.append(stream) }))
        try connection.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 15008)).wait()
        let raise = try #require(try connection.readOutbound(as: HTTP2Frame.self))
        guard case .windowUpdate(let increment) = raise.payload, raise.streamID == .rootStream else {
            Issue.record("the connection did not start by raising its window: \(raise)")
            return
        }
        #expect(increment == HBONE.connectionWindow - 65_535)
    }

    /// A stream the peer opens with a CONNECT, with a recorder behind it.
    func open(_ id: Int) throws -> (TunnelStreamChannel, EventRecorder) {
        try connection.writeInbound(HTTP2Frame(streamID: HTTP2StreamID(id), payload: .headers(.init(headers: [":method": "CONNECT", ":authority": "10.77.0.2:8080"]))))
        let stream = try #require(opened.streams.last)
        #expect(stream.streamID == HTTP2StreamID(id))
        let recorder = EventRecorder()
        try stream.pipeline.syncOperations.addHandler(recorder)
        return (stream, recorder)
    }

    func deliver(_ payload: HTTP2Frame.FramePayload, on id: Int) throws {
        try connection.writeInbound(HTTP2Frame(streamID: HTTP2StreamID(id), payload: payload))
    }

    func data(_ text: String, endStream: Bool = false) -> HTTP2Frame.FramePayload {
        .data(.init(data: .byteBuffer(ByteBuffer(string: text)), endStream: endStream))
    }

    /// The frames the connection wrote since the last call.
    func written() throws -> [HTTP2Frame] {
        var frames: [HTTP2Frame] = []
        while let frame = try connection.readOutbound(as: HTTP2Frame.self) { frames.append(frame) }
        return frames
    }

    /// The DATA frames written, as (bytes, END_STREAM).
    func dataFrames() throws -> [(String, Bool)] {
        try written().compactMap { frame in
            guard case .data(let data) = frame.payload, case .byteBuffer(let bytes) = data.data else {
                Issue.record("not a DATA frame: \(frame)")
                return nil
            }
            return (String(buffer: bytes), data.endStream)
        }
    }
}

@Suite struct TunnelStreamChannelTests {
    @Test func dataBecomesBytesAndEndStreamBecomesInputClosed() throws {
        let harness = try StreamTableHarness()
        let (stream, recorder) = try harness.open(1)
        try harness.deliver(harness.data("hello"), on: 1)
        #expect(recorder.received.isEmpty, "nothing is read before the stream starts reading")
        try stream.startReading()
        #expect(recorder.received == ["hello"])
        try harness.deliver(harness.data("end", endStream: true), on: 1)
        #expect(recorder.received == ["hello", "end"])
        #expect(recorder.inputClosedEvents == 1)
        try harness.deliver(.headers(.init(headers: [:], endStream: true)), on: 1)
        #expect(recorder.inputClosedEvents == 1, "a second end of stream is not news")
    }

    /// A splice flushes the workload's socket on each read-complete: the
    /// frames of one TLS read must reach it as one batch, not one flush each.
    @Test func theFramesOfOneReadAreOneBatchAndABatchAlwaysEnds() throws {
        let harness = try StreamTableHarness()
        let (stream, recorder) = try harness.open(1)
        try stream.startReading()
        for text in ["a", "b", "c"] {
            harness.connection.pipeline.syncOperations.fireChannelRead(NIOAny(HTTP2Frame(streamID: 1, payload: harness.data(text))))
        }
        #expect(recorder.received == ["a", "b", "c"], "bytes are handed over as they arrive")
        #expect(recorder.readCompletes == 0)
        harness.connection.pipeline.syncOperations.fireChannelReadComplete()
        #expect(recorder.readCompletes == 1)

        // Frames with no read-complete after them (TLS can hand records over
        // outside a socket read): the batch ends with the tick all the same.
        harness.connection.pipeline.syncOperations.fireChannelRead(NIOAny(HTTP2Frame(streamID: 1, payload: harness.data("d"))))
        #expect(recorder.readCompletes == 1)
        harness.connection.embeddedEventLoop.run()
        #expect(recorder.readCompletes == 2)

        // The bytes before an end of stream are completed before it.
        harness.connection.pipeline.syncOperations.fireChannelRead(NIOAny(HTTP2Frame(streamID: 1, payload: harness.data("e", endStream: true))))
        #expect(recorder.readCompletes == 3)
        #expect(recorder.inputClosedEvents == 1)
    }

    /// A workload that answers and closes at once reaches the peer as DATA,
    /// then RST_STREAM, in one read: the DATA's read-complete (the splice's
    /// flush) must come before the reset's error, which closes the splice.
    @Test func bytesBeforeAResetAreCompletedBeforeTheError() throws {
        let harness = try StreamTableHarness()
        let (stream, recorder) = try harness.open(1)
        try stream.startReading()
        harness.connection.pipeline.syncOperations.fireChannelRead(NIOAny(HTTP2Frame(streamID: 1, payload: harness.data("answer"))))
        harness.connection.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: HTTP2StreamID(1), reason: .cancel))
        #expect(recorder.received == ["answer"])
        #expect(recorder.readCompletesBeforeError == 1)
        #expect(recorder.readCompletes == 1, "one read-complete, not a second at the end of the read")
        harness.connection.pipeline.syncOperations.fireChannelReadComplete()
        harness.connection.embeddedEventLoop.run()
        #expect(recorder.readCompletes == 1)
    }

    @Test func theAnswerIsAHeadersFrameOnTheStream() throws {
        let harness = try StreamTableHarness()
        let (stream, _) = try harness.open(3)
        stream.respond(.ok, endStream: false)
        let frames = try harness.written()
        guard frames.count == 1, case .headers(let headers) = frames[0].payload else {
            Issue.record("expected one HEADERS frame, got \(frames)")
            return
        }
        #expect(frames[0].streamID == HTTP2StreamID(3) && !headers.endStream)
        #expect(HBONE.status(of: headers.headers) == 200)
    }

    @Test func outputCloseIsEndStreamAfterTheData() throws {
        let harness = try StreamTableHarness()
        let (stream, _) = try harness.open(1)
        stream.writeAndFlush(ByteBuffer(string: "payload"), promise: nil)
        let drained = stream.eventLoop.makePromise(of: Void.self)
        stream.writeAndFlush(ByteBuffer(), promise: drained)
        #expect(throws: Never.self) { try drained.futureResult.wait() }
        stream.close(mode: .output, promise: nil)
        let frames = try harness.dataFrames()
        #expect(frames.map(\.0) == ["payload", ""], "the empty drain write sends no frame")
        #expect(frames.map(\.1) == [false, true])
        #expect(stream.isActive, "half-closed, not closed")
    }

    @Test func smallWritesOfOneFlushLeaveAsOneFrame() throws {
        let harness = try StreamTableHarness()
        let (stream, _) = try harness.open(1)
        let head = stream.eventLoop.makePromise(of: Void.self)
        let body = stream.eventLoop.makePromise(of: Void.self)
        stream.write(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), promise: head)
        stream.write(ByteBuffer(string: "ok\n"), promise: body)
        #expect(try harness.dataFrames().isEmpty, "nothing leaves before the flush")
        stream.flush()
        let frames = try harness.dataFrames()
        #expect(frames.count == 1)
        #expect(frames.first?.0 == "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        #expect(throws: Never.self) { try head.futureResult.wait() }
        #expect(throws: Never.self) { try body.futureResult.wait() }
    }

    @Test func aLargeWriteIsNotCopiedAndOrderIsKept() throws {
        let harness = try StreamTableHarness()
        let (stream, _) = try harness.open(1)
        let large = String(repeating: "x", count: TunnelStreamChannel.gatherLimit)
        stream.write(ByteBuffer(string: "small"), promise: nil)
        stream.write(ByteBuffer(string: large), promise: nil)
        stream.write(ByteBuffer(string: "tail"), promise: nil)
        stream.flush()
        #expect(try harness.dataFrames().map(\.0) == ["small", large, "tail"])
    }

    @Test func endingOutputSendsWhatIsGatheredWithEndStream() throws {
        let harness = try StreamTableHarness()
        let (stream, _) = try harness.open(1)
        stream.write(ByteBuffer(string: "last words"), promise: nil)
        let ended = stream.eventLoop.makePromise(of: Void.self)
        stream.close(mode: .output, promise: ended)
        #expect(throws: Never.self) { try ended.futureResult.wait() }
        let frames = try harness.dataFrames()
        #expect(frames.count == 1)
        #expect(frames.first?.0 == "last words" && frames.first?.1 == true)
    }

    @Test func closingAfterBothEndsWaitsButAnAbortResets() throws {
        var state = TunnelStreamState()
        #expect(state.closeRequested() == .reset)
        let first = state.endOutput()
        let second = state.endOutput()
        #expect(first && !second, "END_STREAM is sent once")
        #expect(state.closeRequested() == .reset, "the peer may still be sending")
        let peerEnded = state.peerEnded()
        #expect(peerEnded)
        #expect(state.closeRequested() == .waitForStreamClose)

        let harness = try StreamTableHarness()
        let (stream, recorder) = try harness.open(1)
        stream.close(promise: nil)
        let frames = try harness.written()
        guard frames.count == 1, case .rstStream(let code) = frames[0].payload else {
            Issue.record("an abort should reset the stream, got \(frames)")
            return
        }
        #expect(code == .cancel)
        #expect(!stream.isActive && recorder.inactive)
    }

    /// The peer's window is what the reader has not taken: a stream whose
    /// reader stopped gets no WINDOW_UPDATE, however much arrived, and gets
    /// it once the bytes are read.
    @Test func creditFollowsTheReaderNotTheArrival() throws {
        let harness = try StreamTableHarness()
        let (stream, recorder) = try harness.open(1)
        let chunk = String(repeating: "z", count: 1024 * 1024)
        for _ in 0..<3 { try harness.deliver(harness.data(chunk), on: 1) }
        #expect(try harness.written().isEmpty, "3 MiB unread: no credit")
        try stream.startReading()
        #expect(recorder.received.count == 3)
        let updates = try harness.written().compactMap { frame -> (HTTP2StreamID, Int)? in
            guard case .windowUpdate(let increment) = frame.payload else { return nil }
            return (frame.streamID, increment)
        }
        #expect(updates.map(\.0) == [HTTP2StreamID(1)])
        #expect(updates.map(\.1) == [3 * 1024 * 1024])
    }

    @Test func theConnectionWindowIsRefilledFromTheCodecsCountNotFromReads() throws {
        let harness = try StreamTableHarness()
        harness.connection.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: .rootStream, inboundWindowSize: 12 * 1024 * 1024, outboundWindowSize: 65_535))
        #expect(try harness.written().isEmpty, "three quarters left: nothing to refill")
        harness.connection.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: .rootStream, inboundWindowSize: 1024 * 1024, outboundWindowSize: 65_535))
        let frames = try harness.written()
        guard frames.count == 1, case .windowUpdate(let increment) = frames[0].payload else {
            Issue.record("expected one WINDOW_UPDATE, got \(frames)")
            return
        }
        #expect(frames[0].streamID == .rootStream && increment == HBONE.connectionWindow - 1024 * 1024)
    }

    @Test func aCleanCloseDeliversWhatArrivedAndAResetIsAnError() throws {
        let harness = try StreamTableHarness()
        let (clean, cleanRecorder) = try harness.open(1)
        clean.close(mode: .output, promise: nil)
        try harness.deliver(harness.data("last", endStream: true), on: 1)
        harness.connection.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: HTTP2StreamID(1), reason: nil))
        #expect(cleanRecorder.received == ["last"] && cleanRecorder.inputClosedEvents == 1)
        #expect(cleanRecorder.errors.isEmpty && !clean.isActive)

        let (reset, resetRecorder) = try harness.open(3)
        harness.connection.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: HTTP2StreamID(3), reason: .cancel))
        #expect(resetRecorder.errors.count == 1 && !reset.isActive)
        harness.connection.embeddedEventLoop.run()
        #expect(throws: Never.self) { try reset.closeFuture.wait() }
    }

    @Test func aStreamStopsBeingWritableWhileTheConnectionHoldsItsBytes() throws {
        let harness = try StreamTableHarness()
        let (stream, recorder) = try harness.open(1)
        stream.write(ByteBuffer(repeating: 0x61, count: HBONE.streamHighWatermark + 1), promise: nil)
        #expect(!stream.isWritable && recorder.writabilityChanges == 1)
        stream.flush()
        #expect(stream.isWritable && recorder.writabilityChanges == 2, "written to the connection: writable again")
    }

    @Test func theConnectionClosingClosesItsStreams() throws {
        let harness = try StreamTableHarness()
        let (first, _) = try harness.open(1)
        let (second, _) = try harness.open(3)
        _ = try harness.connection.finish(acceptAlreadyClosed: true)
        #expect(!first.isActive && !second.isActive)
    }
}

/// What a future on an embedded loop came to, if anything yet.
private final class Outcome<Value> {
    var result: Result<Value, Error>?

    init(_ future: EventLoopFuture<Value>) {
        future.assumeIsolated().whenComplete { [self] in result = $0 }
    }
}

@Suite struct TunnelStreamsClientTests {
    private func makeClient() throws -> (EmbeddedChannel, TunnelStreams) {
        let connection = EmbeddedChannel()
        let streams = TunnelStreams(role: .client)
        try connection.pipeline.syncOperations.addHandler(streams)
        try connection.connect(to: SocketAddress(ipAddress: "10.77.0.2", port: 15008)).wait()
        _ = try connection.readOutbound(as: HTTP2Frame.self)  // the connection window's raise
        return (connection, streams)
    }

    private static let destination = try! SocketAddress(ipAddress: "10.77.0.2", port: 8080)

    @Test func aStreamOpensWithAConnectAndIsHandedOverOnlyOn200() throws {
        let (connection, streams) = try makeClient()
        let opened = streams.openStream(to: Self.destination, timeout: .seconds(5), eventLoop: connection.eventLoop)
        let request = try #require(try connection.readOutbound(as: HTTP2Frame.self))
        guard case .headers(let headers) = request.payload else {
            Issue.record("expected the CONNECT, got \(request)")
            return
        }
        #expect(request.streamID == HTTP2StreamID(1) && !headers.endStream)
        #expect(headers.headers.first(name: ":method") == "CONNECT" && headers.headers.first(name: ":authority") == "10.77.0.2:8080")
        let outcome = Outcome(opened)
        #expect(outcome.result == nil)
        try connection.writeInbound(HTTP2Frame(streamID: request.streamID, payload: .headers(.init(headers: HBONE.response(status: .ok)))))
        #expect(try opened.wait().isActive)
        _ = streams.openStream(to: Self.destination, timeout: .seconds(5), eventLoop: connection.eventLoop)
        #expect(try connection.readOutbound(as: HTTP2Frame.self)?.streamID == HTTP2StreamID(3), "client streams are odd and rising")
    }

    @Test func aRefusalOrNoAnswerFailsTheStream() throws {
        let (connection, streams) = try makeClient()
        let refused = streams.openStream(to: Self.destination, timeout: .seconds(5), eventLoop: connection.eventLoop)
        let silent = streams.openStream(to: Self.destination, timeout: .seconds(5), eventLoop: connection.eventLoop)
        try connection.writeInbound(HTTP2Frame(streamID: HTTP2StreamID(1), payload: .headers(.init(headers: HBONE.response(status: .forbidden), endStream: true))))
        #expect(throws: TunnelError.refused(destination: "10.77.0.2:8080", status: 403)) { try refused.wait() }
        connection.embeddedEventLoop.advanceTime(by: .seconds(4))
        let silentOutcome = Outcome(silent)
        #expect(silentOutcome.result == nil, "still within its time")
        connection.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(throws: TunnelError.noResponse(destination: "10.77.0.2:8080", after: .seconds(5))) { try silent.wait() }
        let resets = try (0..<4).compactMap { _ in try connection.readOutbound(as: HTTP2Frame.self) }.filter {
            if case .rstStream = $0.payload { return true } else { return false }
        }
        #expect(resets.map(\.streamID) == [HTTP2StreamID(1), HTTP2StreamID(3)], "the refused stream is let go, the silent one reset")
    }

    @Test func afterGoAwayNoStreamOpensAndThePoolIsTold() throws {
        let (connection, streams) = try makeClient()
        var told = 0
        streams.onGoAway = { told += 1 }
        try connection.writeInbound(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .rootStream, errorCode: .noError, opaqueData: nil)))
        try connection.writeInbound(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .rootStream, errorCode: .noError, opaqueData: nil)))
        #expect(told == 1)
        let opened = streams.openStream(to: Self.destination, timeout: .seconds(5), eventLoop: connection.eventLoop)
        #expect(throws: TunnelError.streamClosedBeforeResponse(destination: "10.77.0.2:8080")) { try opened.wait() }
    }
}

private final class EventRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var received: [String] = []
    var readCompletes = 0
    var readCompletesBeforeError: Int?
    var inputClosedEvents = 0
    var errors: [Error] = []
    var writabilityChanges = 0
    var inactive = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received.append(String(buffer: unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readCompletes += 1
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosedEvents += 1
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        errors.append(error)
        readCompletesBeforeError = readCompletes
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writabilityChanges += 1
    }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
    }
}

@Suite struct HTTP2InputChunkerTests {
    @Test func bigReadsArriveAsRecordSizedPiecesInOrder() throws {
        let channel = EmbeddedChannel(handler: HTTP2InputChunker())
        let input = ByteBuffer(bytes: (0..<(HTTP2InputChunker.pieceSize * 3 + 100)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try channel.writeInbound(input)
        var pieces: [ByteBuffer] = []
        while let piece = try channel.readInbound(as: ByteBuffer.self) {
            pieces.append(piece)
        }
        #expect(pieces.map(\.readableBytes) == [16384, 16384, 16384, 100])
        var joined = ByteBuffer()
        for var piece in pieces { joined.writeBuffer(&piece) }
        #expect(joined == input)
    }

    @Test func smallReadsPassUntouched() throws {
        let channel = EmbeddedChannel(handler: HTTP2InputChunker())
        try channel.writeInbound(ByteBuffer(string: "PRI * HTTP/2.0"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "PRI * HTTP/2.0"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
    }
}

@Suite struct TunnelConnectionMonitorTests {
    func makeChannel(idleTimeout: TimeAmount) throws -> (EmbeddedChannel, TunnelConnectionMonitor) {
        let monitor = TunnelConnectionMonitor(idleTimeout: idleTimeout, logger: Logger(label: "test"), metrics: TunnelServerMetrics())
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(monitor)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 15008)).wait()
        return (channel, monitor)
    }

    @Test func aConnectionWithOpenStreamsIsNeverClosedAsIdle() throws {
        let (channel, monitor) = try makeChannel(idleTimeout: .seconds(5))
        monitor.streamOpened(HTTP2StreamID(1))
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        #expect(channel.isActive)
        monitor.streamClosed()
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
    }

    @Test func drainSendsGoAwayNamingTheLastStreamAndClosesAfterIt() throws {
        let (channel, monitor) = try makeChannel(idleTimeout: .seconds(5))
        monitor.streamOpened(HTTP2StreamID(1))
        monitor.streamOpened(HTTP2StreamID(3))
        channel.pipeline.fireUserInboundEventTriggered(TunnelConnectionMonitor.Drain())
        let frame = try #require(try channel.readOutbound(as: HTTP2Frame.self))
        guard case .goAway(let last, let code, _) = frame.payload else {
            Issue.record("expected GOAWAY, got \(frame.payload)")
            return
        }
        #expect(last == HTTP2StreamID(3) && code == .noError)
        monitor.streamClosed()
        #expect(channel.isActive)
        monitor.streamClosed()
        #expect(!channel.isActive)
    }
}
