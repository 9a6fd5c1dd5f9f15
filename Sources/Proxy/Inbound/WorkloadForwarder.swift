import Logging
import Metrics
import NIOCore
import NIOHTTP2
import Policy
import Workloads

/// Carries out admission plans for the three listeners that reach workloads on
/// this node (same-node connections on the outbound listener, tunnel streams,
/// inbound plaintext): one place that refuses, counts and logs, dials the
/// workload, and joins the two sides.
struct WorkloadForwarder: Sendable {
    /// What a connection came in on, which decides how it is answered: a
    /// socket is closed when refused, a tunnel stream gets a status on its
    /// CONNECT (200, 403, 503) and is bridged to bytes.
    enum Client: Sendable {
        case socket(Channel)
        case tunnelStream(TunnelStreamChannel)

        var channel: Channel {
            switch self {
            case .socket(let channel): return channel
            case .tunnelStream(let stream): return stream
            }
        }
    }

    /// Per-listener counters of connections opened and closed.
    struct ListenerCounters: Sendable {
        let opened: Counter
        let closed: Counter
        let connectFailures: Counter
    }

    let dialer: Dialer
    let accessLog: AccessLogSink
    let connections: ConnectionTracker
    let authorizer: InboundAuthorizer
    let requestHeadLimit: HTTPHeadSizeLimit
    let counters: ListenerCounters
    let logger: Logger
    private let admissions: AdmissionMetrics
    private let forbidden: ForbiddenDestinationMetrics

    init(
        arrivalLabel: String, dialer: Dialer, accessLog: AccessLogSink, connections: ConnectionTracker, authorizer: InboundAuthorizer,
        requestHeadLimit: HTTPHeadSizeLimit, counters: ListenerCounters, logger: Logger
    ) {
        self.dialer = dialer
        self.accessLog = accessLog
        self.connections = connections
        self.authorizer = authorizer
        self.requestHeadLimit = requestHeadLimit
        self.counters = counters
        self.logger = logger
        self.admissions = AdmissionMetrics(path: arrivalLabel)
        self.forbidden = ForbiddenDestinationMetrics(path: arrivalLabel)
    }

    /// Decides the connection (`Admission.plan`) and carries the plan out.
    /// The client must already be admitted to the connection tracker.
    func admit(
        _ arrival: Arrival, client: Client, source: SocketAddress?, destination: SocketAddress, resolved: LocalDestination, started: NIODeadline
    ) -> EventLoopFuture<Void> {
        let plan = Admission.plan(arrival, source: source, destination: destination, resolved: resolved, policy: authorizer.snapshot, now: wallClock())
        authorizer.record(plan)
        return carryOut(plan, client: client, started: started)
    }

    /// Refuses a connection the tracker had no room for.
    func refuseOverLimit(_ arrival: Arrival, client: Client, source: SocketAddress?, destination: SocketAddress) -> EventLoopFuture<Void> {
        var entry = Admission.openingEntry(arrival, source: source, destination: destination, now: wallClock())
        entry.action = .deny
        entry.reason = "over the connection limit: \(connections.maximum) connections are open (limits.maxConnections)"
        logger.warning("refused a connection from \(source?.authority ?? "?") to \(destination.authority): \(connections.maximum) connections are already open (limits.maxConnections)")
        return refuse(.overConnectionLimit, entry: entry, client: client)
    }

