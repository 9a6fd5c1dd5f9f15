/// Kernel constants used by the lowering (values from linux/netfilter/nf_tables.h,
/// checked against the C headers by the tests).
enum K {
    static let regVerdict: UInt32 = 0  // NFT_REG_VERDICT
    static let reg1: UInt32 = 1  // NFT_REG_1, the 16-byte register nft uses

    static let metaMark: UInt32 = 3  // NFT_META_MARK
    static let metaIifname: UInt32 = 6  // NFT_META_IIFNAME
    static let metaNfproto: UInt32 = 15  // NFT_META_NFPROTO
    static let metaL4proto: UInt32 = 16  // NFT_META_L4PROTO

    static let cmpEq: UInt32 = 0  // NFT_CMP_EQ
    static let cmpNeq: UInt32 = 1  // NFT_CMP_NEQ

    static let payloadNetwork: UInt32 = 1  // NFT_PAYLOAD_NETWORK_HEADER
    static let payloadTransport: UInt32 = 2  // NFT_PAYLOAD_TRANSPORT_HEADER

    static let socketCgroupV2: UInt32 = 3  // NFT_SOCKET_CGROUPV2
    static let lookupInverted: UInt32 = 1  // NFT_LOOKUP_F_INV

    static let verdictAccept: Int32 = 1  // NF_ACCEPT
    static let verdictDrop: Int32 = 0  // NF_DROP
    static let verdictReturn: Int32 = -5  // NFT_RETURN

    static let rejectTCPReset: UInt32 = 1  // NFT_REJECT_TCP_RST
    static let natProtoSpecified: UInt32 = 2  // NF_NAT_RANGE_PROTO_SPECIFIED
    static let natMapIPs: UInt32 = 1  // NF_NAT_RANGE_MAP_IPS
    static let natSource: UInt32 = 0  // NFT_NAT_SNAT

    static let fibSourceAddress: UInt32 = 1  // NFTA_FIB_F_SADDR
    static let fibResultAddressType: UInt32 = 3  // NFT_FIB_RESULT_ADDRTYPE
    static let addressTypeLocal: UInt32 = 2  // RTN_LOCAL

    static let nfprotoIPv4: UInt8 = 2
    static let nfprotoIPv6: UInt8 = 10
    static let ifnameSize = 16  // IFNAMSIZ
}

/// One libnftnl expression as a value: the wire form of rules. Desired rules are
/// lowered to these, live rules are read back into these, and the two are compared
/// as values. Anything outside the vocabulary reads back as `.other`.
enum LowExpr: Hashable, Sendable, CustomStringConvertible {
    case meta(key: UInt32, dreg: UInt32)
    case cmp(sreg: UInt32, op: UInt32, data: [UInt8])
    /// `dreg = (sreg & mask) ^ xor` over `mask.count` bytes.
    case bitwise(sreg: UInt32, dreg: UInt32, mask: [UInt8], xor: [UInt8])
    case payload(base: UInt32, offset: UInt32, length: UInt32, dreg: UInt32)
    case socket(key: UInt32, dreg: UInt32, level: UInt32)
    case lookup(sreg: UInt32, set: String, flags: UInt32)
    case verdict(Int32)
    case immediate(dreg: UInt32, data: [UInt8])
    /// `redir` with the port in `protoRegister` (0 = no port).
    case redirect(protoRegister: UInt32, flags: UInt32)
    case reject(type: UInt32, code: UInt8)
    /// A FIB lookup: `result` for the fields in `flags`, into `dreg`.
    case fib(flags: UInt32, result: UInt32, dreg: UInt32)
    /// Address NAT of `type` for `family`, the address in `addressRegister`.
    case nat(type: UInt32, family: UInt32, addressRegister: UInt32, flags: UInt32)
    /// An expression the agent never writes, in libnftnl's text form.
    case other(String)

