import Config
import Foundation
import Graph
import NIOCore
import NIOPosix
import Proxy
import Testing
@testable import Agent

/// The graph is counted from the access log's lines: one place sees every
/// connection and request with its decision.
@Suite struct GraphRecordingTests {
    static func connection(action: AccessLogEntry.Action = .allow, to workload: String? = "shop/orders") throws -> AccessLogEntry {
        var entry = AccessLogEntry(time: 1000, direction: .inbound, tls: .mutual, action: action, reason: "hbone")
        entry.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/checkout"
        entry.sourceAddress = try SocketAddress(ipAddress: "10.77.0.1", port: 41234)
        entry.destinationAddress = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
        entry.destinationWorkload = workload
        entry.destinationIdentity = "spiffe://cluster.local/ns/shop/sa/orders"
        entry.bytesSent = 10
        entry.bytesReceived = 20
        entry.durationMilliseconds = 2500
        return entry
    }

    @Test func aConnectionBecomesAnEdgeSeenWhenItEnded() throws {
        let observation = try #require(EdgeObservation(try Self.connection()))
        #expect(observation.kind == .connection)
        #expect(observation.time == 1002.5)
        #expect(observation.key == EdgeKey(
            sourceIdentity: "spiffe://cluster.local/ns/shop/sa/checkout", destinationWorkload: "shop/orders",
            destinationIdentity: "spiffe://cluster.local/ns/shop/sa/orders", destinationPort: 8080, protocol: "tcp", tls: "mutual",
            decision: "allow"))
    }

    /// A connection is an edge from the moment it is admitted (a new edge is
    /// reported while it lasts), and counted once, when it ends.
    @Test func anOpeningConnectionMakesItsEdgeKnownAndCountsNothingUntilItEnds() throws {
        var opening = try Self.connection()
        opening.isOpening = true
        opening.durationMilliseconds = 0
        let opened = try #require(EdgeObservation(opening))
        #expect(opened.kind == .opening && opened.time == opening.time)
        var aggregate = EdgeAggregate()
        aggregate.add(opened)
        #expect(aggregate.edges.map(\.counts.connections) == [0])
        aggregate.add(try #require(EdgeObservation(try Self.connection())))
        let edge = try #require(aggregate.edges.first)
        #expect(edge.counts.connections == 1 && edge.counts.firstSeen == opening.time && edge.counts.lastSeen == 1002.5)
    }

    @Test func aRequestRefusedBeforeItsMethodWasKnownIsStillARequest() throws {
        var entry = try Self.connection(action: .deny)
        entry.protocol = "http"
        entry.isRequest = true
        #expect(try #require(EdgeObservation(entry)).kind == .request)
    }

    @Test func aPlaintextCallerIsNamedByItsAddressWithoutThePort() throws {
        var entry = try Self.connection()
        entry.sourceIdentity = nil
        entry.tls = .none
        let key = try #require(EdgeObservation(entry)).key
        #expect(key.sourceAddress == "10.77.0.1")
        #expect(key.sourceName == "plaintext from 10.77.0.1")
    }

    @Test func aRequestCarriesItsMethodPathTemplateAndDecidingRule() throws {
        var entry = try Self.connection(action: .deny)
        entry.protocol = "http"
        entry.isRequest = true
        entry.method = "GET"
        entry.path = "/orders/12345"
        entry.policy = "shop/orders-allow"
        entry.rule = 1
        entry.audit = "deny"
        entry.auditPolicy = "shop/orders-dry-run"
        entry.auditRule = 2
        let observation = try #require(EdgeObservation(entry))
        #expect(observation.kind == .request)
        #expect(observation.key.pathTemplate == "/orders/{id}")
        #expect(observation.key.decision == "deny")
        #expect(observation.key.policy == "shop/orders-allow" && observation.key.rule == 1)
        #expect(observation.key.audit == "deny" && observation.key.auditPolicy == "shop/orders-dry-run" && observation.key.auditRule == 2)
    }

    @Test func linesWithoutAWorkloadOnThisNodeAreTheOtherNodesEdges() throws {
        #expect(EdgeObservation(try Self.connection(to: nil)) == nil)
    }

    @Test func theWriterCountsEveryLineEvenThoseTheRateLimitDrops() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("graph-access-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let tally = GraphTally(loops: [])
        let writer = try AccessLogWriter(
            path: path, limit: AccessLogLimit(linesPerSecond: 4, burst: 4), clock: AccessLogClock(monotonic: { 0 }, wall: { 0 }), graph: tally)
        for _ in 0..<10 { writer.record(try Self.connection()) }
        writer.record(try Self.connection(action: .deny))
        let taken = tally.take()
        #expect(taken.edges.map(\.counts.connections) == [10, 1])
        #expect(tally.take().isEmpty, "taking leaves an empty aggregate")
    }

    @Test func aNewEdgeIsOneLineWithTheAccessLogsNamesAndNoAction() throws {
        let key = try #require(EdgeObservation(try Self.connection(action: .deny))).key
        let line = String(decoding: key.newEdgeLine(time: 1_700_000_000, lateralMovement: true), as: UTF8.self)
        #expect(line == #"{"time":"2023-11-14T22:13:20.000Z","event":"new_edge","src_identity":"spiffe://cluster.local/ns/shop/sa/checkout","#
            + #""src_addr":null,"dst_workload":"shop/orders","dst_identity":"spiffe://cluster.local/ns/shop/sa/orders","dst_port":8080,"#
            + #""protocol":"tcp","tls":"mutual","decision":"deny","#
            + #""reason":"a known identity was refused towards a workload it never talked to (lateral movement?)"}"# + "\n")
    }

    @Test func requestsWhoseLinesAreSkippedAreStillCounted() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("graph-access-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let tally = GraphTally(loops: [])
        let writer = try AccessLogWriter(
            path: path, limit: .unlimited, requests: .denied, clock: AccessLogClock(monotonic: { 0 }, wall: { 0 }), graph: tally)
        var request = try Self.connection()
        request.protocol = "http"
        request.isRequest = true
        request.method = "GET"
        request.path = "/orders/1"
        writer.record(request)
        writer.record(request)
        #expect(try String(contentsOfFile: path, encoding: .utf8).isEmpty, "accessLog.requests: denied writes no allowed request")
        #expect(tally.take().edges.map(\.counts.requests) == [2])
    }

    @Test func eachLoopCountsOnItsOwnAndOneTakeGathersThemAll() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let loops = Array(group.makeIterator())
        let tally = GraphTally(loops: loops)
        let observation = try #require(EdgeObservation(try Self.connection()))
        for loop in loops {
            try loop.submit { for _ in 0..<5 { tally.add(observation) } }.wait()
        }
        tally.add(observation)
        #expect(tally.take().edges.map(\.counts.connections) == [11])
        #expect(tally.take().isEmpty)

        // On a loop, a take cannot wait for the others: it gets its own
        // loop's counts and the off-loop ones, and the rest come next time.
        for loop in loops {
            try loop.submit { tally.add(observation) }.wait()
        }
        tally.add(observation)
        let onLoop = try loops[0].submit { tally.take() }.wait()
        #expect(onLoop.edges.map(\.counts.connections) == [2])
        #expect(tally.take().edges.map(\.counts.connections) == [1])
    }

    /// A task given to a stopped loop never runs: once told the loops are
    /// stopping, a take asks them nothing (the loop's own count stays out)
    /// rather than wait for an answer that cannot come.
    @Test func afterTheLoopsStopATakeAsksThemNothing() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let tally = GraphTally(loops: [loop])
        let observation = try #require(EdgeObservation(try Self.connection()))
        try loop.submit { tally.add(observation) }.wait()
        tally.add(observation)
        tally.stopAskingLoops()
        #expect(tally.take().edges.map(\.counts.connections) == [1], "only the off-loop count: the loop was not asked")
    }
}