    private func carryOut(_ plan: AdmissionPlan, client: Client, started: NIODeadline) -> EventLoopFuture<Void> {
        guard case .forward(let workload, let inspected) = plan.decision else {
            guard case .refuse(let refusal) = plan.decision else { preconditionFailure("a plan either forwards or refuses") }
            return refuse(refusal, entry: plan.entry, client: client)
        }
        admissions.admitted(inspected: inspected)
        let eventLoop = client.channel.eventLoop
        let carrier: Carrier
        if inspected {
            let inspector = HTTPRequestInspector(workload: workload, connection: plan.attributes, authorizer: authorizer, connectionEntry: plan.entry.cachingParties())
            carrier = .inspect(inspector, accessLog: accessLog, limit: requestHeadLimit, on: eventLoop)
        } else if accessLog.observesRequests {
            carrier = .splice(on: eventLoop, watching: .countingRequests(of: plan.entry, in: accessLog, pathRules: authorizer.snapshot.pathRules))
        } else {
            carrier = .splice(on: eventLoop)
        }
        guard let target = plan.entry.destinationAddress else { preconditionFailure("a plan always names its destination") }
        let opened = plan.entry
        let policyCheck = plan.policyCheck
        // The address the plan decided on, and nothing else: never a name, never another address of the workload.
        return dialer.connect(to: target, on: eventLoop) { channel in
            try carrier.installUpstream(on: channel)
        }.flatMapError { error in
            counters.connectFailures.increment()
            var failed = opened
            // The connection was allowed; the workload could not be reached.
            failed.reason = "connect to workload failed: \(error)"
            failed.durationMilliseconds = milliseconds(since: started)
            accessLog.record(failed)
            return answerFailure(client, status: .serviceUnavailable).flatMapThrowing { throw error }
        }.flatMapThrowing { (upstream: Channel) -> Void in
            if case .tunnelStream(let stream) = client {
                stream.respond(.ok, endStream: false)
            }
            try completeProxy(
                client: client.channel, upstream: upstream, carrier: carrier, entry: opened, started: started, accessLog: accessLog,
                tracker: connections, policyCheck: policyCheck
            ) { [counters] in
                counters.closed.increment()
            }
            if case .tunnelStream(let stream) = client {
                try stream.startReading()
            }
            counters.opened.increment()
        }
    }

    private func refuse(_ refusal: AdmissionRefusal, entry: AccessLogEntry, client: Client) -> EventLoopFuture<Void> {
        admissions.refused(refusal)
        if case .forbidden(let kind) = refusal { forbidden.refused(kind) }
        accessLog.record(entry)
        logger.debug("refused a connection from \(entry.sourceIdentity ?? entry.sourceAddress?.authority ?? "?"): \(entry.reason)")
        let status: HBONE.Status = refusal == .overConnectionLimit ? .serviceUnavailable : .forbidden
        return answerFailure(client, status: status).flatMapThrowing { throw refusal }
    }

    /// A refused or failed tunnel stream gets its status and END_STREAM before
    /// it closes; a socket is simply closed (by the failed future).
    private func answerFailure(_ client: Client, status: HBONE.Status) -> EventLoopFuture<Void> {
        guard case .tunnelStream(let stream) = client else {
            return client.channel.eventLoop.makeSucceededVoidFuture()
        }
        TunnelServerMetrics.refusedStream(status)
        return stream.refuse(status)
    }
}

extension AdmissionRefusal: Error, CustomStringConvertible {
    public var description: String {
        switch self {
        case .notAWorkload:
            return "the destination is not a workload port on this node; plaintext is accepted only for PERMISSIVE workload ports"
        case .forbidden(let kind):
            return "the destination is \(kind.rawValue), never a workload address"
        case .plaintextToStrictPort(let mode):
            return "plaintext to a port whose mTLS mode is \(mode)"
        case .denied:
            return "authorization policy denied the connection (see the access log)"
        case .overConnectionLimit:
            return "limits.maxConnections connections are already open; raise the limit or find who holds them (agentctl connections)"
        }
    }
}

/// Admission answers, by path: `mesh_agent_admissions_total{path, result}`.
struct AdmissionMetrics: Sendable {
    private let results: [String: Counter]

    init(path: String) {
        var results: [String: Counter] = [:]
        for result in ["forward", "inspect"] + AdmissionRefusal.labels {
            results[result] = Counter(label: "mesh_agent_admissions_total", dimensions: [("path", path), ("result", result)])
        }
        self.results = results
    }

    func admitted(inspected: Bool) {
        results[inspected ? "inspect" : "forward"]?.increment()
    }

    func refused(_ refusal: AdmissionRefusal) {
        results[refusal.label]?.increment()
    }
}