    /// Like libnftnl's debug output (`nft --debug=netlink`), one expression.
    var description: String {
        switch self {
        case .meta(let key, let dreg):
            return "[ meta load \(metaKeyName(key)) => reg \(dreg) ]"
        case .cmp(let sreg, let op, let data):
            return "[ cmp \(op == K.cmpEq ? "eq" : op == K.cmpNeq ? "neq" : "op\(op)") reg \(sreg) \(words(data)) ]"
        case .bitwise(let sreg, let dreg, let mask, let xor):
            return "[ bitwise reg \(dreg) = ( reg \(sreg) & \(words(mask)) ) ^ \(words(xor)) ]"
        case .payload(let base, let offset, let length, let dreg):
            let baseName = base == K.payloadNetwork ? "network" : base == K.payloadTransport ? "transport" : base == 0 ? "link" : "base \(base)"
            return "[ payload load \(length)b @ \(baseName) header + \(offset) => reg \(dreg) ]"
        case .socket(let key, let dreg, let level):
            return key == K.socketCgroupV2
                ? "[ socket load cgroupv2 level \(level) => reg \(dreg) ]"
                : "[ socket load key \(key) => reg \(dreg) ]"
        case .lookup(let sreg, let set, let flags):
            return "[ lookup reg \(sreg) set \(set)\(flags & K.lookupInverted != 0 ? " inverted" : "") ]"
        case .verdict(let code):
            return "[ immediate reg 0 \(verdictName(code)) ]"
        case .immediate(let dreg, let data):
            return "[ immediate reg \(dreg) \(words(data)) ]"
        case .redirect(let register, let flags):
            return register == 0
                ? "[ redir flags 0x\(String(flags, radix: 16)) ]"
                : "[ redir proto_min reg \(register) flags 0x\(String(flags, radix: 16)) ]"
        case .reject(let type, let code):
            return "[ reject type \(type) code \(code) ]"
        case .fib(let flags, let result, let dreg):
            return flags == K.fibSourceAddress && result == K.fibResultAddressType
                ? "[ fib saddr type => reg \(dreg) ]"
                : "[ fib flags 0x\(String(flags, radix: 16)) result \(result) => reg \(dreg) ]"
        case .nat(let type, let family, let register, let flags):
            let name = type == K.natSource ? "snat" : "dnat"
            let familyName = family == UInt32(K.nfprotoIPv6) ? "ip6" : family == UInt32(K.nfprotoIPv4) ? "ip" : "family \(family)"
            return "[ nat \(name) \(familyName) addr_min reg \(register) addr_max reg \(register) flags 0x\(String(flags, radix: 16)) ]"
        case .other(let text):
            return "[ \(text) ]"
        }
    }
}

private func metaKeyName(_ key: UInt32) -> String {
    switch key {
    case K.metaMark: return "mark"
    case K.metaIifname: return "iifname"
    case K.metaNfproto: return "nfproto"
    case K.metaL4proto: return "l4proto"
    default: return "key \(key)"
    }
}

func verdictName(_ code: Int32) -> String {
    switch code {
    case K.verdictAccept: return "accept"
    case K.verdictDrop: return "drop"
    case K.verdictReturn: return "return"
    case -1: return "continue"
    case -2: return "break"
    case -3: return "jump"
    case -4: return "goto"
    default: return "verdict \(code)"
    }
}

/// Register data the way libnftnl prints it: 32-bit words read in host order.
func words(_ data: [UInt8]) -> String {
    stride(from: 0, to: data.count, by: 4).map { start in
        var word: UInt32 = 0
        for index in start..<min(start + 4, data.count) {
            word |= UInt32(data[index]) << (8 * UInt32(index - start))
        }
        return hex32(word)
    }.joined(separator: " ")
}

// MARK: - Lowering

extension NFT.Rule {
    /// The libnftnl expressions `nft` would emit for this rule in a table of `family`.
    func lowered(family: NFT.Family) -> [LowExpr] {
        expressions.flatMap { $0.lowered(family: family) }
    }
}

