import LinuxNet
import Testing
import Workloads

@testable import EngineAPI

/// The recorded Podman as the podman and docker sources report it.
@Suite struct WorkloadMappingTests {
    static func podman() throws -> (EngineListing, EngineDetails) {
        let listing = EngineListing(
            flavor: .podman, pods: try EngineDecoding.libpodPods(try Recorded.bytes("libpod-pods.json")),
            containers: try EngineDecoding.libpodContainers(try Recorded.bytes("libpod-containers.json")))
        let needed = EngineWorkloads.inspectionsNeeded(listing)
        var details = EngineDetails()
        for id in needed.pods {
            let file = try #require(Recorded.libpodPodFiles[id], "pod \(id) was not recorded")
            details.pods[id] = try EngineDecoding.libpodPodDetails(try Recorded.bytes(file))
        }
        for id in needed.containers {
            let file = try #require(Recorded.libpodContainerFiles[id], "container \(id) was not recorded")
            details.containers[id] = try EngineDecoding.containerDetails(try Recorded.bytes(file))
        }
        return (listing, details)
    }

    static func docker() throws -> (EngineListing, EngineDetails) {
        let listing = EngineListing(flavor: .docker, containers: try EngineDecoding.dockerContainers(try Recorded.bytes("docker-containers.json")))
        var details = EngineDetails()
        // reviews-web, enrolled through the labels kube play gave it, was not
        // inspected while recording: it reads as removed between the listing
        // and its inspection.
        for id in EngineWorkloads.inspectionsNeeded(listing).containers {
            guard let file = Recorded.dockerContainerFiles[id] else {
                #expect(id == Recorded.reviewsWeb, "container \(id) was not recorded")
                continue
            }
            details.containers[id] = try EngineDecoding.containerDetails(try Recorded.bytes(file))
        }
        // What /proc/21739/cgroup said while the recording ran.
        details.processCgroups[21739] = try CgroupPath(validating: "/libpod_parent/libpod-\(Recorded.solo)")
        return (listing, details)
    }

    @Test func podmanInspectsOnlyWhatIsEnrolledAndRunning() throws {
        let (listing, _) = try Self.podman()
        let needed = EngineWorkloads.inspectionsNeeded(listing)
        #expect(needed.pods == [Recorded.ordersPod, Recorded.reviewsPod])
        #expect(needed.containers == [Recorded.ordersInfra, Recorded.reviewsInfra, Recorded.solo])
    }

    @Test func podmanReportsPodsAndStandaloneContainers() throws {
        let (listing, details) = try Self.podman()
        let pods = EngineWorkloads.discoveredPods(listing, details: details)
        let byID = Dictionary(uniqueKeysWithValues: pods.map { ($0.id, $0) })
        #expect(Set(byID.keys) == [Recorded.ordersPod, Recorded.plainPod, Recorded.reviewsPod, Recorded.solo, Recorded.stopped, Recorded.exposer],
            "a pod's containers are not reported on their own")
        #expect(pods.allSatisfy { $0.source == WorkloadSource("podman") })

        let orders = try #require(byID[Recorded.ordersPod])
        #expect(orders.enrollment == .enrolled)
        #expect(orders.name == "orders")
        #expect(orders.namespace == "shop" && orders.serviceAccount == "orders")
        #expect(orders.labels["app"] == "orders")
        #expect(orders.ports == [8080])
        #expect(orders.cgroup == (try CgroupPath(validating: "/libpod_parent/\(Recorded.ordersPod)")))
        #expect(orders.networkNamespacePath == "/run/netns/netns-8ac9a8f0-5bb0-c67b-50ce-6f70e7c23f77")
        #expect(orders.addresses == ["10.77.231.2"])

        let plain = try #require(byID[Recorded.plainPod])
        #expect(plain.enrollment == .notEnrolled(reason: "neither the pod nor its namespace is labelled istio.io/dataplane-mode=ambient"))
        #expect(plain.namespace == "default" && plain.serviceAccount == "default")
        #expect(plain.cgroup == nil && plain.networkNamespacePath == nil, "what is not captured is not inspected")

