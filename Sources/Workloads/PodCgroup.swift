import LinuxNet

// MARK: - Pod UIDs and QoS classes

/// A Kubernetes pod UID, as kubelet names the pod's cgroup after it.
///
/// Two forms exist: the UUID the API server gives every pod
/// (`6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11`), and the 32 hex digits kubelet
/// makes for a static pod from a hash of its manifest (its mirror pod in the
/// API has a UUID of its own and names the hash in the annotation
/// `kubernetes.io/config.hash`). Anything else is refused: the UID becomes a
/// cgroup directory name, so it must never be able to say more than that.
public struct PodUID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init(validating text: String) throws {
        guard Self.isUUID(text) || Self.isStaticPodHash(text) else {
            throw PodCgroupError.invalidPodUID(text)
        }
        self.rawValue = text
    }

    public var description: String { rawValue }

    /// As the systemd driver writes it inside a slice name, where `-` would
    /// start a new level of the slice hierarchy.
    var systemdEscaped: String { rawValue.replacingDashes(with: "_") }

    static func isUUID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard isHexDigit(byte) else { return false }
            }
        }
        return true
    }

    static func isStaticPodHash(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.count == 32 && bytes.allSatisfy(isHexDigit)
    }
}

/// The QoS class Kubernetes gives a pod (`status.qosClass`); kubelet groups
/// pod cgroups by it.
public enum PodQoSClass: String, Hashable, Sendable, CaseIterable {
    case guaranteed = "Guaranteed"
    case burstable = "Burstable"
    case bestEffort = "BestEffort"

    /// The cgroup level kubelet puts pods of this class in; guaranteed pods
    /// sit directly in the `kubepods` cgroup.
    var cgroupName: String? {
        switch self {
        case .guaranteed: nil
        case .burstable: "burstable"
        case .bestEffort: "besteffort"
        }
    }

    init?(cgroupName: Substring) {
        switch cgroupName {
        case "burstable": self = .burstable
        case "besteffort": self = .bestEffort
        default: return nil
        }
    }
}

/// How kubelet (and the container runtime) names cgroups: through systemd
/// slices and scopes, or as plain directories.
public enum CgroupDriver: String, Hashable, Sendable, CaseIterable {
    case systemd
    case cgroupfs
}

// MARK: - Kubelet's layout

/// Where kubelet keeps its pods' cgroups: the driver, kubelet's
/// `--cgroup-root`, and where kubelet's hierarchy sits in the agent's view.
///
/// The Kubernetes API says which pods exist but not which driver the node
/// uses, so a source builds pod cgroups from a layout the agent knows or
/// detects (`detect(exists:)`).
public struct KubeletCgroupLayout: Hashable, Sendable, CustomStringConvertible {
    public let driver: CgroupDriver
    /// kubelet's `--cgroup-root` as names: empty by default, `["kubelet"]`
    /// where it is `/kubelet` (kind), which the systemd driver turns into
    /// `/kubelet.slice/kubelet-kubepods.slice/…`.
    public let root: [String]
    /// The cgroup kubelet's own root is below, when kubelet runs nested (a
    /// kind node's cgroups seen from its host sit below the node container's
    /// scope). With the cgroupfs driver such a prefix is part of `root`.
    public let base: CgroupPath

    public static let systemd = KubeletCgroupLayout(uncheckedDriver: .systemd, root: [], base: .root)
    public static let cgroupfs = KubeletCgroupLayout(uncheckedDriver: .cgroupfs, root: [], base: .root)

    /// The layouts kubelet commonly runs with, in the order `detect` tries
    /// them: the defaults, then kind's `/kubelet` root.
    public static let common: [KubeletCgroupLayout] = [
        .systemd, .cgroupfs,
        KubeletCgroupLayout(uncheckedDriver: .systemd, root: ["kubelet"], base: .root),
        KubeletCgroupLayout(uncheckedDriver: .cgroupfs, root: ["kubelet"], base: .root),
    ]

    /// The longest pod-level name a layout builds: a best-effort pod's slice
    /// with a UUID, `kubepods-besteffort-pod<36>.slice` after the root.
    private static let longestPodSuffix = "kubepods-besteffort-pod".utf8.count + 36 + ".slice".utf8.count

