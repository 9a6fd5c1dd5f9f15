import Testing

@testable import EngineAPI

@Suite struct ListDecodingTests {
    @Test func libpodPodListHasLabelsAndInfraContainers() throws {
        let pods = try EngineDecoding.libpodPods(try Recorded.bytes("libpod-pods.json"))
        #expect(pods.map(\.name) == ["orders", "plain", "reviews"])
        let orders = try #require(pods.first)
        #expect(orders.id == Recorded.ordersPod)
        #expect(orders.status == "Running")
        #expect(orders.infraContainerID == Recorded.ordersInfra)
        #expect(orders.labels["istio.io/dataplane-mode"] == "ambient")
        #expect(orders.labels["mesh-agent.io/namespace"] == "shop")
        #expect(pods[1].labels.isEmpty, "a pod without labels lists them as {}")
        #expect(pods[2].labels["mesh-agent.io/service-account"] == "reviews", "kube play carries the manifest's labels to the pod")
    }

    @Test func libpodContainerListHasPodsInfraStateAndPublishedPorts() throws {
        let containers = try EngineDecoding.libpodContainers(try Recorded.bytes("libpod-containers.json"))
        #expect(containers.count == 9)
        let byID = Dictionary(uniqueKeysWithValues: containers.map { ($0.id, $0) })
        let infra = try #require(byID[Recorded.ordersInfra])
        #expect(infra.isInfra && infra.podID == Recorded.ordersPod && infra.isRunning)
        #expect(infra.tcpPorts == [8080])
        #expect(infra.name == "9a981427eaf5-infra")
        let app = try #require(byID[Recorded.ordersApp])
        #expect(!app.isInfra && app.podID == Recorded.ordersPod && app.labels.isEmpty, "Labels: null reads as none")
        let solo = try #require(byID[Recorded.solo])
        #expect(solo.podID == nil, "\"Pod\": \"\" is no pod")
        #expect(solo.labels["mesh-agent.io/ports"] == "7000,7001")
        #expect(byID[Recorded.stopped]?.state == "created")
        #expect(byID[Recorded.exposer]?.tcpPorts == [], "a published UDP port is no TCP port")
    }

    @Test func dockerContainerListHasNamesWithoutSlashAndAddresses() throws {
        let containers = try EngineDecoding.dockerContainers(try Recorded.bytes("docker-containers.json"))
        #expect(containers.count == 9)
        let solo = try #require(containers.first { $0.id == Recorded.solo })
        #expect(solo.name == "solo")
        #expect(solo.tcpPorts == [7000])
        #expect(solo.addresses == ["10.77.231.4"])
        #expect(solo.podID == nil && !solo.isInfra, "the Docker API knows no pods")
        let stopped = try #require(containers.first { $0.id == Recorded.stopped })
        #expect(stopped.state == "created" && stopped.addresses.isEmpty, "an empty IPAddress is no address")
    }

    @Test func libpodInspectionSaysCgroupNamespaceAndExposedPorts() throws {
        let infra = try EngineDecoding.containerDetails(try Recorded.bytes("libpod-container-orders-infra.json"))
        #expect(infra.id == Recorded.ordersInfra)
        #expect(infra.running && infra.pid == 21504)
        #expect(infra.cgroupPath == "/libpod_parent/\(Recorded.ordersPod)/libpod-\(Recorded.ordersInfra)")
        #expect(infra.sandboxKey == "/run/netns/netns-8ac9a8f0-5bb0-c67b-50ce-6f70e7c23f77")
        #expect(infra.addresses == ["10.77.231.2"])
        #expect(infra.tcpPorts == [8080])
        #expect(!infra.usesHostNetwork)

        let exposer = try EngineDecoding.containerDetails(try Recorded.bytes("libpod-container-exposer.json"))
        #expect(exposer.tcpPorts == [7100], "--expose 7100 shows as a port without bindings; 7200/udp is not TCP")
        #expect(exposer.cgroupPath == "/libpod_parent/libpod-\(Recorded.exposer)", "a standalone container sits directly below libpod_parent")
    }

