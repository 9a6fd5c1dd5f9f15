/// Edges counted in memory between two flushes. A plain value: each event loop
/// keeps one that only it touches (the agent's `GraphTally`), so counting
/// takes no lock and no hop, and the flusher takes each whole at once.
public struct EdgeAggregate: Sendable {
    public private(set) var counts: [EdgeKey: EdgeCounts] = [:]
    /// Observations not kept because `limit` distinct edges were already held:
    /// what a flood of distinct edges (a scan) costs is bounded.
    public private(set) var overflow: UInt64 = 0
    public let limit: Int

    public init(limit: Int = 100_000) {
        self.limit = limit
    }

    public var isEmpty: Bool { counts.isEmpty && overflow == 0 }

    public mutating func add(_ observation: EdgeObservation) {
        add(observation.key, observation.counts)
    }

    public mutating func add(_ key: EdgeKey, _ more: EdgeCounts) {
        if let index = counts.index(forKey: key) {
            counts.values[index].add(more)
        } else if counts.count < limit {
            counts[key] = more
        } else {
            overflow = overflow.addingSaturated(1)
        }
    }

    /// What was counted, leaving an empty aggregate with the same limit.
    public mutating func take() -> EdgeAggregate {
        defer { self = EdgeAggregate(limit: limit) }
        return self
    }

    public mutating func merge(_ other: EdgeAggregate) {
        for (key, more) in other.counts { add(key, more) }
        overflow = overflow.addingSaturated(other.overflow)
    }

    /// The edges, in a stable order (destination, source, then the rest of the key).
    public var edges: [Edge] {
        counts.map { Edge(key: $0.key, counts: $0.value) }.sorted(by: Edge.displayOrder)
    }
}

extension Edge {
    /// Destination first: an operator reads the graph per workload.
    public static func displayOrder(_ a: Edge, _ b: Edge) -> Bool {
        a.key.sortKey.lexicographicallyPrecedes(b.key.sortKey)
    }

    /// Edges with the same key added together: the cluster view from several
    /// nodes' graphs, or a window's buckets from the store.
    public static func merged(_ edges: [Edge]) -> [Edge] {
        var aggregate = EdgeAggregate(limit: .max)
        for edge in edges { aggregate.add(edge.key, edge.counts) }
        return aggregate.edges
    }
}

extension EdgeKey {
    var sortKey: [String] {
        [
            destinationWorkload, String(destinationPort), sourceName, self.protocol, method ?? "", pathTemplate ?? "", tls, decision,
            policy ?? "", rule.map { String($0) } ?? "", audit ?? "", auditPolicy ?? "", auditRule.map { String($0) } ?? "",
        ]
    }
}
