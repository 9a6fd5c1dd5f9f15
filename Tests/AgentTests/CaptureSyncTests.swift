import LinuxNet
import Netfilter
import Testing
@testable import Agent

/// What one sync of the capture sets sends to the kernel, in one transaction.
@Suite struct CaptureSyncTests {
    static func parameters(cgroups: [Int: [UInt64]], strict: [UInt16], permissive: [UInt16]) -> CaptureParameters {
        CaptureParameters(
            workloadCgroupLevels: Array(cgroups.keys).sorted(), workloadCgroups: cgroups.mapValues { $0.map(CgroupID.init) },
            strictPorts: strict, permissivePorts: permissive)
    }

    @Test func aPortChangingModeLeavesOneSetAndJoinsTheOtherInOneBatch() {
        let installed = Self.parameters(cgroups: [2: [10, 11]], strict: [8080], permissive: [9090, 7070])
        let target = Self.parameters(cgroups: [2: [11, 12]], strict: [8080, 9090], permissive: [7070])
        let changes = Capture.elementChanges(from: installed, to: target)
        #expect(changes == [
            .remove([.cgroup(CgroupID(10))], from: "workloads_l2"),
            .remove([.port(9090)], from: CaptureRules.permissivePortSetName),
            .add([.cgroup(CgroupID(12))], to: "workloads_l2"),
            .add([.port(9090)], to: CaptureRules.strictPortSetName),
        ])
    }

    @Test func nothingChangedSendsNothing() {
        let same = Self.parameters(cgroups: [2: [10], 3: [30]], strict: [8080], permissive: [])
        #expect(Capture.elementChanges(from: same, to: same).isEmpty)
    }

    @Test func emptyingTheWorkloadSetsTouchesEveryLevelAndNoPort() {
        let installed = Self.parameters(cgroups: [2: [10], 3: [30, 31]], strict: [8080], permissive: [9090])
        var target = installed
        target.workloadCgroups = [:]
        #expect(Capture.elementChanges(from: installed, to: target) == [
            .remove([.cgroup(CgroupID(10))], from: "workloads_l2"),
            .remove([.cgroup(CgroupID(30)), .cgroup(CgroupID(31))], from: "workloads_l3"),
        ])
    }
}
