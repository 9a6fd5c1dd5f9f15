/// One edge of the observed service graph: who talked to which workload, how,
/// and what policy said. Field names in JSON are the access log's where they
/// mean the same (`src_identity`, `dst_workload`, …), so scripts that read one
/// read the other.
public struct EdgeKey: Hashable, Sendable, Codable {
    /// The caller's SPIFFE ID, when it was authenticated (mTLS or same node).
    public var sourceIdentity: String?
    /// The caller's IP address (no port) when it came in plaintext: the only
    /// name a plaintext peer has.
    public var sourceAddress: String?
    /// `namespace/name` of the workload on this node that was called.
    public var destinationWorkload: String
    public var destinationIdentity: String?
    public var destinationPort: UInt16
    /// `tcp` or `http`, as in the access log.
    public var `protocol`: String
    /// `mutual` or `none`.
    public var tls: String
    /// HTTP requests only.
    public var method: String?
    public var pathTemplate: String?
    /// `allow` or `deny`: the access log's `action`.
    public var decision: String
    /// `namespace/name` of the policy that decided, and the index of its rule.
    public var policy: String?
    public var rule: Int?
    /// What dry-run policies would have decided where it differs (`deny` or
    /// `allow`), and which one: the access log's `audit` and `audit_policy`.
    public var audit: String?
    public var auditPolicy: String?
    /// The index of that policy's rule (`audit_rule`).
    public var auditRule: Int?

    public init(
        sourceIdentity: String? = nil, sourceAddress: String? = nil, destinationWorkload: String, destinationIdentity: String? = nil,
        destinationPort: UInt16, protocol: String = "tcp", tls: String, method: String? = nil, pathTemplate: String? = nil,
        decision: String, policy: String? = nil, rule: Int? = nil, audit: String? = nil, auditPolicy: String? = nil,
        auditRule: Int? = nil
    ) {
        self.sourceIdentity = sourceIdentity
        self.sourceAddress = sourceAddress
        self.destinationWorkload = destinationWorkload
        self.destinationIdentity = destinationIdentity
        self.destinationPort = destinationPort
        self.protocol = `protocol`
        self.tls = tls
        self.method = method
        self.pathTemplate = pathTemplate
        self.decision = decision
        self.policy = policy
        self.rule = rule
        self.audit = audit
        self.auditPolicy = auditPolicy
        self.auditRule = auditRule
    }

    /// Whether the caller came in plaintext from outside the node: what a
    /// STRICT PeerAuthentication refuses. A caller on the same node has no TLS
    /// but has an identity, and STRICT does not guard the node's own traffic.
    public var isPlaintextPeer: Bool {
        tls == "none" && sourceIdentity == nil
    }

    /// How the caller is named: its identity, or `plaintext from ADDR`.
    public var sourceName: String {
        sourceIdentity ?? "plaintext from \(sourceAddress ?? "?")"
    }

    /// The namespace of the caller's identity (`…/ns/NAME/sa/…`), if it has one.
    public var sourceNamespace: String? {
        guard let identity = sourceIdentity else { return nil }
        let parts = identity.split(separator: "/", omittingEmptySubsequences: false)
        guard let index = parts.firstIndex(of: "ns"), index + 1 < parts.count else { return nil }
        return String(parts[index + 1])
    }

    public var destinationNamespace: String {
        String(destinationWorkload.split(separator: "/", maxSplits: 1).first ?? "")
    }
}

/// What was counted on an edge.
public struct EdgeCounts: Hashable, Sendable {
    public var connections: UInt64 = 0
    public var requests: UInt64 = 0
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// Seconds since the epoch.
    public var firstSeen: Double
    public var lastSeen: Double

    public init(connections: UInt64 = 0, requests: UInt64 = 0, bytesSent: UInt64 = 0, bytesReceived: UInt64 = 0, firstSeen: Double, lastSeen: Double) {
        self.connections = connections
        self.requests = requests
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
    }

    public mutating func add(_ other: EdgeCounts) {
        // Counters saturate: a wrapped total would read as almost nothing.
        connections = connections.addingSaturated(other.connections)
        requests = requests.addingSaturated(other.requests)
        bytesSent = bytesSent.addingSaturated(other.bytesSent)
        bytesReceived = bytesReceived.addingSaturated(other.bytesReceived)
        firstSeen = min(firstSeen, other.firstSeen)
        lastSeen = max(lastSeen, other.lastSeen)
    }
}

extension UInt64 {
    func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}

/// One finished connection or one inspected request, as the graph counts it;
/// or a connection just opened, which makes its edge known and counts nothing.
public struct EdgeObservation: Sendable {
    public enum Kind: Sendable { case connection, request, opening }

    public var key: EdgeKey
    public var kind: Kind
    public var bytesSent: UInt64
    public var bytesReceived: UInt64
    public var time: Double

    public init(key: EdgeKey, kind: Kind, bytesSent: UInt64 = 0, bytesReceived: UInt64 = 0, time: Double) {
        self.key = key
        self.kind = kind
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.time = time
    }

    var counts: EdgeCounts {
        EdgeCounts(
            connections: kind == .connection ? 1 : 0, requests: kind == .request ? 1 : 0,
            bytesSent: bytesSent, bytesReceived: bytesReceived, firstSeen: time, lastSeen: time)
    }
}

/// An edge and its counts: one element of `{"edges": [...]}`.
public struct Edge: Hashable, Sendable {
    public var key: EdgeKey
    public var counts: EdgeCounts

    public init(key: EdgeKey, counts: EdgeCounts) {
        self.key = key
        self.counts = counts
    }
}
