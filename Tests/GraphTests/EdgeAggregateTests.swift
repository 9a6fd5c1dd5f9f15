import Foundation
import Testing
@testable import Graph

@Suite struct EdgeAggregateTests {
    static let checkout = "spiffe://cluster.local/ns/shop/sa/checkout"

    static func key(source: String? = checkout, address: String? = nil, method: String? = nil, path: String? = nil, decision: String = "allow") -> EdgeKey {
        EdgeKey(
            sourceIdentity: source, sourceAddress: address, destinationWorkload: "shop/orders",
            destinationIdentity: "spiffe://cluster.local/ns/shop/sa/orders", destinationPort: 8080,
            protocol: method == nil ? "tcp" : "http", tls: source == nil ? "none" : "mutual", method: method, pathTemplate: path,
            decision: decision)
    }

    @Test func connectionsAndRequestsOnOneEdgeAddUp() {
        var aggregate = EdgeAggregate()
        aggregate.add(EdgeObservation(key: Self.key(), kind: .connection, bytesSent: 10, bytesReceived: 20, time: 100))
        aggregate.add(EdgeObservation(key: Self.key(), kind: .connection, bytesSent: 1, bytesReceived: 2, time: 50))
        aggregate.add(EdgeObservation(key: Self.key(), kind: .connection, time: 200))
        let edges = aggregate.edges
        #expect(edges.count == 1)
        #expect(edges.first?.counts == EdgeCounts(connections: 3, requests: 0, bytesSent: 11, bytesReceived: 22, firstSeen: 50, lastSeen: 200))
    }

    @Test func everyPartOfTheKeySeparatesEdges() {
        var aggregate = EdgeAggregate()
        let keys = [
            Self.key(),
            Self.key(source: "spiffe://cluster.local/ns/shop/sa/cart"),
            Self.key(source: nil, address: "10.77.0.9"),
            Self.key(method: "GET", path: "/orders/{id}"),
            Self.key(method: "POST", path: "/orders/{id}"),
            Self.key(method: "GET", path: "/orders"),
            Self.key(decision: "deny"),
        ]
        for key in keys {
            aggregate.add(EdgeObservation(key: key, kind: key.method == nil ? .connection : .request, time: 1))
        }
        #expect(aggregate.edges.count == keys.count)
        #expect(aggregate.edges.filter { $0.key.method != nil }.allSatisfy { $0.counts.requests == 1 && $0.counts.connections == 0 })
    }

    @Test func distinctEdgesBeyondTheLimitAreCountedNotKept() {
        var aggregate = EdgeAggregate(limit: 2)
        for index in 0..<5 {
            aggregate.add(EdgeObservation(key: Self.key(source: nil, address: "10.77.0.\(index)"), kind: .connection, time: 1))
        }
        aggregate.add(EdgeObservation(key: Self.key(source: nil, address: "10.77.0.0"), kind: .connection, time: 2))
        #expect(aggregate.counts.count == 2)
        #expect(aggregate.overflow == 3)
        #expect(aggregate.counts[Self.key(source: nil, address: "10.77.0.0")]?.connections == 2, "a kept edge still counts")
    }

    @Test func mergingNodesGraphsAddsTheSameEdgesAndKeepsTheOthers() {
        let a = [Edge(key: Self.key(), counts: EdgeCounts(connections: 2, bytesSent: 5, firstSeen: 10, lastSeen: 20))]
        let b = [
            Edge(key: Self.key(), counts: EdgeCounts(connections: 3, bytesSent: 1, firstSeen: 5, lastSeen: 15)),
            Edge(key: Self.key(decision: "deny"), counts: EdgeCounts(connections: 1, firstSeen: 7, lastSeen: 7)),
        ]
        let merged = Edge.merged(a + b)
        #expect(merged.count == 2)
        #expect(merged.first { $0.key.decision == "allow" }?.counts == EdgeCounts(connections: 5, bytesSent: 6, firstSeen: 5, lastSeen: 20))
    }

