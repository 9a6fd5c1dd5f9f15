import CNetlink
import Glibc
import LinuxNet
import TestFixtures
import Testing

@testable import Netfilter

@Suite struct ValidationTests {
    func table(_ rules: [NFT.Rule], sets: [NFT.NamedSet] = []) -> NFT.Table {
        NFT.Table(name: "t", sets: sets, chains: [NFT.Chain(name: "c", base: .init(type: .filter, hook: .input, priority: 0), rules: rules)])
    }

    func reason(_ table: NFT.Table) -> String? {
        do {
            try table.validate()
            return nil
        } catch {
            return error.description
        }
    }

    @Test func refusesWhatTheKernelWouldRefuseHalfWay() {
        #expect(reason(table([NFT.Rule([.return], comment: "ok")])) == nil)
        #expect(reason(table([NFT.Rule([.return], comment: "")]))?.contains("has no comment") == true)
        #expect(reason(table([NFT.Rule([.return], comment: String(repeating: "x", count: 129))]))?.contains("longer than 128") == true)
        #expect(reason(table([NFT.Rule([], comment: "empty")]))?.contains("expressions") == true)
        #expect(reason(table([NFT.Rule([.socketCgroupV2(level: 2, inSet: "nope"), .accept], comment: "x")]))?.contains("does not declare") == true)
        #expect(
            reason(table([NFT.Rule([.tcpDestinationPortInSet("s"), .accept], comment: "x")], sets: [NFT.NamedSet(name: "s", keyType: .cgroupsv2)]))?
                .contains("inet_service") == true)
        #expect(reason(table([NFT.Rule([.ipv4DestinationIn(prefix: NFT.IPv4Address(10, 0, 0, 0), length: 33), .accept], comment: "x")])) != nil)
        #expect(reason(table([NFT.Rule([.inputInterface("a-very-long-interface-name"), .accept], comment: "x")])) != nil)
        #expect(reason(table([], sets: [NFT.NamedSet(name: "s", keyType: .cgroupsv2, elements: [.port(1)])]))?.contains("cannot hold") == true)
        #expect(reason(NFT.Table(name: "")) != nil)
        #expect(reason(NFT.Table(name: "t", chains: [NFT.Chain(name: "c"), NFT.Chain(name: "c")]))?.contains("twice") == true)
        var ip6 = table([NFT.Rule([.ipv4DestinationInSet("v4"), .accept], comment: "x")], sets: [NFT.NamedSet(name: "v4", keyType: .ipv4Address)])
        ip6.family = .ip6
        #expect(reason(ip6)?.contains("IPv4") == true)
    }
}

