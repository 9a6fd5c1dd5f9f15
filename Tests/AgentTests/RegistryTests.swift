import LinuxNet
import Testing
@testable import Agent

@Suite struct RegistryChangeTests {
    @Test func differenceReportsAddedAndRemovedIdsPerLevel() {
        let before: [Int: [CgroupID]] = [2: [CgroupID(10), CgroupID(11)], 3: [CgroupID(30)]]
        let after: [Int: [CgroupID]] = [2: [CgroupID(11), CgroupID(12)], 4: [CgroupID(40)]]
        let changes = WorkloadRegistry.difference(from: before, to: after)
        #expect(changes.added == [2: [CgroupID(12)], 4: [CgroupID(40)]])
        #expect(changes.removed == [2: [CgroupID(10)], 3: [CgroupID(30)]])
    }

    @Test func noChangeIsEmpty() {
        let same: [Int: [CgroupID]] = [2: [CgroupID(1)]]
        #expect(WorkloadRegistry.difference(from: same, to: same).isEmpty)
    }
}

import Foundation
import Logging
import TLS

/// The registry against real cgroup v2 directories (root only; CI runs as root).
@Suite struct RegistryKernelTests {
    @Test func lookupsFollowReorderedAndNestedWorkloads() throws {
        guard geteuid() == 0 else { return }
        let mount = try CgroupV2Mount.discover()
        let base = "/ma-registry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let directory = mount.directory(of: try CgroupPath(validating: base))
        try FileManager.default.createDirectory(atPath: directory + "/a/nested", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/b", withIntermediateDirectories: true)
        defer {
            for path in ["/a/nested", "/a", "/b", ""] { rmdir(directory + path) }
        }
        func entry(_ name: String, port: UInt16) throws -> AgentConfig.WorkloadEntry {
            AgentConfig.WorkloadEntry(
                name: name, namespace: "test", serviceAccount: name,
                identity: try SpiffeID(trustDomain: "td", namespace: "test", serviceAccount: name),
                cgroup: try CgroupPath(validating: "\(base)/\(name)"), labels: [:], ports: [port]
            )
        }
        let a = try entry("a", port: 1000)
        let b = try entry("b", port: 2000)
        let idA = try mount.id(of: a.cgroup)
        let idNested = try mount.id(of: try CgroupPath(validating: "\(base)/a/nested"))
        let idB = try mount.id(of: b.cgroup)

        let registry = WorkloadRegistry(mount: mount, logger: Logger(label: "test"))
        registry.configure([a, b])
        #expect(registry.workload(forCgroup: idA)?.name == "a")
        #expect(registry.workload(forCgroup: idNested)?.name == "a", "a nested cgroup belongs to its workload")
        #expect(registry.workload(forCgroup: idB)?.name == "b")
        #expect(registry.presentWorkload(servingPort: 2000)?.name == "b")

        registry.configure([b, a])
        #expect(registry.workload(forCgroup: idA)?.name == "a", "reordering must not move identities")
        #expect(registry.workload(forCgroup: idB)?.name == "b")
        #expect(registry.presentWorkload(servingPort: 1000)?.name == "a")

        registry.configure([b])
        #expect(registry.workload(forCgroup: idA) == nil, "an unconfigured workload's cgroup identifies nobody")
        #expect(registry.presentWorkload(servingPort: 1000) == nil)
        #expect(registry.levels == [2])
        #expect(registry.elementsByLevel == [2: [idB]])
    }
}