    public init(driver: CgroupDriver, root: [String] = [], base: CgroupPath = .root) throws {
        for name in root {
            guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.utf8.contains(0) else {
                throw PodCgroupError.invalidLayout(root.joined(separator: "/"), reason: "\"\(name)\" is not a cgroup name")
            }
            if driver == .systemd {
                guard !name.hasSuffix(".slice") else {
                    throw PodCgroupError.invalidLayout(
                        root.joined(separator: "/"), reason: "give the systemd root as names (kubelet), not as slices (kubelet.slice)")
                }
            }
        }
        // The systemd driver repeats every root name in each slice below it.
        let longest = driver == .systemd
            ? root.reduce(0) { $0 + $1.utf8.count + 1 } + Self.longestPodSuffix
            : (root.map(\.utf8.count) + [Self.longestPodSuffix]).max() ?? 0
        guard longest <= 255 else {
            throw PodCgroupError.invalidLayout(root.joined(separator: "/"), reason: "the pod cgroup names it makes would be longer than 255 bytes")
        }
        self.init(uncheckedDriver: driver, root: root, base: base)
    }

    private init(uncheckedDriver driver: CgroupDriver, root: [String], base: CgroupPath) {
        self.driver = driver
        self.root = root
        self.base = base
    }

    public var description: String {
        let prefix = base == .root ? "" : "\(base) "
        return "\(prefix)\(driver.rawValue) driver, kubepods at \(kubepods)"
    }

    /// The cgroup every pod is below (`/kubepods.slice`, `/kubepods`).
    public var kubepods: CgroupPath { path(names: root + ["kubepods"]) }

    /// The cgroup of the pod with this UID and QoS class: every container of
    /// the pod is below it.
    public func podCgroup(uid: PodUID, qosClass: PodQoSClass) -> CgroupPath {
        let pod = driver == .systemd ? "pod" + uid.systemdEscaped : "pod" + uid.rawValue
        return path(names: root + ["kubepods"] + (qosClass.cgroupName.map { [$0] } ?? []) + [pod])
    }

    /// The first of `candidates` whose `kubepods` cgroup exists. kubelet
    /// makes it when it starts, before any pod.
    public static func detect(among candidates: [KubeletCgroupLayout] = common, exists: (CgroupPath) -> Bool) -> KubeletCgroupLayout? {
        candidates.first { exists($0.kubepods) }
    }

    /// Kubelet's names as cgroup segments below `base`: the names themselves
    /// with cgroupfs; with systemd each level a slice named after all the
    /// levels above it (`a.slice/a-b.slice/a-b-c.slice`), a `-` inside a
    /// name written `_`.
    private func path(names: [String]) -> CgroupPath {
        var path = base
        var prefix: [String] = []
        for name in names {
            let segment: String
            switch driver {
            case .cgroupfs:
                segment = name
            case .systemd:
                prefix.append(name.replacingDashes(with: "_"))
                segment = prefix.joined(separator: "-") + ".slice"
            }
            // init validated every name and the length, so no segment is refused.
            guard let next = try? path.appending(segment) else {
                preconditionFailure("layout \(driver) \(root) made an invalid cgroup name \(segment)")
            }
            path = next
        }
        return path
    }
}

// MARK: - Recognising pod cgroups

/// The cgroup of a pod, recognised in a cgroup path: a Kubernetes pod (either
/// driver, any QoS class) or a Podman pod.
public struct PodCgroup: Hashable, Sendable {
    public enum Owner: Hashable, Sendable {
        case kubernetes(uid: PodUID, qosClass: PodQoSClass, layout: KubeletCgroupLayout)
        /// The pod id Podman gave the pod (64 hex digits).
        case podman(podID: String)
    }

    public let owner: Owner
    /// The pod-level cgroup: every container of the pod is below it.
    public let path: CgroupPath
    /// The container, when the path was a container's cgroup below the pod and
    /// it names one (`cri-containerd-<id>.scope`, `crio-<id>.scope`,
    /// `docker-<id>.scope`, `<id>`, `libpod-<id>`).
    public let containerID: String?

    /// The pod `cgroup` belongs to (its own cgroup or one below), if any.
    public static func find(in cgroup: CgroupPath) -> PodCgroup? {
        let segments = cgroup.segments
        for index in segments.indices {
            if let found = kubernetesSystemd(segments, at: index)
                ?? kubernetesCgroupfs(segments, at: index)
                ?? podman(segments, at: index)
            {
                return found
            }
        }
        return nil
    }

