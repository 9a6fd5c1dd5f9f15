import Foundation
import LinuxNet
import TestFixtures
import Testing

@testable import Netfilter

/// Tests against the real kernel. Each test makes its own network namespace
/// (`ma-nft-<random>`), works only inside it, and deletes it even when it fails.
@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and program nftables"))
struct KernelTests {
    let desired = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2]))

    @Test func replaceInstallsTheTable() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            let table = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2, 3]))
            try client.replace(table)
            let listing = try namespace.nft("list", "table", "inet", "mesh_agent")
            #expect(listing.contains("set workloads_l2 {"))
            #expect(listing.contains("set workloads_l3 {"))
            #expect(listing.contains(#"comment "workload cgroups at depth 2 below the cgroup v2 root""#))
            #expect(listing.contains("type nat hook output priority -100; policy accept;"))
            for rule in table.chains.flatMap(\.rules) {
                #expect(listing.contains("\t\t\(rule)\n"), "nft list shows \(rule)")
            }
            let live = try #require(try client.liveTable(named: "mesh_agent"))
            #expect(live.table == table)
            #expect(try client.drift(desired: table) == .inSync)
            // The table is in that namespace only.
            try withTestNamespace { other in
                let tables = try other.nft("list", "tables")
                #expect(!tables.contains("mesh_agent"))
            }
        }
    }

    @Test func replaceOverAStaleTableLeavesOnlyTheDesiredOne() throws {
        try withTestNamespace { namespace in
            try namespace.nftLoad(
                """
                table inet mesh_agent {
                    set old_set { type inet_service; elements = { 80, 443 }; }
                    set workloads_l2 { type ipv4_addr; }
                    chain old_input {
                        type filter hook input priority 0; policy accept;
                        tcp dport @old_set drop
                    }
                    chain output {
                        type nat hook output priority -100; policy accept;
                        meta l4proto tcp redirect to :9999
                    }
                }
                """)
            let client = try NetfilterClient(namespace: namespace.namespace)
            guard case .differs(let lines) = try client.drift(desired: desired) else {
                Issue.record("the stale table should differ")
                return
            }
            #expect(lines.contains("set workloads_l2: key type is ipv4_addr, want cgroupsv2"))
            #expect(lines.contains("set old_set: not in the desired table"))
            #expect(lines.contains("chain old_input: not in the desired table"))
            #expect(lines.contains("chain input: missing"))
            #expect(lines.contains { $0.hasPrefix("chain output: unexpected rule at position 1") && $0.contains("meta l4proto tcp redirect to :9999") })

            try client.replace(desired)
            let listing = try namespace.nft("list", "table", "inet", "mesh_agent")
            #expect(!listing.contains("old_set"))
            #expect(!listing.contains("chain old_input"))
            #expect(!listing.contains("9999"))
            #expect(try client.drift(desired: desired) == .inSync)
            // Replacing again with the same table is a no-op in effect.
            try client.replace(desired)
            #expect(try client.drift(desired: desired) == .inSync)
        }
    }

    @Test func aRejectedReplaceChangesNothing() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            try client.replace(desired)
            let before = try namespace.nft("list", "table", "inet", "mesh_agent")
            var broken = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2, 4]))
            // The kernel only allows route chains in the output hook.
            broken.chains.append(NFT.Chain(name: "bad", base: NFT.BaseChain(type: .route, hook: .input, priority: 0)))
            do {
                try client.replace(broken)
                Issue.record("the kernel should refuse a route chain in the input hook")
            } catch let error as NetfilterError {
                guard case .rejected(let operation, let code, _) = error else {
                    Issue.record("unexpected error \(error)")
                    return
                }
                #expect(operation == "creating chain bad in table inet mesh_agent")
                #expect(code == EOPNOTSUPP)
                #expect(error.description.contains("nothing was changed"))
            }
            #expect(try namespace.nft("list", "table", "inet", "mesh_agent") == before)
            #expect(try client.drift(desired: desired) == .inSync)
        }
    }

    @Test func elementsAreAddedAndRemovedIncrementally() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            try client.replace(desired)
            try CgroupFixture.withRealIDs(count: 3) { ids in
            let set = CaptureRules.workloadSetName(level: 2)
            try client.addElements(ids.map(NFT.SetElement.cgroup), toSet: set, inTable: "mesh_agent")
            #expect(try client.liveTable(named: "mesh_agent")?.set(named: set)?.elements == Set(ids.map(NFT.SetElement.cgroup)))
            // Adding what is there already is not an error.
            try client.addElements([.cgroup(ids[0])], toSet: set, inTable: "mesh_agent")
            // Removing an element that is not there is not an error either.
            let absent = CgroupID((ids.map(\.rawValue).max() ?? 0) + 1_000_000)
            try client.removeElements([.cgroup(ids[1]), .cgroup(absent)], fromSet: set, inTable: "mesh_agent")
            let remaining = Set([ids[0], ids[2]].map(NFT.SetElement.cgroup))
            #expect(try client.liveTable(named: "mesh_agent")?.set(named: set)?.elements == remaining)
            try client.removeElements([.cgroup(absent)], fromSet: set, inTable: "mesh_agent")
            try client.addElements([], toSet: set, inTable: "mesh_agent")
            #expect(try client.liveTable(named: "mesh_agent")?.set(named: set)?.elements == remaining)

            // The desired table with these elements is in sync; the bare one is not.
            var withElements = desired
            withElements.sets[0].elements = remaining
            #expect(try client.drift(desired: withElements) == .inSync)
            let drift = try client.drift(desired: desired)
            #expect(drift == .differs(["set \(set): 2 unexpected elements: \(remaining.sorted().map(\.description).joined(separator: ", "))"]))

            // A missing set is an error that names it; so is a key of the wrong size.
            #expect {
                try client.removeElements([.cgroup(ids[0])], fromSet: "workloads_l9", inTable: "mesh_agent")
            } throws: { error in
                (error as? NetfilterError)?.errno == ENOENT && "\(error)".contains("set workloads_l9")
            }
            #expect(throws: NetfilterError.self) { try client.addElements([.port(80)], toSet: set, inTable: "mesh_agent") }
            #expect(throws: NetfilterError.self) { try client.removeElements([.port(80)], fromSet: set, inTable: "mesh_agent") }
            #expect(throws: NetfilterError.self) { try client.addElements([.port(80), .cgroup(ids[0])], toSet: set, inTable: "mesh_agent") }
            }
        }
    }

    @Test func aMissingNamespaceIsReported() {
        #expect(throws: NetworkNamespaceError.self) {
            _ = try NetfilterClient(namespace: NetworkNamespace(path: "/run/netns/ma-nft-does-not-exist"))
        }
    }

    @Test func removalFallsBackToReadingTheSetOnKernelsWithoutDestroy() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            client.useDestroySetElement(false)
            try client.replace(CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2], workloadCgroups: [2: [CgroupID(5), CgroupID(6)]])))
            try client.removeElements([.cgroup(CgroupID(5)), .cgroup(CgroupID(7))], fromSet: "workloads_l2", inTable: "mesh_agent")
            try client.removeElements([.cgroup(CgroupID(7))], fromSet: "workloads_l2", inTable: "mesh_agent")
            #expect(try client.liveTable(named: "mesh_agent")?.set(named: "workloads_l2")?.elements == [.cgroup(CgroupID(6))])
            #expect(throws: NetfilterError.self) { try client.removeElements([.cgroup(CgroupID(6))], fromSet: "nope", inTable: "mesh_agent") }
            #expect(throws: NetfilterError.self) { try client.removeElements([.port(1)], fromSet: "workloads_l2", inTable: "mesh_agent") }
        }
    }

    @Test func theInboundVocabularyRoundTripsThroughTheKernel() throws {
        let guardComment = "inbound connections to guarded workload ports must come through the agent"
        let inbound = NFT.Table(
            family: .inet, name: "mesh_agent", comment: "test",
            sets: [
                NFT.NamedSet(name: "guarded_ports", keyType: .inetService, comment: "guarded workload ports", elements: [.port(8080), .port(443)]),
                NFT.NamedSet(name: "excluded_v4", keyType: .ipv4Address, elements: [.ipv4(NFT.IPv4Address(10, 0, 0, 1))]),
                NFT.NamedSet(name: "excluded_v6", keyType: .ipv6Address, elements: [.ipv6(.loopback)]),
            ],
            chains: [
                NFT.Chain(
                    name: "input", base: NFT.BaseChain(type: .filter, hook: .input, priority: NFT.Priority.filter),
                    rules: [NFT.Rule([.inputInterfaceNot("lo"), .tcpDestinationPortInSet("guarded_ports"), .rejectTCPReset], comment: guardComment)]),
                NFT.Chain(
                    name: "prerouting", base: NFT.BaseChain(type: .nat, hook: .prerouting, priority: NFT.Priority.dstnat),
                    rules: [
                        NFT.Rule([.ipv4DestinationInSet("excluded_v4"), .return], comment: "excluded destinations"),
                        NFT.Rule([.ipv6DestinationInSet("excluded_v6"), .return], comment: "excluded destinations"),
                        NFT.Rule([.ipv4DestinationNotIn(prefix: NFT.IPv4Address(10, 16, 0, 0), length: 12), .return], comment: "only the pod range"),
                        NFT.Rule([.inputInterface("eth0"), .tcpDestinationPort(80), .drop], comment: "not on eth0"),
                        NFT.Rule([.tcpDestinationPortInSet("guarded_ports"), .redirect(toPort: 15006)], comment: "permissive: to the inbound listener"),
                    ]),
                NFT.Chain(name: "helper", comment: "a regular chain", rules: [NFT.Rule([.markMasked(mask: .max, equals: 7), .accept], comment: "x")]),
            ])
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            try client.replace(inbound)
            #expect(try client.drift(desired: inbound) == .inSync)
            #expect(try client.liveTable(named: "mesh_agent")?.table == inbound)
            let listing = try namespace.nft("list", "table", "inet", "mesh_agent")
            for rule in inbound.chains.flatMap(\.rules) {
                #expect(listing.contains("\t\t\(rule)\n"), "nft list shows \(rule)")
            }
            #expect(listing.contains(#"comment "a regular chain""#))

            // An ip table: no family checks in the rules.
            let ipTable = NFT.Table(
                family: .ip, name: "mesh_agent_ip",
                chains: [
                    NFT.Chain(
                        name: "output", base: NFT.BaseChain(type: .nat, hook: .output, priority: -100),
                        rules: [NFT.Rule([.ipv4DestinationIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8), .return], comment: "loopback")])
                ])
            try client.replace(ipTable)
            #expect(try client.drift(desired: ipTable) == .inSync)
            #expect(try namespace.nft("list", "table", "ip", "mesh_agent_ip").contains(#"ip daddr 127.0.0.0/8 return comment "loopback""#))
            #expect(try client.delete(tableNamed: "mesh_agent_ip", family: .ip))
        }
    }

    @Test func elementsInTheReplaceAreInstalledToo() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            try CgroupFixture.withRealIDs(count: 2) { ids in
            // More than one netlink message's worth of elements.
            let many = (1...2500).map { CgroupID(UInt64($0) + 10_000_000) }
            let table = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [1, 2], workloadCgroups: [1: ids, 2: many]))
            try client.replace(table)
            let live = try #require(try client.liveTable(named: "mesh_agent"))
            #expect(live.set(named: "workloads_l1")?.elements == Set(ids.map(NFT.SetElement.cgroup)))
            #expect(live.set(named: "workloads_l2")?.elements.count == 2500)
            #expect(try client.drift(desired: table) == .inSync)
            }
        }
    }

    @Test func driftFindsChangesMadeBehindTheAgentsBack() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            #expect(try client.drift(desired: desired) == .missing)
            #expect(try client.liveTable(named: "mesh_agent") == nil)
            try client.replace(desired)
            #expect(try client.drift(desired: desired) == .inSync)

            let live = try #require(try client.liveTable(named: "mesh_agent"))
            let loopback = try #require(live.chain(named: "output")?.rules[2])
            try namespace.nft("delete", "rule", "inet", "mesh_agent", "output", "handle", String(loopback.handle))
            try namespace.nft("add", "rule", "inet", "mesh_agent", "output", "counter", "accept")
            guard case .differs(let lines) = try client.drift(desired: desired) else {
                Issue.record("a deleted rule should be drift")
                return
            }
            #expect(lines.count == 2)
            #expect(lines.first == "chain output: rule 3 is missing: \(desired.chains[0].rules[2])")
            #expect(lines.last?.hasPrefix("chain output: unexpected rule at position 5 (handle ") == true)
            #expect(lines.last?.contains("[ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ]") == true)
            #expect(try client.liveTable(named: "mesh_agent")?.table == nil)

            try namespace.nft("delete", "table", "inet", "mesh_agent")
            #expect(try client.drift(desired: desired) == .missing)
        }
    }

    @Test func deleteReportsWhetherTheTableExisted() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            #expect(try client.delete(tableNamed: "mesh_agent") == false)
            try client.replace(desired)
            #expect(try client.delete(tableNamed: "mesh_agent") == true)
            #expect(try !namespace.nft("list", "tables").contains("mesh_agent"))
            #expect(try client.delete(tableNamed: "mesh_agent") == false)
            let generation = try client.generation()
            try client.replace(desired)
            #expect(try client.generation() != generation)
        }
    }

    @Test func theReferenceFileIsWhatTheCodeInstalls() throws {
        let file = repositoryRoot.appendingPathComponent("nft/mesh-agent.nft").path
        try withTestNamespace { namespace in
            try namespace.nft("-c", "-f", file)
            let client = try NetfilterClient(namespace: namespace.namespace)
            try client.replace(desired)
            let fromCode = try namespace.nft("list", "table", "inet", "mesh_agent")
            #expect(try client.delete(tableNamed: "mesh_agent"))

            try namespace.nft("-f", file)
            let fromFile = try namespace.nft("list", "table", "inet", "mesh_agent")
            #expect(fromCode == fromFile)
            #expect(fromFile.hasPrefix("table inet mesh_agent {"))
            // And nft's own encoding of the file compares equal to the desired table.
            #expect(try client.drift(desired: desired) == .inSync)
            #expect(try client.liveTable(named: "mesh_agent")?.table == desired)
        }
    }
}

