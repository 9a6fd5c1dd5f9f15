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
    /// A pooled connection's stream table, handed between the pool's futures.
    typealias Multiplexer = NIOLoopBound<TunnelStreams>

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
            multiplexer.value.openStream(to: destination, timeout: configuration.connectTimeout, eventLoop: eventLoop)
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
            let streams = try HBONE.configureConnection(
                operations, role: .client, maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection)
            streams.onGoAway = { [self] in retire(id, agent: agent) }
            multiplexerBox.value = NIOLoopBound(streams, eventLoop: channel.eventLoop)
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
