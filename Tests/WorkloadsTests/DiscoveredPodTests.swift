import LinuxNet
import TLS
import Testing
@testable import Workloads

@Suite struct DiscoveredPodTests {
    static let podman = WorkloadSource("podman")

    func pod(
        labels: [String: String] = ["istio.io/dataplane-mode": "ambient"], namespace: String = "shop", serviceAccount: String = "orders",
        cgroup: String? = "/libpod_parent/abc", netns: String? = "/run/netns/netns-1"
    ) throws -> DiscoveredPod {
        DiscoveredPod(
            source: Self.podman, id: "abc", name: "orders", namespace: namespace, serviceAccount: serviceAccount, labels: labels, ports: [8080, 8080, 80],
            cgroup: try cgroup.map { try CgroupPath(validating: $0) }, networkNamespacePath: netns, addresses: ["10.77.9.2"],
            enrollment: EnrollmentLabels.enrollment(podLabels: labels))
    }

    @Test func anEnrolledPodBecomesANamespaceWorkloadWithItsIdentity() throws {
        let spec = try pod().spec(trustDomain: "td")
        #expect(spec.workload.identity.description == "spiffe://td/ns/shop/sa/orders")
        #expect(spec.workload.ports == [80, 8080])
        #expect(spec.network == .namespace(.path("/run/netns/netns-1")))
        #expect(spec.source == Self.podman)
        #expect(try pod(netns: nil).spec(trustDomain: "td").network == .namespace(.ofCgroup), "found from its processes then")
    }

    @Test func whyAPodIsNotCaptured() throws {
        #expect(throws: DiscoveredPod.Unusable.self) { try pod(labels: [:]).spec(trustDomain: "td") }
        #expect(throws: DiscoveredPod.Unusable.noCgroup) { try pod(cgroup: nil).spec(trustDomain: "td") }
        #expect(throws: DiscoveredPod.Unusable.self) { try pod(serviceAccount: "Bad/Name").spec(trustDomain: "td") }
    }

    @Test(arguments: [
        ([String: String](), [String: String](), false),
        (["istio.io/dataplane-mode": "ambient"], [:], true),
        ([:], ["istio.io/dataplane-mode": "ambient"], true),
        (["istio.io/dataplane-mode": "none"], ["istio.io/dataplane-mode": "ambient"], false),
        (["istio.io/dataplane-mode": "sidecar"], [:], false),
    ])
    func enrollmentFollowsThePodThenItsNamespace(pod: [String: String], namespace: [String: String], enrolled: Bool) {
        #expect(EnrollmentLabels.enrollment(podLabels: pod, namespaceLabels: namespace).isEnrolled == enrolled)
    }
}
