import LinuxNet
import Testing

@testable import Netfilter

@Suite struct CaptureRulesTests {
    let agentRule = NFT.Rule(
        [.markMasked(mask: 0xfff, equals: 0x539), .return],
        comment: "the agent's own connections carry its mark and are never captured, or they would loop back to it")
    let tcpOnlyRule = NFT.Rule([.l4protoNot(.tcp), .return], comment: "only TCP is captured; other protocols pass untouched")
    let loopbackComment = "loopback is never captured: it stays on this node and reaches the agent's own listeners"

    @Test func defaultParametersGiveTheFourExclusionRulesAndEmptyPortSets() {
        let table = CaptureRules.table(for: CaptureParameters())
        #expect(table.family == .inet)
        #expect(table.name == "mesh_agent")
        #expect(table.comment == CaptureRules.tableComment)
        #expect(table.sets.map(\.name) == ["strict_ports", "permissive_ports"])
        #expect(table.sets.allSatisfy { $0.keyType == .inetService && $0.elements.isEmpty })
        #expect(table.chains.map(\.name) == ["output", "prerouting", "input"])
        let chain = table.chains[0]
        #expect(chain.name == "output")
        #expect(chain.base == NFT.BaseChain(type: .nat, hook: .output, priority: -100, policy: .accept))
        #expect(
            chain.rules == [
                agentRule,
                tcpOnlyRule,
                NFT.Rule([.ipv4DestinationIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8), .return], comment: loopbackComment),
                NFT.Rule([.ipv6DestinationEquals(.loopback), .return], comment: loopbackComment),
            ])
        #expect(throws: Never.self) { try table.validate() }
    }

    @Test func oneLevelGivesTheDocumentedTable() throws {
        let table = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2]))
        try table.validate()
        #expect(
            table.description == """
                table inet mesh_agent {
                \tcomment "mesh-agent transparent capture; owned by mesh-agent, which replaces it as a whole"
                \tset workloads_l2 {
                \t\ttype cgroupsv2
                \t\tcomment "workload cgroups at depth 2 below the cgroup v2 root"
                \t}

                \tset strict_ports {
                \t\ttype inet_service
                \t\tcomment "workload ports that accept only mutual TLS (PeerAuthentication STRICT)"
                \t}

                \tset permissive_ports {
                \t\ttype inet_service
                \t\tcomment "workload ports that also accept plaintext from outside the node (PERMISSIVE)"
                \t}

                \tchain output {
                \t\ttype nat hook output priority -100; policy accept;
                \t\tmeta mark & 0x00000fff == 0x00000539 return comment "the agent's own connections carry its mark and are never captured, or they would loop back to it"
                \t\tmeta l4proto != tcp return comment "only TCP is captured; other protocols pass untouched"
                \t\tip daddr 127.0.0.0/8 return comment "loopback is never captured: it stays on this node and reaches the agent's own listeners"
                \t\tip6 daddr ::1 return comment "loopback is never captured: it stays on this node and reaches the agent's own listeners"
                \t\tmeta l4proto tcp socket cgroupv2 level 2 @workloads_l2 redirect to :15001 comment "TCP from workload cgroups at depth 2 goes to the agent's outbound listener"
                \t}

                \tchain prerouting {
                \t\ttype nat hook prerouting priority -100; policy accept;
                \t\tiifname "lo" return comment "traffic from this node itself (the agent's own dials, same-node workloads) comes in on lo and is never guarded"
                \t\ttcp dport @permissive_ports redirect to :15006 comment "plaintext from outside to a PERMISSIVE workload port goes to the inbound-plaintext listener, as an unauthenticated source"
                \t}

                \tchain input {
                \t\ttype filter hook input priority 0; policy accept;
                \t\tiifname "lo" return comment "traffic from this node itself (the agent's own dials, same-node workloads) comes in on lo and is never guarded"
                \t\ttcp dport @strict_ports reject with tcp reset comment "plaintext from outside to a STRICT workload port is refused; peers must come through the agent's mTLS tunnel"
                \t}
                }
                """)
    }

    @Test func severalLevelsGiveOneSetAndOneRulePerLevelInAscendingOrder() throws {
        let parameters = CaptureParameters(
            workloadCgroupLevels: [3, 1, 3],
            workloadCgroups: [1: [CgroupID(10), CgroupID(11)], 3: [CgroupID(30)], 5: [CgroupID(50)]])
        let table = CaptureRules.table(for: parameters)
        try table.validate()
        #expect(table.sets.map(\.name) == ["workloads_l1", "workloads_l3", "strict_ports", "permissive_ports"])
        #expect(table.sets.prefix(2).allSatisfy { $0.keyType == .cgroupsv2 })
        #expect(table.set(named: "workloads_l1")?.elements == [.cgroup(CgroupID(10)), .cgroup(CgroupID(11))])
        #expect(table.set(named: "workloads_l3")?.elements == [.cgroup(CgroupID(30))])
        let rules = table.chains[0].rules
        #expect(rules.count == 6)
        #expect(rules[4].expressions == [.l4proto(.tcp), .socketCgroupV2(level: 1, inSet: "workloads_l1"), .redirect(toPort: 15001)])
        #expect(rules[5].expressions == [.l4proto(.tcp), .socketCgroupV2(level: 3, inSet: "workloads_l3"), .redirect(toPort: 15001)])
        #expect(rules[5].comment.contains("depth 3"))
        #expect(CaptureRules.workloadSetName(level: 7) == "workloads_l7")
    }

    @Test func noLevelsGiveOnlyTheExclusionRules() {
        let table = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [], workloadCgroups: [2: [CgroupID(5)]]))
        #expect(!table.sets.contains { $0.keyType == .cgroupsv2 })
        #expect(table.chains[0].rules.count == 4)
        #expect(!table.chains[0].rules.contains { $0.expressions.contains(.redirect(toPort: 15001)) })
    }

    @Test func customMarkPortAndTableName() throws {
        let table = CaptureRules.table(
            for: CaptureParameters(tableName: "mesh_test", mark: 0x1_0042, markMask: 0xff, outboundPort: 16001, workloadCgroupLevels: [2]))
        try table.validate()
        #expect(table.name == "mesh_test")
        let rules = table.chains[0].rules
        // Bits of the mark outside the mask can never match, so they are dropped.
        #expect(rules[0].expressions == [.markMasked(mask: 0xff, equals: 0x42), .return])
        #expect(rules[0].description.hasPrefix("meta mark & 0x000000ff == 0x00000042 return"))
        #expect(rules[4].expressions.last == .redirect(toPort: 16001))
        #expect(rules[4].description.contains("redirect to :16001"))
    }

    @Test func everyRuleHasACommentThatFitsNft() {
        let table = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: Array(0...12)))
        for rule in table.chains.flatMap(\.rules) {
            #expect(!rule.comment.isEmpty)
            #expect(rule.comment.utf8.count <= NFT.Table.maxCommentLength)
        }
    }

    @Test func workloadPortsAreElementsOfTheirModesSet() throws {
        let table = CaptureRules.table(for: CaptureParameters(strictPorts: [8443, 9090, 8443], permissivePorts: [8080]))
        try table.validate()
        #expect(table.set(named: CaptureRules.strictPortSetName)?.elements == [.port(8443), .port(9090)])
        #expect(table.set(named: CaptureRules.permissivePortSetName)?.elements == [.port(8080)])
        #expect(table.description.contains("\t\telements = { 8443, 9090 }\n"))
        #expect(CaptureRules.strictPortSet(ports: [1]) == NFT.NamedSet(
            name: "strict_ports", keyType: .inetService,
            comment: "workload ports that accept only mutual TLS (PeerAuthentication STRICT)", elements: [.port(1)]))
        #expect(CaptureRules.permissivePortSet().elements.isEmpty)
        // Ports are data: the chains do not change with them.
        let bare = CaptureRules.table(for: CaptureParameters())
        #expect(table.chains == bare.chains)
    }

    @Test func theInboundGuardChains() {
        let table = CaptureRules.table(for: CaptureParameters())
        let prerouting = table.chain(named: CaptureRules.preroutingChainName)
        #expect(prerouting?.base == NFT.BaseChain(type: .nat, hook: .prerouting, priority: -100, policy: .accept))
        #expect(prerouting?.rules.map(\.expressions) == [
            [.inputInterface("lo"), .return],
            [.tcpDestinationPortInSet("permissive_ports"), .redirect(toPort: 15006)],
        ])
        let input = table.chain(named: CaptureRules.inputChainName)
        #expect(input?.base == NFT.BaseChain(type: .filter, hook: .input, priority: 0, policy: .accept))
        #expect(input?.rules.map(\.expressions) == [
            [.inputInterface("lo"), .return],
            [.tcpDestinationPortInSet("strict_ports"), .rejectTCPReset],
        ])
    }

    @Test func aNonDefaultInboundPlaintextPortIsTheRedirectTarget() throws {
        let table = CaptureRules.table(for: CaptureParameters(inboundPlaintextPort: 16006, workloadCgroupLevels: [2]))
        try table.validate()
        let rule = try #require(table.chain(named: "prerouting")?.rules.last)
        #expect(rule.expressions.last == .redirect(toPort: 16006))
        #expect(rule.description.hasPrefix("tcp dport @permissive_ports redirect to :16006 comment"))
        #expect(!table.description.contains("15006"))
        // The outbound listener is a separate port.
        #expect(table.chain(named: "output")?.rules.last?.expressions.last == .redirect(toPort: 15001))
    }
}
