import LinuxNet
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import Policy
import TLS
import Workloads

/// The tunnel listener (15008): mutual TLS with the trust bundle, HTTP/2, and one
/// `CONNECT` stream per tunnelled connection, each to a workload on this node.
///
/// An authenticated peer must not turn the agent into an open proxy: a target
/// that is not a node address and a port a present workload serves is refused
/// with 403, and nothing is dialled.
public final class TunnelServer: Sendable {
    public struct Configuration: Sendable {
        public var port: UInt16
        public var bindAddresses: [String] = ["0.0.0.0", "::"]
        public var mark: UInt32
        public var connectTimeout: TimeAmount
        /// A workload's own network namespace, where the listener's sockets and
        /// its dials are made; the node's when nil.
        public var namespace: SocketNamespace?
        /// Streams one peer connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
        public var maximumConcurrentStreams = HBONE.defaultMaximumStreamsPerConnection
        /// A peer connection with no open stream for this long is closed.
        public var idleTimeout: TimeAmount = .minutes(5)
        /// How large an inspected HTTP request head may be.
        public var requestHeadLimit = HTTPHeadSizeLimit()

        public init(port: UInt16, mark: UInt32, connectTimeout: TimeAmount) {
            self.port = port
            self.mark = mark
            self.connectTimeout = connectTimeout
        }
    }

