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
    init?(_ entry: AccessLogEntry) {
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
            key: key, kind: entry.method == nil ? .connection : .request, bytesSent: entry.bytesSent, bytesReceived: entry.bytesReceived,
            time: entry.time + max(0, entry.durationMilliseconds) / 1000)
    }
}

/// Moves the edges the access log counted into the graph database every few
/// seconds, off the event loops, and answers the admin API's reads. A
/// database that cannot be opened or written is logged and counted; the
/// edges of that interval are dropped (memory stays bounded) and the agent
/// keeps proxying. Opening is tried again at every flush, so a disk that
/// comes back, or a damaged file moved away, is picked up without a restart.
final class GraphRecorder: @unchecked Sendable {
    static let flushInterval = 5
    /// Rows (edges × hours) kept at most, whatever the retention: about 410
    /// bytes each on disk with the indexes, so the file stays near 400 MB.
    static let maximumRows = 1_000_000
    /// Retention and the row limit are applied every this many flushes.
    static let pruneEvery = 60

    let path: String
    let retention: Duration
    private let accessLog: AccessLogWriter
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

    init(config: AgentConfig.Graph, accessLog: AccessLogWriter, logger: Logger) {
        path = config.path
        retention = config.retention
        self.accessLog = accessLog
        self.logger = logger
    }

    /// Flushes on the recorder's own queue, not the caller's thread.
    func flushSoon() {
        queue.async { [self] in flushNow() }
    }

    /// Writes what the access log counted since the last flush, now, on this thread.
    func flushNow(now: Double = wallClock()) {
        lock.withLock {
            let aggregate = accessLog.takeGraph()
            if aggregate.overflow > 0 { overflowed.increment(by: Int64(clamping: aggregate.overflow)) }
            guard let store = openedStore() else { return }
            do {
                try store.write(aggregate.edges)
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

    /// The edges last seen at or after `since`, including those not flushed yet.
    func edges(since: Double?) throws -> [Edge] {
        flushNow()
        return try lock.withLock {
            guard let store = openedStore() else { throw GraphUnavailable(reason: lastError ?? "graph database \(path) is not open") }
            return try store.edges(since: since)
        }
    }

    private func openedStore() -> EdgeStore? {
        if let store { return store }
        do {
            let opened = try EdgeStore(path: path)
            store = opened
            logger.info("recording the service graph in \(path)")
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
