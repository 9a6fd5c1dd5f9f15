import Logging
import NIOCore
import NIOHTTP2
import TLS
import Workloads

/// Watches one peer connection of the tunnel server: carries out what
/// `TunnelConnectionState` decides (idle timeout, GOAWAY on drain) and reports
/// why connections end (failed handshakes, HTTP/2 errors).
final class TunnelConnectionMonitor: ChannelInboundHandler {
    typealias InboundIn = Never
    typealias OutboundOut = HTTP2Frame

    /// The agent is draining: send GOAWAY, and close once no stream is open.
    struct Drain {}

    private let idleTimeout: TimeAmount
    private let logger: Logger
    private let metrics: TunnelServerMetrics
    private var state = TunnelConnectionState()
    private var idleTimer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(idleTimeout: TimeAmount, logger: Logger, metrics: TunnelServerMetrics) {
        self.idleTimeout = idleTimeout
        self.logger = logger
        self.metrics = metrics
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        perform(state.connectionStarted())
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
        self.context = nil
    }

    func streamOpened(_ id: HTTP2StreamID) {
        perform(state.streamOpened(id))
    }

    func streamClosed() {
        perform(state.streamClosed())
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is Drain else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        logger.debug("draining a tunnel connection: \(state.openStreams) stream(s) open, the last \(state.lastStream)")
        perform(state.drainRequested())
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let peer = context.channel.remoteAddress.map(\.authority) ?? "?"
        if let tlsError = error as? TLSError {
            metrics.refusedPeer(tlsError.reasonLabel)
            logger.info("tunnel connection from \(peer) failed: \(tlsError)")
        } else {
            metrics.refusedPeer("protocol_error")
            logger.info("tunnel connection from \(peer) closed: \(error)")
        }
        context.close(promise: nil)
    }

    private func perform(_ action: TunnelConnectionState.Action) {
        guard let context else { return }
        switch action {
        case .none:
            break
        case .startIdleTimer:
            idleTimer?.cancel()
            idleTimer = context.eventLoop.assumeIsolated().scheduleTask(in: idleTimeout) { [self] in
                idleTimer = nil
                if state.idleTimerFired() == .close {
                    logger.debug("closing an idle tunnel connection from \(context.channel.remoteAddress.map(\.authority) ?? "?")")
                    context.close(promise: nil)
                }
            }
        case .cancelIdleTimer:
            idleTimer?.cancel()
            idleTimer = nil
        case .sendGoAway(let lastStreamID, let closeNow):
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
            if closeNow { context.close(promise: nil) }
        case .close:
            context.close(promise: nil)
        }
    }
}
