import NIOCore

/// Whether one side of a spliced pair may still read and write. TCP lets each
/// direction end on its own (half-close): the side is finished only when the peer
/// has sent its FIN and we have sent ours.
struct SpliceSideState {
    enum Action: Equatable {
        case none
        case closeChannel
    }

    private(set) var inputClosed = false
    private(set) var outputClosed = false

    /// The peer sent FIN: nothing more will arrive on this side.
    mutating func inputEnded() -> Action {
        inputClosed = true
        return outputClosed ? .closeChannel : .none
    }

    /// The other side ended its input, so we shut down our output here.
    mutating func outputEnded() -> Action {
        outputClosed = true
        return inputClosed ? .closeChannel : .none
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

    /// Bytes that arrived on this handler's channel (and were passed to the partner).
    private(set) var bytesRead: UInt64 = 0

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
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    // MARK: Our channel's events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        bytesRead &+= UInt64(buffer.readableBytes)
        partner?.partnerWrite(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.partnerClosed()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            partner?.partnerInputEnded()
            apply(state.inputEnded())
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A reset or failed write on one side ends the pair: closing ours makes the
        // partner close too (channelInactive above).
        context.close(promise: nil)
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

    private func partnerInputEnded() {
        guard let context else { return }
        context.close(mode: .output, promise: nil)
        apply(state.outputEnded())
    }

    private func partnerClosed() {
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
        switch action {
        case .none:
            break
        case .closeChannel:
            context?.close(promise: nil)
        }
    }
}