@Suite struct ErrorTextTests {
    @Test func errorsSayWhatToDo() {
        #expect(NetfilterError.unavailable(detail: "x").description.hasPrefix("nf_tables is not available in this kernel: load it with 'modprobe nf_tables'"))
        #expect(NetfilterError.permissionDenied(operation: "creating table inet t").description.contains("needs CAP_NET_ADMIN"))
        let rejected = NetfilterError.rejected(operation: #"adding rule 3 ("loopback") to chain output in table inet t"#, errno: EINVAL, kernelMessage: nil)
        #expect(rejected.description.contains(#"adding rule 3 ("loopback") to chain output"#))
        #expect(rejected.description.contains("errno 22"))
        #expect(rejected.errno == EINVAL)
    }
}

@Suite struct DriftTests {
    let desired = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2], workloadCgroups: [2: [CgroupID(100), CgroupID(200)]]))

    /// What the client would read back if the kernel held exactly `table`.
    func live(_ table: NFT.Table) -> LiveTable {
        var handle: UInt64 = 1
        func next() -> UInt64 {
            handle += 1
            return handle
        }
        return LiveTable(
            family: table.family, name: table.name, handle: next(), comment: table.comment,
            sets: table.sets.map {
                LiveSet(
                    name: $0.name, handle: next(), keyTypeID: $0.keyType.typeID, keyLength: UInt32($0.keyType.keyLength), comment: $0.comment,
                    elementKeys: Set($0.elements.map(\.keyBytes)))
            },
            chains: table.chains.map { chain in
                LiveChain(
                    name: chain.name, handle: next(), type: chain.base?.type.rawValue, hookNumber: chain.base?.hook.number,
                    priority: chain.base?.priority, policy: chain.base?.policy.verdict, comment: chain.comment,
                    rules: chain.rules.map { rule in
                        let lowered = rule.lowered(family: table.family)
                        return LiveRule(handle: next(), comment: rule.comment, lowered: lowered, family: table.family)
                    })
            })
    }

    @Test func identicalTablesAreInSync() {
        #expect(Drift.between(desired: desired, live: live(desired)) == .inSync)
        #expect(live(desired).table == desired)
    }

    @Test func aMissingRuleIsNamedByPositionAndText() {
        var changed = live(desired)
        changed.chains[0].rules.remove(at: 2)
        #expect(
            Drift.between(desired: desired, live: changed)
                == .differs([
                    #"chain output: rule 3 is missing: ip daddr 127.0.0.0/8 return comment "loopback is never captured: it stays on this node and reaches the agent's own listeners""#
                ]))
    }

    @Test func unexpectedRulesShowNftSyntaxOrLibnftnlText() {
        var changed = live(desired)
        let extra = NFT.Rule([.tcpDestinationPort(22), .accept], comment: "")
        changed.chains[0].rules.append(
            LiveRule(handle: 99, comment: nil, lowered: extra.lowered(family: .inet), family: .inet))
        changed.chains[0].rules.append(
            LiveRule(handle: 100, comment: nil, lowered: [.other("counter pkts 0 bytes 0")], family: .inet))
        #expect(
            Drift.between(desired: desired, live: changed)
                == .differs([
                    "chain output: unexpected rule at position 6 (handle 99): tcp dport 22 accept",
                    "chain output: unexpected rule at position 7 (handle 100): [ counter pkts 0 bytes 0 ]",
                ]))
    }

    @Test func aChangedRuleIsOneMissingAndOneUnexpected() {
        var other = desired
        other.chains[0].rules[0] = NFT.Rule([.markMasked(mask: 0xff, equals: 0x39), .return], comment: desired.chains[0].rules[0].comment)
        guard case .differs(let lines) = Drift.between(desired: desired, live: live(other)) else {
            Issue.record("expected a difference")
            return
        }
        #expect(lines.count == 2)
        #expect(lines[0].hasPrefix("chain output: rule 1 is missing: meta mark & 0x00000fff == 0x00000539 return"))
        #expect(lines[1].hasPrefix("chain output: unexpected rule at position 1 (handle "))
        #expect(lines[1].contains("meta mark & 0x000000ff == 0x00000039 return"))
    }

    @Test func reorderedRulesAreReportedAsSuch() {
        var changed = live(desired)
        changed.chains[0].rules.swapAt(0, 1)
        #expect(Drift.between(desired: desired, live: changed) == .differs(["chain output: the rules are in a different order than desired"]))
    }

    @Test func setsAndElementsCompareAsSetsOfValues() {
        var changed = live(desired)
        changed.sets[0].elementKeys = Set([CgroupID(200), CgroupID(300)].map { NFT.SetElement.cgroup($0).keyBytes })
        changed.sets.append(LiveSet(name: "stale", keyTypeID: 13, keyLength: 2))
        changed.comment = nil
        #expect(
            Drift.between(desired: desired, live: changed)
                == .differs([
                    #"table: comment is none, want "mesh-agent transparent capture; owned by mesh-agent, which replaces it as a whole""#,
                    "set workloads_l2: 1 element missing: 100",
                    "set workloads_l2: 1 unexpected element: 300",
                    "set stale: not in the desired table",
                ]))
        var retyped = live(desired)
        retyped.sets[0].keyTypeID = 7
        retyped.sets[0].keyLength = 4
        #expect(Drift.between(desired: desired, live: retyped) == .differs(["set workloads_l2: key type is ipv4_addr, want cgroupsv2"]))
    }

    @Test func manyElementsAreAbbreviated() {
        var changed = live(desired)
        changed.sets[0].elementKeys = Set((1...25).map { NFT.SetElement.cgroup(CgroupID(UInt64($0) + 1000)).keyBytes })
            .union(desired.sets[0].elements.map(\.keyBytes))
        #expect(
            Drift.between(desired: desired, live: changed)
                == .differs(["set workloads_l2: 25 unexpected elements: 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010 and 15 more"]))
    }

    @Test func chainsAreComparedByHookAndPresence() {
        var changed = live(desired)
        changed.chains[0].hookNumber = 1
        changed.chains[0].type = "filter"
        changed.chains.append(LiveChain(name: "leftover"))
        #expect(
            Drift.between(desired: desired, live: changed)
                == .differs([
                    #"chain output: is "type filter hook input priority -100; policy accept;", want "type nat hook output priority -100; policy accept;""#,
                    "chain leftover: not in the desired table",
                ]))
        var empty = live(desired)
        empty.chains = []
        empty.sets = []
        #expect(
            Drift.between(desired: desired, live: empty)
                == .differs([
                    "set workloads_l2: missing", "set strict_ports: missing", "set permissive_ports: missing",
                    "chain output: missing", "chain prerouting: missing", "chain input: missing",
                ]))
    }
}

@Suite struct ReplyParsingTests {
    func header(length: UInt32, type: UInt16 = 0x0a06, flags: UInt16 = 0, sequence: UInt32 = 1) -> [UInt8] {
        hostBytes(length) + hostBytes(type) + hostBytes(flags) + hostBytes(sequence) + hostBytes(UInt32(0))
    }

