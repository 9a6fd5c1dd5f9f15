import LinuxNet
import NIOCore
import TestFixtures
import Testing
@testable import Workloads

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
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TLS

/// The registry against real cgroup v2 directories (root only; CI runs as root).
@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root to make cgroups")) struct RegistryKernelTests {
    @Test func lookupsFollowReorderedAndNestedWorkloads() throws {
        let mount = try CgroupV2Mount.discover()
        let base = "/ma-registry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let directory = mount.directory(of: try CgroupPath(validating: base))
        try FileManager.default.createDirectory(atPath: directory + "/a/nested", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/b", withIntermediateDirectories: true)
        defer {
            for path in ["/a/nested", "/a", "/b", ""] { rmdir(directory + path) }
        }
        func entry(_ name: String, port: UInt16) throws -> WorkloadSpec {
            try spec(name, cgroup: "\(base)/\(name)", ports: [port])
        }
        let a = try entry("a", port: 1000)
        let b = try entry("b", port: 2000)
        let idA = try mount.id(of: a.cgroup)
        let idNested = try mount.id(of: try CgroupPath(validating: "\(base)/a/nested"))
        let idB = try mount.id(of: b.cgroup)

        let registry = WorkloadRegistry(mount: mount, logger: Logger(label: "test"))
        registry.update([a, b], from: .config)
        #expect(registry.workload(forCgroup: idA)?.name == "a")
        #expect(registry.workload(forCgroup: idNested)?.name == "a", "a nested cgroup belongs to its workload")
        #expect(registry.workload(forCgroup: idB)?.name == "b")
        #expect(registry.presentWorkload(servingPort: 2000)?.name == "b")

        registry.update([b, a], from: .config)
        #expect(registry.workload(forCgroup: idA)?.name == "a", "reordering must not move identities")
        #expect(registry.workload(forCgroup: idB)?.name == "b")
        #expect(registry.presentWorkload(servingPort: 1000)?.name == "a")

        registry.update([b], from: .config)
        #expect(registry.workload(forCgroup: idA) == nil, "a workload no longer declared identifies nobody")
        #expect(registry.presentWorkload(servingPort: 1000) == nil)
        #expect(registry.levels == [2])
        #expect(registry.elementsByLevel == [2: [idB]])
    }
}

/// A workload spec for the tests, in namespace "test".
func spec(_ name: String, cgroup: String, ports: [UInt16] = [], source: WorkloadSource = .config) throws -> WorkloadSpec {
    WorkloadSpec(
        workload: Workload(
            name: name, namespace: "test", serviceAccount: name,
            identity: try SpiffeID(trustDomain: "td", namespace: "test", serviceAccount: name), ports: ports),
        cgroup: try CgroupPath(validating: cgroup), source: source)
}

/// Cgroups that exist only in the test: path -> id, changeable while the
/// registry runs, with a count of the walks.
final class FakeCgroups: @unchecked Sendable {
    private let lock = NIOLock()
    private var ids: [String: UInt64] = [:]
    private(set) var walks = 0

    func set(_ path: String, _ id: UInt64?) {
        lock.withLock { ids[path] = id }
    }

    var walkCount: Int { lock.withLock { walks } }

    func reader() -> WorkloadRegistry.SubtreeReader {
        { cgroup in
            try self.lock.withLock {
                self.walks += 1
                let prefix = cgroup.string
                let found = self.ids.filter { $0.key == prefix || $0.key.hasPrefix(prefix + "/") }
                guard !found.isEmpty, found[prefix] != nil else { throw CgroupError.notFound(cgroup) }
                return try found.sorted { $0.key < $1.key }.map { (path: try CgroupPath(validating: $0.key), id: CgroupID($0.value)) }
            }
        }
    }
}

let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

@Suite struct RegistrySourceTests {
    @Test func aSourceReplacesOnlyItsOwnWorkloadsAndKeepsTheirIDs() throws {
        let cgroups = FakeCgroups()
        cgroups.set("/a", 10)
        cgroups.set("/b", 20)
        cgroups.set("/c", 30)
        let registry = WorkloadRegistry(logger: quiet, readSubtree: cgroups.reader())
        let podman = WorkloadSource("podman")
        #expect(registry.update([try spec("a", cgroup: "/a", ports: [1000])], from: .config).isEmpty)
        #expect(registry.update([try spec("b", cgroup: "/b", ports: [2000], source: podman)], from: podman).isEmpty)
        #expect(registry.members.map(\.workload.name) == ["a", "b"])
        #expect(registry.members.map(\.source) == [.config, podman], "each workload remembers where it came from")

        // The config source re-lists: its own list changes, podman's stays.
        registry.update([try spec("a", cgroup: "/a", ports: [1000]), try spec("c", cgroup: "/c", ports: [3000])], from: .config)
        #expect(Set(registry.members.map(\.workload.name)) == ["a", "b", "c"])
        #expect(registry.workload(forCgroup: CgroupID(20))?.name == "b")
        #expect(registry.presentWorkload(servingPort: 3000)?.name == "c")

        // Podman goes away: only its workloads leave.
        registry.update([], from: podman)
        #expect(registry.members.map(\.workload.name) == ["a", "c"])
        #expect(registry.workload(forCgroup: CgroupID(20)) == nil)
        #expect(registry.workload(forCgroup: CgroupID(10))?.name == "a")
    }

