import NIOCore

/// Turns the flushes a tunnel connection gets within one event-loop tick into
/// one.
///
/// Every stream of a pooled tunnel flushes the shared connection when its
/// client's bytes arrive, and the clients of one tick (sixteen keep-alive
/// connections that became readable together) each flush on their own: each
/// flush then cost a TLS record, a `write(2)` and a wake-up of the peer agent.
/// Deferring the flush to a task that runs after the tick's I/O sends what the
/// tick produced together. A close, or the handler's removal, sends what is
/// pending first, so nothing written is ever left behind.
final class FlushCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var flushScheduled = false
    private var flushPending = false

    func flush(context: ChannelHandlerContext) {
        flushPending = true
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            flushScheduled = false
            flushIfPending(context: context)
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        flushIfPending(context: context)
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        flushIfPending(context: context)
    }

    private func flushIfPending(context: ChannelHandlerContext) {
        guard flushPending else { return }
        flushPending = false
        context.flush()
    }
}
