import Logging
import Metrics
import NIOCore
import NIOHPACK
import NIOHTTP2
import LinuxNet
import NIOPosix
import TLS
import Workloads

/// Opens HBONE tunnel streams to other nodes' agents over pooled mutual-TLS
/// connections: a new workload connection costs one HTTP/2 stream, not one TLS
/// handshake.
///
/// Pools are keyed by (source identity, destination agent address, TLS context).
/// The context is part of the key so that after a certificate rotation new
/// streams go on connections made with the new certificate, while connections
/// made with the old one carry their streams to the end and then idle out.
/// Each event loop has its own pool, because a spliced pair of channels must
/// share a loop; the pools are therefore also per loop.
public final class TunnelClient: Sendable {
    public struct Configuration: Sendable {
        /// The port of the destination agents' tunnel listener.
        public var tunnelPort: UInt16
        public var mark: UInt32
        public var connectTimeout: TimeAmount
        /// A workload's own network namespace, where tunnel connections leave
        /// from (with its address as the source); the node's when nil.
        public var namespace: SocketNamespace?
        public var maximumStreamsPerConnection = HBONE.defaultMaximumStreamsPerConnection
        /// A pooled connection without streams for this long is closed.
        public var idleTimeout: TimeAmount = .seconds(60)

        public init(tunnelPort: UInt16, mark: UInt32, connectTimeout: TimeAmount) {
            self.tunnelPort = tunnelPort
            self.mark = mark
            self.connectTimeout = connectTimeout
        }
    }

    struct PoolKey: Hashable {
        var source: SpiffeID
        var agent: SocketAddress
        var context: ObjectIdentifier
    }

    private let configuration: Configuration
    private let clientContext: @Sendable (SpiffeID) throws -> TLSContext
    private let pools: [ObjectIdentifier: LoopPool]
    private let logger: Logger

    /// - Parameter clientContext: the TLS context to connect with as a source
    ///   identity; it must verify that the peer is a destination agent.
    public init(configuration: Configuration, group: EventLoopGroup, clientContext: @escaping @Sendable (SpiffeID) throws -> TLSContext, logger: Logger) {
        self.configuration = configuration
        self.clientContext = clientContext
        self.logger = logger
        var pools: [ObjectIdentifier: LoopPool] = [:]
        for eventLoop in group.makeIterator() {
            pools[ObjectIdentifier(eventLoop)] = LoopPool(eventLoop: eventLoop, configuration: configuration, logger: logger)
        }
        self.pools = pools
    }

    /// Opens a tunnel stream from `source` to `destination` through the agent at
    /// the destination's address. Call on `eventLoop`; the stream channel it
    /// returns is on it too, answered with 200 and not yet reading (the caller
    /// splices it and then turns `autoRead` on).
    func openStream(from source: SpiffeID, to destination: SocketAddress, on eventLoop: EventLoop) -> EventLoopFuture<Channel> {
        eventLoop.preconditionInEventLoop()
        guard let pool = pools[ObjectIdentifier(eventLoop)] else {
            return eventLoop.makeFailedFuture(TunnelError.tunnelFailed(agent: destination.authority, reason: "event loop not served by the tunnel client"))
        }
        var agent = destination
        agent.port = Int(configuration.tunnelPort)
        let context: TLSContext
        do {
            context = try clientContext(source)
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let key = PoolKey(source: source, agent: agent, context: ObjectIdentifier(context))
        return pool.openStream(key: key, context: context, destination: destination).flatMapError { error in
            // A stream the destination's agent never answered (its connection
            // closed, or it was draining and cancelled or refused new streams)
            // was never processed, so it may be tried again (RFC 9113 §8.7);
            // the pool no longer offers a connection that said GOAWAY or
            // closed. An answer, a timeout or a connection that could not be
            // made is final.
            switch error {
            case TunnelError.refused, TunnelError.noResponse, TunnelError.tunnelFailed:
                return eventLoop.makeFailedFuture(error)
            default:
                return pool.openStream(key: key, context: context, destination: destination)
            }
        }
    }
}

/// One event loop's pool: the connections, their multiplexers and the streams
/// waiting for a connection still being made.
///
/// Sendable because it is only ever touched on its own loop (checked on entry);
/// it is made off the loop, when the client is, so `NIOLoopBound` cannot hold it.
private final class LoopPool: @unchecked Sendable {
    typealias Key = TunnelClient.PoolKey
    typealias Multiplexer = NIOHTTP2Handler.StreamMultiplexer

    private let eventLoop: EventLoop
    private let configuration: TunnelClient.Configuration
    private let logger: Logger
    private var state: TunnelPoolState<Key>
    private var multiplexers: [Int: Multiplexer] = [:]
    private var channels: [Int: Channel] = [:]
    private var waiters: [Int: [EventLoopPromise<Multiplexer>]] = [:]
    private let connectionsOpened = Counter(label: "mesh_agent_tunnel_client_connections_opened_total")
    private let connectionFailures = Counter(label: "mesh_agent_tunnel_client_connect_failures_total")

