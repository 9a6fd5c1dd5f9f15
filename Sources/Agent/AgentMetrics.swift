import Identity
import Metrics
import TLS
import Workloads

/// The agent's own gauges, set once per control-loop tick from the state they
/// describe (connections, workloads, certificates), so that scraping costs the
/// data path nothing.
struct AgentMetrics {
    private let activeConnections = Gauge(label: "mesh_agent_active_connections")
    private let workloadsPresent = Gauge(label: "mesh_agent_workloads", dimensions: [("state", "present")])
    private let workloadsAbsent = Gauge(label: "mesh_agent_workloads", dimensions: [("state", "absent")])
    /// One per identity the agent holds a certificate for: when it expires, in
    /// seconds since the epoch. Identities are this node's workloads and the
    /// agent itself, a bounded set; a gauge goes when its identity does.
    private var certificateExpiry: [SpiffeID: Gauge] = [:]

    mutating func update(connections: Int, registry: WorkloadRegistry, certificates: [SVIDManager.Status]) {
        activeConnections.record(connections)
        let members = registry.members
        let present = members.filter(\.isPresent).count
        workloadsPresent.record(present)
        workloadsAbsent.record(members.count - present)

        var seen = Set<SpiffeID>()
        for status in certificates {
            guard let notAfter = status.notAfter else { continue }
            seen.insert(status.identity)
            let gauge = certificateExpiry[status.identity] ?? {
                let made = Gauge(label: "mesh_agent_certificate_expiry_timestamp_seconds", dimensions: [("identity", status.identity.description)])
                certificateExpiry[status.identity] = made
                return made
            }()
            gauge.record(notAfter)
        }
        for (identity, gauge) in certificateExpiry where !seen.contains(identity) {
            gauge.destroy()
            certificateExpiry[identity] = nil
        }
    }
}