extension NFT.Expression {
    /// The libnftnl expressions `nft` emits for this expression (compare with
    /// `nft --debug=netlink`). Assumes a validated table; out-of-range values are
    /// clamped rather than trapped on.
    func lowered(family: NFT.Family) -> [LowExpr] {
        switch self {
        case .markMasked(let mask, let value):
            var result: [LowExpr] = [.meta(key: K.metaMark, dreg: K.reg1)]
            if mask != .max {
                result.append(.bitwise(sreg: K.reg1, dreg: K.reg1, mask: hostBytes(mask), xor: hostBytes(UInt32(0))))
            }
            result.append(.cmp(sreg: K.reg1, op: K.cmpEq, data: hostBytes(value & mask)))
            return result
        case .l4proto(let proto):
            return l4protoMatch(proto, op: K.cmpEq)
        case .l4protoNot(let proto):
            return l4protoMatch(proto, op: K.cmpNeq)
        case .ipv4DestinationIn(let prefix, let length):
            return nfprotoDependency(K.nfprotoIPv4, family) + addressMatch(prefix.bytes, offset: 16, length: length, op: K.cmpEq)
        case .ipv4DestinationNotIn(let prefix, let length):
            return nfprotoDependency(K.nfprotoIPv4, family) + addressMatch(prefix.bytes, offset: 16, length: length, op: K.cmpNeq)
        case .ipv6DestinationIn(let prefix, let length):
            return nfprotoDependency(K.nfprotoIPv6, family) + addressMatch(prefix.bytes, offset: 24, length: length, op: K.cmpEq)
        case .ipv6DestinationNotIn(let prefix, let length):
            return nfprotoDependency(K.nfprotoIPv6, family) + addressMatch(prefix.bytes, offset: 24, length: length, op: K.cmpNeq)
        case .ipv4SourceIn(let prefix, let length):
            return nfprotoDependency(K.nfprotoIPv4, family) + addressMatch(prefix.bytes, offset: 12, length: length, op: K.cmpEq)
        case .ipv6SourceIn(let prefix, let length):
            return nfprotoDependency(K.nfprotoIPv6, family) + addressMatch(prefix.bytes, offset: 8, length: length, op: K.cmpEq)
        case .ipv4DestinationInSet(let set):
            return nfprotoDependency(K.nfprotoIPv4, family) + [
                .payload(base: K.payloadNetwork, offset: 16, length: 4, dreg: K.reg1),
                .lookup(sreg: K.reg1, set: set, flags: 0),
            ]
        case .ipv6DestinationInSet(let set):
            return nfprotoDependency(K.nfprotoIPv6, family) + [
                .payload(base: K.payloadNetwork, offset: 24, length: 16, dreg: K.reg1),
                .lookup(sreg: K.reg1, set: set, flags: 0),
            ]
        case .socketCgroupV2(let level, let set):
            return [
                .socket(key: K.socketCgroupV2, dreg: K.reg1, level: UInt32(clamping: level)),
                .lookup(sreg: K.reg1, set: set, flags: 0),
            ]
        case .inputInterface(let name):
            return [.meta(key: K.metaIifname, dreg: K.reg1), .cmp(sreg: K.reg1, op: K.cmpEq, data: interfaceNameBytes(name))]
        case .inputInterfaceNot(let name):
            return [.meta(key: K.metaIifname, dreg: K.reg1), .cmp(sreg: K.reg1, op: K.cmpNeq, data: interfaceNameBytes(name))]
        case .tcpDestinationPort(let port):
            return l4protoMatch(.tcp, op: K.cmpEq) + [
                .payload(base: K.payloadTransport, offset: 2, length: 2, dreg: K.reg1),
                .cmp(sreg: K.reg1, op: K.cmpEq, data: [UInt8(port >> 8), UInt8(port & 0xff)]),
            ]
        case .tcpDestinationPortInSet(let set):
            return l4protoMatch(.tcp, op: K.cmpEq) + [
                .payload(base: K.payloadTransport, offset: 2, length: 2, dreg: K.reg1),
                .lookup(sreg: K.reg1, set: set, flags: 0),
            ]
        case .accept:
            return [.verdict(K.verdictAccept)]
        case .drop:
            return [.verdict(K.verdictDrop)]
        case .return:
            return [.verdict(K.verdictReturn)]
        case .redirect(let port):
            return [
                .immediate(dreg: K.reg1, data: [UInt8(port >> 8), UInt8(port & 0xff)]),
                .redirect(protoRegister: K.reg1, flags: K.natProtoSpecified),
            ]
        case .rejectTCPReset:
            return [.reject(type: K.rejectTCPReset, code: 0)]
        case .sourceAddressIsLocal:
            return [
                .fib(flags: K.fibSourceAddress, result: K.fibResultAddressType, dreg: K.reg1),
                .cmp(sreg: K.reg1, op: K.cmpEq, data: hostBytes(K.addressTypeLocal)),
            ]
        case .snatIPv4(let address):
            return [
                .immediate(dreg: K.reg1, data: address.bytes),
                .nat(type: K.natSource, family: UInt32(K.nfprotoIPv4), addressRegister: K.reg1, flags: K.natMapIPs),
            ]
        case .snatIPv6(let address):
            return [
                .immediate(dreg: K.reg1, data: address.bytes),
                .nat(type: K.natSource, family: UInt32(K.nfprotoIPv6), addressRegister: K.reg1, flags: K.natMapIPs),
            ]
        }
    }
}

