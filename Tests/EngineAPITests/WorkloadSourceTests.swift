import Foundation
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing
import Workloads

@testable import EngineAPI

/// The source against a stand-in engine that serves the recorded bytes.
@Suite(.timeLimit(.minutes(1))) struct WorkloadSourceTests {
    /// What a source reported, in order.
    final class Reports: Sendable {
        private let box = NIOLockedValueBox<[[DiscoveredPod]]>([])
        func append(_ pods: [DiscoveredPod]) { box.withLockedValue { $0.append(pods) } }
        var all: [[DiscoveredPod]] { box.withLockedValue { $0 } }
        var last: [DiscoveredPod]? { all.last }
        var count: Int { all.count }
    }

    static let fast = EngineWorkloadSource.Configuration(
        requestTimeout: .seconds(5), settleDelay: .milliseconds(20),
        backoff: ReconnectBackoff(initial: .milliseconds(10), maximum: .milliseconds(50), jitter: 0), stableAfter: .seconds(60))

    /// Runs a source against `engine` while `body` runs.
    static func withSource(
        _ flavor: EngineFlavor, socketPath: String, configuration: EngineWorkloadSource.Configuration = fast,
        processCgroup: @escaping @Sendable (Int32) -> CgroupPath? = { _ in nil },
        _ body: (EngineWorkloadSource, Reports) async throws -> Void
    ) async throws {
        let source = EngineWorkloadSource(
            flavor: flavor, socketPath: socketPath, configuration: configuration, logger: Logger(label: "test"),
            processCgroup: processCgroup)
        let reports = Reports()
        let task = Task { await source.run { reports.append($0) } }
        defer { task.cancel() }
        try await body(source, reports)
        task.cancel()
        await task.value
        #expect(!source.status.connected, "a stopped source says it is not connected")
    }

    static func podmanEngine(_ directory: String) async throws -> FakeEngine {
        let engine = FakeEngine(socketPath: directory + "/podman.sock", eventsPath: EngineFlavor.podman.eventsPath)
        engine.answer(EngineFlavor.podman.podListPath ?? "", Array("[]".utf8))
        engine.answer(EngineFlavor.podman.containerListPath, Array("[]".utf8))
        for (id, file) in Recorded.libpodPodFiles { engine.answer(EngineFlavor.podman.podInspectPath(id), try Recorded.bytes(file)) }
        for (id, file) in Recorded.libpodContainerFiles { engine.answer(EngineFlavor.podman.containerInspectPath(id), try Recorded.bytes(file)) }
        try await engine.start()
        return engine
    }

    static func recordedLists(_ engine: FakeEngine) throws {
        engine.answer([
            EngineFlavor.podman.podListPath ?? "": try Recorded.bytes("libpod-pods.json"),
            EngineFlavor.podman.containerListPath: try Recorded.bytes("libpod-containers.json"),
        ])
    }

    /// The recorded events that made the orders pod, as the engine sent them.
    static func ordersEvents() throws -> [UInt8] {
        let lines = try Recorded.bytes("libpod-events.jsonl").split(separator: UInt8(ascii: "\n"))
        return lines.prefix(12).flatMap { Array($0) + [UInt8(ascii: "\n")] }
    }

    @Test func listThenEventThenUpdate() async throws {
        try await withTemporaryDirectory { directory in
            let engine = try await Self.podmanEngine(directory)
            defer { Task { try? await engine.stop() } }
            try await Self.withSource(.podman, socketPath: engine.socketPath) { source, reports in
                try await eventually("the first listing", reports.count == 1)
                #expect(reports.last == [], "an engine without pods reports an empty set")
                #expect(source.status.connected)
                #expect(engine.requests.first == EngineFlavor.podman.eventsPath, "events are followed before listing, so no change is missed")

                try Self.recordedLists(engine)
                engine.sendEvents(try Self.ordersEvents())
                try await eventually("a report after the events", reports.count == 2)
                let pods = try #require(reports.last)
                #expect(pods.count == 6)
                let orders = try #require(pods.first { $0.id == Recorded.ordersPod })
                #expect(orders.enrollment == .enrolled && orders.namespace == "shop" && orders.serviceAccount == "orders")
                #expect(orders.networkNamespacePath == "/run/netns/netns-8ac9a8f0-5bb0-c67b-50ce-6f70e7c23f77")
                #expect(orders.cgroup?.string == "/libpod_parent/\(Recorded.ordersPod)")
                #expect(pods.filter(\.enrollment.isEnrolled).map(\.name).sorted() == ["orders", "reviews", "solo"])
                let listings = engine.requests.filter { $0 == EngineFlavor.podman.containerListPath }.count
                #expect(listings <= 3, "twelve events in one burst make one listing, or two when some arrive during it, not twelve")

                // An event about solo inspects solo again, and nothing else.
                try await Self.quiet(engine)
                let before = engine.requests.count
                engine.sendEvents(Array(#"{"Type":"container","Action":"restart","Actor":{"ID":"\#(Recorded.solo)","Attributes":{"podId":""}}}"#.utf8) + [10])
                try await eventually("the inspection of solo", engine.requests.count == before + 3)
                #expect(Array(engine.requests[before...]) == [
                    EngineFlavor.podman.podListPath ?? "", EngineFlavor.podman.containerListPath,
                    EngineFlavor.podman.containerInspectPath(Recorded.solo),
                ], "what no event named stays as inspected")
                #expect(reports.count == 2, "a listing that finds the same reports nothing")

                // Events that change no workload cost no listing.
                try await Self.quiet(engine)
                let listed = source.status.listings
                let requests = engine.requests.count
                engine.sendEvents(Array(#"{"Type":"image","Action":"pull","Actor":{"ID":""}}"#.utf8) + [10]
                    + Array(#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"\#(Recorded.solo)"}}"#.utf8) + [10])
                try await Task.sleep(for: .milliseconds(200))
                #expect(engine.requests.count == requests)
                #expect(source.status.listings == listed)
                #expect(source.status.enrolled == 3 && source.status.workloads == 6)
            }
        }
    }

    /// Waits until the source has sent nothing for a while, so that what
    /// comes next is the answer to what the test does next.
    static func quiet(_ engine: FakeEngine) async throws {
        var count = -1
        while engine.requests.count != count {
            count = engine.requests.count
            try await Task.sleep(for: .milliseconds(150))
        }
    }

    @Test func truncatedStreamReconnectsAndListsAgain() async throws {
        try await withTemporaryDirectory { directory in
            let engine = try await Self.podmanEngine(directory)
            defer { Task { try? await engine.stop() } }
            try Self.recordedLists(engine)
            try await Self.withSource(.podman, socketPath: engine.socketPath) { source, reports in
                try await eventually("the first listing", reports.count == 1)
                #expect(reports.last?.count == 6)

                // The engine loses the reviews pod while the stream breaks in
                // the middle of an event: the relist after reconnecting
                // finds out, though no event said so.
                let pods = try Recorded.bytes("libpod-pods.json")
                let withoutReviews = try JSONSerialization.jsonObject(with: Data(pods)) as? [[String: Any]] ?? []
                engine.answer(EngineFlavor.podman.podListPath ?? "", Array(try JSONSerialization.data(withJSONObject: withoutReviews.filter { $0["Name"] as? String != "reviews" })))
                engine.sendEvents(Array(#"{"Type":"pod","Action":"remo"#.utf8))
                engine.endEventStreams()

                try await eventually("a second event stream", engine.streamsOpened == 2)
                try await eventually("the report after reconnecting", reports.count == 2)
                #expect(reports.last?.count == 5)
                #expect(!(reports.last ?? []).contains { $0.id == Recorded.reviewsPod })
                let status = source.status
                #expect(status.reconnects == 1)
                #expect(status.lastError?.contains("ended in the middle of an event") == true, "\(status.lastError ?? "no error")")
                #expect(status.lastErrorAt != nil)
                try await eventually("connected again", source.status.connected)

                // Hanging up in the middle of a chunked body is the same.
                engine.closeEventStreams()
                try await eventually("a third event stream", engine.streamsOpened == 3)
                try await eventually("connected again", source.status.connected)
                #expect(source.status.reconnects == 2)
                #expect(source.status.listings == 3, "every reconnection lists again")
                #expect(reports.count == 2, "the same set is not reported twice")
            }
        }
    }

    @Test func missingSocketIsRetriedUntilTheEngineComes() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/podman.sock"
            try await Self.withSource(.podman, socketPath: path) { source, reports in
                try await eventually("some failed attempts", source.status.reconnects >= 3)
                let status = source.status
                #expect(!status.connected)
                #expect(status.lastError?.hasPrefix("cannot connect to the engine API at \(path): no such socket") == true, "\(status.lastError ?? "no error")")
                #expect(reports.count == 0, "no engine, no report")

                let engine = try await Self.podmanEngine(directory)
                defer { Task { try? await engine.stop() } }
                try Self.recordedLists(engine)
                try await eventually("the first listing", reports.count == 1)
                #expect(reports.last?.count == 6)
                #expect(source.status.connected)
            }
        }
    }

    @Test func engineThatRefusesTheStreamSaysWhy() async throws {
        try await withTemporaryDirectory { directory in
            // A Docker socket given as Podman's: the libpod endpoints are not there.
            let engine = FakeEngine(socketPath: directory + "/docker.sock", eventsPath: "/events")
            try await engine.start()
            defer { Task { try? await engine.stop() } }
            try await Self.withSource(.podman, socketPath: engine.socketPath) { source, reports in
                try await eventually("a failed attempt", source.status.lastError != nil)
                let error = source.status.lastError ?? ""
                #expect(error.hasPrefix("the engine answered GET /v4.0.0/libpod/events?stream=true with HTTP 404: \"not recorded\""), "\(error)")
                #expect(reports.count == 0)
            }
        }
    }

    @Test func aBrokenListFailsTheConnectionAndIsRetried() async throws {
        try await withTemporaryDirectory { directory in
            let engine = try await Self.podmanEngine(directory)
            defer { Task { try? await engine.stop() } }
            // Only the container list is broken, and mending it is one
            // answer: a retry that read the pod list before the mend and the
            // container list after it would report half the pods, and the
            // fake engine sends no event that would list again.
            engine.answer(EngineFlavor.podman.podListPath ?? "", try Recorded.bytes("libpod-pods.json"))
            engine.answer(EngineFlavor.podman.containerListPath, Array("[{\"Id\":".utf8))
            try await Self.withSource(.podman, socketPath: engine.socketPath) { source, reports in
                try await eventually("a failed attempt", source.status.reconnects >= 1)
                #expect(source.status.lastError?.hasPrefix("the libpod container list is not what this agent understands: not valid JSON") == true, "\(source.status.lastError ?? "")")
                try Self.recordedLists(engine)
                try await eventually("the whole listing (status then: \(source.status))", reports.last?.count == 6)
            }
        }
    }

    @Test func oversizedEventLineDropsTheStream() async throws {
        try await withTemporaryDirectory { directory in
            let engine = try await Self.podmanEngine(directory)
            defer { Task { try? await engine.stop() } }
            var configuration = Self.fast
            configuration.maxEventLineBytes = 64
            try await Self.withSource(.podman, socketPath: engine.socketPath, configuration: configuration) { source, reports in
                try await eventually("the first listing", reports.count == 1)
                engine.sendEvents(Array(repeating: UInt8(ascii: "x"), count: 100))
                try await eventually("a second event stream", engine.streamsOpened == 2)
                #expect(source.status.lastError?.contains("longer than 64 bytes") == true)
            }
        }
    }

    @Test func dockerUsesTheCompatibleEndpointsAndProcessCgroups() async throws {
        try await withTemporaryDirectory { directory in
            let engine = FakeEngine(socketPath: directory + "/docker.sock", eventsPath: EngineFlavor.docker.eventsPath)
            engine.answer(EngineFlavor.docker.containerListPath, try Recorded.bytes("docker-containers.json"))
            for (id, file) in Recorded.dockerContainerFiles {
                engine.answer(EngineFlavor.docker.containerInspectPath(id), try Recorded.bytes(file))
            }
            try await engine.start()
            defer { Task { try? await engine.stop() } }
            let cgroups: @Sendable (Int32) -> CgroupPath? = { pid in
                pid == 21739 ? try? CgroupPath(validating: "/libpod_parent/libpod-\(Recorded.solo)") : nil
            }
            try await Self.withSource(.docker, socketPath: engine.socketPath, processCgroup: cgroups) { source, reports in
                try await eventually("the first listing", reports.count == 1)
                let pods = reports.last ?? []
                #expect(pods.count == 8, "each container, but reviews-web, whose inspection was not recorded (it answers 404)")
                #expect(pods.allSatisfy { $0.source == WorkloadSource("docker") })
                let solo = try #require(pods.first { $0.id == Recorded.solo })
                #expect(solo.enrollment == .enrolled)
                #expect(solo.cgroup?.string == "/libpod_parent/libpod-\(Recorded.solo)")
                #expect(!engine.requests.contains { $0.contains("libpod") }, "the Docker API only")

                let lines = try Recorded.bytes("docker-events.jsonl").split(separator: UInt8(ascii: "\n"))
                engine.sendEvents(lines.prefix(8).flatMap { Array($0) + [UInt8(ascii: "\n")] })
                try await eventually("a listing after the events", source.status.listings == 2)
            }
        }
    }
}