    private let configuration: Configuration
    private let group: EventLoopGroup
    private let serverContext: @Sendable () throws -> TLSContext
    private let destinations: LocalDestinations
    private let accessLog: AccessLogSink
    private let connections: ConnectionTracker
    private let forwarder: WorkloadForwarder
    private let logger: Logger
    /// Its listening sockets; the agent pauses and closes them.
    package let listeners: ListenerSet
    private let metrics = TunnelServerMetrics()
    /// Peer connections open now, so that a drain can tell each to stop.
    private let peers = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])

    /// - Parameter serverContext: the TLS context to accept with, asked for each
    ///   new peer connection (it follows certificate rotation).
    public init(
        configuration: Configuration, group: EventLoopGroup, serverContext: @escaping @Sendable () throws -> TLSContext,
        destinations: LocalDestinations, accessLog: AccessLogSink, connections: ConnectionTracker, authorizer: InboundAuthorizer,
        sockets: ListeningSockets, logger: Logger
    ) {
        self.configuration = configuration
        self.listeners = ListenerSet(name: "tunnel", sockets: sockets)
        self.group = group
        self.serverContext = serverContext
        self.destinations = destinations
        self.accessLog = accessLog
        self.connections = connections
        self.logger = logger
        self.forwarder = WorkloadForwarder(
            arrivalLabel: "tunnel", dialer: Dialer(mark: configuration.mark, connectTimeout: configuration.connectTimeout, namespace: configuration.namespace), accessLog: accessLog,
            connections: connections, authorizer: authorizer, requestHeadLimit: configuration.requestHeadLimit,
            counters: metrics.listenerCounters, logger: logger)
    }

    public func start() async throws {
        try await listeners.bind(group: group, addresses: configuration.bindAddresses, port: configuration.port, logger: logger) { [self] channel in
            channel.eventLoop.makeCompletedFuture { try acceptPeer(channel) }
        }
    }


    /// Tells every peer connection to open no more streams (HTTP/2 GOAWAY naming
    /// the last stream it opened); streams already open carry on, and each
    /// connection closes once its last stream ends. Peers then open new
    /// connections to an agent that is still accepting, or fail fast.
    public func drain() {
        for peer in peers.withLockedValue({ Array($0.values) }) {
            peer.pipeline.fireUserInboundEventTriggered(TunnelConnectionMonitor.Drain())
        }
    }

    private func acceptPeer(_ channel: Channel) throws {
        let context: TLSContext
        do {
            context = try serverContext()
        } catch {
            metrics.refusedPeer("no_certificate")
            logger.error("refused a tunnel connection from \(channel.remoteAddress.map(\.authority) ?? "?"): the agent has no certificate to answer with: \(error)")
            throw error
        }
        let tls = TLSHandler(context: context)
        let peerAddress = channel.remoteAddress
        let operations = channel.pipeline.syncOperations
        try operations.addHandler(tls)
        let monitor = TunnelConnectionMonitor(idleTimeout: configuration.idleTimeout, logger: logger, metrics: metrics)
        _ = try HBONE.configureConnection(operations, role: .server { [self] stream, request in
            // Streams are counted here, where they open and close.
            monitor.streamOpened(stream.streamID)
            stream.closeFuture.assumeIsolated().whenComplete { _ in monitor.streamClosed() }
            let peerIdentity = tls.peerIdentity
            guard !request.endStream else {
                log(AccessLogEntry(time: wallClock(), direction: .inbound, tls: .mutual, action: .deny, reason: "stream did not start with a CONNECT request"))
                stream.close(promise: nil)
                return
            }
            _ = open(request: request.headers, stream: stream, peerIdentity: peerIdentity, peerAddress: peerAddress, started: .now())
        }, maximumConcurrentStreams: configuration.maximumConcurrentStreams)
        try operations.addHandler(monitor)
        let key = ObjectIdentifier(channel)
        peers.withLockedValue { $0[key] = channel }
        channel.closeFuture.whenComplete { [peers] _ in
            peers.withLockedValue { $0[key] = nil }
        }
    }

    // MARK: Serving one stream

    /// Reads a tunnel request's target and hands the stream to admission, which
    /// decides it and, when it is allowed, dials the workload.
    private func open(
        request: HPACKHeaders, stream: TunnelStreamChannel, peerIdentity: SpiffeID?, peerAddress: SocketAddress?,
        started: NIODeadline
    ) -> EventLoopFuture<Void> {
        let target: SocketAddress
        switch HBONE.target(of: request) {
        case .failure(let refusal):
            return refuse(stream, refusal, peerIdentity: peerIdentity, peerAddress: peerAddress)
        case .success(let address):
            target = address
        }
        guard let peerIdentity else {
            // Cannot happen after a verified handshake; refused rather than trusted.
            return refuse(stream, HBONE.Refusal(status: .forbidden, reason: "peer has no verified identity"), peerIdentity: nil, peerAddress: peerAddress)
        }
        let arrival = Arrival.tunnel(peer: peerIdentity)
        guard connections.admit(stream) else {
            return forwarder.refuseOverLimit(arrival, client: .tunnelStream(stream), source: peerAddress, destination: target)
        }
        return forwarder.admit(
            arrival, client: .tunnelStream(stream), source: peerAddress, destination: target, resolved: destinations.resolve(target), started: started)
    }

    /// Answers a request that is not a tunnel request (400) with its status,
    /// ends the stream and logs it.
    private func refuse(_ stream: TunnelStreamChannel, _ refusal: HBONE.Refusal, peerIdentity: SpiffeID?, peerAddress: SocketAddress?) -> EventLoopFuture<Void> {
        TunnelServerMetrics.refusedStream(refusal.status)
        var entry = AccessLogEntry(time: wallClock(), direction: .inbound, tls: .mutual, action: .deny, reason: refusal.reason)
        entry.sourceAddress = peerAddress
        entry.sourceIdentity = peerIdentity?.description
        accessLog.record(entry)
        logger.debug("tunnel request from \(entry.sourceIdentity ?? "?") refused with \(refusal.status.rawValue): \(refusal.reason)")
        return stream.refuse(refusal.status)
    }
}

extension TunnelServer {
    private func log(_ entry: AccessLogEntry) {
        accessLog.record(entry)
    }
}

struct TunnelServerMetrics: Sendable {
    let listenerCounters = WorkloadForwarder.ListenerCounters(
        opened: Counter(label: "mesh_agent_inbound_connections_opened_total", dimensions: [("tls", "mutual")]),
        closed: Counter(label: "mesh_agent_inbound_connections_closed_total", dimensions: [("tls", "mutual")]),
        connectFailures: Counter(label: "mesh_agent_inbound_connect_failures_total", dimensions: [("tls", "mutual")]))

    private static let refusedStreams = CounterFamily(label: "mesh_agent_tunnel_requests_refused_total", dimension: "status")
    private let failedPeers = CounterFamily(label: "mesh_agent_tunnel_connections_failed_total", dimension: "reason")

    static func refusedStream(_ status: HBONE.Status) {
        refusedStreams.increment(String(status.rawValue))
    }

    func refusedPeer(_ reason: String) {
        failedPeers.increment(reason)
    }
}

func milliseconds(since start: NIODeadline) -> Double {
    Double((NIODeadline.now() - start).nanoseconds) / 1_000_000
}