    init(eventLoop: EventLoop, configuration: TunnelClient.Configuration, logger: Logger) {
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.logger = logger
        self.state = TunnelPoolState(maximumStreamsPerConnection: configuration.maximumStreamsPerConnection)
    }

    func openStream(key: Key, context: TLSContext, destination: SocketAddress) -> EventLoopFuture<Channel> {
        eventLoop.preconditionInEventLoop()
        let id: Int
        let multiplexer: EventLoopFuture<Multiplexer>
        switch state.acquire(key) {
        case .use(let ready):
            id = ready
            if let existing = multiplexers[ready] {
                multiplexer = eventLoop.makeSucceededFuture(existing)
            } else {
                multiplexer = waitFor(ready)
            }
        case .wait(let connecting):
            id = connecting
            multiplexer = waitFor(connecting)
        case .open(let new):
            id = new
            multiplexer = waitFor(new)
            connect(id: new, key: key, context: context)
        }
        let stream = multiplexer.assumeIsolated().flatMap { [self] multiplexer in
            TunnelClient.openStream(on: multiplexer, to: destination, timeout: configuration.connectTimeout, eventLoop: eventLoop)
        }
        stream.whenComplete { [self] result in
            switch result {
            case .success(let channel):
                channel.closeFuture.assumeIsolated().whenComplete { [self] _ in release(id) }
            case .failure:
                release(id)
            }
        }
        return stream.nonisolated()
    }

    private func waitFor(_ id: Int) -> EventLoopFuture<Multiplexer> {
        let promise = eventLoop.makePromise(of: Multiplexer.self)
        waiters[id, default: []].append(promise)
        return promise.futureResult
    }

    private func release(_ id: Int) {
        switch state.release(id) {
        case .none:
            break
        case .startIdleTimer(let id, let generation):
            eventLoop.assumeIsolated().scheduleTask(in: configuration.idleTimeout) { [self] in
                if state.idleTimerFired(id, generation: generation) {
                    logger.debug("closing an idle tunnel connection")
                    multiplexers[id] = nil
                    channels.removeValue(forKey: id)?.close(promise: nil)
                }
            }
        }
    }

    // MARK: Connections

    private func connect(id: Int, key: Key, context: TLSContext) {
        let handshake = eventLoop.makePromise(of: Void.self)
        let multiplexerBox = NIOLoopBoundBox<Multiplexer?>.makeEmptyBox(valueType: Multiplexer.self, eventLoop: eventLoop)
        let agent = key.agent.authority
        let dialer = Dialer(mark: configuration.mark, connectTimeout: configuration.connectTimeout, namespace: configuration.namespace)
        let connected = dialer.connect(to: key.agent, on: eventLoop) { channel in
            let operations = channel.pipeline.syncOperations
            try operations.addHandler(TLSHandler(context: context))
            try operations.addHandler(HandshakeObserver(promise: handshake))
            multiplexerBox.value = try HBONE.configureConnection(
                operations, mode: .client, maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection
            ) { pushed in
                // Servers do not open streams in HBONE.
                pushed.close()
            }
            try operations.addHandler(GoAwayObserver { [self] in retire(id, agent: agent) })
        }
        connected.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let channel):
                channels[id] = channel
                channel.closeFuture.assumeIsolated().whenComplete { [self] _ in
                    state.remove(id)
                    multiplexers[id] = nil
                    channels[id] = nil
                    failWaiters(id, TunnelError.tunnelFailed(agent: agent, reason: "connection closed"))
                }
            case .failure(let error):
                handshake.fail(error)
            }
        }
        handshake.futureResult.assumeIsolated().flatMapThrowing { () -> Multiplexer in
            guard let multiplexer = multiplexerBox.value else {
                throw TunnelError.tunnelFailed(agent: agent, reason: "the HTTP/2 pipeline was not set up")
            }
            return multiplexer
        }.whenComplete { [self] result in
            switch result {
            case .success(let multiplexer):
                connectionsOpened.increment()
                state.connected(id)
                multiplexers[id] = multiplexer
                for waiter in waiters.removeValue(forKey: id) ?? [] {
                    waiter.succeed(multiplexer)
                }
            case .failure(let error):
                connectionFailures.increment()
                logger.warning("cannot open a tunnel to the agent at \(agent): \(error)")
                state.remove(id)
                channels.removeValue(forKey: id)?.close(promise: nil)
                failWaiters(id, TunnelError.tunnelFailed(agent: agent, reason: "\(error)"))
            }
        }
    }

    /// The peer agent said GOAWAY (it is draining): no new stream goes on this
    /// connection; those open finish, and the peer closes it after them.
    private func retire(_ id: Int, agent: String) {
        logger.debug("the agent at \(agent) is going away: new streams go on another connection")
        state.remove(id)
        multiplexers[id] = nil
    }

    private func failWaiters(_ id: Int, _ error: Error) {
        for waiter in waiters.removeValue(forKey: id) ?? [] {
            waiter.fail(error)
        }
    }
}