// MARK: - Fixtures

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

struct TestNamespace: Sendable {
    let name: String
    var path: String { "/run/netns/\(name)" }
    var namespace: NetworkNamespace { NetworkNamespace(path: path) }

    /// Runs nft inside the namespace (nsenter keeps the host's /sys, unlike
    /// `ip netns exec`) and returns its output; throws if it fails.
    @discardableResult
    func nft(_ arguments: String...) throws -> String {
        let result = try Shell.run(["nsenter", "--net=\(path)", "nft"] + arguments)
        guard result.status == 0 else { throw ShellError.failed("nft \(arguments.joined(separator: " ")): \(result.err)") }
        return result.out
    }

    func nftLoad(_ ruleset: String) throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString).nft")
        try ruleset.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        try nft("-f", file.path)
    }
}

func withTestNamespace(_ body: (TestNamespace) throws -> Void) throws {
    let name = "ma-nft-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    let created = try Shell.run(["ip", "netns", "add", name])
    guard created.status == 0 else { throw ShellError.failed("ip netns add \(name): \(created.err)") }
    defer { _ = try? Shell.run(["ip", "netns", "delete", name]) }
    try body(TestNamespace(name: name))
}

enum ShellError: Error, CustomStringConvertible {
    case failed(String)
    var description: String {
        switch self {
        case .failed(let text): return text
        }
    }
}

