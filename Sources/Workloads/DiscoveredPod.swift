import LinuxNet
import TLS

/// A pod or container that a discovery source (a container engine, the
/// Kubernetes API, the CNI plugin) found on this node, as the source describes
/// it, before the agent turns it into a workload it captures.
///
/// Sources only decode and decide enrollment; where the pod's network
/// namespace is and how it is captured is the agent's business.
public struct DiscoveredPod: Hashable, Sendable {
    /// Whether the agent should capture the pod, and if not, why not (shown in
    /// `agentctl workloads` and logs).
    public enum Enrollment: Hashable, Sendable {
        case enrolled
        case notEnrolled(reason: String)

        public var isEnrolled: Bool { self == .enrolled }
    }

    public var source: WorkloadSource
    /// What the source calls it: the pod UID (Kubernetes), the pod or
    /// container id (Podman, Docker), the container id (CNI).
    public var id: String
    public var name: String
    /// The workload's namespace (Kubernetes namespace, or the
    /// `mesh-agent.io/namespace` label), part of its SPIFFE ID.
    public var namespace: String
    public var serviceAccount: String
    public var labels: [String: String]
    /// The TCP ports it serves, sorted, without duplicates.
    public var ports: [UInt16]
    /// The pod's own cgroup (every container of the pod is below it), when the
    /// source knows it.
    public var cgroup: CgroupPath?
    /// A file that names the pod's network namespace (`/run/netns/…`,
    /// `/proc/PID/ns/net`), when the source knows it.
    public var networkNamespacePath: String?
    /// The pod's IP addresses, as text (`10.77.1.5`, `fd77::5`).
    public var addresses: [String]
    public var enrollment: Enrollment

    public init(
        source: WorkloadSource, id: String, name: String, namespace: String, serviceAccount: String,
        labels: [String: String] = [:], ports: [UInt16] = [], cgroup: CgroupPath? = nil,
        networkNamespacePath: String? = nil, addresses: [String] = [], enrollment: Enrollment
    ) {
        self.source = source
        self.id = id
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
        self.labels = labels
        self.ports = Array(Set(ports)).sorted()
        self.cgroup = cgroup
        self.networkNamespacePath = networkNamespacePath
        self.addresses = addresses
        self.enrollment = enrollment
    }
}

/// The labels and their meanings that every source shares.
public enum EnrollmentLabels {
    /// `istio.io/dataplane-mode`: `ambient` enrolls, `none` opts a pod out
    /// even when its namespace is enrolled.
    public static let dataplaneMode = "istio.io/dataplane-mode"
    public static let ambient = "ambient"
    public static let none = "none"
    /// Outside Kubernetes, where the workload's namespace and service account
    /// come from (defaults `default`).
    public static let namespace = "mesh-agent.io/namespace"
    public static let serviceAccount = "mesh-agent.io/service-account"
    /// Comma-separated TCP ports, for engines whose pods publish none.
    public static let ports = "mesh-agent.io/ports"

    /// Enrollment from a pod's own labels and, in Kubernetes, its namespace's:
    /// the pod's `none` wins, then either one's `ambient`.
    public static func enrollment(podLabels: [String: String], namespaceLabels: [String: String] = [:]) -> DiscoveredPod.Enrollment {
        switch podLabels[dataplaneMode] {
        case none?:
            return .notEnrolled(reason: "the pod is labelled \(dataplaneMode)=\(none)")
        case ambient?:
            return .enrolled
        default:
            if namespaceLabels[dataplaneMode] == ambient { return .enrolled }
            return .notEnrolled(reason: "neither the pod nor its namespace is labelled \(dataplaneMode)=\(ambient)")
        }
    }
}

extension DiscoveredPod {
    /// Why an enrolled pod cannot be captured (yet).
    public enum Unusable: Error, Equatable, CustomStringConvertible {
        case notEnrolled(String)
        case noCgroup
        case identity(String)

        public var description: String {
            switch self {
            case .notEnrolled(let reason): return "not enrolled: \(reason)"
            case .noCgroup: return "its cgroup is not known yet, so its sockets cannot be told apart"
            case .identity(let reason): return "no SPIFFE identity can be made for it: \(reason)"
            }
        }
    }

    /// The workload the agent captures for this pod: in its own network
    /// namespace (named by the source, or else that of its cgroup's
    /// processes), with identity `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    public func spec(trustDomain: String) throws(Unusable) -> WorkloadSpec {
        if case .notEnrolled(let reason) = enrollment { throw .notEnrolled(reason) }
        guard let cgroup else { throw .noCgroup }
        let identity: SpiffeID
        do {
            identity = try SpiffeID(trustDomain: trustDomain, namespace: namespace, serviceAccount: serviceAccount)
        } catch {
            throw .identity("\(error)")
        }
        let workload = Workload(name: name, namespace: namespace, serviceAccount: serviceAccount, identity: identity, labels: labels, ports: ports)
        let network = WorkloadNetwork.namespace(networkNamespacePath.map(WorkloadNetwork.NamespaceLocation.path) ?? .ofCgroup)
        return WorkloadSpec(workload: workload, cgroup: cgroup, source: source, network: network)
    }
}