private func l4protoMatch(_ proto: NFT.L4Protocol, op: UInt32) -> [LowExpr] {
    [.meta(key: K.metaL4proto, dreg: K.reg1), .cmp(sreg: K.reg1, op: op, data: [proto.rawValue])]
}

/// In an inet table, `ip …` and `ip6 …` matches first check the packet's family.
private func nfprotoDependency(_ nfproto: UInt8, _ family: NFT.Family) -> [LowExpr] {
    guard family == .inet else { return [] }
    return [.meta(key: K.metaNfproto, dreg: K.reg1), .cmp(sreg: K.reg1, op: K.cmpEq, data: [nfproto])]
}

/// nft loads only the bytes a byte-aligned prefix covers; other prefixes load the
/// whole address and mask it.
private func addressMatch(_ address: [UInt8], offset: UInt32, length: Int, op: UInt32) -> [LowExpr] {
    let fullBits = address.count * 8
    let length = min(max(length, 1), fullBits)
    let mask = prefixMask(bits: length, bytes: address.count)
    let masked = zip(address, mask).map { $0 & $1 }
    if length % 8 == 0 {
        let count = length / 8
        return [
            .payload(base: K.payloadNetwork, offset: offset, length: UInt32(count), dreg: K.reg1),
            .cmp(sreg: K.reg1, op: op, data: Array(masked.prefix(count))),
        ]
    }
    return [
        .payload(base: K.payloadNetwork, offset: offset, length: UInt32(address.count), dreg: K.reg1),
        .bitwise(sreg: K.reg1, dreg: K.reg1, mask: mask, xor: [UInt8](repeating: 0, count: address.count)),
        .cmp(sreg: K.reg1, op: op, data: masked),
    ]
}

private func prefixMask(bits: Int, bytes: Int) -> [UInt8] {
    (0..<bytes).map { index in
        let remaining = bits - index * 8
        if remaining >= 8 { return 0xff }
        if remaining <= 0 { return 0 }
        return UInt8(truncatingIfNeeded: 0xff << (8 - remaining))
    }
}

private func interfaceNameBytes(_ name: String) -> [UInt8] {
    let bytes = Array(name.utf8.prefix(K.ifnameSize - 1))
    return bytes + [UInt8](repeating: 0, count: K.ifnameSize - bytes.count)
}

// MARK: - Decoding

enum Decoder {
    /// Reads libnftnl expressions back into the vocabulary. Every candidate is
    /// re-lowered and must reproduce the input exactly, so decoding never guesses:
    /// it returns nil for anything the vocabulary cannot express.
    static func expressions(from input: [LowExpr], family: NFT.Family) -> [NFT.Expression]? {
        var result: [NFT.Expression] = []
        var index = 0
        while index < input.count {
            let rest = Array(input[index...])
            guard let candidate = candidate(at: rest, family: family) else { return nil }
            let lowered = candidate.lowered(family: family)
            guard !lowered.isEmpty, rest.starts(with: lowered) else { return nil }
            result.append(candidate)
            index += lowered.count
        }
        return result
    }

