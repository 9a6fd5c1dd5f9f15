import LinuxNet
import Metrics
import NIOCore

/// Where one side of a spliced pair stands. TCP lets each direction end on its
/// own (half-close); this side is finished when its peer has sent FIN and we
/// have sent ours after delivering everything the other side sent.
///
/// NIO shapes the events: a half-close of output turns into a full close when
/// input has already ended, and an EOF arriving after our output was shut down
/// closes the channel without an `inputClosed` event. Both drop queued writes,
/// so output is only ended once the write queue has drained.
struct SpliceSideState {
    enum Action: Equatable {
        case none
        /// Queue an empty write behind the pending ones and report `outputDrained`.
        case drainThenEndOutput
        case shutdownOutput
        case closeChannel
    }

    private(set) var inputClosed = false
    private(set) var outputEnding = false
    private(set) var outputClosed = false
    private(set) var failed = false

    /// The channel closed after its FIN went out and without an error: the
    /// partner should still deliver what it holds, then finish.
    var closedCleanly: Bool { outputEnding && !failed }

    /// Our peer sent FIN.
    mutating func inputEnded() -> Action {
        inputClosed = true
        return outputClosed ? .closeChannel : .none
    }

    /// The other side finished (FIN or clean close): end our output after what
    /// is queued. Repeated calls do nothing.
    mutating func partnerFinished() -> Action {
        guard !outputEnding else { return .none }
        outputEnding = true
        return .drainThenEndOutput
    }

    /// Everything queued before `partnerFinished` has been written. Output is
    /// shut even when input has ended too: on a socket NIO turns that into a full
    /// close, and on a tunnel stream it is the END_STREAM that finishes it
    /// (closing a stream outright would reset it).
    mutating func outputDrained() -> Action {
        outputClosed = true
        return .shutdownOutput
    }

    mutating func errorOccurred() -> Action {
        failed = true
        return .closeChannel
    }
}

