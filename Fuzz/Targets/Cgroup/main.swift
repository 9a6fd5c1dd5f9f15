import FuzzSupport
import LinuxNet

/// The text of /proc/self/mountinfo and /proc/self/cgroup as the agent reads
/// them at start (`CgroupV2Mount.parse(mountinfo:)`, `parseOwnCgroup`), and
/// the cgroup paths the config names (`CgroupPath(validating:)`). A path it
/// accepts never leaves the cgroup tree and reads back as itself.
Fuzzing.run { bytes in
    let text = Fuzzing.text(bytes)
    if let mount = try? CgroupV2Mount.parse(mountinfo: text) {
        Fuzzing.require(mount.path.hasPrefix("/"), "mount point \(mount.path.debugDescription) is not absolute")
    }
    _ = try? CgroupV2Mount.parseOwnCgroup(procSelfCgroup: text)
    guard let path = try? CgroupPath(validating: text) else { return }
    Fuzzing.require(!path.segments.contains { $0.isEmpty || $0 == "." || $0 == ".." }, "\(text.debugDescription) has a segment that leaves the tree: \(path.segments)")
    let again = try? CgroupPath(validating: path.description)
    Fuzzing.require(again == path, "\(path) reads back as \(String(describing: again))")
}