        let solo = try #require(byID[Recorded.solo])
        #expect(solo.enrollment == .enrolled)
        #expect(solo.namespace == "default" && solo.serviceAccount == "default")
        #expect(solo.ports == [7000, 7001], "the label's ports and the published ones")
        #expect(solo.cgroup == (try CgroupPath(validating: "/libpod_parent/libpod-\(Recorded.solo)")))
        #expect(solo.networkNamespacePath == "/run/netns/netns-19fdcc86-7e23-f36d-37a2-a9e4fb9f2eeb")
        #expect(solo.addresses == ["10.77.231.4"])

        let stopped = try #require(byID[Recorded.stopped])
        #expect(stopped.enrollment == .notEnrolled(reason: "it is not running (state \"created\")"))

        let exposer = try #require(byID[Recorded.exposer])
        guard case .notEnrolled(let reason) = exposer.enrollment else {
            Issue.record("a namespace label that is no Kubernetes name enrolls")
            return
        }
        #expect(reason.hasPrefix("label mesh-agent.io/namespace=\"Bad_NS\" is not a valid namespace"))
        #expect(exposer.namespace == "Bad_NS", "shown as written")
    }

    /// `podman kube play` of a Pod manifest (Recorded/kube-play-reviews.yaml)
    /// decodes like a pod made with `podman pod create`.
    @Test func kubePlayPodIsEnrolledFromTheManifestsLabels() throws {
        let (listing, details) = try Self.podman()
        let pods = EngineWorkloads.discoveredPods(listing, details: details)
        let reviews = try #require(pods.first { $0.id == Recorded.reviewsPod })
        #expect(reviews.enrollment == .enrolled)
        #expect(reviews.name == "reviews")
        #expect(reviews.namespace == "bookinfo" && reviews.serviceAccount == "reviews")
        #expect(reviews.ports == [9080], "the manifest's containerPort")
        #expect(reviews.cgroup == (try CgroupPath(validating: "/libpod_parent/\(Recorded.reviewsPod)")))
        #expect(reviews.networkNamespacePath == "/run/netns/netns-da4a73fd-729d-6ca4-2569-31ac2100eed2")
        #expect(reviews.addresses == ["10.77.231.5"])
    }

    @Test func systemdManagersRelativeCgroupPath() throws {
        let (listing, recorded) = try Self.podman()
        var details = recorded
        // As Podman's systemd cgroup manager writes them.
        details.pods[Recorded.ordersPod]?.cgroupPath = "machine.slice/machine-libpod_pod_\(Recorded.ordersPod).slice"
        details.containers[Recorded.solo]?.cgroupPath = "/machine.slice/libpod-\(Recorded.solo).scope"
        let pods = EngineWorkloads.discoveredPods(listing, details: details)
        #expect(pods.first { $0.id == Recorded.ordersPod }?.cgroup == (try CgroupPath(validating: "/machine.slice/machine-libpod_pod_\(Recorded.ordersPod).slice")))
        #expect(pods.first { $0.id == Recorded.solo }?.cgroup == (try CgroupPath(validating: "/machine.slice/libpod-\(Recorded.solo).scope")))

        // Without the pod's inspection, the infra container's parent is the pod's cgroup.
        details.pods[Recorded.ordersPod] = nil
        details.containers[Recorded.ordersInfra]?.cgroupPath = "/machine.slice/machine-libpod_pod_\(Recorded.ordersPod).slice/libpod-\(Recorded.ordersInfra).scope"
        let again = EngineWorkloads.discoveredPods(listing, details: details)
        #expect(again.first { $0.id == Recorded.ordersPod }?.cgroup == (try CgroupPath(validating: "/machine.slice/machine-libpod_pod_\(Recorded.ordersPod).slice")))

        details.containers[Recorded.solo]?.cgroupPath = "/machine.slice/../etc"
        let bad = EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.solo }
        guard case .notEnrolled(let reason)? = bad?.enrollment else {
            Issue.record("a cgroup path that leaves the tree enrolls")
            return
        }
        #expect(reason.contains("is not a cgroup path"))

        // A container directly below the root has the root as its pod's cgroup.
        details.pods[Recorded.ordersPod] = nil
        details.containers[Recorded.ordersInfra]?.cgroupPath = "/libpod-\(Recorded.ordersInfra)"
        let root = EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.ordersPod }
        #expect(root?.cgroup == nil)
        #expect(root?.enrollment == .notEnrolled(reason: "the engine puts it in the root cgroup, which holds every process of the node; run it in a cgroup of its own"))
    }

    @Test func aWorkloadRemovedWhileListingIsLeftOut() throws {
        var (listing, details) = try Self.podman()
        details.containers[Recorded.solo] = nil
        #expect(!EngineWorkloads.discoveredPods(listing, details: details).contains { $0.id == Recorded.solo })
        details.containers[Recorded.ordersInfra]?.running = false
        let orders = EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.ordersPod }
        #expect(orders?.enrollment == .notEnrolled(reason: "its infra container cc6dfee31987 is not running"))
        listing.containers.removeAll { $0.id == Recorded.reviewsInfra }
        let reviews = EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.reviewsPod }
        #expect(reviews?.enrollment == .notEnrolled(reason: "its infra container is not running (state \"missing\")"))
    }

    @Test func hostNetworkHasNoNamespaceOfItsOwn() throws {
        let (listing, recorded) = try Self.podman()
        var details = recorded
        details.containers[Recorded.solo]?.networkMode = "host"
        details.containers[Recorded.solo]?.sandboxKey = nil
        #expect(EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.solo }?.networkNamespacePath == nil)
        details.containers[Recorded.solo]?.networkMode = "container:abc"
        #expect(EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.solo }?.networkNamespacePath == "/proc/21739/ns/net",
            "a borrowed namespace is found through the process")
    }

    @Test func podWithoutInfraIsNotEnrolled() throws {
        let (recorded, details) = try Self.podman()
        var listing = recorded
        listing.pods[0].infraContainerID = nil
        let orders = EngineWorkloads.discoveredPods(listing, details: details).first { $0.id == Recorded.ordersPod }
        guard case .notEnrolled(let reason)? = orders?.enrollment else {
            Issue.record("a pod without infra container enrolls")
            return
        }
        #expect(reason.contains("no infra container"))
    }

    @Test func dockerReportsEveryContainer() throws {
        let (listing, details) = try Self.docker()
        let pods = EngineWorkloads.discoveredPods(listing, details: details)
        #expect(pods.count == 8, "the Docker API has no pods: each container is its own (but reviews-web, not inspected)")
        #expect(!pods.contains { $0.id == Recorded.reviewsWeb })
        #expect(pods.allSatisfy { $0.source == WorkloadSource("docker") })
        let solo = try #require(pods.first { $0.id == Recorded.solo })
        #expect(solo.enrollment == .enrolled)
        #expect(solo.name == "solo")
        #expect(solo.ports == [7000, 7001])
        #expect(solo.cgroup == (try CgroupPath(validating: "/libpod_parent/libpod-\(Recorded.solo)")), "from /proc/PID/cgroup")
        #expect(solo.networkNamespacePath == "/run/netns/netns-19fdcc86-7e23-f36d-37a2-a9e4fb9f2eeb")
        // Podman copies a pod's labels to its infra container, which is all
        // the Docker API shows of the pod.
        let infra = try #require(pods.first { $0.id == Recorded.ordersInfra })
        #expect(infra.enrollment == .enrolled && infra.namespace == "shop")
        #expect(pods.first { $0.id == Recorded.ordersApp }?.enrollment.isEnrolled == false)
    }
}

