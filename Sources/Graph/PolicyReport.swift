/// What each rule of the policies in force did over a window of the graph:
/// how much it allowed and denied, how much a dry-run rule would have denied,
/// when it last matched, and which rules matched nothing (drift); plus the
/// plaintext peers that a switch to STRICT would cut off.
///
/// Counts are connections plus requests: an L4 rule decides connections, an
/// L7 rule requests, and an edge has one or the other.
public struct PolicyReport: Codable, Sendable, Equatable {
    /// An AuthorizationPolicy in force, and the workloads it applies to (its
    /// selector's, in its namespace, or every one for the root namespace).
    public struct Policy: Sendable, Equatable {
        public var name: String
        public var action: String
        public var dryRun: Bool
        public var rules: Int
        public var workloads: Set<String>
        /// A time-bound grant's end, seconds since the epoch.
        public var expires: Double?

        public init(name: String, action: String, dryRun: Bool, rules: Int, workloads: Set<String>, expires: Double? = nil) {
            self.expires = expires
            self.name = name
            self.action = action
            self.dryRun = dryRun
            self.rules = rules
            self.workloads = workloads
        }
    }

    public struct Rule: Codable, Sendable, Equatable {
        /// `namespace/name`.
        public var policy: String
        /// The index in `spec.rules`; null on the line that counts what a
        /// dry-run ALLOW policy would deny because none of its rules matched.
        public var rule: Int?
        public var action: String
        public var dryRun: Bool
        /// For a dry-run rule: what it would have allowed or denied.
        public var allowed: UInt64
        public var denied: UInt64
        public var wouldDeny: UInt64
        /// RFC 3339; null when it matched nothing in the window.
        public var lastMatch: String?
        public var unused: Bool
        /// A time-bound grant's end (RFC 3339), and whether it has passed:
        /// an expired grant's file can be removed.
        public var expires: String?
        public var expired: Bool

        enum CodingKeys: String, CodingKey {
            case policy, rule, action, dryRun = "dry_run", allowed, denied, wouldDeny = "would_deny", lastMatch = "last_match", unused
            case expires, expired
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            // Every key on every line, null where there is no value.
            try c.encode(policy, forKey: .policy)
            try c.encode(rule, forKey: .rule)
            try c.encode(action, forKey: .action)
            try c.encode(dryRun, forKey: .dryRun)
            try c.encode(allowed, forKey: .allowed)
            try c.encode(denied, forKey: .denied)
            try c.encode(wouldDeny, forKey: .wouldDeny)
            try c.encode(lastMatch, forKey: .lastMatch)
            try c.encode(unused, forKey: .unused)
            try c.encode(expires, forKey: .expires)
            try c.encode(expired, forKey: .expired)
        }
    }

    /// A plaintext peer still talking to a workload: STRICT would refuse it.
    public struct StrictBlocker: Codable, Sendable, Equatable {
        public var dstWorkload: String
        public var srcAddr: String
        public var dstPort: UInt16
        public var connections: UInt64
        public var lastSeen: String

        enum CodingKeys: String, CodingKey {
            case dstWorkload = "dst_workload", srcAddr = "src_addr", dstPort = "dst_port", connections, lastSeen = "last_seen"
        }
    }

    public var rules: [Rule]
    public var strictBlockers: [StrictBlocker]

    enum CodingKeys: String, CodingKey {
        case rules, strictBlockers = "strict_blockers"
    }

    public init(edges: [Edge], policies: [Policy], now: Double = 0) {
        struct Tally {
            var allowed: UInt64 = 0
            var denied: UInt64 = 0
            var wouldDeny: UInt64 = 0
            var last: Double?

            mutating func add(_ edge: Edge, to path: WritableKeyPath<Tally, UInt64>) {
                let count = edge.counts.connections.addingSaturated(edge.counts.requests)
                self[keyPath: path] = self[keyPath: path].addingSaturated(count)
                last = max(last ?? edge.counts.lastSeen, edge.counts.lastSeen)
            }
        }
        struct Place: Hashable {
            var policy: String
            var rule: Int?
        }
        var tallies: [Place: Tally] = [:]
        let dryRunAllow = policies.filter { $0.dryRun && $0.action == "ALLOW" }
        for edge in edges {
            let key = edge.key
            if let policy = key.policy, let rule = key.rule {
                tallies[Place(policy: policy, rule: rule), default: Tally()].add(edge, to: key.decision == "allow" ? \.allowed : \.denied)
            }
            guard let audit = key.audit else { continue }
            if let policy = key.auditPolicy, let rule = key.auditRule {
                tallies[Place(policy: policy, rule: rule), default: Tally()].add(edge, to: audit == "allow" ? \.allowed : \.wouldDeny)
            } else if audit == "deny" {
                // No dry-run rule matched: each dry-run ALLOW policy of the
                // workload would deny it.
                for policy in dryRunAllow where policy.workloads.contains(key.destinationWorkload) {
                    tallies[Place(policy: policy.name, rule: nil), default: Tally()].add(edge, to: \.wouldDeny)
                }
            }
        }
        var rules: [Rule] = []
        for policy in policies.sorted(by: { $0.name < $1.name }) {
            let places = (0..<policy.rules).map { Place(policy: policy.name, rule: $0) }
                + (tallies[Place(policy: policy.name, rule: nil)] == nil ? [] : [Place(policy: policy.name, rule: nil)])
            for place in places {
                let tally = tallies[place] ?? Tally()
                rules.append(Rule(
                    policy: policy.name, rule: place.rule, action: policy.action, dryRun: policy.dryRun, allowed: tally.allowed,
                    denied: tally.denied, wouldDeny: tally.wouldDeny, lastMatch: tally.last.map(GraphTime.format),
                    unused: tally.last == nil, expires: policy.expires.map(GraphTime.format),
                    expired: policy.expires.map { now >= $0 } ?? false))
            }
        }
        self.rules = rules

        struct Peer: Hashable {
            var workload: String
            var address: String
            var port: UInt16
        }
        var peers: [Peer: EdgeCounts] = [:]
        for edge in edges where edge.key.isPlaintextPeer && edge.key.decision == "allow" {
            guard let address = edge.key.sourceAddress else { continue }
            let peer = Peer(workload: edge.key.destinationWorkload, address: address, port: edge.key.destinationPort)
            if peers[peer] == nil { peers[peer] = edge.counts } else { peers[peer]?.add(edge.counts) }
        }
        strictBlockers = peers.sorted { ($0.key.workload, $0.key.address, $0.key.port) < ($1.key.workload, $1.key.address, $1.key.port) }
            .map { peer, counts in
                StrictBlocker(
                    dstWorkload: peer.workload, srcAddr: peer.address, dstPort: peer.port, connections: counts.connections,
                    lastSeen: GraphTime.format(counts.lastSeen))
            }
    }
}
