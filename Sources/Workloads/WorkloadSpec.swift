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

/// A workload as a source declares it: who it is, what it serves, and the
/// cgroup its processes run in (the kernel names a socket's cgroup by id; the
/// registry finds the id from this path).
public struct WorkloadSpec: Equatable, Sendable {
    public var workload: Workload
    /// Below the cgroup v2 mount, e.g. `/system.slice/orders.service`.
    public var cgroup: CgroupPath
    public var source: WorkloadSource

    public init(workload: Workload, cgroup: CgroupPath, source: WorkloadSource) {
        self.workload = workload
        self.cgroup = cgroup
        self.source = source
    }
}
