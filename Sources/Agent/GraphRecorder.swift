import Config
import Dispatch
import Graph
import GraphStore
import Logging
import Metrics
import NIOConcurrencyHelpers
import Policy
import Proxy

extension EdgeObservation {
    /// What an access-log line adds to the graph: a connection, or an
    /// inspected request, to a workload on this node. Lines without one (a
    /// connection leaving the node, a tunnel stream to no workload) are the
    /// other node's edges, or no edge: each node records what it decided, so
    /// merged graphs count every connection once.
    package init?(_ entry: AccessLogEntry) {
        guard let workload = entry.destinationWorkload else { return nil }
        let key = EdgeKey(
            sourceIdentity: entry.sourceIdentity,
            sourceAddress: entry.sourceIdentity == nil ? entry.sourceAddress?.ipAddress : nil,
            destinationWorkload: workload, destinationIdentity: entry.destinationIdentity,
            destinationPort: UInt16(clamping: entry.destinationAddress?.port ?? 0),
            protocol: entry.protocol, tls: entry.tls.rawValue, method: entry.method, pathTemplate: entry.path.map(PathTemplate.generalize),
            decision: entry.action.rawValue, policy: entry.policy, rule: entry.rule, audit: entry.audit, auditPolicy: entry.auditPolicy,
            auditRule: entry.auditRule)
        // When it ended: a connection open for days is seen in today's window.
        self.init(
            key: key, kind: entry.isRequest ? .request : entry.isOpening ? .opening : .connection, bytesSent: entry.bytesSent, bytesReceived: entry.bytesReceived,
            time: entry.time + max(0, entry.durationMilliseconds) / 1000)
    }
}

extension EdgeKey {
    /// The access-log line for an edge never seen before (after the learning
    /// period): `{"time":…,"event":"new_edge",…}`. It has no `action`, so
    /// scripts that count connections by it skip it. `lateralMovement`: a
    /// known identity was refused towards a workload it never talked to.
    func newEdgeLine(time: Double, lateralMovement: Bool) -> [UInt8] {
        var json = JSONObjectWriter()
        json.addTime("time", time)
        json.add("event", "new_edge")
        json.add("src_identity", sourceIdentity)
        json.add("src_addr", sourceAddress)
        json.add("dst_workload", destinationWorkload)
        json.add("dst_identity", destinationIdentity)
        json.add("dst_port", UInt64(destinationPort))
        json.add("protocol", self.protocol)
        json.add("tls", tls)
        json.add("decision", decision)
        json.add(
            "reason",
            lateralMovement
                ? "a known identity was refused towards a workload it never talked to (lateral movement?)"
                : "never seen before, after the learning period")
        return json.finishLine()
    }
}

/// Moves the edges the event loops counted (`GraphTally`) into the graph
/// database every few seconds, off the event loops, and answers the admin
/// API's reads. A database that cannot be opened or written is logged and
/// counted; the edges of that interval are dropped (memory stays bounded)
/// and the agent keeps proxying. Opening is tried again at every flush, so a
/// disk that comes back, or a damaged file moved away, is picked up without
/// a restart.
final class GraphRecorder: @unchecked Sendable {
    static let flushInterval = 5
    /// Rows (edges × hours) kept at most, whatever the retention: about 500
    /// bytes each on disk with the indexes, so the file stays near 500 MB.
    static let maximumRows = 1_000_000
    /// Retention and the row limit are applied every this many flushes.
    static let pruneEvery = 60
    /// New-edge lines written per flush at most (a scan from many addresses
    /// is many new edges); the metric counts every one.
    static let newEdgeLinesPerFlush = 100

    let path: String
    let retention: Duration
    let learningPeriod: Duration
    private let accessLog: AccessLogWriter
    /// Where the data path counts edges between flushes.
    let tally: GraphTally
    private let logger: Logger
    private let queue = DispatchQueue(label: "mesh-agent.graph")
    private let errors = Counter(label: "mesh_agent_graph_errors_total")
    private let overflowed = Counter(label: "mesh_agent_graph_edges_dropped_total")
    private let flushes = Counter(label: "mesh_agent_graph_flushes_total")

    /// Touched only under `lock`: the store is one SQLite connection.
    private let lock = NIOLock()
    private var store: EdgeStore?
    private var lastError: String?
    private var flushCount = 0