@Suite struct AdmissionTests {
    func admission(_ labels: [String: String], state: String = "running") -> EngineWorkloads.Admission {
        EngineWorkloads.admission(of: EngineWorkload(
            kind: .container, id: "c", name: "c", labels: labels, networkContainerID: "c", state: state, tcpPorts: [],
            addresses: []))
    }

    let ambient = ["istio.io/dataplane-mode": "ambient"]

    @Test func enrollmentFollowsTheSharedLabels() {
        #expect(admission(ambient).enrollment == .enrolled)
        #expect(admission(["istio.io/dataplane-mode": "none"]).enrollment == .notEnrolled(reason: "the pod is labelled istio.io/dataplane-mode=none"))
        #expect(admission([:]).enrollment.isEnrolled == false)
        #expect(admission(ambient, state: "paused").enrollment == .enrolled, "a paused container keeps its namespace")
        #expect(admission(ambient, state: "exited").enrollment == .notEnrolled(reason: "it is not running (state \"exited\")"))
    }

    @Test func identityLabelsMustBeKubernetesNames() {
        func reason(_ key: String, _ value: String) -> String? {
            guard case .notEnrolled(let reason) = admission(ambient.merging([key: value]) { $1 }).enrollment else { return nil }
            return reason
        }
        #expect(reason("mesh-agent.io/namespace", "shop") == nil)
        #expect(reason("mesh-agent.io/namespace", "a-1") == nil)
        #expect(reason("mesh-agent.io/namespace", String(repeating: "a", count: 63)) == nil)
        for bad in ["", "Shop", "-shop", "shop-", "sh_op", "sh.op", String(repeating: "a", count: 64), "shop\n", "ünï"] {
            #expect(reason("mesh-agent.io/namespace", bad)?.contains("is not a valid namespace") == true, "\(bad.debugDescription)")
        }
        #expect(reason("mesh-agent.io/service-account", "orders.v1") == nil, "service accounts are subdomains")
        for bad in ["", "Orders", "orders.", ".orders", "a..b", "or ders", String(repeating: "a.", count: 127) + "a"] {
            #expect(reason("mesh-agent.io/service-account", bad)?.contains("is not a valid service account") == true, "\(bad.debugDescription)")
        }
        let shown = reason("mesh-agent.io/namespace", "bad\nline\u{7}")
        #expect(shown?.contains("\n") == false && shown?.contains("\u{7}") == false, "label text is escaped: \(shown ?? "")")
    }

