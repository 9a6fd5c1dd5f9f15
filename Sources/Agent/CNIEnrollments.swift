import CNI
import Foundation
import LinuxNet
import Logging
import Workloads

/// The pods the CNI plugin enrolled, as the control loop answers its
/// requests (one at a time, like every change to the captures).
///
/// With the Kubernetes source on, the API says who a pod is and whether it is
/// enrolled; the plugin's ADD then only waits until that pod is captured. On
/// its own, the plugin's word is enough: the pod is captured with identity
/// `spiffe://TD/ns/<K8S_POD_NAMESPACE or default>/sa/default`, its cgroup found
/// from `K8S_POD_UID` in the kubelet's layouts. Those enrollments are kept in
/// a file beside the admin socket, so an agent that restarts finds them again
/// (the pods are still running; the runtime will not call ADD again).
struct CNIEnrollments {
    static let source = WorkloadSource("cni")

    /// One enrollment as the file keeps it.
    struct Entry: Codable, Equatable {
        var containerID: String
        var name: String
        var namespace: String
        var cgroup: String
        var netns: String?
    }

    private(set) var entries: [String: Entry] = [:]
    let statePath: String
    let logger: Logger

    init(adminSocket: String, logger: Logger) {
        statePath = (adminSocket as NSString).deletingLastPathComponent + "/cni-enrollments.json"
        self.logger = logger
    }

    /// The enrollments of the agent before this one, those whose pod still
    /// exists (its cgroup does).
    mutating func load(mount: CgroupV2Mount) {
        guard let data = FileManager.default.contents(atPath: statePath) else { return }
        do {
            let saved = try JSONDecoder().decode([Entry].self, from: data)
            for entry in saved {
                guard let cgroup = try? CgroupPath(validating: entry.cgroup), (try? mount.id(of: cgroup)) != nil else {
                    logger.info("CNI enrollment of \(entry.namespace)/\(entry.name) dropped: its cgroup \(entry.cgroup) is gone")
                    continue
                }
                entries[entry.containerID] = entry
            }
            logger.info("found \(entries.count) CNI enrollment(s) of the previous agent in \(statePath)")
        } catch {
            logger.warning("cannot read the CNI enrollments in \(statePath): \(error); pods enrolled before this start are captured again only if their runtime calls ADD again")
        }
    }

    private func save() {
        do {
            let data = try JSONEncoder().encode(entries.values.sorted { $0.containerID < $1.containerID })
            try data.write(to: URL(fileURLWithPath: statePath), options: .atomic)
        } catch {
            logger.warning("cannot save the CNI enrollments to \(statePath): \(error); a restarted agent will not find them")
        }
    }

    /// The workloads they declare.
    func specs(trustDomain: String) -> [WorkloadSpec] {
        entries.values.sorted { $0.containerID < $1.containerID }.compactMap { entry in
            guard let cgroup = try? CgroupPath(validating: entry.cgroup) else { return nil }
            let pod = DiscoveredPod(
                source: Self.source, id: entry.containerID, name: entry.name, namespace: entry.namespace, serviceAccount: "default", cgroup: cgroup,
                networkNamespacePath: entry.netns.flatMap { FileManager.default.fileExists(atPath: $0) ? $0 : nil }, enrollment: .enrolled)
            return try? pod.spec(trustDomain: trustDomain)
        }
    }

    /// The entry an ADD makes, or why it cannot be made.
    static func entry(for request: EnrollmentRequest, mount: CgroupV2Mount) throws(CNIEnrollmentError) -> Entry {
        guard let netns = request.netns else { throw .noNamespace }
        guard let uidText = request.podUID, let uid = try? PodUID(validating: uidText) else { throw .noPodUID }
        var candidates: [CgroupPath] = []
        for layout in KubeletCgroupLayout.common {
            for qos in PodQoSClass.allCases { candidates.append(layout.podCgroup(uid: uid, qosClass: qos)) }
        }
        guard let cgroup = candidates.first(where: { (try? mount.id(of: $0)) != nil }) else {
            throw .noPodCgroup(uid: uidText)
        }
        let name = request.podName ?? "pod-\(request.containerID.prefix(12))"
        return Entry(containerID: request.containerID, name: name, namespace: request.podNamespace ?? "default", cgroup: cgroup.string, netns: netns)
    }

    mutating func add(_ entry: Entry) {
        entries[entry.containerID] = entry
        save()
    }

    @discardableResult
    mutating func remove(containerID: String) -> Entry? {
        guard let removed = entries.removeValue(forKey: containerID) else { return nil }
        save()
        return removed
    }
}

enum CNIEnrollmentError: Error, CustomStringConvertible {
    case noNamespace
    case noPodUID
    case noPodCgroup(uid: String)
    case notCaptured(String)
    case unknownPod(String)
    case shuttingDown

    var description: String {
        switch self {
        case .noNamespace:
            return "the request names no network namespace"
        case .noPodUID:
            return "the request carries no valid K8S_POD_UID, so the pod's cgroup cannot be found; enable the kubernetes workload source, or have the runtime pass K8S_POD_UID in CNI_ARGS"
        case .noPodCgroup(let uid):
            return "no kubelet pod cgroup exists for pod uid \(uid) (looked in the systemd and cgroupfs layouts)"
        case .notCaptured(let reason):
            return "the pod is not captured: \(reason)"
        case .unknownPod(let pod):
            return "the Kubernetes API has not told this agent about pod \(pod) yet; the runtime retries"
        case .shuttingDown:
            return "the agent is shutting down"
        }
    }
}
