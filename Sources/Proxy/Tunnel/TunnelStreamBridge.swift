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

/// Carries one tunnelled TCP connection over its HTTP/2 stream, so the splice
/// above it sees what it sees on a TCP channel: DATA arrives as `ByteBuffer`s and
/// the peer's END_STREAM as `ChannelEvent.inputClosed`; buffers go out as DATA,
/// and `close(mode: .output)` becomes END_STREAM.
///
/// Writes on a stream leave in order, so output needs no draining before
/// END_STREAM: an empty write (the splice's drain marker) completes at once.
///
/// Small writes of one flush leave as one DATA frame: an HTTP response that
/// NIOHTTP1 encodes as a head and a body would otherwise cost two trips through
/// the stream channel and the connection's HTTP/2 handler.
final class TunnelStreamBridge: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var state = TunnelStreamState()
    /// Small writes since the last flush, gathered into one DATA frame.
    private var gathered: ByteBuffer?
    private var gatheredPromise: EventLoopPromise<Void>?
    /// Writes at least this large go out as they are: copying them would cost
    /// more than the frame they save.
    static let gatherLimit = 8 * 1024

    /// Tunnel streams are made with `autoRead` off, so that nothing arrives
    /// before the splice is in place; this turns it on once it is. A stream
    /// channel does not start reading when the option changes, so it is asked to.
    static func startReading(_ stream: Channel) throws {
        try stream.syncOptions?.setOption(.autoRead, value: true)
        stream.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .data(let payload):
            if case .byteBuffer(let buffer) = payload.data, buffer.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(buffer))
            }
            if payload.endStream {
                peerEnded(context: context)
            }
        case .headers(let headers) where headers.endStream:
            // Trailers end the stream like an empty DATA frame with END_STREAM.
            peerEnded(context: context)
        default:
            // Window updates, priority, and headers without END_STREAM carry no bytes.
            break
        }
    }

    private func peerEnded(context: ChannelHandlerContext) {
        if state.peerEnded() {
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var buffer = unwrapOutboundIn(data)
        guard buffer.readableBytes > 0 else {
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
            sendGathered(context: context)
        }
        if buffer.readableBytes < Self.gatherLimit {
            gathered = buffer
            gatheredPromise = promise
            return
        }
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        sendGathered(context: context)
        context.flush()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        sendGathered(context: context)
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

    /// Passes the gathered writes on as one DATA frame, ending the stream with it
    /// when `endStream`.
    private func sendGathered(context: ChannelHandlerContext, endStream: Bool = false) {
        guard let buffer = gathered else { return }
        let promise = gatheredPromise
        gathered = nil
        gatheredPromise = nil
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer), endStream: endStream))), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .output:
            if state.endOutput() {
                if gathered != nil {
                    // What is gathered and the end of the stream, in one frame.
                    completeWithGathered(promise)
                    sendGathered(context: context, endStream: true)
                    context.flush()
                } else {
                    context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))), promise: promise)
                }
            } else {
                promise?.succeed()
            }
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .all:
            sendGathered(context: context)
            switch state.closeRequested() {
            case .waitForStreamClose:
                if let promise {
                    context.channel.closeFuture.cascade(to: promise)
                }
            case .reset:
                context.close(mode: .all, promise: promise)
            }
        }
    }
}