    /// The cgroup v2 path in the text of `/proc/PID/cgroup`: the `0::/path`
    /// line (hybrid hosts also list v1 hierarchies, `N:controllers:/path`).
    /// - Parameter file: the file's name, for errors.
    public static func unifiedPath(procCgroup text: String, file: String = "/proc/self/cgroup") throws -> CgroupPath {
        for line in text.split(whereSeparator: { $0 == "\n" }) where line.hasPrefix("0::") {
            var path = String(line.dropFirst(3))
            // The kernel marks a cgroup that was removed while a process (a
            // zombie) still names it; nothing can be captured there.
            let deleted = " (deleted)"
            if path.hasSuffix(deleted) {
                path.removeLast(deleted.count)
                throw PodCgroupError.deletedCgroup(file: file, path: path)
            }
            do {
                return try CgroupPath(validating: path)
            } catch {
                throw PodCgroupError.invalidUnifiedEntry(file: file, line: String(line), reason: "\(error)")
            }
        }
        throw PodCgroupError.noUnifiedEntry(file: file)
    }

    /// `…/[R-]kubepods[-qos]-pod<uid_>.slice[/<runtime>-<id>.scope]`, the
    /// slices above it named as systemd does (each after all levels above).
    private static func kubernetesSystemd(_ segments: [String], at index: Int) -> PodCgroup? {
        let segment = segments[index]
        guard segment.hasSuffix(".slice") else { return nil }
        let names = segment.dropLast(".slice".count).split(separator: "-", omittingEmptySubsequences: false)
        guard let kubepods = names.lastIndex(of: "kubepods") else { return nil }
        let qosClass: PodQoSClass
        let podName: Substring
        switch names.count - kubepods {
        case 2:
            qosClass = .guaranteed
            podName = names[kubepods + 1]
        case 3:
            guard let qos = PodQoSClass(cgroupName: names[kubepods + 1]) else { return nil }
            qosClass = qos
            podName = names[kubepods + 2]
        default:
            return nil
        }
        guard podName.hasPrefix("pod"),
            let uid = try? PodUID(validating: String(podName.dropFirst(3)).replacingUnderscores(with: "-")),
            uid.systemdEscaped == podName.dropFirst(3)
        else { return nil }
        // The slices above, within this path: a.slice, a-b.slice, ….
        let chainStart = index - (names.count - 1)
        guard chainStart >= 0 else { return nil }
        for level in 1..<names.count where segments[chainStart + level - 1] != names[0..<level].joined(separator: "-") + ".slice" {
            return nil
        }
        let root = names[0..<kubepods].map(String.init)
        guard let base = try? CgroupPath(validating: "/" + segments[0..<chainStart].joined(separator: "/")),
            let layout = try? KubeletCgroupLayout(driver: .systemd, root: root, base: base),
            layout.podCgroup(uid: uid, qosClass: qosClass).segments == Array(segments[0...index])
        else { return nil }
        return PodCgroup(
            owner: .kubernetes(uid: uid, qosClass: qosClass, layout: layout),
            path: layout.podCgroup(uid: uid, qosClass: qosClass),
            containerID: containerID(segments, after: index))
    }

    /// `…/kubepods[/burstable|/besteffort]/pod<uid>[/<id>]`.
    private static func kubernetesCgroupfs(_ segments: [String], at index: Int) -> PodCgroup? {
        guard segments[index] == "kubepods", index + 1 < segments.count else { return nil }
        var podIndex = index + 1
        var qosClass = PodQoSClass.guaranteed
        if let qos = PodQoSClass(cgroupName: Substring(segments[podIndex])) {
            qosClass = qos
            podIndex += 1
        }
        guard podIndex < segments.count, segments[podIndex].hasPrefix("pod"),
            let uid = try? PodUID(validating: String(segments[podIndex].dropFirst(3))),
            let layout = try? KubeletCgroupLayout(driver: .cgroupfs, root: Array(segments[0..<index]))
        else { return nil }
        let path = layout.podCgroup(uid: uid, qosClass: qosClass)
        guard path.segments == Array(segments[0...podIndex]) else { return nil }
        return PodCgroup(owner: .kubernetes(uid: uid, qosClass: qosClass, layout: layout), path: path, containerID: containerID(segments, after: podIndex))
    }

