import Foundation
import LinuxNet
import TestFixtures
import Testing

@testable import Netfilter

@Suite struct PodCaptureRulesTests {
    static func withExclusions() -> PodCaptureParameters {
        var parameters = PodCaptureParameters()
        parameters.strictPorts = [8443]
        parameters.excludedPorts = [22, 9090]
        parameters.excludedNetworks = [.ipv4(NFT.IPv4Address(10, 96, 0, 0), length: 12), .ipv6(NFT.IPv6Address("fd00::")!, length: 8)]
        return parameters
    }

    @Test func theTableRedirectsEverythingButWhatIsExempt() throws {
        let table = PodCaptureRules.table(for: Self.withExclusions())
        try table.validate()
        let text = table.description
        let rules = table.chains.map { chain in (chain.name, chain.rules.map { "\($0.expressions.map(\.description).joined(separator: " "))" }) }
        #expect(rules.map(\.0) == ["output", "prerouting", "input"])
        #expect(
            rules[0].1 == [
                "meta mark & 0x00000fff == 0x00000539 return", "meta l4proto != tcp return", "ip daddr 127.0.0.0/8 return", "ip6 daddr ::1 return",
                "tcp dport @excluded_ports return", "ip daddr 10.96.0.0/12 return", "ip6 daddr fd00::/8 return", "meta l4proto tcp redirect to :15001",
            ])
        #expect(
            rules[1].1 == [
                "iifname \"lo\" return", "ip saddr 169.254.7.127 return", "ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff return",
                "tcp dport 15008 return", "tcp dport @excluded_ports return", "ip saddr 10.96.0.0/12 return", "ip6 saddr fd00::/8 return",
                "tcp dport @strict_ports return", "meta l4proto tcp redirect to :15006",
            ])
        #expect(
            rules[2].1 == [
                "iifname \"lo\" return", "ip saddr 169.254.7.127 return", "ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff return",
                "tcp dport @excluded_ports return", "ip saddr 10.96.0.0/12 return", "ip6 saddr fd00::/8 return",
                "tcp dport @strict_ports reject with tcp reset",
            ])
        #expect(text.contains("elements = { 22, 9090 }"))
        #expect(text.contains("elements = { 8443 }"))
    }
}

@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and program nftables"))
struct PodCaptureKernelTests {
    /// nft reads back exactly what the agent wrote, and the agent reads the
    /// live table as the one it wants.
    @Test func theKernelHoldsTheTableAsBuilt() throws {
        try withTestNamespace { namespace in
            let client = try NetfilterClient(namespace: namespace.namespace)
            let table = PodCaptureRules.table(for: PodCaptureRulesTests.withExclusions())
            try client.replace(table)
            let listing = try namespace.nft("list", "table", "inet", "mesh_agent")
            for rule in table.chains.flatMap(\.rules) {
                #expect(listing.contains("\t\t\(rule)\n"), "nft list shows \(rule)")
            }
            #expect(try client.drift(desired: table) == .inSync)
        }
    }
}

@Suite struct ProbeSourceNATTests {
    @Test func theNodesTableSourceNATsItsOwnConnectionsToPods() throws {
        var parameters = CaptureParameters()
        parameters.probeSourceNAT = true
        parameters.podAddressesIPv4 = [NFT.IPv4Address(10, 77, 5, 2)]
        let table = CaptureRules.table(for: parameters)
        try table.validate()
        #expect(table.sets.map(\.name) == ["strict_ports", "permissive_ports", "pod_addresses_v4", "pod_addresses_v6"])
        let chain = try #require(table.chains.first { $0.name == "postrouting" })
        #expect(chain.base == NFT.BaseChain(type: .nat, hook: .postrouting, priority: 100, policy: .accept))
        #expect(
            chain.rules.map { $0.expressions.map(\.description).joined(separator: " ") } == [
                "meta mark & 0x00000fff == 0x00000539 return",
                "fib saddr type local ip daddr @pod_addresses_v4 meta l4proto tcp snat ip to 169.254.7.127",
                "fib saddr type local ip6 daddr @pod_addresses_v6 meta l4proto tcp snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
            ])
        #expect(!CaptureRules.table(for: CaptureParameters()).chains.contains { $0.name == "postrouting" }, "no pods, no probe chain")
    }
}

@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and program nftables"))
struct ProbeSourceNATKernelTests {
    @Test func theKernelHoldsTheProbeChainAsBuilt() throws {
        try withTestNamespace { namespace in
            var parameters = CaptureParameters(workloadCgroupLevels: [2])
            parameters.probeSourceNAT = true
            parameters.podAddressesIPv4 = [NFT.IPv4Address(10, 77, 5, 2)]
            parameters.podAddressesIPv6 = [NFT.IPv6Address("fd77::5")!]
            let table = CaptureRules.table(for: parameters)
            let client = try NetfilterClient(namespace: namespace.namespace)
            try client.replace(table)
            let listing = try namespace.nft("list", "table", "inet", "mesh_agent")
            for rule in table.chains.flatMap(\.rules) {
                #expect(listing.contains("\t\t\(rule)\n"), "nft list shows \(rule)")
            }
            #expect(listing.contains("10.77.5.2"))
            #expect(try client.drift(desired: table) == .inSync)
        }
    }
}