    @Test func dockerInspectionHasNoCgroupPath() throws {
        let solo = try EngineDecoding.containerDetails(try Recorded.bytes("docker-container-solo.json"))
        #expect(solo.cgroupPath == nil)
        #expect(solo.pid == 21739)
        #expect(solo.sandboxKey == "/run/netns/netns-19fdcc86-7e23-f36d-37a2-a9e4fb9f2eeb")
        #expect(solo.tcpPorts == [7000])
        let exposer = try EngineDecoding.containerDetails(try Recorded.bytes("docker-container-exposer.json"))
        #expect(exposer.tcpPorts == [7100], "Config.ExposedPorts counts")
    }

    @Test func podInspectionSaysThePodsCgroup() throws {
        let orders = try EngineDecoding.libpodPodDetails(try Recorded.bytes("libpod-pod-orders.json"))
        #expect(orders.cgroupPath == "/libpod_parent/\(Recorded.ordersPod)")
        #expect(orders.infraContainerID == Recorded.ordersInfra)
        let reviews = try EngineDecoding.libpodPodDetails(try Recorded.bytes("libpod-pod-reviews.json"))
        #expect(reviews.cgroupPath == "/libpod_parent/\(Recorded.reviewsPod)", "a kube play pod is a pod like any other")
    }