enum Shell {
    static func executable(_ name: String) -> String {
        for directory in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
            return "\(directory)/\(name)"
        }
        return name
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable(arguments[0]))
        process.arguments = Array(arguments.dropFirst())
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let error = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: error, as: UTF8.self))
    }
}

/// Real cgroup ids: the inode numbers of the cgroup v2 root and its subdirectories,
/// with the cgroup v2 mount found in /proc/self/mountinfo.
enum CgroupFixture {
    static func mountPoint() throws -> String {
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        for line in mountinfo.split(separator: "\n") {
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2, halves[1].split(separator: " ").first == "cgroup2" else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count > 4 { return String(fields[4]) }
        }
        throw ShellError.failed("no cgroup2 mount in /proc/self/mountinfo")
    }

    static func id(of path: String) throws -> CgroupID {
        var info = stat()
        guard stat(path, &info) == 0 else { throw ShellError.failed("stat \(path): \(errno)") }
        return CgroupID(UInt64(info.st_ino))
    }

    /// Calls `body` with `count` real cgroup ids: the cgroup v2 root's, and those of
    /// temporary child cgroups made for the test (removed afterwards).
    static func withRealIDs(count: Int, _ body: ([CgroupID]) throws -> Void) throws {
        let root = try mountPoint()
        var ids = [try id(of: root)]
        var made: [String] = []
        defer {
            for directory in made.reversed() { rmdir(directory) }
        }
        while ids.count < count {
            let directory = "\(root)/ma-nft-test-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            guard mkdir(directory, 0o755) == 0 else { throw ShellError.failed("mkdir \(directory): errno \(errno)") }
            made.append(directory)
            ids.append(try id(of: directory))
        }
        try body(ids)
    }
}
