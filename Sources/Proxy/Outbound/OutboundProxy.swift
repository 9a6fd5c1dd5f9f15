import LinuxNet
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Policy
import Workloads

/// Where finished connections are reported.
public protocol AccessLogSink: Sendable {
    func record(_ entry: AccessLogEntry)
    /// Counts `entry` in the service graph without writing a line: what
    /// `graph.http` sees of requests that no policy inspects.
    func observe(_ entry: AccessLogEntry)
    /// Whether the requests of connections that are not inspected should be
    /// watched for `observe` (`graph.http: true`).
    var observesRequests: Bool { get }
}

/// Accepts connections that the capture rules redirected to the outbound port,
/// finds who opened them and where they were going, and proxies them there.
public final class OutboundProxy: Sendable {
    public struct Configuration: Sendable {
        public var port: UInt16
        /// Addresses the listener binds; loopback only, since REDIRECT in the output
        /// hook sends to 127.0.0.1 and ::1.
        public var bindAddresses: [String] = ["127.0.0.1", "::1"]
        public var mark: UInt32
        public var connectTimeout: TimeAmount
        /// A workload's own network namespace, where the listener's sockets and
        /// its dials are made; the node's when nil.
        public var namespace: SocketNamespace?
        /// Destinations whose agents speak HBONE: connections to them (other than
        /// to this node's workloads) go through the tunnel.
        public var meshNetworks: [IPPrefix]
        /// How large an inspected HTTP request head may be (same-node
        /// connections are inspected here, for the destination's policy).
        public var requestHeadLimit = HTTPHeadSizeLimit()

        public init(port: UInt16, mark: UInt32, connectTimeout: TimeAmount, meshNetworks: [IPPrefix] = []) {
            self.port = port
            self.mark = mark
            self.connectTimeout = connectTimeout
            self.meshNetworks = meshNetworks
        }
    }

    private let configuration: Configuration
    private let group: EventLoopGroup
    private let identifier: SourceIdentifier
    private let destinations: LocalDestinations
    private let accessLog: AccessLogSink
    private let tunnel: TunnelClient?
    private let logger: Logger
    public let connections: ConnectionTracker
    private let metrics = OutboundMetrics()
    /// Same-node connections: admitted for the destination workload here.
    private let sameNode: WorkloadForwarder
    /// Its listening sockets; the agent pauses and closes them.
    package let listeners: ListenerSet

    /// - Parameter tunnel: carries connections to `meshNetworks`; without one,
    ///   every destination that is not on this node is passed through.
    public init(
        configuration: Configuration, group: EventLoopGroup, identifier: SourceIdentifier, destinations: LocalDestinations,
        accessLog: AccessLogSink, connections: ConnectionTracker, tunnel: TunnelClient? = nil, authorizer: InboundAuthorizer,
        sockets: ListeningSockets, logger: Logger
    ) {
        self.configuration = configuration
        self.listeners = ListenerSet(name: "outbound", sockets: sockets)
        self.group = group
        self.identifier = identifier
        self.destinations = destinations
        self.accessLog = accessLog
        self.connections = connections
        self.tunnel = tunnel
        self.logger = logger
        self.sameNode = WorkloadForwarder(
            arrivalLabel: "same_node", dialer: Dialer(mark: configuration.mark, connectTimeout: configuration.connectTimeout, namespace: configuration.namespace), accessLog: accessLog,
            connections: connections, authorizer: authorizer, requestHeadLimit: configuration.requestHeadLimit, counters: metrics.listenerCounters,
            logger: logger)
    }

    /// Binds every listen address. The capture rules must not be installed before
    /// this succeeds, or captured connections would be refused by the kernel.
    public func start() async throws {
        try await listeners.bind(group: group, addresses: configuration.bindAddresses, port: configuration.port, logger: logger) { [self] channel in
            accept(channel)
        }
    }


    // MARK: One connection

    private func accept(_ client: Channel) -> EventLoopFuture<Void> {
        let started = NIODeadline.now()
        guard let peer = client.remoteAddress else {
            return client.close()
        }
        guard connections.admit(client) else {
            metrics.refused(.overLimit)
            logger.warning("refused a captured connection from \(peer): \(connections.maximum) connections are already open (limits.maxConnections)")
            return client.close()
        }
        return OriginalDestination.of(client).flatMapError { error in
            self.metrics.refused(.notRedirected)
            self.logger.debug("refused a direct connection to the outbound port from \(peer): \(error)")
            return client.eventLoop.makeFailedFuture(error) as EventLoopFuture<SocketAddress>
        }.flatMap { destination in
            self.identifier.identify(client: peer, listener: client.localAddress, originalDestination: destination, on: client.eventLoop)
                .flatMapError { error in
                    self.metrics.refused(.unidentified)
                    self.logger.warning("refused a captured connection from \(peer) to \(destination): source not identified: \(error)")
                    var entry = AccessLogEntry(time: wallClock(), direction: .outbound, tls: .none, action: .deny, reason: "source not identified: \(error)")
                    entry.sourceAddress = peer
                    entry.destinationAddress = destination
                    self.accessLog.record(entry)
                    return client.eventLoop.makeFailedFuture(error)
                }
                .flatMap { source in
                    self.connect(client: client, peer: source.address, workload: source.workload, destination: destination, started: started)
                }
        }
    }

