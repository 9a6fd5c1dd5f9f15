import CNetlink
import Foundation
import LinuxNet
import Testing

@testable import Netfilter

/// The lowering must produce exactly what `nft --debug=netlink -f FILE` prints for
/// the same rule text (the expected lines below were taken from nft 1.0.6).
@Suite struct LoweringTests {
    /// libnftnl's text for a one-rule chain, without the header line and user data.
    func lines(_ expressions: [NFT.Expression], family: NFT.Family = .inet) throws -> [String] {
        let text = try NFT.Rule(expressions, comment: "").libnftnlText(family: family)
        return text.split(separator: "\n").dropFirst().map { $0.trimmingCharacters(in: .whitespaces) }
    }

    @Test func markMasked() throws {
        #expect(
            try lines([.markMasked(mask: 0xfff, equals: 0x539)]) == [
                "[ meta load mark => reg 1 ]",
                "[ bitwise reg 1 = ( reg 1 & 0x00000fff ) ^ 0x00000000 ]",
                "[ cmp eq reg 1 0x00000539 ]",
            ])
        // `meta mark 0x539`: nft leaves the bitwise out for a full mask.
        #expect(try lines([.markMasked(mask: .max, equals: 0x539)]) == ["[ meta load mark => reg 1 ]", "[ cmp eq reg 1 0x00000539 ]"])
    }

    @Test func l4proto() throws {
        #expect(try lines([.l4proto(.tcp)]) == ["[ meta load l4proto => reg 1 ]", "[ cmp eq reg 1 0x00000006 ]"])
        #expect(try lines([.l4protoNot(.tcp)]) == ["[ meta load l4proto => reg 1 ]", "[ cmp neq reg 1 0x00000006 ]"])
        #expect(try lines([.l4proto(.udp)]) == ["[ meta load l4proto => reg 1 ]", "[ cmp eq reg 1 0x00000011 ]"])
    }

    @Test func ipv4Destinations() throws {
        let nfproto = ["[ meta load nfproto => reg 1 ]", "[ cmp eq reg 1 0x00000002 ]"]
        #expect(
            try lines([.ipv4DestinationIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8)])
                == nfproto + ["[ payload load 1b @ network header + 16 => reg 1 ]", "[ cmp eq reg 1 0x0000007f ]"])
        #expect(
            try lines([.ipv4DestinationNotIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8)])
                == nfproto + ["[ payload load 1b @ network header + 16 => reg 1 ]", "[ cmp neq reg 1 0x0000007f ]"])
        #expect(
            try lines([.ipv4DestinationIn(prefix: NFT.IPv4Address(10, 16, 0, 0), length: 12)])
                == nfproto + [
                    "[ payload load 4b @ network header + 16 => reg 1 ]",
                    "[ bitwise reg 1 = ( reg 1 & 0x0000f0ff ) ^ 0x00000000 ]",
                    "[ cmp eq reg 1 0x0000100a ]",
                ])
        #expect(
            try lines([.ipv4DestinationEquals(NFT.IPv4Address(10, 1, 2, 3))])
                == nfproto + ["[ payload load 4b @ network header + 16 => reg 1 ]", "[ cmp eq reg 1 0x0302010a ]"])
        #expect(
            try lines([.ipv4DestinationInSet("v4")])
                == nfproto + ["[ payload load 4b @ network header + 16 => reg 1 ]", "[ lookup reg 1 set v4 ]"])
        // In an ip table there is no family check.
        #expect(
            try lines([.ipv4DestinationEquals(NFT.IPv4Address(10, 1, 2, 3))], family: .ip)
                == ["[ payload load 4b @ network header + 16 => reg 1 ]", "[ cmp eq reg 1 0x0302010a ]"])
    }

    @Test func ipv6Destinations() throws {
        let nfproto = ["[ meta load nfproto => reg 1 ]", "[ cmp eq reg 1 0x0000000a ]"]
        #expect(
            try lines([.ipv6DestinationEquals(.loopback)])
                == nfproto + [
                    "[ payload load 16b @ network header + 24 => reg 1 ]",
                    "[ cmp eq reg 1 0x00000000 0x00000000 0x00000000 0x01000000 ]",
                ])
        let fd00 = try #require(NFT.IPv6Address("fd00::"))
        #expect(
            try lines([.ipv6DestinationIn(prefix: fd00, length: 8)])
                == nfproto + ["[ payload load 1b @ network header + 24 => reg 1 ]", "[ cmp eq reg 1 0x000000fd ]"])
        let fd001 = try #require(NFT.IPv6Address("fd00:1::"))
        #expect(
            try lines([.ipv6DestinationIn(prefix: fd001, length: 33)])
                == nfproto + [
                    "[ payload load 16b @ network header + 24 => reg 1 ]",
                    "[ bitwise reg 1 = ( reg 1 & 0xffffffff 0x00000080 0x00000000 0x00000000 ) ^ 0x00000000 0x00000000 0x00000000 0x00000000 ]",
                    "[ cmp eq reg 1 0x010000fd 0x00000000 0x00000000 0x00000000 ]",
                ])
    }

    @Test func socketCgroupAndRedirect() throws {
        #expect(
            try lines([.l4proto(.tcp), .socketCgroupV2(level: 2, inSet: "wl_l2"), .redirect(toPort: 15001)]) == [
                "[ meta load l4proto => reg 1 ]",
                "[ cmp eq reg 1 0x00000006 ]",
                "[ socket load cgroupv2 => reg 1 ]",
                "[ lookup reg 1 set wl_l2 ]",
                "[ immediate reg 1 0x0000993a ]",
                "[ redir proto_min reg 1 flags 0x2 ]",
            ])
        // libnftnl does not print the level; check that it is set.
        let lowered = NFT.Expression.socketCgroupV2(level: 2, inSet: "wl_l2").lowered(family: .inet)
        let expression = try #require(lowered[0].makeNftnl())
        defer { nftnl_expr_free(expression) }
        #expect(nftnl_expr_get_u32(expression, UInt16(NFTNL_EXPR_SOCKET_LEVEL)) == 2)
    }

    @Test func inboundGuardVocabulary() throws {
        #expect(
            try lines([.inputInterfaceNot("lo"), .tcpDestinationPortInSet("guarded_ports"), .rejectTCPReset]) == [
                "[ meta load iifname => reg 1 ]",
                "[ cmp neq reg 1 0x00006f6c 0x00000000 0x00000000 0x00000000 ]",
                "[ meta load l4proto => reg 1 ]",
                "[ cmp eq reg 1 0x00000006 ]",
                "[ payload load 2b @ transport header + 2 => reg 1 ]",
                "[ lookup reg 1 set guarded_ports ]",
                "[ reject type 1 code 0 ]",
            ])
        #expect(
            try lines([.tcpDestinationPortInSet("guarded_ports"), .redirect(toPort: 15006)]) == [
                "[ meta load l4proto => reg 1 ]",
                "[ cmp eq reg 1 0x00000006 ]",
                "[ payload load 2b @ transport header + 2 => reg 1 ]",
                "[ lookup reg 1 set guarded_ports ]",
                "[ immediate reg 1 0x00009e3a ]",
                "[ redir proto_min reg 1 flags 0x2 ]",
            ])
    }

    @Test func verdicts() throws {
        #expect(try lines([.return]) == ["[ immediate reg 0 return ]"])
        #expect(try lines([.accept]) == ["[ immediate reg 0 accept ]"])
        #expect(try lines([.drop]) == ["[ immediate reg 0 drop ]"])
    }

    @Test func commentIsUserDataTypeZeroWithItsNul() throws {
        let text = try NFT.Rule([.return], comment: "agent's own traffic").libnftnlText()
        #expect(text.contains(#"userdata = { \x00\x14agent's own traffic\x00 }"#))
    }

    static let everyExpression: [NFT.Expression] = [
        .markMasked(mask: 0xfff, equals: 0x539), .markMasked(mask: .max, equals: 7),
        .l4proto(.tcp), .l4protoNot(.udp),
        .ipv4DestinationIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8),
        .ipv4DestinationNotIn(prefix: NFT.IPv4Address(10, 16, 0, 0), length: 12),
        .ipv4DestinationEquals(NFT.IPv4Address(192, 0, 2, 1)),
        .ipv6DestinationEquals(.loopback),
        .ipv6DestinationNotIn(prefix: NFT.IPv6Address(high: 0xfd00_0001_0000_0000, low: 0), length: 33),
        .ipv4DestinationInSet("v4"), .ipv6DestinationInSet("v6"),
        .ipv4SourceIn(prefix: NFT.IPv4Address(169, 254, 7, 127), length: 32), .ipv4SourceIn(prefix: NFT.IPv4Address(10, 96, 0, 0), length: 12),
        .ipv6SourceIn(prefix: NFT.IPv6Address(high: 0xfd16_9254_7127_1337, low: .max), length: 128),
        .ipv6SourceIn(prefix: NFT.IPv6Address(high: 0xfd00_0000_0000_0000, low: 0), length: 8),
        .socketCgroupV2(level: 2, inSet: "wl"),
        .inputInterface("eth0"), .inputInterfaceNot("lo"),
        .tcpDestinationPort(443), .tcpDestinationPortInSet("ports"),
        .accept, .drop, .return, .redirect(toPort: 15001), .rejectTCPReset,
        .sourceAddressIsLocal, .snatIPv4(NFT.IPv4Address(169, 254, 7, 127)),
        .snatIPv6(NFT.IPv6Address(high: 0xfd16_9254_7127_1337, low: .max)),
    ]

    @Test(arguments: everyExpression)
    func decodingGivesTheExpressionBack(expression: NFT.Expression) {
        for family in [NFT.Family.inet, .ip, .ip6] {
            let lowered = expression.lowered(family: family)
            #expect(Decoder.expressions(from: lowered, family: family) == [expression])
        }
    }

    @Test(arguments: everyExpression)
    func builtMessagesParseBackToTheSameValues(expression: NFT.Expression) throws {
        for family in [NFT.Family.inet, .ip] where !(family == .ip && expression.description.hasPrefix("ip6")) {
            let rule = NFT.Rule([expression], comment: "why")
            let object = try rule.makeNftnlRule(table: "t", chain: "c", family: family)
            let message = try Wire.message(MessageType.newRule, family: family, .rule(object))
            let parsed = try ReplyParser.rule(message, family: family)
            #expect(parsed.table == "t")
            #expect(parsed.chain == "c")
            #expect(parsed.rule.comment == "why")
            #expect(parsed.rule.lowered == expression.lowered(family: family))
            #expect(parsed.rule.expressions == [expression])
        }
    }

    @Test func builtTablesChainsSetsAndElementsParseBack() throws {
        let table = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2], workloadCgroups: [2: [.init(7), .init(1 << 40)]]))
        let tableObject = try table.makeNftnlTable()
        let tableMessage = try Wire.message(MessageType.newTable, family: .inet, .table(tableObject))
        let parsedTable = try ReplyParser.table(tableMessage)
        #expect(parsedTable.name == "mesh_agent")
        #expect(parsedTable.comment == CaptureRules.tableComment)

        let chainObject = try table.chains[0].makeNftnlChain(table: table.name, family: .inet)
        let chainMessage = try Wire.message(MessageType.newChain, family: .inet, .chain(chainObject))
        let (chainTable, chain) = try ReplyParser.chain(chainMessage)
        #expect(chainTable == "mesh_agent")
        #expect(chain.base == table.chains[0].base)
        #expect(chain.comment == nil)

        let setObject = try table.sets[0].makeNftnlSet(table: table.name, family: .inet, id: 1)
        let setMessage = try Wire.message(MessageType.newSet, family: .inet, .set(setObject))
        let (setTable, set) = try ReplyParser.set(setMessage)
        #expect(setTable == "mesh_agent")
        #expect(set.keyType == .cgroupsv2)
        #expect(set.comment == "workload cgroups at depth 2 below the cgroup v2 root")

        let elements = try NFT.NamedSet.nftnlReference(name: "workloads_l2", table: "mesh_agent", family: .inet)
        let keys = table.sets[0].elements.sorted().map(\.keyBytes)
        try elements.add(keys: keys)
        let elementMessage = try Wire.message(MessageType.newSetElement, family: .inet, .setElements(elements))
        let parsedElements = try ReplyParser.setElements(elementMessage)
        #expect(parsedElements.set == "workloads_l2")
        #expect(parsedElements.keys == keys)
    }

    @Test func aWholeRuleDecodes() {
        let rule: [NFT.Expression] = [.l4proto(.tcp), .socketCgroupV2(level: 3, inSet: "workloads_l3"), .redirect(toPort: 15001)]
        let lowered = rule.flatMap { $0.lowered(family: .inet) }
        #expect(Decoder.expressions(from: lowered, family: .inet) == rule)
    }

    @Test func somethingOutsideTheVocabularyDoesNotDecode() {
        #expect(Decoder.expressions(from: [.other("counter packets 0 bytes 0")], family: .inet) == nil)
        // A load without its comparison is not a match.
        #expect(Decoder.expressions(from: [.meta(key: K.metaMark, dreg: 1)], family: .inet) == nil)
        // A different register is not what nft writes.
        #expect(Decoder.expressions(from: [.meta(key: K.metaL4proto, dreg: 2), .cmp(sreg: 2, op: 0, data: [6])], family: .inet) == nil)
    }

    @Test func kernelConstantsMatchTheHeaders() {
        #expect(K.metaMark == NFT_META_MARK.rawValue)
        #expect(K.metaIifname == NFT_META_IIFNAME.rawValue)
        #expect(K.metaNfproto == NFT_META_NFPROTO.rawValue)
        #expect(K.metaL4proto == NFT_META_L4PROTO.rawValue)
        #expect(K.cmpEq == NFT_CMP_EQ.rawValue)
        #expect(K.cmpNeq == NFT_CMP_NEQ.rawValue)
        #expect(K.payloadNetwork == NFT_PAYLOAD_NETWORK_HEADER.rawValue)
        #expect(K.payloadTransport == NFT_PAYLOAD_TRANSPORT_HEADER.rawValue)
        #expect(K.socketCgroupV2 == NFT_SOCKET_CGROUPV2.rawValue)
        #expect(K.rejectTCPReset == NFT_REJECT_TCP_RST.rawValue)
        #expect(K.verdictReturn == NFT_RETURN.rawValue)
        #expect(K.reg1 == NFT_REG_1.rawValue)
        #expect(MessageType.delSetElement == 14)
    }

    @Test func addressesParseAndPrint() throws {
        #expect(NFT.IPv4Address("127.0.0.1") == NFT.IPv4Address(127, 0, 0, 1))
        #expect(NFT.IPv4Address("127.0.0.1")?.description == "127.0.0.1")
        #expect(NFT.IPv4Address("::1") == nil)
        #expect(NFT.IPv6Address("::1") == .loopback)
        #expect(NFT.IPv6Address("fd00:1::5")?.description == "fd00:1::5")
        #expect(NFT.IPv6Address("1.2.3.4") == nil)
        #expect(NFT.SetElement(keyType: .inetService, keyBytes: [0x3a, 0x99]) == .port(15001))
        #expect(NFT.SetElement.port(15001).keyBytes == [0x3a, 0x99])
        #expect(NFT.SetElement(keyType: .cgroupsv2, keyBytes: NFT.SetElement.cgroup(.init(0x1234_5678_9abc)).keyBytes) == .cgroup(.init(0x1234_5678_9abc)))
        #expect(NFT.SetElement(keyType: .cgroupsv2, keyBytes: [1, 2, 3]) == nil)
    }
}

extension NFT.Expression: CustomTestStringConvertible {
    public var testDescription: String { description }
}

/// Builds an nf_tables message with libnftnl, as the client sends it.
enum Wire {
    static func message(_ type: UInt32, family: NFT.Family, _ payload: NftnlPayload) throws -> NetlinkMessage {
        let bytes = try NftnlEncoder().message(type, family: family.protocolNumber, flags: 0, sequence: 1, payload: payload)
        return try #require(try NetlinkMessage.split(bytes, as: NetfilterError.self).first)
    }
}
