import NIOCore
import NIOHTTP2

/// The workload's side of one stream: sends what the client's side relays, and
/// hands everything the workload answers back to it. Made before its stream
/// channel exists; frames sent meanwhile wait here (one read's worth at most:
/// the client's side reads no more until this side is writable).
final class HTTP2WorkloadStream: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var client: HTTP2RequestStream?
    private var context: ChannelHandlerContext?
    private var queued: [HTTP2Frame.FramePayload] = []
    private var flushQueued = false
    /// Reset before its channel existed (it closes as soon as it does), or
    /// closed: nothing more is sent.
    private var abandoned = false
    private var readPending = false
    private var failure: String?
    private var lastWrite: EventLoopFuture<Void>?

    init(client: HTTP2RequestStream) {
        self.client = client
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if abandoned {
            queued = []
            context.close(promise: nil)
            return
        }
        for payload in queued {
            write(payload, context: context)
        }
        queued = []
        if flushQueued {
            flushQueued = false
            context.flush()
        }
        // The client's side held its reads until this stream could take them.
        if context.channel.isWritable { client?.workloadBecameWritable() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        client = nil
        abandoned = true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client?.workloadSent(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        client?.workloadFlushed()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if let client, !client.isWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed {
            // Closed with a reset not seen as a frame: NIOHTTP2 refusing the
            // stream for the workload (after its GOAWAY, REFUSED_STREAM), or
            // resetting it for a failure reported before, or ours.
            if failure == nil { client?.workloadSent(.rstStream(closed.errorCode)) }
            return
        }
        // NIOHTTP2 refused the workload's response (a malformed header block, say) and reset the stream.
        failure = "the workload's response was malformed (\(String(describing: type(of: error))))"
    }

    func channelInactive(context: ChannelHandlerContext) {
        abandoned = true
        let client = self.client
        self.client = nil
        client?.workloadClosed(failure: failure)
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { client?.workloadBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    /// The stream could not be made (the workload's connection failed meanwhile).
    func creationFailed(_ error: Error) {
        let client = self.client
        self.client = nil
        client?.workloadClosed(failure: "cannot open a stream to the workload: \(error)")
    }

    // MARK: From the client's side

    func send(_ payload: HTTP2Frame.FramePayload) {
        guard let context else {
            if !abandoned { queued.append(payload) }
            return
        }
        write(payload, context: context)
    }

    func flush() {
        guard let context else {
            flushQueued = true
            return
        }
        context.flush()
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func clientBecameWritable() {
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    func reset(_ code: HTTP2ErrorCode) {
        guard let context else {
            abandoned = true
            queued = []
            return
        }
        resetStream(context, code, after: lastWrite)
    }

    private func write(_ payload: HTTP2Frame.FramePayload, context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(payload), promise: promise)
        lastWrite = promise.futureResult
    }
}