    /// Found by the EngineAPI fuzz target: an engine's "10.77)231.5" was
    /// reported as a pod's address. Only addresses pass, as the agent writes them.
    @Test func addressesAreAddressesAsTheAgentWritesThem() throws {
        let list = #"""
            [{"Id":"a","NetworkSettings":{"IPAddress":"10.77)231.5","GlobalIPv6Address":"FD00:0::5",
              "Networks":{"x":{"IPAddress":" 10.77.231.6"},"y":{"IPAddress":"10.77.231.7","GlobalIPv6Address":"fd00::5"}}}}]
            """#
        #expect(try EngineDecoding.dockerContainers(Array(list.utf8)).first?.addresses == ["fd00::5", "10.77.231.7"])
        let inspection = #"{"Id":"a","NetworkSettings":{"IPAddress":"10.77.231.7\n","Networks":{"x":{"IPAddress":"10.77.231.8"}}}}"#
        #expect(try EngineDecoding.containerDetails(Array(inspection.utf8)).addresses == ["10.77.231.8"])
    }

    /// Broke the EngineAPI fuzz target's check that no id reaches another
    /// endpoint: an enrolled container with "Id": "" was inspected at
    /// `/containers//json`. Entries without an id are left out.
    @Test func entriesWithoutAnIdAreLeftOut() throws {
        let labels = #""Labels":{"istio.io/dataplane-mode":"ambient"},"State":"running""#
        let docker = try EngineDecoding.dockerContainers(Array(#"[{"Id":"",\#(labels)},{"Id":"c1",\#(labels)}]"#.utf8))
        #expect(docker.map(\.id) == ["c1"])
        let libpod = try EngineDecoding.libpodContainers(Array(#"[{"Id":"",\#(labels)},{"Id":"c1",\#(labels)}]"#.utf8))
        #expect(libpod.map(\.id) == ["c1"])
        let pods = try EngineDecoding.libpodPods(Array(#"[{"Id":"","InfraId":"c1"},{"Id":"p1"}]"#.utf8))
        #expect(pods.map(\.id) == ["p1"])
        let needed = EngineWorkloads.inspectionsNeeded(EngineListing(flavor: .docker, containers: docker))
        #expect(needed.containers == ["c1"])
    }

    /// Broke the EngineAPI fuzz target's check that a namespace file is an
    /// absolute path the kernel reads whole: "netns-x" was to be opened from
    /// the agent's working directory, "/run/netns/x\u0000y" as /run/netns/x.
    /// The namespace is then found through the container's first process.
    @Test func sandboxKeysAreAbsolutePathsOrNothing() throws {
        func inspection(_ key: String) -> [UInt8] {
            Array(#"{"Id":"c1","State":{"Running":true,"Pid":5},"NetworkSettings":{"SandboxKey":"\#(key)"}}"#.utf8)
        }
        for key in ["netns-x", #"/run/netns/x\u0000y"#, #"/run/netns/x\ny"#, #"/run/netns/x\u0085"#, ""] {
            #expect(try EngineDecoding.containerDetails(inspection(key)).sandboxKey == nil, "\(key)")
        }
        #expect(try EngineDecoding.containerDetails(inspection("/run/netns/x")).sandboxKey == "/run/netns/x")
        let list = #"[{"Id":"c1","Labels":{"istio.io/dataplane-mode":"ambient"},"State":"running"}]"#
        let listing = EngineListing(flavor: .docker, containers: try EngineDecoding.dockerContainers(Array(list.utf8)))
        let details = EngineDetails(containers: ["c1": try EngineDecoding.containerDetails(inspection("netns-x"))])
        #expect(EngineWorkloads.discoveredPods(listing, details: details).first?.networkNamespacePath == "/proc/5/ns/net")
    }

    @Test func errorAnswersGiveTheirMessage() throws {
        #expect(EngineDecoding.errorMessage(try Recorded.bytes("libpod-error-404.json")) == "no container with name or ID \"nosuch\" found: no such container")
        #expect(EngineDecoding.errorMessage(Array("Not Found\n".utf8)) == nil)
    }

    /// A pod removed between an event and its inspection: Podman 4 answers 500
    /// with the cause "no such pod". That is a missing pod, not a failure of
    /// the engine; any other 500 still is.
    @Test func aMissingObjectIsRecognisedBy404OrPodmansCause() throws {
        let gone = Array(#"{"cause":"no such pod","message":"no pod with ID 09a9 found in database: no such pod","response":500}"#.utf8)
        #expect(EngineDecoding.saysMissing(status: 500, body: gone))
        #expect(EngineDecoding.saysMissing(status: 404, body: try Recorded.bytes("libpod-error-404.json")))
        let broken = Array(#"{"cause":"database is locked","message":"database is locked","response":500}"#.utf8)
        #expect(!EngineDecoding.saysMissing(status: 500, body: broken))
        #expect(!EngineDecoding.saysMissing(status: 500, body: Array("no such pod".utf8)), "only the JSON cause counts")
        #expect(!EngineDecoding.saysMissing(status: 503, body: gone))
    }

    @Test func whatIsNotAListSaysWhereItIsWrong() {
        func reason(_ text: String) -> String {
            do {
                _ = try EngineDecoding.libpodPods(Array(text.utf8))
                return "decoded"
            } catch let EngineAPIError.undecodable(_, reason) {
                return reason
            } catch {
                return "\(error)"
            }
        }
        #expect(reason("") == "not valid JSON")
        #expect(reason("{\"Id\":\"x\"}").contains("is not a Array"))
        #expect(reason("[{\"Name\":\"x\"}]") == "field \"Id\" is missing in [0]")
        #expect(reason("[{\"Id\":\"x\",\"Labels\":{\"a\":1}}]") == "[0].Labels.a is not a string")
        #expect(reason("[{\"Id\":null}]") == "[0].Id is null, expected String")
        #expect(reason("[{\"Id\":\"x\",\"Labels\":null,\"Status\":null}]") == "decoded", "null where the engines write null is fine")
    }

    @Test func errorsSayWhatToCheck() {
        let error = EngineAPIError.undecodable(what: "the libpod pod list", reason: "not valid JSON")
        #expect(error.description.hasPrefix("the libpod pod list is not what this agent understands: not valid JSON; check"))
        let status = EngineAPIError.status(code: 404, request: "GET /v4.0.0/libpod/pods/json", message: "line\nbreak")
        #expect(!status.description.contains("\n"), "engine text is escaped: \(status)")
    }

    @Test func portKeysAndRanges() {
        #expect(EngineDecoding.tcpPort(key: "8080/tcp") == [8080])
        #expect(EngineDecoding.tcpPort(key: "8080/TCP") == [8080])
        #expect(EngineDecoding.tcpPort(key: "8080") == [8080])
        #expect(EngineDecoding.tcpPort(key: "8080/udp") == [])
        #expect(EngineDecoding.tcpPort(key: "0/tcp") == [])
        #expect(EngineDecoding.tcpPort(key: "70000/tcp") == [])
        #expect(EngineDecoding.tcpPort(key: "/tcp") == [])
        #expect(EngineDecoding.portRange(first: 8000, count: 3) == [8000, 8001, 8002])
        #expect(EngineDecoding.portRange(first: 65535, count: 10) == [65535])
        #expect(EngineDecoding.portRange(first: 1, count: Int.max).count == 65535, "a huge count is clamped, not an overflow")
        #expect(EngineDecoding.portRange(first: 8000, count: Int.min) == [8000])
        #expect(EngineDecoding.portRange(first: -1, count: 1) == [])
    }
}
