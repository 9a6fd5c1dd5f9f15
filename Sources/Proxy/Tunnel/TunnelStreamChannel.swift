import NIOCore
import NIOHTTP2

/// Where a tunnel stream stands: TCP's two half-closes map onto the two
/// END_STREAM flags.
struct TunnelStreamState {
    enum CloseAction: Equatable {
        /// Both directions ended: the stream closes by itself once our END_STREAM
        /// is written; resetting it now would throw away what is still queued.
        case waitForStreamClose
        /// An abort: reset the stream.
        case reset
    }

    private(set) var sentEnd = false
    private(set) var receivedEnd = false

    /// Returns whether END_STREAM must be sent now (only the first time).
    mutating func endOutput() -> Bool {
        defer { sentEnd = true }
        return !sentEnd
    }

    /// Returns whether this is news (the first END_STREAM from the peer).
    mutating func peerEnded() -> Bool {
        defer { receivedEnd = true }
        return !receivedEnd
    }

    func closeRequested() -> CloseAction {
        sentEnd && receivedEnd ? .waitForStreamClose : .reset
    }
}

/// One tunnelled TCP connection on its HTTP/2 stream, as a channel of bytes:
/// what the splice, the inspection handlers and the connection tracker see is
/// what they see on a TCP socket. DATA arrives as `ByteBuffer`s and the peer's
/// END_STREAM as `ChannelEvent.inputClosed`; buffers go out as DATA, and
/// `close(mode: .output)` becomes END_STREAM; only an abort resets the stream.
///
/// It is not one of swift-nio-http2's stream channels: the tunnel
/// connection's `TunnelStreams` handler, in front of the connection's frame
/// codec, feeds it frames and writes its output, so a stream costs this
/// object and its pipeline, not a multiplexer's bookkeeping. Everything
/// happens on the connection's event loop.
package final class TunnelStreamChannel: Channel, ChannelCore, @unchecked Sendable {
    package let streamID: HTTP2StreamID
    package let eventLoop: EventLoop
    package let parent: Channel?
    private let streams: TunnelStreams
    private let closePromise: EventLoopPromise<Void>
    private var _pipeline: ChannelPipeline?

    private var active = true
    private var state = TunnelStreamState()
    private var autoRead: Bool
    private var readRequested = false
    /// DATA received and not yet read, and whether the peer's END_STREAM
    /// follows it.
    private var pendingReads = CircularBuffer<ByteBuffer>(initialCapacity: 4)
    private var endPending = false
    /// Reads were delivered and their read-complete is still to come.
    private var readCompletePending = false
    /// Small writes since the last flush, gathered into one DATA frame: an HTTP
    /// response written as a head and a body costs one frame and one trip
    /// through the connection's codec, not two.
    private var gathered: ByteBuffer?
    private var gatheredPromise: EventLoopPromise<Void>?
    /// Bytes handed to the connection and not yet written by it; the stream
    /// stops being writable above `HBONE.streamHighWatermark`.
    private var unwrittenBytes = 0
    /// Of those, bytes whose write no promise reports yet.
    private var unaccountedBytes = 0
    private var writable = true
    /// Bytes read since this stream's last WINDOW_UPDATE (kept by TunnelStreams).
    var uncreditedBytes = 0

    /// Writes at least this large go out as they are: copying them would cost
    /// more than the frame they save.
    static let gatherLimit = 8 * 1024

    /// How many bytes may go out between two writes whose completion is
    /// watched. What is not yet accounted for counts as unwritten, so it must
    /// stay well below the low watermark.
    static let accountingInterval = 64 * 1024

    init(streamID: HTTP2StreamID, parent: Channel, streams: TunnelStreams, autoRead: Bool) {
        self.streamID = streamID
        self.eventLoop = parent.eventLoop
        self.parent = parent
        self.streams = streams
        self.autoRead = autoRead
        closePromise = parent.eventLoop.makePromise()
        _pipeline = ChannelPipeline(channel: self)
        pipeline.syncOperations.fireChannelRegistered()
        pipeline.syncOperations.fireChannelActive()
    }

    // MARK: Channel

    package var pipeline: ChannelPipeline {
        guard let _pipeline else { preconditionFailure("a tunnel stream's pipeline is made in its initializer") }
        return _pipeline
    }

    package var allocator: ByteBufferAllocator { parent?.allocator ?? ByteBufferAllocator() }
    package var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    package var localAddress: SocketAddress? { parent?.localAddress }
    package var remoteAddress: SocketAddress? { parent?.remoteAddress }
    package var isWritable: Bool { writable }
    package var isActive: Bool { active }
    package var _channelCore: ChannelCore { self }

    package func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try setOption0(option, value: value) }
        }
        return eventLoop.submit { try self.setOption0(option, value: value) }
    }

    package func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try getOption0(option) }
        }
        return eventLoop.submit { try self.getOption0(option) }
    }

    package var syncOptions: NIOSynchronousChannelOptions? { SynchronousOptions(stream: self) }

    private struct SynchronousOptions: NIOSynchronousChannelOptions {
        let stream: TunnelStreamChannel

        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            stream.eventLoop.preconditionInEventLoop()
            try stream.setOption0(option, value: value)
        }

        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            stream.eventLoop.preconditionInEventLoop()
            return try stream.getOption0(option)
        }
    }

    private func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        switch option {
        case _ as ChannelOptions.Types.AutoReadOption:
            guard let on = value as? Bool else { throw ChannelError.operationUnsupported }
            let started = on && !autoRead
            autoRead = on
            if started { read() }
        case _ as ChannelOptions.Types.AllowRemoteHalfClosureOption:
            // A stream always reports the peer's END_STREAM as input closed.
            break
        default:
            throw ChannelError.operationUnsupported
        }
    }

    private func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        switch option {
        case _ as ChannelOptions.Types.AutoReadOption:
            guard let value = autoRead as? Option.Value else { throw ChannelError.operationUnsupported }
            return value
        case _ as ChannelOptions.Types.AllowRemoteHalfClosureOption:
            guard let value = true as? Option.Value else { throw ChannelError.operationUnsupported }
            return value
        default:
            throw ChannelError.operationUnsupported
        }
    }

    // MARK: ChannelCore

    package func localAddress0() throws -> SocketAddress {
        guard let address = parent?.localAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    package func remoteAddress0() throws -> SocketAddress {
        guard let address = parent?.remoteAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    package func register0(promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    package func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    package func bind0(to address: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    package func connect0(to address: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    package func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard active else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !state.sentEnd else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        var buffer = unwrapData(data, as: ByteBuffer.self)
        guard buffer.readableBytes > 0 else {
            // Writes on a stream leave in order: the splice's empty "drained"
            // marker has nothing to wait for.
            promise?.succeed()
            return
        }
        if var pending = gathered {
            if pending.readableBytes + buffer.readableBytes <= Self.gatherLimit {
                pending.writeBuffer(&buffer)
                gathered = pending
                completeWithGathered(promise)
                return
            }
            sendGathered()
        }
        if buffer.readableBytes < Self.gatherLimit {
            gathered = buffer
            gatheredPromise = promise
            return
        }
        send(buffer, endStream: false, promise: promise)
    }

    package func flush0() {
        sendGathered()
        streams.flush()
    }

    package func read0() {
        readRequested = true
        deliverReads()
    }

    package func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard active else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .output:
            guard state.endOutput() else {
                promise?.succeed()
                return
            }
            if let buffer = gathered {
                // What is gathered and the end of the stream, in one frame.
                gathered = nil
                let sent = gatheredPromise
                gatheredPromise = nil
                let ended = promise ?? eventLoop.makePromise()
                sent.map { ended.futureResult.cascade(to: $0) }
                send(buffer, endStream: true, promise: ended)
            } else {
                send(ByteBuffer(), endStream: true, promise: promise)
            }
            streams.flush()
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .all:
            sendGathered()
            streams.flush()
            switch state.closeRequested() {
            case .waitForStreamClose:
                break
            case .reset:
                streams.reset(self, code: .cancel)
                closed(error: nil)
            }
            if let promise { closeFuture.cascade(to: promise) }
        }
    }

    package func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    package func channelRead0(_ data: NIOAny) {
        // Bytes no handler consumed end here, as on any channel.
    }

    package func errorCaught0(error: Error) {}

    // MARK: Output

    /// Hands a DATA frame to the connection. Frames of one stream are written
    /// in order, so the stream learns what left from one write in every
    /// `accountingInterval` bytes (or one the caller waits for): a chunk costs
    /// no promise of its own.
    private func send(_ buffer: ByteBuffer, endStream: Bool, promise: EventLoopPromise<Void>?) {
        let bytes = buffer.readableBytes
        unwrittenBytes += bytes
        unaccountedBytes += bytes
        var written = promise
        if promise != nil || unaccountedBytes >= Self.accountingInterval || (writable && unwrittenBytes > HBONE.streamHighWatermark) {
            let accounted = unaccountedBytes
            unaccountedBytes = 0
            let marker = promise ?? eventLoop.makePromise()
            marker.futureResult.assumeIsolated().whenComplete { [self] _ in
                unwrittenBytes -= accounted
                if !writable, unwrittenBytes <= HBONE.streamLowWatermark { becomeWritable(true) }
            }
            written = marker
        }
        if writable, unwrittenBytes > HBONE.streamHighWatermark { becomeWritable(false) }
        streams.write(.data(.init(data: .byteBuffer(buffer), endStream: endStream)), on: self, promise: written)
    }

    private func becomeWritable(_ now: Bool) {
        writable = now
        if active { pipeline.syncOperations.fireChannelWritabilityChanged() }
    }

    /// `promise` completes when the gathered frame is written.
    private func completeWithGathered(_ promise: EventLoopPromise<Void>?) {
        guard let promise else { return }
        if let gatheredPromise {
            gatheredPromise.futureResult.cascade(to: promise)
        } else {
            gatheredPromise = promise
        }
    }

    private func sendGathered() {
        guard let buffer = gathered else { return }
        let promise = gatheredPromise
        gathered = nil
        gatheredPromise = nil
        send(buffer, endStream: false, promise: promise)
    }

    /// The server's answer to the stream's request; with `endStream` (a
    /// refusal) nothing follows it.
    package func respond(_ status: HBONE.Status, endStream: Bool, promise: EventLoopPromise<Void>? = nil) {
        guard active else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if endStream { _ = state.endOutput() }
        streams.respond(status, on: self, endStream: endStream, promise: promise)
    }

    /// `respond`, for a refusal: the stream closes once the answer is written.
    package func refuse(_ status: HBONE.Status) -> EventLoopFuture<Void> {
        let written = eventLoop.makePromise(of: Void.self)
        respond(status, endStream: true, promise: written)
        return written.futureResult.always { [self] _ in close(promise: nil) }
    }

    /// Turns reading on once the stream's handlers are in place (streams
    /// start without reading, so that nothing arrives before the splice).
    package func startReading() throws {
        try setOption0(ChannelOptions.autoRead, value: true)
    }

    // MARK: Input, from TunnelStreams

    /// A DATA frame's payload, and whether it ended the stream.
    func received(_ buffer: ByteBuffer, endStream: Bool) {
        guard active else { return }
        if buffer.readableBytes > 0 {
            pendingReads.append(buffer)
        }
        if endStream, state.peerEnded() {
            endPending = true
        }
        deliverReads()
    }

    /// Hands what arrived to the pipeline when it asked to read. Each delivered
    /// byte is credited back to the peer (WINDOW_UPDATE), so the peer's window
    /// is what this stream's reader has not taken yet: a reader that stops
    /// reading stops the peer.
    private func deliverReads(force: Bool = false) {
        guard active, readRequested || force, !pendingReads.isEmpty || endPending else { return }
        readRequested = false
        var delivered = 0
        while let buffer = pendingReads.popFirst() {
            delivered += buffer.readableBytes
            pipeline.syncOperations.fireChannelRead(NIOAny(buffer))
        }
        var batchStarted = false
        if delivered > 0 {
            streams.consumed(delivered, on: self, streamOpen: !force)
            batchStarted = !readCompletePending
            readCompletePending = true
        }
        if force || endPending {
            // The bytes before the end go out before it.
            completeRead()
        } else if batchStarted {
            streams.completeReadLater(self)
        }
        if endPending {
            endPending = false
            pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        if autoRead, active, !force { pipeline.syncOperations.read() }
    }

    /// Ends a batch of reads: the frames of one TLS read reach the reader as
    /// one batch, so the splice writes them to the workload's socket with one
    /// flush rather than one per 16 KiB frame.
    func completeRead() {
        guard readCompletePending, active else { return }
        readCompletePending = false
        pipeline.syncOperations.fireChannelReadComplete()
    }

    /// The connection's codec closed the stream: both ends sent END_STREAM
    /// (`reason` nil), or it was reset. What arrived before a clean close is
    /// still delivered, since the splice counts on the bytes before the FIN.
    func streamClosed(reason: HTTP2ErrorCode?) {
        guard active else { return }
        if let reason {
            closed(error: NIOHTTP2Errors.streamClosed(streamID: streamID, errorCode: reason))
        } else {
            deliverReads(force: true)
            closed(error: nil)
        }
    }

    /// The tunnel connection itself is gone.
    func connectionClosed() {
        let unfinished = !(state.sentEnd && state.receivedEnd)
        closed(error: unfinished ? TunnelError.tunnelFailed(agent: remoteAddress?.authority ?? "?", reason: "the tunnel connection closed") : nil)
    }

    private func closed(error: Error?) {
        guard active else { return }
        // Bytes handed over before a reset still reach the reader's partner:
        // its read-complete is what flushes them (a workload answering with a
        // response and an immediate close arrives as DATA, then RST_STREAM).
        completeRead()
        active = false
        pendingReads.removeAll()
        endPending = false
        if let promise = gatheredPromise {
            gatheredPromise = nil
            promise.fail(ChannelError.ioOnClosedChannel)
        }
        gathered = nil
        streams.forget(self)
        if let error { pipeline.syncOperations.fireErrorCaught(error) }
        pipeline.syncOperations.fireChannelInactive()
        pipeline.syncOperations.fireChannelUnregistered()
        eventLoop.assumeIsolated().execute { [self] in
            removeHandlers(pipeline: pipeline)
            closePromise.succeed()
        }
    }
}
