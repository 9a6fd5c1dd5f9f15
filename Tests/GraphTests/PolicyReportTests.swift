import Foundation
import Testing
@testable import Graph

@Suite struct PolicyReportTests {
    static let checkout = "spiffe://cluster.local/ns/shop/sa/checkout"

    static func edge(
        decision: String = "allow", policy: String? = nil, rule: Int? = nil, audit: String? = nil, auditPolicy: String? = nil, auditRule: Int? = nil,
        connections: UInt64 = 0, requests: UInt64 = 0, lastSeen: Double = 100, source: String? = checkout, address: String? = nil,
        workload: String = "shop/orders"
    ) -> Edge {
        Edge(
            key: EdgeKey(
                sourceIdentity: source, sourceAddress: address, destinationWorkload: workload, destinationPort: 8080, tls: source == nil ? "none" : "mutual",
                decision: decision, policy: policy, rule: rule, audit: audit, auditPolicy: auditPolicy, auditRule: auditRule),
            counts: EdgeCounts(connections: connections, requests: requests, firstSeen: lastSeen - 10, lastSeen: lastSeen))
    }

    static let policies = [
        PolicyReport.Policy(name: "shop/orders-allow", action: "ALLOW", dryRun: false, rules: 3, workloads: ["shop/orders"]),
        PolicyReport.Policy(name: "shop/orders-no-admin", action: "DENY", dryRun: false, rules: 1, workloads: ["shop/orders"]),
        PolicyReport.Policy(name: "shop/orders-observed", action: "ALLOW", dryRun: true, rules: 2, workloads: ["shop/orders"]),
        PolicyReport.Policy(name: "shop/ledger-observed", action: "ALLOW", dryRun: true, rules: 1, workloads: ["shop/ledger"]),
    ]

    @Test func countsAreAddedPerRuleAndRulesThatMatchedNothingAreUnused() throws {
        let edges = [
            Self.edge(policy: "shop/orders-allow", rule: 0, requests: 5, lastSeen: 100),
            Self.edge(policy: "shop/orders-allow", rule: 0, connections: 2, lastSeen: 300),
            Self.edge(decision: "deny", policy: "shop/orders-no-admin", rule: 0, requests: 4, lastSeen: 200),
            // Dry-run: a rule of the dry-run policy would allow; none would allow (no rule to name).
            Self.edge(policy: "shop/orders-allow", rule: 1, audit: "allow", auditPolicy: "shop/orders-observed", auditRule: 1, requests: 7),
            Self.edge(policy: "shop/orders-allow", rule: 1, audit: "deny", requests: 3, lastSeen: 400),
        ]
        let report = PolicyReport(edges: edges, policies: Self.policies)
        func row(_ policy: String, _ rule: Int?) throws -> PolicyReport.Rule {
            try #require(report.rules.first { $0.policy == policy && $0.rule == rule })
        }
        let first = try row("shop/orders-allow", 0)
        #expect((first.allowed, first.denied, first.wouldDeny, first.unused) == (7, 0, 0, false))
        #expect(first.lastMatch == GraphTime.format(300))
        #expect(try row("shop/orders-allow", 1).allowed == 10)
        #expect(try row("shop/orders-allow", 2).unused, "a rule nothing matched is drift")
        #expect(try row("shop/orders-allow", 2).lastMatch == nil)
        #expect(try row("shop/orders-no-admin", 0).denied == 4)
        let dryRun = try row("shop/orders-observed", 1)
        #expect(dryRun.dryRun && dryRun.allowed == 7 && dryRun.wouldDeny == 0)
        #expect(try row("shop/orders-observed", 0).unused)
        let noneMatched = try row("shop/orders-observed", nil)
        #expect(noneMatched.wouldDeny == 3 && noneMatched.lastMatch == GraphTime.format(400))
        #expect(!report.rules.contains { $0.policy == "shop/ledger-observed" && $0.rule == nil }, "the other workload's policy would deny nothing")
        #expect(report.rules.count == 3 + 1 + 2 + 1 + 1)
    }

    @Test func anExpiredGrantIsReportedAsSuch() throws {
        let grant = PolicyReport.Policy(name: "shop/grant-x", action: "ALLOW", dryRun: false, rules: 1, workloads: ["shop/orders"], expires: 1000)
        #expect(PolicyReport(edges: [], policies: [grant], now: 999).rules.map(\.expired) == [false])
        let expired = try #require(PolicyReport(edges: [], policies: [grant], now: 1000).rules.first)
        #expect(expired.expired && expired.expires == GraphTime.format(1000))
    }

    @Test func plaintextPeersStillAllowedBlockStrict() {
        let edges = [
            Self.edge(connections: 2, lastSeen: 50, source: nil, address: "10.77.0.9"),
            Self.edge(connections: 1, lastSeen: 70, source: nil, address: "10.77.0.9"),
            // Refused plaintext is already cut off; an identity is no blocker.
            Self.edge(decision: "deny", connections: 5, source: nil, address: "10.77.0.8"),
            Self.edge(connections: 9),
        ]
        let blockers = PolicyReport(edges: edges, policies: []).strictBlockers
        #expect(blockers == [
            PolicyReport.StrictBlocker(dstWorkload: "shop/orders", srcAddr: "10.77.0.9", dstPort: 8080, connections: 3, lastSeen: GraphTime.format(70))
        ])
    }

    @Test func theJSONShapeNamesEveryFieldEvenWhenEmpty() throws {
        let report = PolicyReport(edges: [], policies: [Self.policies[0]])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = String(decoding: try encoder.encode(report), as: UTF8.self)
        #expect(json.hasPrefix(#"{"rules":[{"action":"ALLOW","allowed":0,"denied":0,"dry_run":false,"expired":false,"expires":null,"last_match":null,"policy":"shop/orders-allow","rule":0,"unused":true,"would_deny":0}"#))
        #expect(json.hasSuffix(#""strict_blockers":[]}"#))
    }
}
