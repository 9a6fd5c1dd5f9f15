import NIOCore
import NIOHTTP2

/// Sits behind the HTTP/2 handler of one of the two connections and tells the
/// shared `HTTP2ProxyConnection` what happens to it; closes it when told.
final class HTTP2ConnectionWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    enum Side {
        case client
        case workload
    }

    private let side: Side
    private var connection: HTTP2ProxyConnection?
    private var context: ChannelHandlerContext?
    private var lastWrite: EventLoopFuture<Void>?

    init(side: Side, connection: HTTP2ProxyConnection) {
        self.side = side
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        connection = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Connection-level frames; NIOHTTP2 answers SETTINGS and PING itself.
        if side == .workload, case .goAway = unwrapInboundIn(data).payload {
            connection?.workloadGoingAway()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            switch side {
            case .client: connection?.clientInputEnded()
            // An HTTP/2 server that stops sending can answer nothing more.
            case .workload: context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is any NIOHTTP2Error else {
            // The socket (or tunnel stream) failed.
            context.close(promise: nil)
            return
        }
        // NIOHTTP2 has already answered it: a stream error resets that stream,
        // a connection error sends GOAWAY and closes the connection.
        guard side == .client, Self.isMalformedHeaderBlock(error) else { return }
        HTTPInspectionMetrics.malformed.increment()
        connection?.refusedHeaderBlock(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let connection = self.connection
        self.connection = nil
        switch side {
        case .client: connection?.clientClosed()
        case .workload: connection?.workloadClosed()
        }
        context.fireChannelInactive()
    }

    func sendGoAway(lastStreamID: HTTP2StreamID) {
        guard let context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        let frame = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(wrapOutboundOut(frame), promise: promise)
        lastWrite = promise.futureResult
    }

    /// Closes the connection once what was written to it (a GOAWAY) has gone.
    func finish(outputOnly: Bool) {
        guard let context else { return }
        let close = {
            // After the client's own end, closing output completes the close
            // cleanly (a tunnel stream ends with END_STREAM instead of a reset).
            context.close(mode: outputOnly ? .output : .all, promise: nil)
        }
        if let lastWrite {
            lastWrite.assumeIsolated().whenComplete { _ in close() }
        } else {
            close()
        }
    }

    func close() {
        context?.close(promise: nil)
    }

    /// The errors of NIOHTTP2's header-block checks: a request refused by one
    /// of them never becomes a stream the agent sees.
    private static func isMalformedHeaderBlock(_ error: Error) -> Bool {
        error is NIOHTTP2Errors.DuplicatePseudoHeader || error is NIOHTTP2Errors.PseudoHeaderAfterRegularHeader
            || error is NIOHTTP2Errors.UnknownPseudoHeader || error is NIOHTTP2Errors.UnsupportedPseudoHeader
            || error is NIOHTTP2Errors.InvalidPseudoHeaders || error is NIOHTTP2Errors.EmptyPathHeader
            || error is NIOHTTP2Errors.InvalidHTTP2HeaderFieldName || error is NIOHTTP2Errors.InvalidHTTP2HeaderFieldValue
            || error is NIOHTTP2Errors.ForbiddenHeaderField || error is NIOHTTP2Errors.InvalidPseudoHeaderValue
    }
}
