import Testing
import Workloads
@testable import Kubernetes

@Suite struct PodMappingTests {
    static let uid = "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11"

    static func pod(
        uid: String? = uid, name: String? = "web", namespace: String? = "shop", node: String? = "node-a",
        labels: [String: String]? = nil, annotations: [String: String]? = nil, serviceAccount: String? = nil,
        hostNetwork: Bool? = nil, containers: [Container]? = [Container(name: "web", ports: [ContainerPort(containerPort: 8080)])],
        initContainers: [Container]? = nil, phase: String? = "Running", podIP: String? = nil, podIPs: [String]? = nil, qosClass: String? = "Burstable"
    ) -> Pod {
        Pod(
            metadata: ObjectMeta(name: name, namespace: namespace, uid: uid, resourceVersion: "1", labels: labels, annotations: annotations),
            spec: PodSpec(nodeName: node, serviceAccountName: serviceAccount, hostNetwork: hostNetwork, containers: containers, initContainers: initContainers),
            status: PodStatus(phase: phase, podIP: podIP, podIPs: podIPs?.map(PodIP.init), qosClass: qosClass))
    }

    static func map(_ pod: Pod, namespaceLabels: [String: String] = [:], layout: KubeletCgroupLayout? = .systemd) -> DiscoveredPod? {
        guard case .present(let discovered) = PodMapper.map(pod, node: "node-a", namespaceLabels: namespaceLabels, layout: layout) else { return nil }
        return discovered
    }

    static let ambient = [EnrollmentLabels.dataplaneMode: EnrollmentLabels.ambient]

    @Test func aRecordedPod() throws {
        let list = try KubernetesDecoder.list(Array(Recorded.podList.utf8), of: Pod.self)
        let items = try #require(list.items)
        try #require(items.count == 2)
        let orders = try #require(Self.map(items[0]))
        #expect(orders.source == .kubernetes)
        #expect(orders.id == "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11")
        #expect(orders.name == "orders-7d9c5b8f6d-x2k4q")
        #expect(orders.namespace == "shop")
        #expect(orders.serviceAccount == "orders")
        #expect(orders.labels["app"] == "orders")
        #expect(orders.ports == [8080, 9090, 15090], "TCP only; the sidecar init container's port counts, the run-once one's does not")
        #expect(orders.addresses == ["10.244.1.17", "fd00:10:244:1::11"])
        #expect(orders.enrollment == .enrolled)
        #expect(orders.cgroup?.string == "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11.slice")
        #expect(orders.networkNamespacePath == nil)

        let proxy = try #require(Self.map(items[1], namespaceLabels: Self.ambient))
        #expect(proxy.enrollment == .notEnrolled(reason: "the pod uses the node's network (hostNetwork: true); it has no network namespace of its own to capture in"))
        #expect(proxy.cgroup?.string == "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d.slice")
    }

    @Test func serviceAccountDefaults() {
        #expect(Self.map(Self.pod())?.serviceAccount == "default")
        #expect(Self.map(Self.pod(serviceAccount: ""))?.serviceAccount == "default")
        var old = Self.pod()
        old.spec?.serviceAccount = "legacy"
        #expect(Self.map(old)?.serviceAccount == "legacy", "the deprecated field when the new one is absent")
    }

    @Test func enrollmentFollowsPodThenNamespaceLabels() {
        #expect(Self.map(Self.pod())?.enrollment.isEnrolled == false)
        #expect(Self.map(Self.pod(labels: Self.ambient))?.enrollment == .enrolled)
        #expect(Self.map(Self.pod(), namespaceLabels: Self.ambient)?.enrollment == .enrolled)
        let optedOut = Self.map(Self.pod(labels: [EnrollmentLabels.dataplaneMode: EnrollmentLabels.none]), namespaceLabels: Self.ambient)
        #expect(optedOut?.enrollment == .notEnrolled(reason: "the pod is labelled istio.io/dataplane-mode=none"))
    }

