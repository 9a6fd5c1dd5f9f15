import LinuxNet
import Testing
@testable import Workloads

@Suite struct PodCgroupTests {
    static let uid = "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11"
    static let uidEscaped = "6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11"
    static let container = "4f1c2a9b8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b"

    static func path(_ text: String) throws -> CgroupPath { try CgroupPath(validating: text) }

    static func kubernetes(_ found: PodCgroup?) -> (uid: String, qos: PodQoSClass, driver: CgroupDriver)? {
        guard case .kubernetes(let uid, let qos, let layout)? = found?.owner else { return nil }
        return (uid.rawValue, qos, layout.driver)
    }

    // MARK: systemd driver

    @Test(arguments: [
        // containerd, the three QoS classes
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uidEscaped).slice/cri-containerd-\(container).scope",
         "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uidEscaped).slice", PodQoSClass.burstable),
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(uidEscaped).slice/cri-containerd-\(container).scope",
         "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(uidEscaped).slice", .bestEffort),
        ("/kubepods.slice/kubepods-pod\(uidEscaped).slice/cri-containerd-\(container).scope",
         "/kubepods.slice/kubepods-pod\(uidEscaped).slice", .guaranteed),
        // CRI-O and dockershim scopes
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uidEscaped).slice/crio-\(container).scope",
         "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uidEscaped).slice", .burstable),
        ("/kubepods.slice/kubepods-pod\(uidEscaped).slice/docker-\(container).scope",
         "/kubepods.slice/kubepods-pod\(uidEscaped).slice", .guaranteed),
        // the pod's own cgroup
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(uidEscaped).slice",
         "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(uidEscaped).slice", .bestEffort),
    ])
    func systemdDriver(input: String, pod: String, qos: PodQoSClass) throws {
        let found = PodCgroup.find(in: try Self.path(input))
        let kubernetes = try #require(Self.kubernetes(found))
        #expect(kubernetes.uid == Self.uid)
        #expect(kubernetes.qos == qos)
        #expect(kubernetes.driver == .systemd)
        #expect(found?.path.string == pod)
        let isContainer = input != pod
        #expect(found?.containerID == (isContainer ? Self.container : nil))
    }

    @Test func systemdUnderKubeletSlice() throws {
        // kind and some distributions run kubelet with --cgroup-root=/kubelet.
        let input = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod\(Self.uidEscaped).slice/cri-containerd-\(Self.container).scope"
        let found = try #require(PodCgroup.find(in: try Self.path(input)))
        guard case .kubernetes(let uid, let qos, let layout) = found.owner else { Issue.record("not a Kubernetes pod: \(found)"); return }
        #expect(uid.rawValue == Self.uid)
        #expect(qos == .bestEffort)
        #expect(layout.root == ["kubelet"])
        #expect(layout.kubepods.string == "/kubelet.slice/kubelet-kubepods.slice")
        #expect(found.path.string == "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod\(Self.uidEscaped).slice")
        #expect(KubeletCgroupLayout.common.contains(layout))
    }

    @Test func systemdNestedInAContainersCgroup() throws {
        // A kind node's pods as its host sees them: below the node container's scope.
        let node = "/system.slice/docker-\(Self.container).scope"
        let input = "\(node)/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod\(Self.uidEscaped).slice/cri-containerd-\(Self.container).scope"
        let found = try #require(PodCgroup.find(in: try Self.path(input)))
        guard case .kubernetes(_, let qos, let layout) = found.owner else { Issue.record("not a Kubernetes pod: \(found)"); return }
        #expect(qos == .guaranteed)
        #expect(layout.base.string == node)
        #expect(found.path.string == "\(node)/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod\(Self.uidEscaped).slice")
    }

    // MARK: cgroupfs driver

    @Test(arguments: [
        ("/kubepods/burstable/pod\(uid)/\(container)", "/kubepods/burstable/pod\(uid)", PodQoSClass.burstable, Optional(container)),
        ("/kubepods/besteffort/pod\(uid)/\(container)", "/kubepods/besteffort/pod\(uid)", .bestEffort, container),
        ("/kubepods/pod\(uid)/\(container)", "/kubepods/pod\(uid)", .guaranteed, container),
        ("/kubepods/pod\(uid)", "/kubepods/pod\(uid)", .guaranteed, nil),
        ("/kubepods/burstable/pod\(uid)/crio-\(container)", "/kubepods/burstable/pod\(uid)", .burstable, container),
        // something below the pod that is not a container id
        ("/kubepods/burstable/pod\(uid)/crio-conmon-\(container)", "/kubepods/burstable/pod\(uid)", .burstable, nil),
        ("/kubelet/kubepods/besteffort/pod\(uid)/\(container)", "/kubelet/kubepods/besteffort/pod\(uid)", .bestEffort, container),
    ])
    func cgroupfsDriver(input: String, pod: String, qos: PodQoSClass, container: String?) throws {
        let found = PodCgroup.find(in: try Self.path(input))
        let kubernetes = try #require(Self.kubernetes(found))
        #expect(kubernetes.uid == Self.uid)
        #expect(kubernetes.qos == qos)
        #expect(kubernetes.driver == .cgroupfs)
        #expect(found?.path.string == pod)
        #expect(found?.containerID == container)
    }

    @Test func staticPodHashUID() throws {
        // kubelet's own UID for a static pod: an md5 of the manifest.
        let hash = "2d1f4c6e8a0b3d5f7a9c1e3b5d7f9a1c"
        let found = PodCgroup.find(in: try Self.path("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(hash).slice/cri-containerd-\(Self.container).scope"))
        #expect(Self.kubernetes(found)?.uid == hash)
        #expect(Self.kubernetes(PodCgroup.find(in: try Self.path("/kubepods/burstable/pod\(hash)")))?.uid == hash)
    }

    // MARK: Podman

    @Test func podmanPods() throws {
        let pod = String(repeating: "ab", count: 32)
        let cgroupfs = PodCgroup.find(in: try Self.path("/libpod_parent/\(pod)/libpod-\(Self.container)"))
        #expect(cgroupfs?.owner == .podman(podID: pod))
        #expect(cgroupfs?.path.string == "/libpod_parent/\(pod)")
        #expect(cgroupfs?.containerID == Self.container)

        let systemd = PodCgroup.find(in: try Self.path("/machine.slice/machine-libpod_pod_\(pod).slice/libpod-\(Self.container).scope"))
        #expect(systemd?.owner == .podman(podID: pod))
        #expect(systemd?.path.string == "/machine.slice/machine-libpod_pod_\(pod).slice")
        #expect(systemd?.containerID == Self.container)

        // A container outside any pod, and conmon's own cgroup, are no pod.
        #expect(PodCgroup.find(in: try Self.path("/libpod_parent/libpod-\(Self.container)")) == nil)
        #expect(PodCgroup.find(in: try Self.path("/libpod_parent/conmon")) == nil)
    }

    // MARK: Not pods

    @Test(arguments: [
        "/",
        "/system.slice/orders.service",
        "/kubepods.slice",
        "/kubepods.slice/kubepods-burstable.slice",
        "/kubepods",
        "/kubepods/burstable",
        "/kubepods/besteffort/",
        // malformed UIDs
        "/kubepods/burstable/pod1234",
        "/kubepods/burstable/pod6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e1",
        "/kubepods/burstable/pod6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e1g",
        "/kubepods/burstable/pod6b0b6d587a8e-4c3f-9f7e-2d0c1b7a9e11-",
        "/kubepods/pod../x",
        "/kubepods.slice/kubepods-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e1.slice",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid_at_all_but_36_characters.slice",
        // dashes inside a slice name start a new level: this is no pod slice
        "/kubepods.slice/kubepods-pod6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11.slice",
        // underscores belong to the systemd driver only
        "/kubepods/pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11",
        // the slices above do not match the pod slice's name
        "/kubepods-burstable-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11.slice",
        "/kubepods.slice/kubepods-burstable-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11.slice",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11.slice",
        "/system.slice/kubepods-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11.slice",
        // an unknown QoS level
        "/kubepods.slice/kubepods-gold.slice/kubepods-gold-pod6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11.slice",
        "/kubepods/gold/pod6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11",
        // a Podman pod id that is not 64 hex digits
        "/libpod_parent/abc/libpod-1",
        "/machine.slice/machine-libpod_pod_XYZ.slice",
    ])
    func notAPod(input: String) throws {
        #expect(PodCgroup.find(in: try Self.path(input)) == nil)
    }

    @Test(arguments: ["", "6B0B6D58-7A8E-4C3F-9F7E-2D0C1B7A9E1", "6b0b6d58_7a8e_4c3f_9f7e_2d0c1b7a9e11", "../../etc", "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11/x"])
    func malformedUIDsAreRefused(text: String) {
        #expect(throws: PodCgroupError.invalidPodUID(text)) { try PodUID(validating: text) }
        #expect(PodCgroupError.invalidPodUID(text).description.contains("neither a UUID"))
    }

    // MARK: Building

    @Test func podCgroupsForEveryLayoutAndClass() throws {
        let uid = try PodUID(validating: Self.uid)
        let expected: [CgroupDriver: [PodQoSClass: String]] = [
            .systemd: [
                .guaranteed: "/kubepods.slice/kubepods-pod\(Self.uidEscaped).slice",
                .burstable: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(Self.uidEscaped).slice",
                .bestEffort: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(Self.uidEscaped).slice",
            ],
            .cgroupfs: [
                .guaranteed: "/kubepods/pod\(Self.uid)",
                .burstable: "/kubepods/burstable/pod\(Self.uid)",
                .bestEffort: "/kubepods/besteffort/pod\(Self.uid)",
            ],
        ]
        for layout in [KubeletCgroupLayout.systemd, .cgroupfs] {
            for qos in PodQoSClass.allCases {
                let built = layout.podCgroup(uid: uid, qosClass: qos)
                #expect(built.string == expected[layout.driver]?[qos])
                // and reading it back gives the same pod
                let found = PodCgroup.find(in: built)
                #expect(found?.owner == .kubernetes(uid: uid, qosClass: qos, layout: layout))
                #expect(found?.path == built)
            }
        }
    }

    @Test func aRootWithDashesIsEscapedInSlices() throws {
        let layout = try KubeletCgroupLayout(driver: .systemd, root: ["my-kubelet"])
        let uid = try PodUID(validating: Self.uid)
        #expect(layout.podCgroup(uid: uid, qosClass: .burstable).string
            == "/my_kubelet.slice/my_kubelet-kubepods.slice/my_kubelet-kubepods-burstable.slice/my_kubelet-kubepods-burstable-pod\(Self.uidEscaped).slice")
    }

    @Test func badLayoutsAreRefused() {
        #expect(throws: PodCgroupError.self) { try KubeletCgroupLayout(driver: .systemd, root: ["kubelet.slice"]) }
        #expect(throws: PodCgroupError.self) { try KubeletCgroupLayout(driver: .cgroupfs, root: ["a/b"]) }
        #expect(throws: PodCgroupError.self) { try KubeletCgroupLayout(driver: .cgroupfs, root: [".."]) }
        #expect(throws: PodCgroupError.self) { try KubeletCgroupLayout(driver: .cgroupfs, root: [""]) }
        #expect(throws: PodCgroupError.self) { try KubeletCgroupLayout(driver: .systemd, root: Array(repeating: "abcdefghij", count: 22)) }
    }

    @Test func detectPicksTheLayoutWhoseKubepodsExists() throws {
        #expect(KubeletCgroupLayout.detect { $0.string == "/kubepods" } == .cgroupfs)
        #expect(KubeletCgroupLayout.detect { $0.string == "/kubepods.slice" } == .systemd)
        #expect(KubeletCgroupLayout.detect { $0.string == "/kubelet.slice/kubelet-kubepods.slice" }?.root == ["kubelet"])
        #expect(KubeletCgroupLayout.detect { _ in false } == nil)
    }

    // MARK: /proc/PID/cgroup

    @Test func unifiedHost() throws {
        let text = "0::/kubepods.slice/kubepods-pod\(Self.uidEscaped).slice/cri-containerd-\(Self.container).scope\n"
        let path = try PodCgroup.unifiedPath(procCgroup: text, file: "/proc/42/cgroup")
        #expect(Self.kubernetes(PodCgroup.find(in: path))?.qos == .guaranteed)
    }

    @Test func hybridHost() throws {
        let text = """
            12:memory:/kubepods/burstable/pod\(Self.uid)/\(Self.container)
            11:cpu,cpuacct:/kubepods/burstable/pod\(Self.uid)/\(Self.container)
            1:name=systemd:/kubepods/burstable/pod\(Self.uid)/\(Self.container)
            0::/kubepods/burstable/pod\(Self.uid)/\(Self.container)

            """
        let path = try PodCgroup.unifiedPath(procCgroup: text)
        #expect(path.string == "/kubepods/burstable/pod\(Self.uid)/\(Self.container)")
        #expect(PodCgroup.find(in: path)?.containerID == Self.container)
    }

    @Test func procCgroupErrors() {
        #expect(throws: PodCgroupError.noUnifiedEntry(file: "/proc/7/cgroup")) {
            try PodCgroup.unifiedPath(procCgroup: "12:memory:/x\n1:name=systemd:/x\n", file: "/proc/7/cgroup")
        }
        #expect(throws: PodCgroupError.noUnifiedEntry(file: "/proc/7/cgroup")) { try PodCgroup.unifiedPath(procCgroup: "", file: "/proc/7/cgroup") }
        #expect(throws: PodCgroupError.deletedCgroup(file: "/proc/7/cgroup", path: "/kubepods/pod\(Self.uid)")) {
            try PodCgroup.unifiedPath(procCgroup: "0::/kubepods/pod\(Self.uid) (deleted)\n", file: "/proc/7/cgroup")
        }
        // a process in another cgroup namespace sees paths that leave its root
        #expect(throws: PodCgroupError.self) { try PodCgroup.unifiedPath(procCgroup: "0::/../../kubepods\n") }
        #expect(throws: PodCgroupError.self) { try PodCgroup.unifiedPath(procCgroup: "0::relative\n") }
        let error = PodCgroupError.invalidUnifiedEntry(file: "/proc/7/cgroup", line: "0::/..", reason: "bad")
        #expect(error.description.contains("/proc/7/cgroup"))
    }
}