    /// Where a connection goes: to a workload on this node directly, to another
    /// node's agent through the tunnel, or, outside the mesh, straight through.
    private func connect(client: Channel, peer: SocketAddress, workload: Workload, destination: SocketAddress, started: NIODeadline) -> EventLoopFuture<Void> {
        // A forbidden destination is never a workload here; a link-local one
        // (a cloud metadata service) is still passed through, as before capture.
        if case .workload(let local) = destinations.resolve(destination) {
            // Both ends on this node: no tunnel is needed, both identities are
            // known, and this agent admits the connection as the destination's
            // agent would admit a tunnel stream.
            return sameNode.admit(
                .sameNode(source: workload), client: .socket(client), source: peer, destination: destination, resolved: .workload(local),
                started: started)
        }
        var entry = AccessLogEntry(time: wallClock(), direction: .outbound, tls: .none, action: .allow, reason: "passthrough")
        entry.sourceAddress = peer
        entry.sourceWorkload = workload.qualifiedName
        entry.sourceIdentity = workload.identity.description
        entry.destinationAddress = destination
        let carrier = Carrier.splice(on: client.eventLoop)

        let upstream: EventLoopFuture<Channel>
        if let tunnel, configuration.meshNetworks.contains(where: { $0.contains(destination) }) {
            entry.reason = "hbone"
            entry.tls = .mutual
            upstream = tunnel.openStream(from: workload.identity, to: destination, on: client.eventLoop).flatMapThrowing { stream in
                try carrier.installUpstream(on: stream)
                // Streams open without reading, so that nothing arrives before the splice.
                try stream.syncOptions?.setOption(.autoRead, value: true)
                return stream
            }
        } else {
            upstream = dial(destination, on: client.eventLoop, carrier: carrier)
        }

        let opened = entry
        return upstream.flatMapError { error in
            self.metrics.connectFailed()
            var failed = opened
            failed.reason = "connect to destination failed: \(error)"
            if case TunnelError.refused(_, let status)? = error as? TunnelError, status == HBONE.Status.forbidden.rawValue {
                // The destination's agent refused it: its policy, or a target it does not serve.
                failed.action = .deny
            }
            failed.durationMilliseconds = milliseconds(since: started)
            self.accessLog.record(failed)
            return client.eventLoop.makeFailedFuture(error) as EventLoopFuture<Channel>
        }.flatMapThrowing { (upstreamChannel: Channel) -> Void in
            try completeProxy(
                client: client, upstream: upstreamChannel, carrier: carrier, entry: opened, started: started, accessLog: self.accessLog,
                tracker: self.connections
            ) {
                self.metrics.closed()
            }
            self.metrics.opened()
        }
    }

    private func dial(_ destination: SocketAddress, on eventLoop: EventLoop, carrier: Carrier) -> EventLoopFuture<Channel> {
        Dialer(mark: configuration.mark, connectTimeout: configuration.connectTimeout, namespace: configuration.namespace).connect(to: destination, on: eventLoop) { channel in
            try carrier.installUpstream(on: channel)
        }
    }
}

/// Counters for the outbound path, created once: swift-metrics looks the backend
/// up when a metric is made, not when it is incremented.
struct OutboundMetrics: Sendable {
    enum RefusalReason: String, CaseIterable {
        case notRedirected = "not_redirected"
        case unidentified = "source_unidentified"
        case overLimit = "over_connection_limit"
    }

    private let refusals: [String: Counter]
    /// Every outbound connection, same-node ones included.
    let listenerCounters = WorkloadForwarder.ListenerCounters(
        opened: Counter(label: "mesh_agent_outbound_connections_opened_total"),
        closed: Counter(label: "mesh_agent_outbound_connections_closed_total"),
        connectFailures: Counter(label: "mesh_agent_outbound_connect_failures_total"))

    init() {
        var refusals: [String: Counter] = [:]
        for reason in RefusalReason.allCases {
            refusals[reason.rawValue] = Counter(label: "mesh_agent_outbound_refused_total", dimensions: [("reason", reason.rawValue)])
        }
        self.refusals = refusals
    }

    func refused(_ reason: RefusalReason) { refusals[reason.rawValue]?.increment() }
    func opened() { listenerCounters.opened.increment() }
    func closed() { listenerCounters.closed.increment() }
    func connectFailed() { listenerCounters.connectFailures.increment() }
}