    @Test func finishedAndForeignPodsAreGone() {
        #expect(PodMapper.map(Self.pod(phase: "Succeeded"), node: "node-a", namespaceLabels: [:], layout: nil) == .gone)
        #expect(PodMapper.map(Self.pod(phase: "Failed"), node: "node-a", namespaceLabels: [:], layout: nil) == .gone)
        #expect(PodMapper.map(Self.pod(node: "node-b"), node: "node-a", namespaceLabels: [:], layout: nil) == .gone)
        #expect(PodMapper.map(Self.pod(node: nil), node: "node-a", namespaceLabels: [:], layout: nil) == .gone, "not scheduled yet")
        #expect(Self.map(Self.pod(phase: "Pending")) != nil)
        #expect(Self.map(Self.pod(phase: nil)) != nil)
    }

    @Test func podsWithoutIdentityAreMalformed() {
        #expect(PodMapper.map(Self.pod(uid: nil), node: "node-a", namespaceLabels: [:], layout: nil) == .malformed(reason: "a pod without metadata.uid"))
        #expect(PodMapper.map(Pod(), node: "node-a", namespaceLabels: [:], layout: nil) == .malformed(reason: "a pod without metadata.uid"))
        if case .malformed(let reason) = PodMapper.map(Self.pod(namespace: nil), node: "node-a", namespaceLabels: [:], layout: nil) {
            #expect(reason.contains(Self.uid))
        } else {
            Issue.record("a pod without a namespace was accepted")
        }
    }

    @Test func namesThatCannotBeIdentitiesAreNotEnrolled() {
        let badNamespace = Self.map(Self.pod(namespace: "Shop/../x", labels: Self.ambient))
        #expect(badNamespace?.enrollment.isEnrolled == false)
        let badAccount = Self.map(Self.pod(labels: Self.ambient, serviceAccount: "a b"))
        #expect(badAccount?.enrollment.isEnrolled == false)
        let badUID = Self.map(Self.pod(uid: "not-a-uid", labels: Self.ambient))
        #expect(badUID?.enrollment.isEnrolled == false)
        #expect(badUID?.cgroup == nil)
    }

    @Test func portsAreTCPInRangeSortedAndUnique() {
        let containers = [
            Container(ports: [ContainerPort(containerPort: 9090, protocol: "TCP"), ContainerPort(containerPort: 53, protocol: "UDP"), ContainerPort(containerPort: 8080)]),
            Container(ports: [ContainerPort(containerPort: 8080), ContainerPort(containerPort: 0), ContainerPort(containerPort: 70000), ContainerPort(containerPort: -1), ContainerPort(containerPort: nil)]),
            Container(ports: nil),
        ]
        #expect(Self.map(Self.pod(containers: containers))?.ports == [8080, 9090])
        #expect(Self.map(Self.pod(containers: nil))?.ports == [])
    }

    @Test func addresses() {
        #expect(Self.map(Self.pod(podIP: "10.77.1.5"))?.addresses == ["10.77.1.5"], "podIP from servers before dual stack")
        #expect(Self.map(Self.pod(podIP: "10.77.1.5", podIPs: ["10.77.1.5", "FD77:0::5"]))?.addresses == ["10.77.1.5", "fd77::5"])
        #expect(Self.map(Self.pod(podIPs: ["bogus", "10.77.1.6", "10.77.1.6", "1.2.3.4.5"]))?.addresses == ["10.77.1.6"])
        #expect(Self.map(Self.pod())?.addresses == [])
    }

    @Test func cgroupFromUIDQoSAndLayout() {
        #expect(Self.map(Self.pod(qosClass: "Guaranteed"), layout: .cgroupfs)?.cgroup?.string == "/kubepods/pod\(Self.uid)")
        #expect(Self.map(Self.pod(qosClass: "BestEffort"), layout: .cgroupfs)?.cgroup?.string == "/kubepods/besteffort/pod\(Self.uid)")
        #expect(Self.map(Self.pod(), layout: nil)?.cgroup == nil, "the layout is not known yet")
        #expect(Self.map(Self.pod(qosClass: nil))?.cgroup == nil)
        #expect(Self.map(Self.pod(qosClass: "Platinum"))?.cgroup == nil)
    }

