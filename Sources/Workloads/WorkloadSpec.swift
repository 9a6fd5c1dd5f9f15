import LinuxNet

/// Where a workload was declared. Several sources feed one registry (the
/// config file today; container engines, Kubernetes and the CNI plugin next),
/// and each workload remembers its own, so that a source going away or
/// re-listing touches only what it declared.
public struct WorkloadSource: Hashable, Sendable, CustomStringConvertible {
    /// A short name for logs and `agentctl workloads` (`config`, `podman`, …).
    public let name: String

    public init(_ name: String) {
        self.name = name
    }

    /// The `workloads:` list of the agent's config file.
    public static let config = WorkloadSource("config")

    public var description: String { name }
}

/// Which network namespace a workload's sockets live in, and so where the
/// agent captures them.
public enum WorkloadNetwork: Hashable, Sendable, CustomStringConvertible {
    /// The node's own namespace: captured by the node's table, matched by cgroup.
    case host
    /// A namespace of its own (a pod, a container, a service with
    /// `PrivateNetwork=`): captured by a table and listeners inside it.
    case namespace(NamespaceLocation)

    /// How the agent finds a workload's namespace.
    public enum NamespaceLocation: Hashable, Sendable {
        /// A file that names it: `/run/netns/NAME`, `/proc/PID/ns/net`.
        case path(String)
        /// The namespace of the processes in the workload's cgroup.
        case ofCgroup
    }

    public var isHost: Bool { self == .host }

    public var description: String {
        switch self {
        case .host: return "host"
        case .namespace(.path(let path)): return "netns \(path)"
        case .namespace(.ofCgroup): return "netns of its cgroup's processes"
        }
    }
}

/// Traffic of a workload that is never captured: to and from these ports, and
/// to and from these networks (`captureExclusions:`).
public struct CaptureExclusions: Hashable, Sendable {
    public var ports: [UInt16]
    /// Networks as `ADDRESS/LENGTH` text, already validated by whoever parsed them.
    public var networks: [String]

    public init(ports: [UInt16] = [], networks: [String] = []) {
        self.ports = Array(Set(ports)).sorted()
        self.networks = networks
    }

    public var isEmpty: Bool { ports.isEmpty && networks.isEmpty }
}

/// A workload as a source declares it: who it is, what it serves, and the
/// cgroup its processes run in (the kernel names a socket's cgroup by id; the
/// registry finds the id from this path).
public struct WorkloadSpec: Equatable, Sendable {
    public var workload: Workload
    /// Below the cgroup v2 mount, e.g. `/system.slice/orders.service`.
    public var cgroup: CgroupPath
    public var source: WorkloadSource
    public var network: WorkloadNetwork
    public var exclusions: CaptureExclusions

    public init(
        workload: Workload, cgroup: CgroupPath, source: WorkloadSource, network: WorkloadNetwork = .host,
        exclusions: CaptureExclusions = CaptureExclusions()
    ) {
        self.workload = workload
        self.cgroup = cgroup
        self.source = source
        self.network = network
        self.exclusions = exclusions
    }
}
