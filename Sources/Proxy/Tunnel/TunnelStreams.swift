import NIOCore
import NIOHPACK
import NIOHTTP2

/// The streams of one tunnel connection, behind swift-nio-http2's connection
/// handler in frame mode: a table from stream id to its `TunnelStreamChannel`.
///
/// The connection handler keeps every HTTP/2 rule and protection (frame and
/// HPACK decoding, the connection and stream state machines, flow-control
/// accounting, SETTINGS_MAX_CONCURRENT_STREAMS, header list limits, the
/// rapid-reset, CONTINUATION and glitch limits, GOAWAY). This handler only
/// routes each stream's frames to its channel and the channel's output back,
/// and gives flow-control credit back as each stream's reader takes its
/// bytes. See "Streams without a child channel each" in docs/architecture.md.
package final class TunnelStreams: ChannelDuplexHandler {
    package typealias InboundIn = HTTP2Frame
    package typealias InboundOut = HTTP2Frame
    package typealias OutboundIn = HTTP2Frame
    package typealias OutboundOut = HTTP2Frame

    package enum Role {
        /// Opens streams (the pooled connections of `TunnelClient`).
        case client
        /// Takes streams the peer opens; `opened` gets each new stream with its
        /// request (the peer connections of `TunnelServer`).
        case server(opened: (TunnelStreamChannel, HTTP2Frame.FramePayload.Headers) -> Void)

        var parserMode: NIOHTTP2Handler.ParserMode {
            switch self {
            case .client: return .client
            case .server: return .server
            }
        }
    }

    /// A stream this end opened and whose answer has not come.
    private struct Awaiting {
        var promise: EventLoopPromise<Channel>
        var deadline: NIODeadline
        var timeout: TimeAmount
        var destination: SocketAddress
    }

    private let role: Role
    private var context: ChannelHandlerContext?
    private var streams: [HTTP2StreamID: TunnelStreamChannel] = [:]
    private var awaiting: [HTTP2StreamID: Awaiting] = [:]
    /// One timer for every stream waiting for its answer, set for the earliest
    /// deadline: a stream costs no timer of its own.
    private var answerTimer: Scheduled<Void>?
    private var nextStreamID = HTTP2StreamID(1)
    private var goingAway = false
    /// Streams given reads in this batch, whose read-complete comes with the
    /// connection's (or, when none follows, at the end of the tick).
    private var readsToComplete: [TunnelStreamChannel] = []
    /// The batch being completed: swapped with `readsToComplete`, so that
    /// both keep their storage and a batch allocates nothing.
    private var completing: [TunnelStreamChannel] = []
    private var readCompleteScheduled = false
    /// Called once, when the peer says GOAWAY.
    package var onGoAway: (() -> Void)?

    package init(role: Role) {
        self.role = role
    }

    package var openStreams: Int { streams.count }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { raiseConnectionWindow(context: context) }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    package func channelActive(context: ChannelHandlerContext) {
        raiseConnectionWindow(context: context)
        context.fireChannelActive()
    }

    /// Without a stream multiplexer the connection's receive window is ours to
    /// keep: raise it from the protocol's 64 KiB to the tunnel's 16 MiB once.
    private func raiseConnectionWindow(context: ChannelHandlerContext) {
        let increment = HBONE.connectionWindow - 65_535
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment))), promise: nil)
    }

    // MARK: Frames from the peer

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .headers(let headers):
            receivedHeaders(headers, on: frame.streamID)
        case .data(let payload):
            // A stream this end already gave up on (it reset it) drops its
            // bytes; the connection's window gets them back all the same
            // (below, from the codec's window events).
            guard let stream = streams[frame.streamID], case .byteBuffer(let buffer) = payload.data else { return }
            stream.received(buffer, endStream: payload.endStream)
        case .rstStream:
            // The codec reports the reset as the stream's close (StreamClosedEvent).
            break
        case .goAway:
            if !goingAway {
                goingAway = true
                onGoAway?()
            }
        default:
            // SETTINGS, PING, WINDOW_UPDATE and PRIORITY are the codec's own.
            break
        }
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        completeReads()
        context.fireChannelReadComplete()
    }

    private func receivedHeaders(_ headers: HTTP2Frame.FramePayload.Headers, on id: HTTP2StreamID) {
        if let pending = awaiting.removeValue(forKey: id) {
            let status = HBONE.status(of: headers.headers) ?? 0
            guard status == HBONE.Status.ok.rawValue, !headers.endStream, let stream = streams[id] else {
                pending.promise.fail(TunnelError.refused(destination: pending.destination.authority, status: status))
                streams[id]?.close(promise: nil)
                return
            }
            pending.promise.succeed(stream)
            return
        }
        if let stream = streams[id] {
            // Trailers end the stream like an empty DATA frame with END_STREAM.
            if headers.endStream { stream.received(ByteBuffer(), endStream: true) }
            return
        }
        guard case .server(let opened) = role, let context else {
            // Servers do not open streams in HBONE; the codec refuses pushes.
            return
        }
        let stream = TunnelStreamChannel(streamID: id, parent: context.channel, streams: self, autoRead: false)
        streams[id] = stream
        opened(stream, headers)
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let window = event as? NIOHTTP2WindowUpdatedEvent, window.streamID == .rootStream, let left = window.inboundWindowSize {
            refillConnectionWindow(left: left, context: context)
        }
        if let closed = event as? StreamClosedEvent {
            if let pending = awaiting.removeValue(forKey: closed.streamID) {
                pending.promise.fail(TunnelError.streamClosedBeforeResponse(destination: pending.destination.authority))
            }
            streams[closed.streamID]?.streamClosed(reason: closed.reason)
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func channelInactive(context: ChannelHandlerContext) {
        answerTimer?.cancel()
        answerTimer = nil
        for (id, pending) in awaiting {
            pending.promise.fail(TunnelError.streamClosedBeforeResponse(destination: pending.destination.authority))
            awaiting[id] = nil
        }
        for stream in Array(streams.values) {
            stream.connectionClosed()
        }
        context.fireChannelInactive()
    }

    // MARK: Opening streams (client)

    /// Opens a stream to `destination` through the peer agent: sends the
    /// CONNECT and succeeds once the answer is 200 within `timeout`, with the
    /// stream not yet reading (the caller splices it, then turns `autoRead` on).
    package func openStream(to destination: SocketAddress, timeout: TimeAmount, eventLoop: EventLoop) -> EventLoopFuture<Channel> {
        guard let context else {
            return eventLoop.makeFailedFuture(TunnelError.streamClosedBeforeResponse(destination: destination.authority))
        }
        // A GOAWAY that arrived after the pool picked this connection: the
        // stream never reached the peer, so it may be tried on another.
        guard !goingAway, context.channel.isActive, nextStreamID < HTTP2StreamID.maxID else {
            return eventLoop.makeFailedFuture(TunnelError.streamClosedBeforeResponse(destination: destination.authority))
        }
        let id = nextStreamID
        nextStreamID = nextStreamID.advanced(by: 2)
        let stream = TunnelStreamChannel(streamID: id, parent: context.channel, streams: self, autoRead: false)
        streams[id] = stream
        let answered = eventLoop.makePromise(of: Channel.self)
        // The loop's clock, which tests drive.
        let deadline = eventLoop.now + timeout
        awaiting[id] = Awaiting(promise: answered, deadline: deadline, timeout: timeout, destination: destination)
        if answerTimer == nil { scheduleAnswerTimer(at: deadline, eventLoop: eventLoop) }
        let sent = eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: HBONE.connectRequest(to: destination))))), promise: sent)
        sent.futureResult.assumeIsolated().whenFailure { [self] _ in
            // The codec could not open the stream (the peer's GOAWAY came while
            // it waited for a stream slot): it never reached the peer.
            guard let pending = awaiting.removeValue(forKey: id) else { return }
            pending.promise.fail(TunnelError.streamClosedBeforeResponse(destination: destination.authority))
            stream.close(promise: nil)
        }
        return answered.futureResult
    }

    private func scheduleAnswerTimer(at deadline: NIODeadline, eventLoop: EventLoop) {
        answerTimer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            answerTimer = nil
            let now = eventLoop.now
            var earliest: NIODeadline?
            for (id, pending) in awaiting {
                guard pending.deadline <= now else {
                    earliest = min(earliest ?? pending.deadline, pending.deadline)
                    continue
                }
                awaiting[id] = nil
                pending.promise.fail(TunnelError.noResponse(destination: pending.destination.authority, after: pending.timeout))
                streams[id]?.close(promise: nil)
            }
            if let earliest { scheduleAnswerTimer(at: earliest, eventLoop: eventLoop) }
        }
    }

    // MARK: Calls from the streams

    /// The server's answer to a stream's request.
    func respond(_ status: HBONE.Status, on stream: TunnelStreamChannel, endStream: Bool, promise: EventLoopPromise<Void>? = nil) {
        write(.headers(.init(headers: HBONE.response(status: status), endStream: endStream)), on: stream, promise: promise)
        flush()
    }

    func write(_ payload: HTTP2Frame.FramePayload, on stream: TunnelStreamChannel, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(HTTP2Frame(streamID: stream.streamID, payload: payload)), promise: promise)
    }

    func flush() {
        context?.flush()
    }

    func reset(_ stream: TunnelStreamChannel, code: HTTP2ErrorCode) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: stream.streamID, payload: .rstStream(code))), promise: nil)
    }

    /// `bytes` of `stream` were read: the peer may send as many again on it.
    /// Credit is given back in halves of the window, not per read; a stream
    /// that is already closed gets none.
    func consumed(_ bytes: Int, on stream: TunnelStreamChannel, streamOpen: Bool) {
        guard streamOpen, let context else { return }
        stream.uncreditedBytes += bytes
        guard stream.uncreditedBytes >= HBONE.streamWindow / 2 else { return }
        let increment = stream.uncreditedBytes
        stream.uncreditedBytes = 0
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: stream.streamID, payload: .windowUpdate(windowSizeIncrement: increment))), promise: nil)
    }

    /// The connection's receive window is refilled as frames arrive, not as
    /// streams are read: every byte the peer sent counts against it, also
    /// those of a stream that was reset and dropped them, so crediting by
    /// reads would leak window until the connection stalls. Each stream's own
    /// window is what holds a fast sender back.
    private func refillConnectionWindow(left: Int, context: ChannelHandlerContext) {
        guard left <= HBONE.connectionWindow / 2 else { return }
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: HBONE.connectionWindow - left))), promise: nil)
    }

    /// `stream` delivered reads: its read-complete follows the connection's.
    /// Not every read is followed by one (TLS can hand over records outside a
    /// socket read), so the end of the tick completes them at the latest.
    func completeReadLater(_ stream: TunnelStreamChannel) {
        readsToComplete.append(stream)
        guard !readCompleteScheduled else { return }
        readCompleteScheduled = true
        stream.eventLoop.assumeIsolated().execute { [self] in
            readCompleteScheduled = false
            completeReads()
        }
    }

    private func completeReads() {
        guard !readsToComplete.isEmpty, completing.isEmpty else { return }
        // A stream's read-complete can start the next batch (its reader reads
        // again): that one goes into the other array.
        swap(&readsToComplete, &completing)
        for stream in completing { stream.completeRead() }
        completing.removeAll(keepingCapacity: true)
    }

    func forget(_ stream: TunnelStreamChannel) {
        streams[stream.streamID] = nil
    }
}