    func parse(_ bytes: [UInt8]) throws(NetfilterError) -> [NetlinkMessage] {
        try NetlinkMessage.split(bytes, as: NetfilterError.self)
    }

    @Test func truncatedOrInconsistentDatagramsThrow() throws {
        #expect(try parse([]).isEmpty)
        #expect(throws: NetfilterError.self) { try parse([1, 2, 3]) }
        #expect(throws: NetfilterError.self) { try parse(header(length: 8)) }
        #expect(throws: NetfilterError.self) { try parse(header(length: 64)) }
        #expect(throws: NetfilterError.self) { try parse(header(length: 16) + [0, 0]) }
        let two = try parse(header(length: 20) + [1, 0, 0, 0] + header(length: 16, sequence: 9))
        #expect(two.count == 2)
        #expect(two[1].sequence == 9)
    }

    @Test func errorMessagesAreReadWithinBounds() throws {
        let short = try parse(header(length: 18, type: 2) + [0xff, 0xff, 0, 0])
        #expect(throws: NetfilterError.self) { try short[0].acknowledgement(as: NetfilterError.self) }
        // -ENOENT, the original header, then an extended-ack message attribute.
        let text = Array("no such set".utf8) + [0]
        let attribute = hostBytes(UInt16(4 + text.count)) + hostBytes(UInt16(1)) + text + [0, 0, 0, 0].prefix((4 - (4 + text.count) % 4) % 4)
        let body = hostBytes(Int32(-ENOENT)) + header(length: 16) + attribute
        let message = try parse(header(length: UInt32(16 + body.count), type: 2, flags: 0x300) + body)
        let answer = try message[0].acknowledgement(as: NetfilterError.self)
        #expect(answer.errno == ENOENT)
        #expect(answer.message == "no such set")
        // An attribute claiming more bytes than there are is ignored, not read.
        let bad = hostBytes(Int32(-EINVAL)) + header(length: 16) + hostBytes(UInt16(200)) + hostBytes(UInt16(1))
        let badMessage = try parse(header(length: UInt32(16 + bad.count), type: 2, flags: 0x300) + bad)
        let badAnswer = try badMessage[0].acknowledgement(as: NetfilterError.self)
        #expect(badAnswer.message == nil)
    }

    @Test func garbageNeverCrashesTheParsers() throws {
        let seed = SeededRandom.seed(default: 0x4E_F7)
        var generator = SeededRandom(seed: seed)
        var parsedSome = 0
        for round in 0..<20000 {
            let payloadLength = Int.random(in: 0...120, using: &generator)
            var payload = (0..<payloadLength).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Plausible attribute headers make the parser go deeper.
            var offset = 4
            while round % 3 != 0, offset + 4 <= payload.count {
                let length = Int.random(in: 4...max(4, min(40, payload.count - offset)), using: &generator)
                payload[offset] = UInt8(length)
                payload[offset + 1] = 0
                payload[offset + 2] = UInt8.random(in: 1...8, using: &generator)
                payload[offset + 3] = Bool.random(using: &generator) ? 0x80 : 0
                offset += (length + 3) & ~3
            }
            let type = [MessageType.newTable, MessageType.newChain, MessageType.newRule, MessageType.newSet, MessageType.newSetElement, NFT_MSG_NEWGEN.rawValue][round % 6]
            let bytes = header(length: UInt32(16 + payloadLength), type: MessageType.subsystem | UInt16(type)) + payload
            guard let message = try? parse(bytes).first else { continue }
            _ = try? message.acknowledgement(as: NetfilterError.self)
            if (try? ReplyParser.table(message)) != nil { parsedSome += 1 }
            _ = try? ReplyParser.chain(message)
            _ = try? ReplyParser.set(message)
            _ = try? ReplyParser.setElements(message)
            _ = try? ReplyParser.rule(message, family: .inet)
            _ = try? ReplyParser.generation(message)
            if let attributes = try? Attributes(message: message) {
                for value in attributes.all(1) {
                    if let nested = try? Attributes(value) { _ = try? ReplyParser.expression(nested) }
                }
            }
        }
        #expect(parsedSome > 100, "only \(parsedSome) tables parsed from 20,000 plausible replies with TEST_SEED=\(seed)")
    }

    @Test func userDataTLVsAreBoundsChecked() {
        #expect(UserData.decode([0, 3, 0x61, 0x62, 0]) == [0: [0x61, 0x62, 0]])
        #expect(UserData.decode([0, 9, 0x61]) == nil)
        #expect(UserData.decode([7]) == nil)
        #expect(UserData.text([0x61, 0x62, 0]) == "ab")
    }
}
