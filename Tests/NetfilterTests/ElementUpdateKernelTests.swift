import Glibc
import LinuxNet
import TestFixtures
import Testing

@testable import Netfilter

/// `updateElements` against the real kernel, each test in its own scratch
/// namespace (deleted even when the test fails, and the table with it).
@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and program nftables"))
struct ElementUpdateKernelTests {
    static let workloads = CaptureRules.workloadSetName(level: 2)
    static let strict = CaptureRules.strictPortSetName
    static let permissive = CaptureRules.permissivePortSetName

    /// Three sets (cgroups, strict ports, permissive ports) with a few elements.
    static let table = CaptureRules.table(
        for: CaptureParameters(
            workloadCgroupLevels: [2], workloadCgroups: [2: [CgroupID(5), CgroupID(6)]], strictPorts: [8443, 9443],
            permissivePorts: [8080]))

    /// The elements of every set of the live table, by set name.
    static func elements(_ client: NetfilterClient) throws -> [String: Set<NFT.SetElement>] {
        let live = try #require(try client.liveTable(named: table.name))
        return Dictionary(uniqueKeysWithValues: live.sets.map { ($0.name, $0.elements) })
    }

    /// A client with the table installed, removal by DESTROYSETELEM or, when
    /// `destroy` is false, by the fallback for kernels older than 6.3.
    static func client(in namespace: TestNamespace, destroy: Bool) throws -> NetfilterClient {
        let client = try NetfilterClient(namespace: namespace.namespace)
        client.useDestroySetElement(destroy)
        try client.replace(table)
        return client
    }

    @Test(arguments: [true, false])
    func severalSetsChangeInOneTransaction(destroy: Bool) throws {
        try withTestNamespace { namespace in
            let client = try Self.client(in: namespace, destroy: destroy)
            let generation = try client.generation()
            try client.updateElements(
                [
                    .remove([.port(8443)], from: Self.strict),
                    .add([.port(8443)], to: Self.permissive),
                    .add([.cgroup(CgroupID(7)), .cgroup(CgroupID(8))], to: Self.workloads),
                    .remove([.cgroup(CgroupID(5))], from: Self.workloads),
                ], inTable: Self.table.name)
            #expect(try Self.elements(client) == [
                Self.workloads: [.cgroup(CgroupID(6)), .cgroup(CgroupID(7)), .cgroup(CgroupID(8))],
                Self.strict: [.port(9443)],
                Self.permissive: [.port(8080), .port(8443)],
            ])
            // One committed transaction moves the generation on by one; reading
            // the sets back does not move it (the fallback's reads included).
            #expect(try client.generation() == generation &+ 1)
        }
    }

    @Test(arguments: [true, false])
    func aRefusedChangeLeavesEverySetUnchanged(destroy: Bool) throws {
        try withTestNamespace { namespace in
            let client = try Self.client(in: namespace, destroy: destroy)
            let before = try Self.elements(client)
            let generation = try client.generation()
            let valid: [NFT.SetElementChange] = [
                .add([.cgroup(CgroupID(7))], to: Self.workloads),
                .remove([.port(8080)], from: Self.permissive),
                .remove([.port(8443)], from: Self.strict),
            ]
            // A set that does not exist, last or first: the error names it.
            for refused in [valid + [.add([.port(1)], to: "no_such_set")], [.remove([.port(1)], from: "no_such_set")] + valid] {
                #expect {
                    try client.updateElements(refused, inTable: Self.table.name)
                } throws: { error in
                    (error as? NetfilterError)?.errno == ENOENT && "\(error)".contains("set no_such_set")
                }
                #expect(try Self.elements(client) == before)
            }
            // Keys of the wrong size for the set, added or removed.
            for refused in [valid + [.add([.port(80)], to: Self.workloads)], valid + [.remove([.port(80)], from: Self.workloads)]] {
                #expect(throws: NetfilterError.self) { try client.updateElements(refused, inTable: Self.table.name) }
                #expect(try Self.elements(client) == before)
            }
            #expect(try client.generation() == generation)
            // Refusals that are not about DESTROYSETELEM do not turn it off.
            #expect(client.usesDestroySetElement == destroy)
        }
    }

    @Test(arguments: [true, false])
    func absentRemovalsAndPresentAdditionsDoNotFail(destroy: Bool) throws {
        try withTestNamespace { namespace in
            let client = try Self.client(in: namespace, destroy: destroy)
            try client.updateElements(
                [
                    // Present already, and repeated within the change.
                    .add([.cgroup(CgroupID(5)), .cgroup(CgroupID(5))], to: Self.workloads),
                    // Absent, next to one that is present.
                    .remove([.port(8443), .port(1234)], from: Self.strict),
                    .remove([.port(1234)], from: Self.permissive),
                    // Changes apply in order: added then removed, removed then added.
                    .add([.port(7000)], to: Self.permissive),
                    .remove([.port(7000), .port(8080)], from: Self.permissive),
                    .add([.port(8080)], to: Self.permissive),
                    // Removed twice.
                    .remove([.cgroup(CgroupID(6))], from: Self.workloads),
                    .remove([.cgroup(CgroupID(6))], from: Self.workloads),
                ], inTable: Self.table.name)
            #expect(try Self.elements(client) == [
                Self.workloads: [.cgroup(CgroupID(5))],
                Self.strict: [.port(9443)],
                Self.permissive: [.port(8080)],
            ])
            #expect(client.usesDestroySetElement == destroy)
        }
    }

    @Test func emptyChangesSendNothing() throws {
        try withTestNamespace { namespace in
            let client = try Self.client(in: namespace, destroy: true)
            let generation = try client.generation()
            try client.updateElements([], inTable: Self.table.name)
            try client.updateElements([.add([], to: Self.workloads), .remove([], from: "not_even_a_set")], inTable: Self.table.name)
            #expect(try client.generation() == generation)
            // Names and element lists are still checked before anything is sent.
            #expect(throws: NetfilterError.invalidRuleset("set name \"\" must be 1 to 255 bytes")) {
                try client.updateElements([.add([], to: "")], inTable: Self.table.name)
            }
            #expect(throws: NetfilterError.invalidRuleset("elements for set \(Self.strict) mix inet_service and cgroupsv2 keys")) {
                try client.updateElements([.add([.port(1), .cgroup(CgroupID(1))], to: Self.strict)], inTable: Self.table.name)
            }
        }
    }
}
