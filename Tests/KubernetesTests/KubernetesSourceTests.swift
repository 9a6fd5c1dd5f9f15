import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
import Workloads
@testable import Kubernetes

/// The source against the stand-in API server: list, watch, and every way a
/// watch ends.
@Suite(.serialized) struct KubernetesSourceTests {
    static let node = "node-a"

    static func pod(_ number: Int, namespace: String = "shop", node: String = node, labels: [String: String] = [:]) -> StandInAPIServer.PodFixture {
        StandInAPIServer.PodFixture(
            uid: String(format: "6b0b6d58-7a8e-4c3f-9f7e-%012d", number), name: "pod-\(number)", namespace: namespace, node: node,
            labels: labels, serviceAccount: "sa-\(number)", ports: [8000 + number], ips: ["10.77.1.\(number)"])
    }

    static let ambient = [EnrollmentLabels.dataplaneMode: EnrollmentLabels.ambient]

    /// Runs `body` with a started stand-in server and a running source.
    static func withSource(
        tokenFile: String? = nil, configure: (StandInAPIServer) -> Void = { _ in },
        _ body: (StandInAPIServer, KubernetesSource) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = StandInAPIServer(group: group)
        configure(server)
        try await server.start()
        var configuration = KubernetesSourceConfiguration(node: node, apiServer: server.url, tokenFile: tokenFile, cgroupLayout: .systemd)
        configuration.backoff = Backoff(initial: .milliseconds(20), maximum: .milliseconds(200))
        configuration.watchTimeout = .seconds(60)
        configuration.readTimeout = .seconds(5)
        configuration.pageSize = 2
        let source = try KubernetesSource(configuration: configuration, environment: [:], group: group, logger: Logger(label: "test"))
        let task = Task { await source.run() }
        do {
            try await body(server, source)
        } catch {
            task.cancel()
            await task.value
            try? await server.stop()
            try await group.shutdownGracefully()
            throw error
        }
        task.cancel()
        await task.value
        try await server.stop()
        try await group.shutdownGracefully()
    }

    /// How long a condition may take. Alone a test meets it in well under a
    /// second; under ThreadSanitizer, with the whole suite's tests keeping the
    /// two cores' cooperative threads busy, the source's tasks waited over
    /// 30 s for their turn. A hang still fails.
    static let patience: Duration = .seconds(90)