    private static func candidate(at ir: [LowExpr], family: NFT.Family) -> NFT.Expression? {
        func at(_ index: Int) -> LowExpr? { index < ir.count ? ir[index] : nil }
        guard let first = at(0) else { return nil }
        switch first {
        case .meta(K.metaMark, _):
            var mask = UInt32.max
            var next = 1
            if case .bitwise(_, _, let maskBytes, _) = at(1) {
                guard let value = hostUInt32(maskBytes) else { return nil }
                mask = value
                next = 2
            }
            guard case .cmp(_, K.cmpEq, let data) = at(next), let value = hostUInt32(data) else { return nil }
            return .markMasked(mask: mask, equals: value)
        case .meta(K.metaL4proto, _):
            guard case .cmp(_, let op, let data) = at(1), data.count == 1, let proto = NFT.L4Protocol(rawValue: data[0]) else {
                return nil
            }
            if proto == .tcp, op == K.cmpEq, case .payload(K.payloadTransport, 2, 2, _) = at(2) {
                switch at(3) {
                case .cmp(_, K.cmpEq, let port) where port.count == 2:
                    return .tcpDestinationPort(UInt16(port[0]) << 8 | UInt16(port[1]))
                case .lookup(_, let set, 0):
                    return .tcpDestinationPortInSet(set)
                default:
                    break
                }
            }
            return op == K.cmpEq ? .l4proto(proto) : .l4protoNot(proto)
        case .meta(K.metaNfproto, _):
            guard family == .inet, case .cmp(_, K.cmpEq, let data) = at(1), data.count == 1 else { return nil }
            return address(at: Array(ir.dropFirst(2)), ipv6: data[0] == K.nfprotoIPv6)
        case .payload(K.payloadNetwork, let offset, _, _) where family != .inet:
            return address(at: ir, ipv6: offset == 24 || offset == 8)
        case .socket(K.socketCgroupV2, _, let level):
            guard case .lookup(_, let set, 0) = at(1) else { return nil }
            return .socketCgroupV2(level: Int(level), inSet: set)
        case .meta(K.metaIifname, _):
            guard case .cmp(_, let op, let data) = at(1) else { return nil }
            let name = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
            return op == K.cmpEq ? .inputInterface(name) : .inputInterfaceNot(name)
        case .verdict(K.verdictAccept):
            return .accept
        case .verdict(K.verdictDrop):
            return .drop
        case .verdict(K.verdictReturn):
            return .return
        case .immediate(_, let data) where data.count == 2:
            return .redirect(toPort: UInt16(data[0]) << 8 | UInt16(data[1]))
        case .immediate(_, let data) where data.count == 4:
            return NFT.IPv4Address(bytes: data).map(NFT.Expression.snatIPv4)
        case .immediate(_, let data) where data.count == 16:
            return NFT.IPv6Address(bytes: data).map(NFT.Expression.snatIPv6)
        case .fib:
            return .sourceAddressIsLocal
        case .reject(K.rejectTCPReset, _):
            return .rejectTCPReset
        default:
            return nil
        }
    }

    /// `ip daddr …` / `ip6 daddr …` / `ip saddr …` / `ip6 saddr …` after the family check.
    private static func address(at ir: [LowExpr], ipv6: Bool) -> NFT.Expression? {
        let size = ipv6 ? 16 : 4
        guard case .payload(K.payloadNetwork, let offset, let loaded, _) = ir.first else { return nil }
        let source: Bool
        switch (offset, ipv6) {
        case (16, false), (24, true): source = false
        case (12, false), (8, true): source = true
        default: return nil
        }
        var length = Int(loaded) * 8
        var next = 1
        if ir.count > 1, case .bitwise(_, _, let mask, _) = ir[1] {
            length = mask.reduce(0) { $0 + $1.nonzeroBitCount }
            next = 2
        }
        guard ir.count > next else { return nil }
        switch ir[next] {
        case .lookup(_, let set, 0) where !source:
            return ipv6 ? .ipv6DestinationInSet(set) : .ipv4DestinationInSet(set)
        case .cmp(_, let op, let data) where data.count <= size && (!source || op == K.cmpEq):
            let padded = data + [UInt8](repeating: 0, count: size - data.count)
            if source {
                if ipv6 {
                    return NFT.IPv6Address(bytes: padded).map { .ipv6SourceIn(prefix: $0, length: length) }
                }
                return NFT.IPv4Address(bytes: padded).map { .ipv4SourceIn(prefix: $0, length: length) }
            }
            if ipv6 {
                guard let prefix = NFT.IPv6Address(bytes: padded) else { return nil }
                return op == K.cmpEq ? .ipv6DestinationIn(prefix: prefix, length: length) : .ipv6DestinationNotIn(prefix: prefix, length: length)
            }
            guard let prefix = NFT.IPv4Address(bytes: padded) else { return nil }
            return op == K.cmpEq ? .ipv4DestinationIn(prefix: prefix, length: length) : .ipv4DestinationNotIn(prefix: prefix, length: length)
        default:
            return nil
        }
    }

    private static func hostUInt32(_ bytes: [UInt8]) -> UInt32? {
        guard bytes.count == 4 else { return nil }
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        return value
    }
}
