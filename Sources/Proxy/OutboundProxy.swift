import LinuxNet
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Who opened a captured connection. The agent answers from the socket's cgroup;
/// tests can answer however they like.
public protocol SourceIdentifier: Sendable {
    func identify(client: SocketAddress, originalDestination: SocketAddress) throws -> Workload
}

/// Which workload on this node, if any, a destination address belongs to.
public protocol LocalDestinations: Sendable {
    func localWorkload(at destination: SocketAddress) -> Workload?
}

/// Where finished connections are reported.
public protocol AccessLogSink: Sendable {
    func record(_ entry: AccessLogEntry)
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

        public init(port: UInt16, mark: UInt32, connectTimeout: TimeAmount) {
            self.port = port
            self.mark = mark
            self.connectTimeout = connectTimeout
        }
    }

    private let configuration: Configuration
    private let group: EventLoopGroup
    private let identifier: SourceIdentifier
    private let destinations: LocalDestinations
    private let accessLog: AccessLogSink
    private let logger: Logger
    public let connections: ConnectionTracker
    private let metrics = OutboundMetrics()
    /// The bound listener channels, set by `start` and taken by `stopAccepting`.
    private let listeners = NIOLockedValueBox<[Channel]>([])

    public init(configuration: Configuration, group: EventLoopGroup, identifier: SourceIdentifier, destinations: LocalDestinations, accessLog: AccessLogSink, connections: ConnectionTracker, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.identifier = identifier
        self.destinations = destinations
        self.accessLog = accessLog
        self.connections = connections
        self.logger = logger
    }

    /// Binds every listen address. The capture rules must not be installed before
    /// this succeeds, or captured connections would be refused by the kernel.
    public func start() async throws {
        var bound: [Channel] = []
        for address in configuration.bindAddresses {
            do {
                let channel = try await makeBootstrap().bind(host: address, port: Int(configuration.port)).get()
                bound.append(channel)
            } catch where address.contains(":") && !bound.isEmpty {
                // A host without IPv6 on loopback still works for IPv4.
                logger.warning("outbound listener not bound on [\(address)]:\(configuration.port): \(error); IPv6 connections will not be captured")
            } catch {
                for channel in bound { try? await channel.close() }
                throw ProxyError.cannotListen(address: address, port: configuration.port, underlying: "\(error)")
            }
        }
        listeners.withLockedValue { $0 = bound }
        logger.info("outbound listener ready on port \(configuration.port)")
    }

    /// Stops accepting; connections already proxied carry on.
    public func stopAccepting() async {
        for channel in listeners.withLockedValue({ channels in defer { channels = [] }; return channels }) {
            try? await channel.close()
        }
    }

    private func makeBootstrap() -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: Self.receiveBuffers)
            .childChannelInitializer { [self] channel in
                accept(channel)
            }
    }

    /// Bulk transfers read up to 256 KiB per syscall (NIO's default stops at
    /// 64 KiB); the buffer grows only while reads fill it, so idle and chatty
    /// connections keep small ones.
    static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16 * 1024, maximum: 256 * 1024)

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
            do {
                let workload = try self.identifier.identify(client: peer, originalDestination: destination)
                return self.connect(client: client, peer: peer, workload: workload, destination: destination, started: started)
            } catch {
                self.metrics.refused(.unidentified)
                self.logger.warning("refused a captured connection from \(peer) to \(destination): source not identified: \(error)")
                var entry = AccessLogEntry(time: wallClock(), direction: .outbound, tls: .none, action: .deny, reason: "source not identified: \(error)")
                entry.sourceAddress = peer
                entry.destinationAddress = destination
                self.accessLog.record(entry)
                return client.eventLoop.makeFailedFuture(error)
            }
        }
    }

    private func connect(client: Channel, peer: SocketAddress, workload: Workload, destination: SocketAddress, started: NIODeadline) -> EventLoopFuture<Void> {
        let (clientSide, upstreamSide) = SpliceHandler.pair()
        let handlers = NIOLoopBound((client: clientSide, upstream: upstreamSide), eventLoop: client.eventLoop)
        var entry = AccessLogEntry(time: wallClock(), direction: .outbound, tls: .none, action: .allow, reason: "passthrough")
        entry.sourceAddress = peer
        entry.sourceWorkload = workload.qualifiedName
        entry.sourceIdentity = workload.identity.description
        entry.destinationAddress = destination
        // Both ends on this node: no tunnel is needed, and both identities are
        // known from the registry.
        if let local = destinations.localWorkload(at: destination) {
            entry.reason = "same-node"
            entry.destinationWorkload = local.qualifiedName
            entry.destinationIdentity = local.identity.description
        }

        let upstream = ClientBootstrap(group: client.eventLoop)
            .channelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_MARK)), value: Int(CInt(bitPattern: configuration.mark)))
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: Self.receiveBuffers)
            .connectTimeout(configuration.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handlers.value.upstream)
                }
            }
            .connect(to: destination)

        let opened = entry
        return upstream.flatMapError { error in
            self.metrics.connectFailed()
            var failed = opened
            failed.reason = "connect to destination failed: \(error)"
            failed.durationMilliseconds = Self.milliseconds(since: started)
            self.accessLog.record(failed)
            return client.eventLoop.makeFailedFuture(error) as EventLoopFuture<Channel>
        }.flatMapThrowing { (upstreamChannel: Channel) -> Void in
            try client.pipeline.syncOperations.addHandler(handlers.value.client)
            self.metrics.opened()
            client.closeFuture.and(upstreamChannel.closeFuture).hop(to: client.eventLoop).whenComplete { _ in
                var finished = opened
                finished.bytesReceived = handlers.value.client.bytesRead
                finished.bytesSent = handlers.value.upstream.bytesRead
                finished.durationMilliseconds = Self.milliseconds(since: started)
                self.metrics.closed()
                self.accessLog.record(finished)
            }
        }
    }

    private static func milliseconds(since start: NIODeadline) -> Double {
        Double((NIODeadline.now() - start).nanoseconds) / 1_000_000
    }
}

public enum ProxyError: Error, CustomStringConvertible {
    case cannotListen(address: String, port: UInt16, underlying: String)

    public var description: String {
        switch self {
        case .cannotListen(let address, let port, let underlying):
            return "cannot listen on \(address) port \(port): \(underlying); is another process (or another mesh-agent) using the port?"
        }
    }
}

func wallClock() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1_000_000_000
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
    private let openedCounter = Counter(label: "mesh_agent_outbound_connections_opened_total")
    private let closedCounter = Counter(label: "mesh_agent_outbound_connections_closed_total")
    private let connectFailures = Counter(label: "mesh_agent_outbound_connect_failures_total")

    init() {
        var refusals: [String: Counter] = [:]
        for reason in RefusalReason.allCases {
            refusals[reason.rawValue] = Counter(label: "mesh_agent_outbound_refused_total", dimensions: [("reason", reason.rawValue)])
        }
        self.refusals = refusals
    }

    func refused(_ reason: RefusalReason) { refusals[reason.rawValue]?.increment() }
    func opened() { openedCounter.increment() }
    func closed() { closedCounter.increment() }
    func connectFailed() { connectFailures.increment() }
}