    /// Waits until `condition` holds for the last reported pods.
    @discardableResult
    static func eventually(
        _ source: KubernetesSource, _ what: String, timeout: Duration = patience,
        _ condition: ([DiscoveredPod]) -> Bool
    ) async throws -> [DiscoveredPod] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let pods = source.currentPods, condition(pods) { return pods }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("timed out waiting for \(what); last report \(source.currentPods.map { $0.map(\.name) } ?? []), status \(source.status)")
        throw CancellationError()
    }

    static func waitFor(_ what: String, timeout: Duration = patience, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("timed out waiting for \(what)")
        throw CancellationError()
    }

    static func find(_ pods: [DiscoveredPod], _ name: String) -> DiscoveredPod? {
        pods.first { $0.name == name }
    }

    // MARK: -

    @Test func addRelabelAndDelete() async throws {
        try await Self.withSource(configure: { server in
            server.setNamespace("shop")
            server.setNamespace("payments", labels: Self.ambient)
            server.addPod(Self.pod(1, labels: Self.ambient))
            server.addPod(Self.pod(2))
            server.addPod(Self.pod(3, namespace: "payments"))
            server.addPod(Self.pod(9, node: "node-b", labels: Self.ambient))
        }) { server, source in
            // The first report: this node's three pods, from paged lists.
            var pods = try await Self.eventually(source, "the listed pods") { $0.count == 3 }
            #expect(pods.map(\.name) == ["pod-3", "pod-1", "pod-2"], "sorted by namespace and name; pod-9 is on another node")
            let first = try #require(Self.find(pods, "pod-1"))
            #expect(first.enrollment == .enrolled)
            #expect(first.source == .kubernetes)
            #expect(first.namespace == "shop" && first.serviceAccount == "sa-1")
            #expect(first.ports == [8001] && first.addresses == ["10.77.1.1"])
            #expect(first.cgroup?.string == "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b0b6d58_7a8e_4c3f_9f7e_000000000001.slice")
            #expect(Self.find(pods, "pod-2")?.enrollment.isEnrolled == false)
            #expect(Self.find(pods, "pod-3")?.enrollment == .enrolled, "enrolled by its namespace")
            #expect(server.requests.first { $0.path == "/api/v1/pods" }?.query["resourceVersion"] == "0", "the first list is served from the watch cache")

            // A new pod, through the watch.
            try await Self.waitFor("both watches") { server.openWatches == 2 }
            server.addPod(Self.pod(4, labels: Self.ambient))
            pods = try await Self.eventually(source, "pod-4") { Self.find($0, "pod-4") != nil }
            #expect(Self.find(pods, "pod-4")?.enrollment == .enrolled)

            // The pod's label enrolls it, and its opt-out unenrolls it.
            server.modifyPod(Self.pod(2, labels: Self.ambient))
            try await Self.eventually(source, "pod-2 enrolled") { Self.find($0, "pod-2")?.enrollment == .enrolled }
            server.modifyPod(Self.pod(2, labels: [EnrollmentLabels.dataplaneMode: EnrollmentLabels.none]))
            try await Self.eventually(source, "pod-2 opted out") { Self.find($0, "pod-2")?.enrollment.isEnrolled == false }

            // The namespace's label re-decides every pod in it.
            server.setNamespace("shop", labels: Self.ambient)
            pods = try await Self.eventually(source, "shop enrolled") { Self.find($0, "pod-4")?.enrollment == .enrolled && Self.find($0, "pod-1")?.enrollment == .enrolled }
            #expect(Self.find(pods, "pod-2")?.enrollment.isEnrolled == false, "the pod's own none wins over its namespace")
            server.setNamespace("payments")
            try await Self.eventually(source, "payments unenrolled") { Self.find($0, "pod-3")?.enrollment.isEnrolled == false }

            // Deleted, and finished, pods are gone.
            server.deletePod(uid: Self.pod(4).uid)
            try await Self.eventually(source, "pod-4 gone") { Self.find($0, "pod-4") == nil }
            var finished = Self.pod(1, labels: Self.ambient)
            finished.phase = "Succeeded"
            server.modifyPod(finished)
            pods = try await Self.eventually(source, "pod-1 finished") { Self.find($0, "pod-1") == nil }
            #expect(pods.map(\.name) == ["pod-3", "pod-2"])

            let status = source.status
            #expect(status.connected && status.synced)
            #expect(status.lastError == nil)
            #expect(status.pods == 2)
            #expect(status.cgroupLayout != nil)
            #expect(status.resourceVersions["pods"] != nil && status.resourceVersions["namespaces"] != nil)
        }
    }

    @Test func everyChangeIsReportedOnTheStream() async throws {
        try await Self.withSource(configure: { server in
            server.setNamespace("shop", labels: Self.ambient)
        }) { server, source in
            var iterator = source.updates.makeAsyncIterator()
            let empty = await iterator.next()
            #expect(empty == [], "an empty node is reported too, once synced")
            try await Self.waitFor("both watches") { server.openWatches == 2 }
            server.addPod(Self.pod(1))
            let added = await iterator.next()
            #expect(added?.map(\.name) == ["pod-1"])
            server.bookmark()
            server.deletePod(uid: Self.pod(1).uid)
            let deleted = await iterator.next()
            #expect(deleted == [], "a bookmark changes nothing, so the next report is the delete")
        }
    }

    @Test(arguments: [false, true])
    func goneRelists(asHTTPStatus: Bool) async throws {
        try await Self.withSource(configure: { server in
            server.setNamespace("shop", labels: Self.ambient)
            server.addPod(Self.pod(1))
            server.addPod(Self.pod(2))
            server.addPod(Self.pod(4))
            server.goneAsHTTPStatus = asHTTPStatus
        }) { server, source in
            try await Self.eventually(source, "the listed pods") { $0.count == 3 }
            try await Self.waitFor("both watches") { server.openWatches == 2 }
            let listsBefore = server.requests.filter { !$0.isWatch && $0.path == "/api/v1/pods" }.count

            // The history is compacted: open watches get ERROR 410, and a
            // watch from their old version would too. What changed meanwhile
            // is only seen by a new list.
            await server.dropConnections()
            server.expireHistory()
            server.deletePod(uid: Self.pod(2).uid)
            server.expireHistory()
            server.addPod(Self.pod(3))
            server.expireHistory()

            let pods = try await Self.eventually(source, "the relisted pods") { $0.map(\.name) == ["pod-1", "pod-3", "pod-4"] }
            #expect(pods.allSatisfy { $0.enrollment == .enrolled })
            let relists = server.requests.filter { !$0.isWatch && $0.path == "/api/v1/pods" }.dropFirst(listsBefore)
            #expect(!relists.isEmpty)
            #expect(relists.contains { $0.query["resourceVersion"] == nil && $0.query["continue"] != nil }, "after a 410, pages read from etcd")
            try await Self.waitFor("relists counted") { source.status.relists >= 1 }
            try await Self.waitFor("watching again") { source.status.connected }
        }
    }

    @Test func apiServerRestartKeepsPodsAndResumes() async throws {
        try await Self.withSource(configure: { server in
            server.setNamespace("shop", labels: Self.ambient)
            server.addPod(Self.pod(1))
        }) { server, source in
            try await Self.eventually(source, "pod-1") { $0.count == 1 }
            try await Self.waitFor("both watches") { server.openWatches == 2 }
            // A namespace changes: the pods watch sees nothing of it until a
            // bookmark says it is at that version too.
            let listed = source.status.resourceVersions["pods"]
            server.setNamespace("other")
            try await Self.waitFor("the namespace change") { source.status.resourceVersions["namespaces"] != listed }
            server.bookmark()
            try await Self.waitFor("the bookmark's version") { source.status.resourceVersions["pods"] == source.status.resourceVersions["namespaces"] }
            let bookmarked = source.status.resourceVersions["pods"]
            #expect(bookmarked != listed)

            let port = server.port
            try await server.stop()
            try await Self.waitFor("the source to notice") { !source.status.connected && source.status.lastError?.contains("cannot connect") == true }
            // Lost, but nothing it knew is dropped.
            #expect(source.currentPods?.map(\.name) == ["pod-1"])
            let status = source.status
            #expect(status.lastError?.contains("127.0.0.1:\(port)") == true, "\(status.lastError ?? "")")
            #expect(status.lastErrorTime != nil)

            // While it is down, a pod comes; the restarted server has it in
            // its history, and the watch resumes from where it was.
            server.addPod(Self.pod(2))
            try await Task.sleep(for: .milliseconds(100))
            try await server.start(port: port)
            try await Self.eventually(source, "pod-2 after the restart") { $0.map(\.name) == ["pod-1", "pod-2"] }
            try await Self.waitFor("watching again") { source.status.connected }
            #expect(source.status.watchRestarts >= 2)
            let resumed = server.requests.filter { $0.isWatch && $0.path == "/api/v1/pods" }.last
            #expect(resumed?.query["resourceVersion"] == bookmarked, "the watch resumed from the bookmark, without a new list")
            #expect(source.status.relists == 0)
        }
    }

    @Test func theTokenIsReadAgainForEveryConnection() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-token-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let tokenFile = directory.appendingPathComponent("token")
        try "first-token\n".write(to: tokenFile, atomically: true, encoding: .utf8)

        try await Self.withSource(tokenFile: tokenFile.path, configure: { server in
            server.requiredToken = "first-token"
            server.setNamespace("shop")
            server.addPod(Self.pod(1))
        }) { server, source in
            try await Self.eventually(source, "pod-1") { $0.count == 1 }
            #expect(server.requests.allSatisfy { $0.authorization == "Bearer first-token" })

            // The token rotates; the server takes only the new one.
            try "second-token".write(to: tokenFile, atomically: true, encoding: .utf8)
            server.requiredToken = "second-token"
            await server.dropConnections()
            server.addPod(Self.pod(2))
            try await Self.eventually(source, "pod-2") { $0.count == 2 }
            #expect(server.requests.last?.authorization == "Bearer second-token")

            // A refused token is reported as such, and pods are kept.
            server.requiredToken = "third-token"
            await server.dropConnections()
            try await Self.waitFor("the 401") { source.status.lastError?.contains("401") == true }
            #expect(source.status.lastError?.contains("refused the token") == true)
            #expect(source.currentPods?.count == 2)
        }
    }

    @Test func aBrokenEventListsAgain() async throws {
        try await Self.withSource(configure: { server in
            server.setNamespace("shop")
            server.addPod(Self.pod(1))
        }) { server, source in
            try await Self.eventually(source, "pod-1") { $0.count == 1 }
            try await Self.waitFor("both watches") { server.openWatches == 2 }
            server.sendRaw("{\"type\":\"ADDED\",\"object\":[1,2]}\n")
            try await Self.waitFor("a relist") { source.status.relists >= 1 }
            #expect(source.status.lastError?.contains("cannot decode a watch event") == true, "\(source.status.lastError ?? "")")
            #expect(source.currentPods?.count == 1)
        }
    }

    @Test func configurationErrorsAreClear() throws {
        let group = MultiThreadedEventLoopGroup.singleton
        #expect(throws: KubernetesSourceError.noAPIServer) {
            try KubernetesSource(configuration: .init(node: "node-a"), environment: [:], group: group, logger: Logger(label: "test"))
        }
        #expect(throws: KubernetesSourceError.invalidNode("Node A")) {
            try KubernetesSource(configuration: .init(node: "Node A"), environment: [:], group: group, logger: Logger(label: "test"))
        }
        let inCluster = try KubernetesSource(
            configuration: .init(node: "node-a"), environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"],
            group: group, logger: Logger(label: "test"))
        #expect(inCluster.endpoint.description == "https://10.96.0.1:443")
        #expect(inCluster.status.connected == false && inCluster.currentPods == nil)
    }
}