    @Test func aWorkloadThatClashesWithAnotherSourcesIsRejectedWithTheReason() throws {
        let cgroups = FakeCgroups()
        cgroups.set("/a", 10)
        let registry = WorkloadRegistry(logger: quiet, readSubtree: cgroups.reader())
        let docker = WorkloadSource("docker")
        registry.update([try spec("a", cgroup: "/a", ports: [1000])], from: .config)
        let rejected = registry.update([
            try spec("a", cgroup: "/x", source: docker),
            try spec("port", cgroup: "/y", ports: [1000], source: docker),
            try spec("nested", cgroup: "/a/inner", source: docker),
            try spec("fine", cgroup: "/z", ports: [2000], source: docker),
        ], from: docker)
        #expect(rejected.map(\.spec.workload.name) == ["a", "port", "nested"])
        #expect(rejected[0].reason.contains("test/a (from config)"))
        #expect(rejected[1].reason.contains("port 1000"))
        #expect(rejected[2].reason.contains("nested"))
        #expect(registry.members.map(\.workload.name) == ["a", "fine"])
        #expect(registry.presentWorkload(servingPort: 1000)?.name == "a", "the clash changed nothing of the first workload")
    }

    @Test func aLookupMissWaitsForOneWalkOffTheEventLoopAndFindsANewNestedCgroup() throws {
        let cgroups = FakeCgroups()
        cgroups.set("/a", 10)
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        defer { try? pool.syncShutdownGracefully() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let eventLoop = group.next()
        let registry = WorkloadRegistry(blockingPool: pool, logger: quiet, readSubtree: cgroups.reader())
        registry.update([try spec("a", cgroup: "/a")], from: .config)
        let walksAfterUpdate = cgroups.walkCount

        // A cgroup made below the workload's after the last walk.
        cgroups.set("/a/child", 11)
        #expect(registry.workload(forCgroup: CgroupID(11)) == nil, "the memory-only lookup does not walk")
        #expect(cgroups.walkCount == walksAfterUpdate)
        let found = try eventLoop.submit {
            registry.workload(forCgroup: CgroupID(11), on: eventLoop)
        }.wait().wait()
        #expect(found?.name == "a")
        #expect(cgroups.walkCount == walksAfterUpdate + 1)

        // A burst of misses right after does not walk again.
        let misses = try (0..<20).map { index in
            try eventLoop.submit { registry.workload(forCgroup: CgroupID(UInt64(1000 + index)), on: eventLoop) }.wait()
        }
        for miss in misses { #expect(try miss.wait() == nil) }
        #expect(cgroups.walkCount == walksAfterUpdate + 1, "misses within the interval share the last walk")
    }
}

/// Workloads in namespaces of their own have ports of their own: two pods
/// serve the same port without a clash, the node's table guards neither, and
/// a node address at that port is no pod's.
@Suite struct RegistryNamespaceTests {
    @Test func podsShareAPortAndStayOutOfTheNodesTable() throws {
        let cgroups = FakeCgroups()
        cgroups.set("/pods/a", 10)
        cgroups.set("/pods/b", 20)
        cgroups.set("/system.slice/c.service", 30)
        let registry = WorkloadRegistry(logger: quiet, readSubtree: cgroups.reader())
        var a = try spec("a", cgroup: "/pods/a", ports: [8080])
        a.network = .namespace(.path("/run/netns/a"))
        var b = try spec("b", cgroup: "/pods/b", ports: [8080])
        b.network = .namespace(.ofCgroup)
        let c = try spec("c", cgroup: "/system.slice/c.service", ports: [8080])
        #expect(registry.update([a, b, c], from: .config).isEmpty)
        #expect(registry.members.map(\.spec.network) == [.namespace(.path("/run/netns/a")), .namespace(.ofCgroup), .host])
        #expect(registry.presentWorkload(servingPort: 8080)?.name == "c", "only the node's own workload serves a node port")
        #expect(registry.levels == [2])
        #expect(registry.elementsByLevel == [2: [CgroupID(30)]])
        #expect(registry.presentIdentities.count == 3, "every present workload gets a certificate")
        #expect(registry.workload(forCgroup: CgroupID(10))?.name == "a", "a pod's sockets are still identified by cgroup")

        // Two workloads of the node's own namespace still cannot share one.
        let d = try spec("d", cgroup: "/system.slice/d.service", ports: [8080])
        let rejections = registry.update([a, b, c, d], from: .config)
        #expect(rejections.map(\.spec.workload.name) == ["d"])
    }
}

@Suite struct NamespaceDestinationsTests {
    @Test func onlyTheNamespacesOwnAddressesAreTheWorkload() throws {
        let workload = try spec("a", cgroup: "/pods/a").workload
        let destinations = NamespaceDestinations(workload: workload, agentPorts: [15001, 15006, 15008])
        destinations.update(
            InterfaceAddresses(
                addresses: [
                    try SocketAddress(ipAddress: "127.0.0.1", port: 0), try SocketAddress(ipAddress: "10.77.5.2", port: 0),
                    try SocketAddress(ipAddress: "fe80::1", port: 0),
                ], broadcast: [0x0a4d_05ff]))
        #expect(destinations.ownAddresses == ["10.77.5.2"])
        #expect(destinations.resolve(try SocketAddress(ipAddress: "10.77.5.2", port: 9999)) == .workload(workload), "any port of the pod is the pod's")
        #expect(destinations.resolve(try SocketAddress(ipAddress: "10.77.5.2", port: 15008)) == .forbidden(.agentPort))
        #expect(destinations.resolve(try SocketAddress(ipAddress: "127.0.0.1", port: 8080)) == .forbidden(.loopback))
        #expect(destinations.resolve(try SocketAddress(ipAddress: "10.77.5.255", port: 8080)) == .forbidden(.broadcast))
        #expect(destinations.resolve(try SocketAddress(ipAddress: "10.77.6.2", port: 8080)) == .elsewhere, "another pod")
    }
}