    @Test func countersSaturateInsteadOfWrapping() {
        var counts = EdgeCounts(bytesSent: .max - 1, firstSeen: 0, lastSeen: 0)
        counts.add(EdgeCounts(bytesSent: 10, firstSeen: 0, lastSeen: 0))
        #expect(counts.bytesSent == .max)
    }

    @Test func theJSONShapeHasTheAccessLogsNamesAndRoundTrips() throws {
        let edge = Edge(
            key: Self.key(method: "GET", path: "/orders/{id}"),
            counts: EdgeCounts(connections: 0, requests: 4, bytesSent: 1, bytesReceived: 2, firstSeen: 1_700_000_000.25, lastSeen: 1_700_000_060.5))
        let data = try GraphDocument(edges: [edge]).encoded()
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(Array(object.keys) == ["edges"])
        let first = try #require((object["edges"] as? [[String: Any]])?.first)
        #expect(Set(first.keys) == [
            "src_identity", "src_addr", "dst_workload", "dst_identity", "dst_port", "protocol", "tls", "method", "path_template",
            "decision", "policy", "rule", "audit", "audit_policy", "audit_rule", "connections", "requests", "bytes_sent", "bytes_received",
            "first_seen", "last_seen",
        ])
        #expect(first["path_template"] as? String == "/orders/{id}")
        #expect(first["first_seen"] as? String == "2023-11-14T22:13:20.250Z")
        #expect(try GraphDocument.decode(data, source: "test") == GraphDocument(edges: [edge]))
    }

    @Test func aDocumentWithoutItsFieldsIsRefusedNamingTheFileAndField() {
        let data = Data(#"{"edges":[{"dst_workload":"shop/orders"}]}"#.utf8)
        #expect {
            try GraphDocument.decode(data, source: "a.json")
        } throws: { error in
            let text = "\(error)"
            return text.hasPrefix("a.json: not a graph document") && text.contains("dst_port")
        }
    }

    @Test func filtersByNamespaceWorkloadAndTime() {
        let edge = Edge(key: Self.key(), counts: EdgeCounts(connections: 1, firstSeen: 10, lastSeen: 20))
        #expect(EdgeFilter(namespace: "shop").matches(edge))
        #expect(!EdgeFilter(namespace: "bank").matches(edge))
        #expect(EdgeFilter(workload: "orders").matches(edge))
        #expect(EdgeFilter(workload: "shop/orders").matches(edge))
        #expect(EdgeFilter(workload: "checkout").matches(edge), "the caller's service account")
        #expect(!EdgeFilter(workload: "cart").matches(edge))
        #expect(EdgeFilter(since: 20).matches(edge))
        #expect(!EdgeFilter(since: 21).matches(edge))
    }

    @Test func dotShowsTLSByStyleAndDecisionByColour() {
        let edges = [
            Edge(key: Self.key(), counts: EdgeCounts(connections: 2, firstSeen: 1, lastSeen: 1)),
            Edge(key: Self.key(source: nil, address: "10.77.0.9", decision: "deny"), counts: EdgeCounts(connections: 1, firstSeen: 1, lastSeen: 1)),
        ]
        let dot = GraphView.dot(edges)
        #expect(dot.hasPrefix("digraph mesh {"))
        #expect(dot.contains(##""shop/checkout" -> "shop/orders" [label="8080/tcp  2 conn", color="#2e7d32", fontcolor="#2e7d32", style=solid];"##))
        #expect(dot.contains(##""plaintext from 10.77.0.9" -> "shop/orders" [label="8080/tcp  1 conn (deny)", color="#c62828", fontcolor="#c62828", style=dashed];"##))
    }

    @Test func dotQuotesWhatAClientControls() {
        #expect(GraphView.quoted("a\"b\\c\nd") == #""a\"b\\cd""#)
    }
}
