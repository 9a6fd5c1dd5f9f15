import Policy
import Workloads

extension PolicySet {
    /// The checks that need the workloads as well as the files: a rule naming
    /// HTTP attributes must not apply to a port declared `protocol: tcp`.
    public func check(against workloads: [WorkloadSpec]) throws(PolicyLoadError) {
        let conflicts = authorization.tcpOnlyConflicts(workloads.map { ($0.workload.name, $0.workload.namespace, $0.workload.labels, $0.workload.tcpPorts) })
        guard conflicts.isEmpty else { throw PolicyLoadError(conflicts) }
    }
}
