import Foundation
import Graph
import Testing
import TestFixtures
@testable import GraphStore

@Suite struct EdgeStoreTests {
    /// A fresh directory for one test's database, removed when it is done.
    final class Scratch: Sendable {
        let directory: String
        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("graph-store-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        var database: String { directory + "/graph.db" }
        deinit { try? FileManager.default.removeItem(atPath: directory) }
    }

    static let hour = EdgeStore.bucketSeconds

    static func edge(_ source: String, connections: UInt64 = 1, lastSeen: Double, method: String? = nil, rule: Int? = nil) -> Edge {
        Edge(
            key: EdgeKey(
                sourceIdentity: "spiffe://cluster.local/ns/shop/sa/\(source)", destinationWorkload: "shop/orders",
                destinationIdentity: "spiffe://cluster.local/ns/shop/sa/orders", destinationPort: 8080,
                protocol: method == nil ? "tcp" : "http", tls: "mutual", method: method, pathTemplate: method == nil ? nil : "/orders/{id}",
                decision: "allow", policy: rule == nil ? nil : "shop/orders", rule: rule, audit: rule == nil ? nil : "allow",
                auditPolicy: rule == nil ? nil : "shop/orders-dry-run", auditRule: rule == nil ? nil : 3),
            counts: EdgeCounts(connections: connections, bytesSent: 100, firstSeen: lastSeen - 1, lastSeen: lastSeen))
    }

    @Test func writesAddUpAndSurviveReopening() async throws {
        let scratch = try Scratch()
        let path = scratch.database
        try await onOwnThread {
            let store = try EdgeStore(path: path)
            try store.write([Self.edge("checkout", connections: 2, lastSeen: 10 * Self.hour + 5)])
            try store.write([
                Self.edge("checkout", connections: 3, lastSeen: 10 * Self.hour + 9),
                Self.edge("cart", lastSeen: 10 * Self.hour + 9, method: "GET", rule: 0),
            ])
        }
        let edges = try await onOwnThread { try EdgeStore(path: path).edges() }
        #expect(edges.count == 2)
        let checkout = try #require(edges.first { $0.key.sourceIdentity?.hasSuffix("checkout") == true })
        #expect(checkout.counts == EdgeCounts(connections: 5, bytesSent: 200, firstSeen: 10 * Self.hour + 4, lastSeen: 10 * Self.hour + 9))
        let cart = try #require(edges.first { $0.key.sourceIdentity?.hasSuffix("cart") == true })
        #expect(cart.key == Self.edge("cart", lastSeen: 0, method: "GET", rule: 0).key, "absent and present fields come back as they went in")
        #expect(checkout.key.rule == nil && checkout.key.method == nil)
        // The file format's read and write versions (header bytes 18, 19) are 2 in WAL mode.
        let header = try #require(FileManager.default.contents(atPath: path)).prefix(20)
        #expect(Array(header.suffix(2)) == [2, 2], "the database is in WAL mode")
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o640, "not readable by everyone: it names every identity and address")
    }

    @Test func aWindowAddsTheHoursItCovers() async throws {
        let scratch = try Scratch()
        let edges = try await onOwnThread {
            let store = try EdgeStore(path: scratch.database)
            try store.write([Self.edge("checkout", connections: 1, lastSeen: 1 * Self.hour + 1)])
            try store.write([Self.edge("checkout", connections: 10, lastSeen: 5 * Self.hour + 1)])
            return (all: try store.edges(), recent: try store.edges(since: 4 * Self.hour))
        }
        #expect(edges.all.first?.counts.connections == 11)
        #expect(edges.recent.first?.counts.connections == 10)
    }

    @Test func retentionAndTheRowLimitDeleteTheOldestFirst() async throws {
        let scratch = try Scratch()
        let (afterRetention, afterLimit, kept) = try await onOwnThread {
            let store = try EdgeStore(path: scratch.database)
            for hour in 0..<6 {
                try store.write([Self.edge("checkout", lastSeen: Double(hour) * Self.hour + 1)])
            }
            try store.prune(before: 2 * Self.hour, maximumRows: 100)
            let afterRetention = try store.rowCount()
            try store.prune(before: 0, maximumRows: 2)
            return (afterRetention, try store.rowCount(), try store.edges())
        }
        #expect(afterRetention == 4)
        #expect(afterLimit == 2)
        #expect(kept.first?.counts.firstSeen == 4 * Self.hour, "the newest hours are kept")
    }

    @Test func aPairNeverHeldIsUnseenOnceAndTheLearningPeriodEndsAtTheBaseline() async throws {
        let scratch = try Scratch()
        let result = try await onOwnThread {
            let store = try EdgeStore(path: scratch.database, now: 1000)
            let learning = try store.learningEnds(after: 500)
            try store.write([Self.edge("checkout", lastSeen: 1100)])
            let incoming = [
                Self.edge("checkout", lastSeen: 1200, method: "GET"),  // a known pair with a new method: not new
                Self.edge("cart", lastSeen: 1200),
                Self.edge("cart", lastSeen: 1200, method: "GET"),  // the same new pair twice: one
            ]
            let unseen = try store.unseenPairs(incoming)
            try store.write(incoming)
            try store.setBaseline(1150)
            return (
                learning: learning, unseen: unseen, again: try store.unseenPairs(incoming), baseline: try store.learningEnds(after: 500),
                new: try store.edges(newSince: 1150), knowsCart: try store.knowsSource(Self.edge("cart", lastSeen: 0).key)
            )
        }
        #expect(result.learning == 1500, "learning runs from when the database was made")
        #expect(result.unseen.map { $0.key.sourceIdentity } == ["spiffe://cluster.local/ns/shop/sa/cart"])
        #expect(result.again.isEmpty, "written once, known from then on")
        #expect(result.baseline == 1150)
        #expect(Set(result.new.compactMap(\.key.sourceIdentity)) == ["spiffe://cluster.local/ns/shop/sa/cart"], "checkout's pair is older than the baseline")
        #expect(result.knowsCart)
    }

    @Test func aCorruptFileIsReportedAsSuchWithWhatToDo() async throws {
        let scratch = try Scratch()
        try Data(repeating: 0x5a, count: 8192).write(to: URL(fileURLWithPath: scratch.database))
        let error = try await onOwnThread { () -> GraphStoreError? in
            do {
                let store = try EdgeStore(path: scratch.database)
                try store.write([Self.edge("checkout", lastSeen: 1)])
                return nil
            } catch let error as GraphStoreError {
                return error
            }
        }
        let found = try #require(error)
        #expect(found.isCorrupt)
        #expect(found.description.hasPrefix("graph database \(scratch.database): "))
        #expect(found.description.contains("move it away"))
    }

    @Test func anUnwritablePlaceIsReportedWithThePath() async throws {
        let scratch = try Scratch()
        // A regular file where the directory should be: fails for root too.
        try Data("x".utf8).write(to: URL(fileURLWithPath: scratch.directory + "/file"))
        let path = scratch.directory + "/file/graph.db"
        let error = try await onOwnThread { () -> GraphStoreError? in
            do {
                _ = try EdgeStore(path: path)
                return nil
            } catch let error as GraphStoreError {
                return error
            }
        }
        let found = try #require(error)
        #expect(!found.isCorrupt)
        #expect(found.description.hasPrefix("graph database \(path): "))
        #expect(found.description.contains("writable"))
    }
}