    /// Podman's pods: `/libpod_parent/<pod-id>/libpod-<ctr-id>` (cgroupfs
    /// manager), `…/machine-libpod_pod_<pod-id>.slice/libpod-<ctr-id>.scope`
    /// (systemd manager; `user-libpod_pod_…` when rootless).
    private static func podman(_ segments: [String], at index: Int) -> PodCgroup? {
        let segment = segments[index]
        let podID: String
        let podIndex: Int
        if segment == "libpod_parent" {
            guard index + 1 < segments.count, isContainerID(segments[index + 1]) else { return nil }
            podID = segments[index + 1]
            podIndex = index + 1
        } else if segment.hasSuffix(".slice"),
            let last = segment.dropLast(".slice".count).split(separator: "-", omittingEmptySubsequences: false).last,
            last.hasPrefix("libpod_pod_"), isContainerID(last.dropFirst("libpod_pod_".count))
        {
            podID = String(last.dropFirst("libpod_pod_".count))
            podIndex = index
        } else {
            return nil
        }
        guard let path = try? CgroupPath(validating: "/" + segments[0...podIndex].joined(separator: "/")) else { return nil }
        return PodCgroup(owner: .podman(podID: podID), path: path, containerID: containerID(segments, after: podIndex))
    }

    /// The container named by the segment below the pod's, if it names one.
    private static func containerID(_ segments: [String], after podIndex: Int) -> String? {
        guard podIndex + 1 < segments.count else { return nil }
        var name = Substring(segments[podIndex + 1])
        if name.hasSuffix(".scope") { name = name.dropLast(".scope".count) }
        for prefix in ["cri-containerd-", "crio-", "docker-", "libpod-"] where name.hasPrefix(prefix) {
            name = name.dropFirst(prefix.count)
            break
        }
        return isContainerID(name) ? String(name) : nil
    }

    /// Container and Podman pod ids: 64 lowercase hex digits.
    private static func isContainerID<S: StringProtocol>(_ text: S) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { isHexDigit($0) && !(UInt8(ascii: "A")...UInt8(ascii: "F")).contains($0) }
    }
}

// MARK: - Errors

public enum PodCgroupError: Error, Equatable, CustomStringConvertible {
    case invalidPodUID(String)
    case invalidLayout(String, reason: String)
    case noUnifiedEntry(file: String)
    case deletedCgroup(file: String, path: String)
    case invalidUnifiedEntry(file: String, line: String, reason: String)

    // Cgroup names may hold any byte but "/" and NUL, and UIDs come from the
    // API server: both are quoted with control characters escaped, so an
    // error is always one log line.
    public var description: String {
        switch self {
        case .invalidPodUID(let text):
            return "pod UID \(quoted(text)) is neither a UUID (8-4-4-4-12 hex digits) nor a static pod's 32 hex digits; no cgroup is named after it"
        case .invalidLayout(let root, let reason):
            return "kubelet cgroup root \(quoted(root)): \(reason)"
        case .noUnifiedEntry(let file):
            return "\(quoted(file)) has no cgroup v2 entry (a line \"0::/path\"); is cgroup v2 mounted?"
        case .deletedCgroup(let file, let path):
            return "\(quoted(file)) names cgroup \(quoted(path)), which was removed; the process is exiting"
        case .invalidUnifiedEntry(let file, let line, let reason):
            return "\(quoted(file)): the cgroup v2 entry \(quoted(line)) is not a usable path: \(quoted(reason, marks: false))"
        }
    }
}

// MARK: - Helpers

/// `text` in quotes (or, with `marks` false, without), at most 300
/// characters, control characters written as `\u{XX}`.
private func quoted(_ text: String, marks: Bool = true) -> String {
    var out = ""
    for scalar in text.unicodeScalars.prefix(300) {
        if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
            out += "\\u{" + String(scalar.value, radix: 16) + "}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    if text.unicodeScalars.count > 300 { out += "…" }
    return marks ? "\"\(out)\"" : out
}

private func isHexDigit(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"): true
    default: false
    }
}

extension StringProtocol {
    fileprivate func replacingDashes(with replacement: Character) -> String {
        String(map { $0 == "-" ? replacement : $0 })
    }

    fileprivate func replacingUnderscores(with replacement: Character) -> String {
        String(map { $0 == "_" ? replacement : $0 })
    }
}
