import LinuxNet
import Logging
import Metrics
import NIOCore
import NIOPosix
import Policy
import Workloads

/// The inbound-plaintext listener (15006): connections from outside the node to a
/// PERMISSIVE workload port, redirected here by the inbound guard, are forwarded
/// to the workload with an unauthenticated source and logged `tls: none`.
///
/// Only redirected connections to a port a workload on this node serves are
/// forwarded; anything else (a direct connection to this port included) is closed.
public final class InboundPlaintextProxy: Sendable {
    public struct Configuration: Sendable {
        public var port: UInt16
        /// Redirect in prerouting rewrites the destination to the address of the
        /// interface the packet came in on, so every address is bound.
        public var bindAddresses: [String] = ["0.0.0.0", "::"]
        public var mark: UInt32
        public var connectTimeout: TimeAmount
        /// A workload's own network namespace, where the listener's sockets and
        /// its dials are made; the node's when nil.
        public var namespace: SocketNamespace?
        public var requestHeadLimit = HTTPHeadSizeLimit()

        public init(port: UInt16, mark: UInt32, connectTimeout: TimeAmount) {
            self.port = port
            self.mark = mark
            self.connectTimeout = connectTimeout
        }
    }

    private let configuration: Configuration
    private let group: EventLoopGroup
    private let destinations: LocalDestinations
    private let connections: ConnectionTracker
    private let forwarder: WorkloadForwarder
    private let logger: Logger
    /// Its listening sockets; the agent pauses and closes them.
    package let listeners: ListenerSet

    public init(
        configuration: Configuration, group: EventLoopGroup, destinations: LocalDestinations, accessLog: AccessLogSink, connections: ConnectionTracker,
        authorizer: InboundAuthorizer, sockets: ListeningSockets, logger: Logger
    ) {
        self.configuration = configuration
        self.listeners = ListenerSet(name: "inbound-plaintext", sockets: sockets)
        self.group = group
        self.destinations = destinations
        self.connections = connections
        self.logger = logger
        self.forwarder = WorkloadForwarder(
            arrivalLabel: Arrival.plaintext.label, dialer: Dialer(mark: configuration.mark, connectTimeout: configuration.connectTimeout, namespace: configuration.namespace),
            accessLog: accessLog, connections: connections, authorizer: authorizer, requestHeadLimit: configuration.requestHeadLimit,
            counters: WorkloadForwarder.ListenerCounters(
                opened: Counter(label: "mesh_agent_inbound_connections_opened_total", dimensions: [("tls", "none")]),
                closed: Counter(label: "mesh_agent_inbound_connections_closed_total", dimensions: [("tls", "none")]),
                connectFailures: Counter(label: "mesh_agent_inbound_connect_failures_total", dimensions: [("tls", "none")])),
            logger: logger)
    }

    public func start() async throws {
        try await listeners.bind(group: group, addresses: configuration.bindAddresses, port: configuration.port, logger: logger) { [self] channel in
            accept(channel)
        }
    }


    /// A redirected connection goes to admission with its original destination;
    /// one that was not redirected (a direct connection to this port) is closed.
    private func accept(_ client: Channel) -> EventLoopFuture<Void> {
        let started = NIODeadline.now()
        guard let peer = client.remoteAddress else {
            return client.close()
        }
        return OriginalDestination.of(client).flatMap { destination in
            guard self.connections.admit(client) else {
                return self.forwarder.refuseOverLimit(.plaintext, client: .socket(client), source: peer, destination: destination)
            }
            return self.forwarder.admit(
                .plaintext, client: .socket(client), source: peer, destination: destination, resolved: self.destinations.resolve(destination),
                started: started)
        }
    }
}
