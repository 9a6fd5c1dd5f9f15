import LinuxNet
import Workloads

/// Which engine a socket serves, which decides the endpoints and the source
/// name. Podman is asked through its libpod endpoints, because only they know
/// pods; Docker through the Docker Engine API, where every container is its
/// own pod.
public enum EngineFlavor: String, Hashable, Sendable, CaseIterable {
    case podman, docker

    public var source: WorkloadSource { WorkloadSource(rawValue) }
}

/// What the lists of one engine show at one moment.
public struct EngineListing: Hashable, Sendable {
    public var flavor: EngineFlavor
    /// Podman's pods; always empty for Docker.
    public var pods: [EnginePodSummary]
    public var containers: [EngineContainerSummary]

    public init(flavor: EngineFlavor, pods: [EnginePodSummary] = [], containers: [EngineContainerSummary]) {
        self.flavor = flavor
        self.pods = pods
        self.containers = containers
    }
}

/// What the inspections added to a listing.
public struct EngineDetails: Hashable, Sendable {
    public var pods: [String: EnginePodDetails]
    public var containers: [String: EngineContainerDetails]
    /// The cgroup of a process, read from `/proc/PID/cgroup`, for engines
    /// that do not say where a container's cgroup is (Docker).
    public var processCgroups: [Int32: CgroupPath]

    public init(
        pods: [String: EnginePodDetails] = [:], containers: [String: EngineContainerDetails] = [:],
        processCgroups: [Int32: CgroupPath] = [:]
    ) {
        self.pods = pods
        self.containers = containers
        self.processCgroups = processCgroups
    }
}

/// One thing a source reports: a Podman pod, a standalone Podman container,
/// or a Docker container. Containers of a pod are not reported on their own:
/// they share the pod's namespace and cgroup.
public struct EngineWorkload: Hashable, Sendable {
    public enum Kind: Hashable, Sendable { case pod, container }

    public var kind: Kind
    public var id: String
    public var name: String
    /// For a pod, the pod's labels (which `podman kube play` copies from the
    /// manifest); for a container, its own.
    public var labels: [String: String]
    /// The container that holds the network namespace: the pod's infra
    /// container, or the container itself. Nil for a pod without one.
    public var networkContainerID: String?
    /// The state of that container (`running`, `exited`, …), or a pod's
    /// status when it has no infra container.
    public var state: String
    public var tcpPorts: Set<UInt16>
    public var addresses: [String]

    /// Whether its network namespace exists. A paused container keeps it, and
    /// lifting capture for a pause would only churn rules.
    public var hasNamespace: Bool { networkContainerID != nil && (state == "running" || state == "paused") }
}