    @Test func portsLabel() {
        func ports(_ text: String) -> Result<Set<UInt16>, EngineWorkloads.Reason> { EngineWorkloads.parsePorts(text) }
        #expect((try? ports("8080").get()) == [8080])
        #expect((try? ports("8080,9090").get()) == [8080, 9090])
        #expect((try? ports(" 8080 , 9090 ").get()) == [8080, 9090])
        #expect((try? ports("").get()) == [])
        #expect((try? ports("  ").get()) == [])
        #expect((try? ports("65535,1,1").get()) == [1, 65535])
        for bad in ["0", "65536", "8080,", ",8080", "8080,,9090", "80-90", "+80", "-1", "0x50", "8080;9090", "٨٠", "99999999999999999999"] {
            guard case .failure(let reason) = ports(bad) else {
                Issue.record("\(bad.debugDescription) parsed")
                continue
            }
            #expect(reason.text.contains("is not a TCP port (1-65535); write the ports like 8080,9090"))
        }
        #expect(admission(ambient.merging(["mesh-agent.io/ports": "80,http"]) { $1 }).enrollment
            == .notEnrolled(reason: "label mesh-agent.io/ports=\"80,http\": \"http\" is not a TCP port (1-65535); write the ports like 8080,9090"))
        #expect(admission(["mesh-agent.io/ports": "80,90"]).labelPorts == [80, 90], "ports show even when not enrolled")
    }
}
