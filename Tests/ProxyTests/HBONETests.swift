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

@Suite struct TunnelStreamBridgeTests {
    private func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(TunnelStreamBridge())
        try channel.pipeline.syncOperations.addHandler(EventRecorder())
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    @Test func dataBecomesBytesAndEndStreamBecomesInputClosed() throws {
        let channel = try makeChannel()
        try channel.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: "hello")))))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "hello"))
        try channel.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: "end")), endStream: true)))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "end"))
        let recorder = try channel.pipeline.syncOperations.handler(type: EventRecorder.self)
        #expect(recorder.inputClosedEvents == 1)
        try channel.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: [:], endStream: true)))
        #expect(recorder.inputClosedEvents == 1, "a second end of stream is not news")
    }

    @Test func outputCloseIsEndStreamAfterTheData() throws {
        let channel = try makeChannel()
        try channel.writeOutbound(ByteBuffer(string: "payload"))
        let drained = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(ByteBuffer(), promise: drained)
        #expect(throws: Never.self) { try drained.futureResult.wait() }
        channel.close(mode: .output, promise: nil)
        guard case .data(let first) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self), case .byteBuffer(let bytes) = first.data else {
            Issue.record("the payload did not go out as DATA")
            return
        }
        #expect(bytes == ByteBuffer(string: "payload") && !first.endStream)
        guard case .data(let last) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            Issue.record("no END_STREAM")
            return
        }
        #expect(last.endStream)
        #expect(try channel.readOutbound(as: HTTP2Frame.FramePayload.self) == nil, "the empty drain write sends no frame")
        #expect(channel.isActive, "half-closed, not closed")
    }

    /// The DATA frames a channel wrote, as (bytes, END_STREAM).
    private func dataFrames(_ channel: EmbeddedChannel) throws -> [(String, Bool)] {
        var frames: [(String, Bool)] = []
        while let payload = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) {
            guard case .data(let data) = payload, case .byteBuffer(let bytes) = data.data else {
                Issue.record("not a DATA frame: \(payload)")
                continue
            }
            frames.append((String(buffer: bytes), data.endStream))
        }
        return frames
    }

    @Test func smallWritesOfOneFlushLeaveAsOneFrame() throws {
        let channel = try makeChannel()
        let head = channel.eventLoop.makePromise(of: Void.self)
        let body = channel.eventLoop.makePromise(of: Void.self)
        channel.write(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), promise: head)
        channel.write(ByteBuffer(string: "ok\n"), promise: body)
        #expect(try dataFrames(channel).isEmpty, "nothing leaves before the flush")
        channel.flush()
        let frames = try dataFrames(channel)
        #expect(frames.count == 1)
        #expect(frames.first?.0 == "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        #expect(throws: Never.self) { try head.futureResult.wait() }
        #expect(throws: Never.self) { try body.futureResult.wait() }
    }

    @Test func aLargeWriteIsNotCopiedAndOrderIsKept() throws {
        let channel = try makeChannel()
        let large = String(repeating: "x", count: TunnelStreamBridge.gatherLimit)
        channel.write(ByteBuffer(string: "small"), promise: nil)
        channel.write(ByteBuffer(string: large), promise: nil)
        channel.write(ByteBuffer(string: "tail"), promise: nil)
        channel.flush()
        let frames = try dataFrames(channel)
        #expect(frames.map(\.0) == ["small", large, "tail"])
    }

    @Test func endingOutputSendsWhatIsGatheredWithEndStream() throws {
        let channel = try makeChannel()
        channel.write(ByteBuffer(string: "last words"), promise: nil)
        let ended = channel.eventLoop.makePromise(of: Void.self)
        channel.close(mode: .output, promise: ended)
        #expect(throws: Never.self) { try ended.futureResult.wait() }
        let frames = try dataFrames(channel)
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
    }
}

private final class EventRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var inputClosedEvents = 0

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosedEvents += 1
        }
        context.fireUserInboundEventTriggered(event)
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
