import Config
import Identity
import LinuxNet
import Logging
import NIOCore
import Proxy
import TLS
import Workloads

/// The agent's listeners, made from the config, started together before
/// capture exists and stopped together when it drains.
struct Listeners {
    let outbound: OutboundProxy
    let tunnel: TunnelServer
    let inboundPlaintext: InboundPlaintextProxy

    init(
        config: AgentConfig, group: EventLoopGroup, workloadTLS: WorkloadTLS, agentIdentity: SpiffeID, identifier: SourceIdentifier,
        destinations: LocalDestinations, accessLog: AccessLogSink, connections: ConnectionTracker, authorizer: InboundAuthorizer,
        sockets: ListeningSockets, namespace: SocketNamespace? = nil, logger: Logger
    ) {
        let connectTimeout = config.limits.connectTimeout.timeAmount
        var tunnelClientConfiguration = TunnelClient.Configuration(tunnelPort: config.ports.tunnel, mark: config.mark, connectTimeout: connectTimeout)
        tunnelClientConfiguration.namespace = namespace
        var outboundConfiguration = OutboundProxy.Configuration(
            port: config.ports.outbound, mark: config.mark, connectTimeout: connectTimeout, meshNetworks: config.meshNetworks)
        outboundConfiguration.namespace = namespace
        var tunnelConfiguration = TunnelServer.Configuration(port: config.ports.tunnel, mark: config.mark, connectTimeout: connectTimeout)
        tunnelConfiguration.namespace = namespace
        var plaintextConfiguration = InboundPlaintextProxy.Configuration(port: config.ports.inboundPlaintext, mark: config.mark, connectTimeout: connectTimeout)
        plaintextConfiguration.namespace = namespace
        // The source agent presents the workload's certificate and accepts only an
        // agent at the other end; the destination agent answers as itself.
        let tunnelClient = TunnelClient(
            configuration: tunnelClientConfiguration, group: group,
            clientContext: { source in try workloadTLS.context(for: source, role: .client, expectedPeer: agentIdentity) }, logger: logger)
        outbound = OutboundProxy(
            configuration: outboundConfiguration,
            group: group, identifier: identifier, destinations: destinations, accessLog: accessLog, connections: connections, tunnel: tunnelClient,
            authorizer: authorizer, sockets: sockets, logger: logger)
        tunnel = TunnelServer(
            configuration: tunnelConfiguration, group: group,
            serverContext: { try workloadTLS.context(for: agentIdentity, role: .server) }, destinations: destinations, accessLog: accessLog,
            connections: connections, authorizer: authorizer, sockets: sockets, logger: logger)
        inboundPlaintext = InboundPlaintextProxy(
            configuration: plaintextConfiguration, group: group,
            destinations: destinations, accessLog: accessLog, connections: connections, authorizer: authorizer, sockets: sockets, logger: logger)
    }

    func start() async throws {
        try await tunnel.start()
        try await inboundPlaintext.start()
        try await outbound.start()
    }

    private var all: [ListenerSet] { [outbound.listeners, inboundPlaintext.listeners, tunnel.listeners] }

    /// Stops accepting and tells tunnel peers to open no more streams here.
    func stopAccepting() async {
        await pauseAccepting()
        // Pooled peer connections would otherwise keep bringing new streams.
        tunnel.drain()
    }

    /// Stops accepting only: the listening sockets stay open, and
    /// connections wait in their queues for whoever accepts next.
    func pauseAccepting() async {
        for listener in all { await listener.pause() }
    }

    /// Accepts again after `pauseAccepting`, on the same sockets.
    func resumeAccepting() async {
        for listener in all { await listener.resume() }
    }

    /// Closes the listening channels, once the connections have drained.
    func close() async {
        for listener in all { await listener.close() }
    }
}

extension Duration {
    var timeAmount: TimeAmount {
        let (seconds, attoseconds) = components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