/// Copies bytes from its channel to its partner's and back, reading only while the
/// partner can take more (back-pressure) and passing half-closes through.
///
/// Two of these, one in each channel's pipeline, splice a client connection to
/// its upstream. Both channels must run on the same event loop: the handlers call
/// each other directly, with no hop per chunk.
final class SpliceHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: SpliceHandler?
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var state = SpliceSideState()

    /// Bytes that arrived on this handler's channel (and were passed to the
    /// partner); readable from any thread, for the admin API.
    let received = ByteCounter()
    var bytesRead: UInt64 { received.value }

    private init() {}

    static func pair() -> (SpliceHandler, SpliceHandler) {
        let first = SpliceHandler()
        let second = SpliceHandler()
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The partner may have asked to read before this side existed (an
        // upstream dialled from a pod's namespace can be active before the
        // client's handlers go in): that read was held for us, so release it
        // now, or its bytes would wait in the kernel for ever.
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    // MARK: Our channel's events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received.add(buffer.readableBytes)
        partner?.partnerWrite(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if state.closedCleanly {
            partner?.partnerFinished()
        } else {
            partner?.partnerAborted()
        }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            partner?.partnerFinished()
            apply(state.inputEnded())
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A reset or failed write ends the pair: closing ours aborts the partner
        // too (channelInactive above).
        apply(state.errorOccurred())
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.partnerIsWritable ?? false {
            context.read()
        } else {
            readPending = true
        }
    }

    // MARK: Calls from the partner

    private func partnerWrite(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private func partnerFinished() {
        apply(state.partnerFinished())
    }

    /// The partner was reset or failed: nothing more is worth delivering.
    private func partnerAborted() {
        context?.close(promise: nil)
    }

    private var partnerIsWritable: Bool {
        context?.channel.isWritable ?? false
    }

    private func partnerBecameWritable() {
        if readPending {
            readPending = false
            context?.read()
        }
    }

    private func apply(_ action: SpliceSideState.Action) {
        guard let context else { return }
        switch action {
        case .none:
            break
        case .drainThenEndOutput:
            context.whenWritesDrained { [self] result in
                if case .success = result { apply(state.outputDrained()) }
            }
        case .shutdownOutput:
            context.close(mode: .output, promise: nil)
        case .closeChannel:
            context.close(promise: nil)
        }
    }
}

/// The two handlers of one splice: `client` goes into the channel that was
/// accepted (or the tunnel stream that arrived), `upstream` into the one the
/// agent opened.
struct SplicePair {
    let client: SpliceHandler
    let upstream: SpliceHandler

    static func make(on eventLoop: EventLoop) -> NIOLoopBound<SplicePair> {
        let (client, upstream) = SpliceHandler.pair()
        return NIOLoopBound(SplicePair(client: client, upstream: upstream), eventLoop: eventLoop)
    }

    /// Moves the splice into the kernel (`KernelSplicer`) when both sides are
    /// sockets and nothing has been read yet: the client's channel must not
    /// be registered (the listener registers it only after its handlers are
    /// in), and the upstream's handler holds its reads until the client's is
    /// added. The caller closes both channels at once; their sockets live on
    /// in the splicer. Returns nil when the event loops must splice instead:
    /// a tunnel stream has no socket of its own, and a splicer that cannot
    /// take the connection (out of descriptors) leaves it to them, counted.
    func handOver(client: Channel, upstream: Channel, to splicer: KernelSplicer) -> KernelSplice? {
        guard upstream.isActive, !client.isActive, self.upstream.bytesRead == 0 else { return nil }
        let ended = client.eventLoop.makePromise(of: Void.self)
        var connection: SplicedConnection?
        do {
            connection = try client.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { clientSocket in
                try upstream.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { upstreamSocket in
                    try splicer.relay(duplicating: clientSocket, upstreamSocket, counting: (self.client.received, self.upstream.received)) { _ in
                        ended.succeed()
                    }
                }
            } ?? nil
        } catch {
            KernelSpliceMetrics.fallbacks.increment()
        }
        guard let connection else {
            ended.succeed()
            return nil
        }
        KernelSpliceMetrics.handedOver.increment()
        return KernelSplice(connection: connection, ended: ended.futureResult)
    }
}

/// `mesh_agent_kernel_splices_total`: connections handed to the kernel, and
/// those that could have been but were not (the splicer could not take them).
enum KernelSpliceMetrics {
    static let handedOver = Counter(label: "mesh_agent_kernel_splices_total", dimensions: [("result", "spliced")])
    static let fallbacks = Counter(label: "mesh_agent_kernel_splices_total", dimensions: [("result", "fallback")])
}

/// A connection the kernel splices: how to end it, and when it has ended.
struct KernelSplice: Sendable {
    let connection: SplicedConnection
    let ended: EventLoopFuture<Void>
}

/// Completes a proxied connection carried by `carrier` once its upstream is
/// connected: the client side gets its handlers (or the kernel splices the
/// two sockets, when the tracker has a splicer and the carrier allows it),
/// the connection is tracked (with what policy needs to check it again after
/// a reload), and when it has ended it is logged with its byte counts.
func completeProxy(
    client: Channel, upstream: Channel, carrier: Carrier, entry: AccessLogEntry, started: NIODeadline,
    accessLog: AccessLogSink, tracker: ConnectionTracker, policyCheck: TrackedPolicyCheck? = nil, closed: @escaping @Sendable () -> Void
) throws {
    let kernel = tracker.splicer.flatMap { carrier.handOver(client: client, upstream: upstream, to: $0) }
    if kernel == nil {
        try carrier.installClient(on: client)
    }
    tracker.describe(client, as: entry, received: carrier.received, sent: carrier.sent, policyCheck: policyCheck, kernel: kernel)
    if kernel != nil {
        // Their sockets live on in the splicer.
        client.close(promise: nil)
        upstream.close(promise: nil)
    }
    var opening = entry
    opening.isOpening = true
    accessLog.observe(opening)
    let metricCounters = IstioTCPMetrics.opened(entry)
    let received = carrier.received
    let sent = carrier.sent
    let ended = kernel?.ended ?? client.closeFuture.and(upstream.closeFuture).map { _ in }
    ended.hop(to: client.eventLoop).whenComplete { _ in
        var finished = entry
        finished.bytesReceived = received.value
        finished.bytesSent = sent.value
        finished.durationMilliseconds = milliseconds(since: started)
        if let revoked = policyCheck?.revocation.decision {
            finished.action = .deny
            finished.policy = revoked.policy
            finished.reason = "closed after a policy reload: \(revoked.reason)"
        }
        closed()
        IstioTCPMetrics.closed(finished, counters: metricCounters)
        accessLog.record(finished)
    }
}

extension ChannelHandlerContext {
    /// Runs `body` once every write queued so far has gone out (or failed):
    /// an empty write flushed behind them completes after them.
    func whenWritesDrained(_ body: @escaping (Result<Void, any Error>) -> Void) {
        let drained = eventLoop.makePromise(of: Void.self)
        writeAndFlush(NIOAny(ByteBuffer()), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete(body)
    }
}