    init(config: AgentConfig.Graph, tally: GraphTally, accessLog: AccessLogWriter, logger: Logger) {
        path = config.database
        retention = config.retention
        learningPeriod = config.learningPeriod
        self.tally = tally
        self.accessLog = accessLog
        self.logger = logger
    }

    /// Flushes on the recorder's own queue, not the caller's thread.
    func flushSoon() {
        queue.async { [self] in flushNow() }
    }

    /// Writes what the data path counted since the last flush, now, on this
    /// thread (never an event loop's: it waits for each loop's counts).
    func flushNow(now: Double = wallClock()) {
        lock.withLock {
            let aggregate = tally.take()
            if aggregate.overflow > 0 { overflowed.increment(by: Int64(clamping: aggregate.overflow)) }
            guard let store = openedStore() else { return }
            do {
                let edges = aggregate.edges
                try reportNewEdges(edges, in: store, now: now)
                try store.write(edges)
                flushCount += 1
                if flushCount % Self.pruneEvery == 1 {
                    try store.prune(before: now - Double(retention.components.seconds), maximumRows: Self.maximumRows)
                }
                flushes.increment()
                recovered()
            } catch {
                failed(error)
                // A damaged file fails every write: open it again next time,
                // which reports it as such.
                self.store = nil
            }
        }
    }

    /// The edges last seen at or after `since`, including those not flushed
    /// yet; with `onlyNew`, only those first seen after the learning period.
    func edges(since: Double?, onlyNew: Bool = false) throws -> [Edge] {
        flushNow()
        return try withStore { store in
            try store.edges(since: since, newSince: onlyNew ? try store.learningEnds(after: Double(learningPeriod.components.seconds)) : nil)
        }
    }

    /// Ends the learning period now: edges never seen before are reported from now on.
    func setBaseline(now: Double = wallClock()) throws {
        flushNow()
        try withStore { try $0.setBaseline(now) }
    }

    private func withStore<T>(_ body: (EdgeStore) throws -> T) throws -> T {
        try lock.withLock {
            guard let store = openedStore() else { throw GraphUnavailable(reason: lastError ?? "graph database \(path) is not open") }
            return try body(store)
        }
    }

    /// One access-log line and one metric increment for each pair (caller,
    /// workload, port) the database has never held, once the learning period
    /// is over. Called under the lock, before the edges are written.
    private func reportNewEdges(_ edges: [Edge], in store: EdgeStore, now: Double) throws {
        guard !edges.isEmpty, now >= (try store.learningEnds(after: Double(learningPeriod.components.seconds))) else { return }
        for (index, edge) in try store.unseenPairs(edges).enumerated() {
            let key = edge.key
            Counter(
                label: "mesh_agent_new_edges_total",
                dimensions: [("source_namespace", key.sourceNamespace ?? "unknown"), ("destination_workload", key.destinationWorkload)]
            ).increment()
            guard index < Self.newEdgeLinesPerFlush else { continue }
            let lateral = try key.decision == "deny" && key.sourceIdentity != nil && store.knowsSource(key)
            accessLog.recordEvent(key.newEdgeLine(time: edge.counts.firstSeen, lateralMovement: lateral))
        }
    }

    private func openedStore() -> EdgeStore? {
        if let store { return store }
        do {
            let opened = try EdgeStore(path: path)
            store = opened
            // Not again when the file is reopened after each failed write:
            // the failure was logged once, and recovery says so itself.
            if lastError == nil { logger.info("recording the service graph in \(path)") }
            return opened
        } catch {
            failed(error)
            return nil
        }
    }

    private func failed(_ error: Error) {
        errors.increment()
        let message = "\(error)"
        // Once per distinct failure, not every five seconds.
        if message != lastError {
            logger.error("the service graph is not being recorded: \(message); the agent keeps proxying")
        }
        lastError = message
    }

    private func recovered() {
        if lastError != nil {
            logger.info("the service graph is recorded in \(path) again")
            lastError = nil
        }
    }
}

/// The graph was asked for while its database cannot be used.
struct GraphUnavailable: Error, CustomStringConvertible {
    let reason: String
    var description: String { "the service graph is not available: \(reason)" }
}
