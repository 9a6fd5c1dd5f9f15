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
    private let accessLog: AccessLogSink
    private let connections: ConnectionTracker
    private let authorizer: InboundAuthorizer
    private let logger: Logger
    private let listeners = ListenerSet(name: "inbound plaintext")
    private let openedCounter = Counter(label: "mesh_agent_inbound_connections_opened_total", dimensions: [("tls", "none")])
    private let closedCounter = Counter(label: "mesh_agent_inbound_connections_closed_total", dimensions: [("tls", "none")])
    private let refusedCounter = Counter(label: "mesh_agent_inbound_plaintext_refused_total")
    private let forbidden = ForbiddenDestinationMetrics(path: "inbound_plaintext")

    public init(
        configuration: Configuration, group: EventLoopGroup, destinations: LocalDestinations, accessLog: AccessLogSink, connections: ConnectionTracker,
        authorizer: InboundAuthorizer, logger: Logger
    ) {
        self.configuration = configuration
        self.authorizer = authorizer
        self.group = group
        self.destinations = destinations
        self.accessLog = accessLog
        self.connections = connections
        self.logger = logger
    }

    public func start() async throws {
        try await listeners.bind(group: group, addresses: configuration.bindAddresses, port: configuration.port, warn: { logger.warning("\($0)") }) { [self] channel in
            accept(channel)
        }
        logger.info("inbound plaintext listener ready on port \(configuration.port)")
    }

    public func stopAccepting() async {
        await listeners.close()
    }

    private func accept(_ client: Channel) -> EventLoopFuture<Void> {
        let started = NIODeadline.now()
        guard let peer = client.remoteAddress else {
            return client.close()
        }
        return OriginalDestination.of(client).flatMap { destination in
            var entry = AccessLogEntry(time: wallClock(), direction: .inbound, tls: .none, action: .allow, reason: "permissive")
            entry.sourceAddress = peer
            entry.destinationAddress = destination
            let workload: Workload
            switch self.destinations.resolve(destination) {
            case .workload(let found):
                workload = found
            case .forbidden(let kind):
                self.refusedCounter.increment()
                self.forbidden.refused(kind)
                entry.action = .deny
                entry.reason = "plaintext to \(kind.reason(destination))"
                self.accessLog.record(entry)
                return client.eventLoop.makeFailedFuture(InboundRefusal.notAWorkload)
            case .elsewhere:
                self.refusedCounter.increment()
                entry.action = .deny
                entry.reason = "plaintext to \(destination.authority), which is not a workload port on this node"
                self.accessLog.record(entry)
                return client.eventLoop.makeFailedFuture(InboundRefusal.notAWorkload)
            }
            entry.destinationWorkload = workload.qualifiedName
            entry.destinationIdentity = workload.identity.description
            let attributes = ConnectionAttributes(peer: nil, source: peer, destination: destination)
            let inspected: Bool
            switch self.authorizer.authorize(attributes, to: workload) {
            case .decided(let decision):
                entry.record(decision)
                guard decision.outcome == .allow else {
                    self.accessLog.record(entry)
                    return client.eventLoop.makeFailedFuture(InboundRefusal.denied)
                }
                inspected = false
            case .inspectRequests:
                inspected = true
                entry.protocol = "http"
            }
            guard self.connections.admit(client) else {
                self.refusedCounter.increment()
                self.logger.warning("refused plaintext from \(peer): \(self.connections.maximum) connections are already open (limits.maxConnections)")
                return client.eventLoop.makeFailedFuture(InboundRefusal.overLimit)
            }
            let carrier: Carrier
            if inspected {
                let inspector = HTTPRequestInspector(workload: workload, connection: attributes, authorizer: self.authorizer, connectionEntry: entry)
                carrier = .inspect(inspector, accessLog: self.accessLog, limit: self.configuration.requestHeadLimit, on: client.eventLoop)
            } else {
                carrier = .splice(on: client.eventLoop)
            }
            let policyCheck = TrackedPolicyCheck(workload: workload, attributes: attributes, inspected: inspected)
            let opened = entry
            return Dialer(mark: self.configuration.mark, connectTimeout: self.configuration.connectTimeout)
                .connect(to: destination, on: client.eventLoop) { channel in
                    try carrier.installUpstream(on: channel)
                }
                .flatMapError { error in
                    var failed = opened
                    failed.reason = "connect to workload failed: \(error)"
                    failed.durationMilliseconds = milliseconds(since: started)
                    self.accessLog.record(failed)
                    return client.eventLoop.makeFailedFuture(error)
                }
                .flatMapThrowing { upstream in
                    try completeProxy(
                        client: client, upstream: upstream, carrier: carrier, entry: opened, started: started, accessLog: self.accessLog,
                        tracker: self.connections, policyCheck: policyCheck
                    ) {
                        self.closedCounter.increment()
                    }
                    self.openedCounter.increment()
                }
        }
    }
}

/// Why the inbound-plaintext listener closed a connection (also in the access
/// log, or the agent's log for the limit).
enum InboundRefusal: Error, CustomStringConvertible {
    case notAWorkload
    case overLimit
    case denied

    var description: String {
        switch self {
        case .notAWorkload:
            return "the connection was not redirected to a workload port of this node; plaintext is accepted only for PERMISSIVE workload ports"
        case .denied:
            return "authorization policy denied the connection (see the access log)"
        case .overLimit:
            return "limits.maxConnections connections are already open; raise the limit or find who holds them (agentctl connections)"
        }
    }
}