    @Test func aMirrorPodsCgroupIsItsStaticPods() {
        let hash = "2d1f4c6e8a0b3d5f7a9c1e3b5d7f9a1c"
        let mirror = Self.map(Self.pod(annotations: ["kubernetes.io/config.hash": hash, "kubernetes.io/config.mirror": hash], qosClass: "Burstable"), layout: .cgroupfs)
        #expect(mirror?.id == Self.uid, "the pod is still known by its API uid")
        #expect(mirror?.cgroup?.string == "/kubepods/burstable/pod\(hash)")
    }
}

@Suite struct PodInventoryTests {
    static let ambient = PodMappingTests.ambient

    @Test func listsReplaceAndEventsChange() {
        var inventory = PodInventory(node: "node-a")
        inventory.replacePods([PodMappingTests.pod(name: "a"), PodMappingTests.pod(uid: "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e12", name: "b", node: "node-b")])
        #expect(!inventory.isSynced, "namespaces not listed yet")
        inventory.replaceNamespaces([Namespace(metadata: ObjectMeta(name: "shop", labels: Self.ambient))])
        #expect(inventory.isSynced)
        var pods = inventory.discoveredPods(layout: nil)
        #expect(pods.map(\.name) == ["a"])
        #expect(pods.first?.enrollment == .enrolled)

        inventory.apply(WatchEvent<Namespace>.modified(Namespace(metadata: ObjectMeta(name: "shop", labels: [:]))))
        #expect(inventory.discoveredPods(layout: nil).first?.enrollment.isEnrolled == false, "the namespace's label went")

        let second = PodMappingTests.pod(uid: "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e13", name: "c", namespace: "other", labels: Self.ambient)
        inventory.apply(WatchEvent<Pod>.added(second))
        pods = inventory.discoveredPods(layout: nil)
        #expect(pods.map(\.name) == ["c", "a"], "sorted by namespace, then name")

        inventory.apply(WatchEvent<Pod>.deleted(second))
        #expect(inventory.discoveredPods(layout: nil).map(\.name) == ["a"])

        // A list replaces everything: what it does not name is gone.
        inventory.replacePods([])
        #expect(inventory.discoveredPods(layout: nil).isEmpty)
    }

    @Test func aPodThatLeavesThisNodeIsForgotten() {
        var inventory = PodInventory(node: "node-a")
        inventory.replacePods([PodMappingTests.pod()])
        inventory.replaceNamespaces([])
        inventory.apply(WatchEvent<Pod>.modified(PodMappingTests.pod(node: "node-b")))
        #expect(inventory.discoveredPods(layout: nil).isEmpty)
    }

    @Test func objectsWithoutIdentityAreSkippedAndCounted() {
        var inventory = PodInventory(node: "node-a")
        inventory.replacePods([PodMappingTests.pod(uid: nil), PodMappingTests.pod(name: nil)])
        inventory.replaceNamespaces([Namespace()])
        inventory.apply(WatchEvent<Pod>.deleted(Pod()))
        #expect(inventory.skippedObjects == 4)
        #expect(inventory.lastSkipReason == "a deleted pod without metadata.uid")
        #expect(inventory.discoveredPods(layout: nil).isEmpty)
    }

    @Test func bookmarksErrorsAndUnknownTypesChangeNothing() {
        var inventory = PodInventory(node: "node-a")
        inventory.replacePods([PodMappingTests.pod()])
        inventory.replaceNamespaces([])
        let before = inventory.discoveredPods(layout: .systemd)
        inventory.apply(WatchEvent<Pod>.bookmark(resourceVersion: "9"))
        inventory.apply(WatchEvent<Pod>.error(Status(code: 410)))
        inventory.apply(WatchEvent<Pod>.unknown(type: "X"))
        #expect(inventory.discoveredPods(layout: .systemd) == before)
    }
}
