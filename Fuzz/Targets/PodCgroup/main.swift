import FuzzSupport
import LinuxNet
import Workloads

/// Cgroup paths and `/proc/PID/cgroup` files as the agent reads them to find
/// which pod a process belongs to (`PodCgroup.unifiedPath`, `PodCgroup.find`),
/// and pod UIDs as the API server hands them to build a pod's cgroup.
///
/// A pod found in a path is that path or an ancestor of it, reads back as
/// itself from its own path, and is the path kubelet's layout builds for its
/// UID and QoS class; a UID accepted builds, in every common layout, paths
/// that read back as that UID and class.
Fuzzing.run { bytes in
    let text = Fuzzing.text(bytes)
    var paths: [CgroupPath] = []
    do {
        paths.append(try PodCgroup.unifiedPath(procCgroup: text, file: "/proc/1/cgroup"))
    } catch {
        Fuzzing.requireLoggable("\(error)", "a /proc/PID/cgroup error")
    }
    for line in text.split(separator: "\n") {
        if let path = try? CgroupPath(validating: String(line)) { paths.append(path) }
    }
    for path in paths {
        guard let found = PodCgroup.find(in: path) else { continue }
        Fuzzing.require(path.isDescendant(ofOrEqualTo: found.path), "pod cgroup \(found.path) is not above \(path)")
        let again = PodCgroup.find(in: found.path)
        Fuzzing.require(again?.owner == found.owner && again?.path == found.path && again?.containerID == nil,
                        "pod cgroup \(found.path) of \(path) reads back as \(String(describing: again))")
        if let container = found.containerID {
            Fuzzing.require(container.utf8.count == 64 && container.allSatisfy(\.isHexDigit) && container == container.lowercased(),
                            "container id \(container.debugDescription) taken from \(path)")
        }
        if case .kubernetes(let uid, let qos, let layout) = found.owner {
            Fuzzing.require(layout.podCgroup(uid: uid, qosClass: qos) == found.path, "the layout of \(found.path) builds another path")
            Fuzzing.require((try? PodUID(validating: uid.rawValue)) == uid, "uid \(uid) of \(path) does not validate")
        }
    }
    for candidate in text.split(separator: "\n").prefix(4) {
        guard let uid = try? PodUID(validating: String(candidate)) else { continue }
        for layout in KubeletCgroupLayout.common {
            for qos in PodQoSClass.allCases {
                let built = layout.podCgroup(uid: uid, qosClass: qos)
                let found = PodCgroup.find(in: built)
                Fuzzing.require(found?.owner == .kubernetes(uid: uid, qosClass: qos, layout: layout) && found?.path == built,
                                "uid \(uid) in \(layout), \(qos), builds \(built), which reads back as \(String(describing: found))")
            }
        }
    }
}