/// Turns what the engine says into the pods a source reports. Pure.
public enum EngineWorkloads {
    /// The workloads of a listing, sorted by id.
    public static func workloads(of listing: EngineListing) -> [EngineWorkload] {
        let byID = Dictionary(listing.containers.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var result: [EngineWorkload] = []
        for pod in listing.pods {
            let infra = pod.infraContainerID.flatMap { byID[$0] }
            var ports = Set<UInt16>()
            for container in listing.containers where container.podID == pod.id { ports.formUnion(container.tcpPorts) }
            result.append(EngineWorkload(
                kind: .pod, id: pod.id, name: pod.name, labels: pod.labels, networkContainerID: pod.infraContainerID,
                state: infra?.state ?? (pod.infraContainerID == nil ? pod.status.lowercased() : "missing"),
                tcpPorts: ports, addresses: infra?.addresses ?? []))
        }
        for container in listing.containers where container.podID == nil && !container.isInfra {
            result.append(EngineWorkload(
                kind: .container, id: container.id, name: container.name, labels: container.labels,
                networkContainerID: container.id, state: container.state, tcpPorts: container.tcpPorts,
                addresses: container.addresses))
        }
        return result.sorted { $0.id < $1.id }
    }

    /// What to inspect so that `discoveredPods` can say where the workloads
    /// that are to be captured live: only those that are enrolled and running.
    public static func inspectionsNeeded(_ listing: EngineListing) -> (pods: Set<String>, containers: Set<String>) {
        var pods = Set<String>()
        var containers = Set<String>()
        for workload in workloads(of: listing) {
            guard case .enrolled = admission(of: workload).enrollment, let container = workload.networkContainerID else { continue }
            containers.insert(container)
            if workload.kind == .pod && listing.flavor == .podman { pods.insert(workload.id) }
        }
        return (pods, containers)
    }

    /// Every workload of the listing as the source reports it. A workload that
    /// should be captured but whose inspection is missing (it was removed
    /// while the source was listing) is left out: the engine's next event
    /// lists again.
    public static func discoveredPods(_ listing: EngineListing, details: EngineDetails) -> [DiscoveredPod] {
        workloads(of: listing).compactMap { discoveredPod($0, flavor: listing.flavor, details: details) }
    }

    static func discoveredPod(_ workload: EngineWorkload, flavor: EngineFlavor, details: EngineDetails) -> DiscoveredPod? {
        let admission = admission(of: workload)
        var pod = DiscoveredPod(
            source: flavor.source, id: workload.id, name: workload.name, namespace: admission.namespace,
            serviceAccount: admission.serviceAccount, labels: workload.labels,
            ports: Array(workload.tcpPorts.union(admission.labelPorts)), addresses: workload.addresses,
            enrollment: admission.enrollment)
        guard case .enrolled = admission.enrollment else { return pod }
        guard let containerID = workload.networkContainerID, let container = details.containers[containerID] else { return nil }
        guard container.running else {
            pod.enrollment = .notEnrolled(reason: "its \(workload.kind == .pod ? "infra " : "")container \(short(containerID)) is not running")
            return pod
        }
        pod.ports = Array(Set(pod.ports).union(container.tcpPorts)).sorted()
        if !container.addresses.isEmpty { pod.addresses = container.addresses }
        if !container.usesHostNetwork {
            pod.networkNamespacePath = container.sandboxKey ?? container.pid.map { "/proc/\($0)/ns/net" }
        }
        switch cgroup(of: workload, container: container, details: details) {
        case .success(let cgroup?) where cgroup.level == 0:
            // Every process of the node is below the root: capturing it as one
            // pod would give the whole node this pod's identity.
            pod.enrollment = .notEnrolled(reason: "the engine puts it in the root cgroup, which holds every process of the node; run it in a cgroup of its own")
        case .success(let cgroup):
            pod.cgroup = cgroup
        case .failure(let reason):
            pod.enrollment = .notEnrolled(reason: reason.text)
        }
        return pod
    }

    struct Reason: Error { var text: String }

    /// The workload's own cgroup, every process of it below: what Podman
    /// says (the pod's `CgroupPath`, a container's `State.CgroupPath`), else
    /// the cgroup of the container's first process.
    static func cgroup(of workload: EngineWorkload, container: EngineContainerDetails, details: EngineDetails) -> Result<CgroupPath?, Reason> {
        if workload.kind == .pod {
            if let text = details.pods[workload.id]?.cgroupPath { return cgroupPath(text) }
            // The pod inspection is missing or names no cgroup: each container
            // of a pod sits directly in the pod's cgroup.
            if let text = container.cgroupPath {
                return cgroupPath(text).map { $0?.parent }
            }
            return .success(nil)
        }
        if let text = container.cgroupPath { return cgroupPath(text) }
        return .success(container.pid.flatMap { details.processCgroups[$0] })
    }

    /// Podman's systemd manager writes the path relative to the root
    /// (`machine.slice/…`), its cgroupfs manager absolute; both are below the
    /// cgroup v2 mount.
    static func cgroupPath(_ text: String) -> Result<CgroupPath?, Reason> {
        let absolute = text.hasPrefix("/") ? text : "/" + text
        do {
            return .success(try CgroupPath(validating: absolute))
        } catch {
            return .failure(Reason(text: "the engine names its cgroup \(EngineText.quoted(text)), which is not a cgroup path (\(EngineText.escaped("\(error)", limit: 300)))"))
        }
    }

    /// As `podman ps` shows ids, escaped: the id comes from the engine.
    static func short(_ id: String) -> String { EngineText.escaped(id.prefix(12)) }

    // MARK: Labels

    /// What the labels decide, before anything is inspected.
    public struct Admission: Hashable, Sendable {
        public var enrollment: DiscoveredPod.Enrollment
        /// As the label says, even when it is not valid (then the workload
        /// is not enrolled, and the reason says why), so that `agentctl
        /// workloads` shows what was written.
        public var namespace: String
        public var serviceAccount: String
        public var labelPorts: Set<UInt16>
    }

    /// Enrollment from the labels (`istio.io/dataplane-mode`), the identity
    /// and ports they give, and whether the workload runs.
    public static func admission(of workload: EngineWorkload) -> Admission {
        let labels = workload.labels
        let namespace = labels[EnrollmentLabels.namespace] ?? "default"
        let serviceAccount = labels[EnrollmentLabels.serviceAccount] ?? "default"
        var admission = Admission(
            enrollment: EnrollmentLabels.enrollment(podLabels: labels), namespace: namespace,
            serviceAccount: serviceAccount, labelPorts: [])
        let ports = labels[EnrollmentLabels.ports].map(parsePorts) ?? .success([])
        if case .success(let parsed) = ports { admission.labelPorts = parsed }
        guard case .enrolled = admission.enrollment else { return admission }

        if !KubernetesName.isLabel(namespace) {
            admission.enrollment = .notEnrolled(
                reason: "label \(EnrollmentLabels.namespace)=\(EngineText.quoted(namespace)) is not a valid namespace: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
        } else if !KubernetesName.isSubdomain(serviceAccount) {
            admission.enrollment = .notEnrolled(
                reason: "label \(EnrollmentLabels.serviceAccount)=\(EngineText.quoted(serviceAccount)) is not a valid service account name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")
        } else if case .failure(let reason) = ports {
            admission.enrollment = .notEnrolled(reason: reason.text)
        } else if workload.networkContainerID == nil {
            admission.enrollment = .notEnrolled(
                reason: "the pod has no infra container, so its containers share no network namespace to capture; create it without --infra=false")
        } else if !workload.hasNamespace {
            let what = workload.kind == .pod ? "its infra container" : "it"
            admission.enrollment = .notEnrolled(reason: "\(what) is not running (state \(EngineText.quoted(workload.state)))")
        }
        return admission
    }

    /// `mesh-agent.io/ports`: TCP ports separated by commas (`8080,9090`),
    /// spaces allowed around them; empty means none.
    static func parsePorts(_ text: String) -> Result<Set<UInt16>, Reason> {
        var ports = Set<UInt16>()
        guard !text.allSatisfy({ $0 == " " || $0 == "\t" }) else { return .success(ports) }
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let trimmed = item.trimmingCharacters(in: " \t")
            guard (1...5).contains(trimmed.utf8.count), trimmed.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                let port = UInt16(trimmed), port > 0
            else {
                return .failure(Reason(
                    text: "label \(EnrollmentLabels.ports)=\(EngineText.quoted(text)): \(EngineText.quoted(trimmed)) is not a TCP port (1-65535); write the ports like 8080,9090"))
            }
            ports.insert(port)
        }
        return .success(ports)
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        var result = self
        while let first = result.first, set.contains(first) { result = result.dropFirst() }
        while let last = result.last, set.contains(last) { result = result.dropLast() }
        return result
    }
}

/// Kubernetes' rules for the names that end up in a SPIFFE ID, so that a
/// Podman workload's identity could be a Kubernetes one.
enum KubernetesName {
    /// RFC 1123 label: 1 to 63 lowercase letters, digits and '-', not at
    /// either end (namespaces).
    static func isLabel(_ text: some StringProtocol) -> Bool {
        let bytes = Array(text.utf8)
        return (1...63).contains(bytes.count) && bytes.allSatisfy { isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") }
            && bytes.first != UInt8(ascii: "-") && bytes.last != UInt8(ascii: "-")
    }

    /// RFC 1123 subdomain: labels joined by dots, at most 253 characters
    /// (service accounts).
    static func isSubdomain(_ text: some StringProtocol) -> Bool {
        (1...253).contains(text.utf8.count)
            && text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isLabel($0) }
    }

    private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
        (0x61...0x7A).contains(byte) || (0x30...0x39).contains(byte)
    }
}
