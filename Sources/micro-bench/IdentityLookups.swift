import Config
import LinuxNet
import Logging
import Workloads

/// The lookup that names the workload behind a captured connection, from the
/// cgroup id the kernel reports for its socket, with 100 and with 1,000
/// workloads configured. Every lookup is a hit, as for any connection the
/// capture rules let through.
func measureIdentityLookups() throws {
    for count in [100, 1000] {
        let (registry, ids) = try registry(workloads: count)
        // Connections come from every workload in turn, not from one hot entry.
        var next = 0
        let found = measure("identity lookup, \(count) workloads", per: "lookup", iterations: 1_000_000, counting: "found") {
            let id = ids[next]
            next = next + 1 == ids.count ? 0 : next + 1
            return registry.workload(forCgroup: id) != nil
        }
        guard found == 1_000_000 else {
            fail("identity lookup with \(count) workloads found a workload in only \(found) of 1000000 lookups; a miss waits for a cgroup walk, which is not the path this measures")
        }
    }
}

/// A registry of `count` workloads configured as the agent configures them,
/// from its config file, whose cgroups have ids without existing in the kernel.
private func registry(workloads count: Int) throws -> (WorkloadRegistry, [CgroupID]) {
    var text = "trustDomain: cluster.local\nworkloads:\n"
    for index in 0..<count {
        text += "  - {name: w\(index), namespace: bench, cgroup: /bench.slice/w\(index).service, ports: [\(10_000 + index)]}\n"
    }
    let config = try AgentConfig.parse(text, file: "bench-agent.yaml", defaultNode: "bench")
    var ids: [CgroupPath: CgroupID] = [:]
    for (index, workload) in config.workloads.enumerated() {
        ids[workload.cgroup] = CgroupID(UInt64(100_000 + index))
    }
    // Each workload's cgroup has no children: its subtree is itself.
    let cgroupIDs = ids
    // The registry logs every workload it finds: not this benchmark's output.
    let quiet = Logger(label: "micro-bench", factory: { _ in SwiftLogNoOpLogHandler() })
    let registry = WorkloadRegistry(logger: quiet) { cgroup in
        guard let id = cgroupIDs[cgroup] else { throw CgroupError.notFound(cgroup) }
        return [(path: cgroup, id: id)]
    }
    registry.update(config.workloads, from: .config)
    return (registry, config.workloads.compactMap { ids[$0.cgroup] })
}