extension TunnelClient {
    /// Opens one tunnel stream on an established connection: sends the CONNECT
    /// for `destination` and succeeds once the peer answered 200 within
    /// `timeout`, with the stream not yet reading. `package` so that
    /// micro-bench measures this very code on in-memory connections.
    package static func openStream(
        on multiplexer: NIOHTTP2Handler.StreamMultiplexer, to destination: SocketAddress, timeout: TimeAmount, eventLoop: EventLoop
    ) -> EventLoopFuture<Channel> {
        let answered = eventLoop.makePromise(of: Void.self)
        let created = multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions?.setOption(.autoRead, value: false)
                try stream.pipeline.syncOperations.addHandler(TunnelResponseHandler(destination: destination, timeout: timeout, answered: answered))
            }
        }
        created.whenFailure { answered.fail($0) }
        return created.and(answered.futureResult).map { stream, _ in stream }
    }
}

/// Watches a pooled connection's own frames (stream 0) for the peer's GOAWAY.
private final class GoAwayObserver: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let goingAway: () -> Void
    private var seen = false

    init(_ goingAway: @escaping () -> Void) {
        self.goingAway = goingAway
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .goAway = unwrapInboundIn(data).payload, !seen {
            seen = true
            goingAway()
        }
        context.fireChannelRead(data)
    }
}

/// Reports the end of the TLS handshake on a new pooled connection, or why it
/// failed. Sits between TLS and HTTP/2.
private final class HandshakeObserver: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var promise: EventLoopPromise<Void>?

    init(promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let established = event as? TLSPeerIdentityEvent {
            if established.negotiatedProtocol == HBONE.applicationProtocol {
                promise?.succeed()
            } else {
                promise?.fail(TunnelError.tunnelFailed(
                    agent: context.channel.remoteAddress.map(\.authority) ?? "?",
                    reason: "the peer (\(established.peerIdentity)) did not agree to HTTP/2 (ALPN \(established.negotiatedProtocol ?? "none")); it is not a tunnel endpoint"))
                context.close(promise: nil)
            }
            promise = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise?.fail(error)
        promise = nil
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise?.fail(TunnelError.tunnelFailed(agent: context.channel.remoteAddress.map(\.authority) ?? "?", reason: "closed during the TLS handshake"))
        promise = nil
        context.fireChannelInactive()
    }
}

/// The first handler of an outgoing tunnel stream: sends the CONNECT, waits for
/// the answer (within `timeout`), and leaves once it is 200.
private final class TunnelResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let destination: SocketAddress
    private let timeout: TimeAmount
    private var answered: EventLoopPromise<Void>?
    private var timer: Scheduled<Void>?

    init(destination: SocketAddress, timeout: TimeAmount, answered: EventLoopPromise<Void>) {
        self.destination = destination
        self.timeout = timeout
        self.answered = answered
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        let request = HTTP2Frame.FramePayload.headers(.init(headers: HBONE.connectRequest(to: destination)))
        // The CONNECT cannot be sent when the peer's GOAWAY arrived between
        // picking this connection and opening the stream: the stream never
        // reached the peer, so it fails at once and may be tried again.
        let sent = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(request), promise: sent)
        sent.futureResult.assumeIsolated().whenFailure { [self] _ in
            fail(TunnelError.streamClosedBeforeResponse(destination: destination.authority), context: context)
        }
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            fail(TunnelError.noResponse(destination: destination.authority, after: timeout), context: context)
        }
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard answered != nil else {
            context.fireChannelRead(data)
            return
        }
        guard case .headers(let response) = unwrapInboundIn(data) else {
            // Nothing but the answer may come first.
            fail(TunnelError.streamClosedBeforeResponse(destination: destination.authority), context: context)
            return
        }
        let status = HBONE.status(of: response.headers) ?? 0
        guard status == HBONE.Status.ok.rawValue, !response.endStream else {
            fail(TunnelError.refused(destination: destination.authority, status: status), context: context)
            return
        }
        timer?.cancel()
        let promise = answered
        answered = nil
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
        promise?.succeed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(TunnelError.streamClosedBeforeResponse(destination: destination.authority), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(error, context: context)
    }

    private func fail(_ error: Error, context: ChannelHandlerContext) {
        timer?.cancel()
        guard let promise = answered else { return }
        answered = nil
        promise.fail(error)
        context.close(promise: nil)
    }
}
