import LinuxNet

/// Parses nf_tables replies without libnftnl.
///
/// libnftnl's parsers call `exit()` ("nf_tables kernel ABI is broken") when an
/// attribute fails validation, so kernel replies are never handed to them. This
/// parser reads attributes through LinuxNet's walker, which checks every length
/// against the bytes present and throws on anything malformed; it reads only
/// what the agent needs.

/// Netlink attributes (TLVs) of one level, bounds-checked.
struct Attributes {
    private(set) var entries: [NetlinkAttribute] = []

    /// No attributes.
    init() {}

    init(_ data: [UInt8]) throws(NetfilterError) {
        entries = try NetlinkAttributes.list(in: data, as: NetfilterError.self)
    }

    /// The attributes after the `struct nfgenmsg` of an nf_tables message.
    init(message: NetlinkMessage) throws(NetfilterError) {
        guard message.payload.count >= 4 else { throw .malformedReply("nf_tables message without an nfgenmsg header") }
        try self.init(Array(message.payload[4...]))
    }

    var types: Set<UInt16> { Set(entries.map(\.type)) }

    subscript(type: UInt16) -> [UInt8]? {
        entries.first { $0.type == type }?.value
    }

    func all(_ type: UInt16) -> [[UInt8]] {
        entries.filter { $0.type == type }.map(\.value)
    }

    func string(_ type: UInt16) -> String? {
        guard let value = self[type] else { return nil }
        return String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Netlink integers in nf_tables are big endian.
    func u32(_ type: UInt16) throws(NetfilterError) -> UInt32? {
        guard let value = self[type] else { return nil }
        guard value.count == 4 else { throw .malformedReply("attribute \(type) has \(value.count) bytes, not 4") }
        return value.reduce(0) { $0 << 8 | UInt32($1) }
    }

    func u64(_ type: UInt16) throws(NetfilterError) -> UInt64? {
        guard let value = self[type] else { return nil }
        guard value.count == 8 else { throw .malformedReply("attribute \(type) has \(value.count) bytes, not 8") }
        return value.reduce(0) { $0 << 8 | UInt64($1) }
    }

    func u8(_ type: UInt16) throws(NetfilterError) -> UInt8? {
        guard let value = self[type] else { return nil }
        guard !value.isEmpty else { throw .malformedReply("attribute \(type) is empty") }
        return value[0]
    }

    func nested(_ type: UInt16) throws(NetfilterError) -> Attributes? {
        guard let value = self[type] else { return nil }
        return try Attributes(value)
    }

    /// `NFTA_DATA_VALUE` inside a nested data attribute (cmp data, bitwise mask…).
    func dataValue(_ type: UInt16) throws(NetfilterError) -> [UInt8]? {
        try nested(type)?[1]
    }

    /// A comment in nft's user data format, if the user data has one of `type`.
    func comment(userData type: UInt16, commentType: UInt8) -> String? {
        guard let data = self[type] else { return nil }
        return UserData.text(UserData.decode(data)?[commentType])
    }
}

/// The parts of nf_tables replies the agent reads.
enum ReplyParser {
    // Attribute numbers from linux/netfilter/nf_tables.h.
    enum Table {
        static let name: UInt16 = 1, handle: UInt16 = 4, userData: UInt16 = 6
    }
    enum Chain {
        static let table: UInt16 = 1, handle: UInt16 = 2, name: UInt16 = 3, hook: UInt16 = 4, policy: UInt16 = 5, type: UInt16 = 7
        static let userData: UInt16 = 12
        static let hookNumber: UInt16 = 1, hookPriority: UInt16 = 2
    }
    enum Rule {
        static let table: UInt16 = 1, chain: UInt16 = 2, handle: UInt16 = 3, expressions: UInt16 = 4, userData: UInt16 = 7
    }
    enum Set {
        static let table: UInt16 = 1, name: UInt16 = 2, flags: UInt16 = 3, keyType: UInt16 = 4, keyLength: UInt16 = 5
        static let userData: UInt16 = 13, handle: UInt16 = 16
    }
    enum SetElements {
        static let table: UInt16 = 1, set: UInt16 = 2, elements: UInt16 = 3
        static let key: UInt16 = 1
    }
    static let listElement: UInt16 = 1  // NFTA_LIST_ELEM
    static let generationID: UInt16 = 1  // NFTA_GEN_ID

    static func generation(_ message: NetlinkMessage) throws(NetfilterError) -> UInt32 {
        guard let id = try Attributes(message: message).u32(generationID) else {
            throw .malformedReply("no generation id in the reply to NFT_MSG_GETGEN")
        }
        return id
    }

    static func table(_ message: NetlinkMessage) throws(NetfilterError) -> (name: String, handle: UInt64, comment: String?) {
        let attributes = try Attributes(message: message)
        guard let name = attributes.string(Table.name) else { throw .malformedReply("a table without a name") }
        return (
            name, try attributes.u64(Table.handle) ?? 0,
            attributes.comment(userData: Table.userData, commentType: UInt8(0))  // NFTNL_UDATA_TABLE_COMMENT
        )
    }

    static func chain(_ message: NetlinkMessage) throws(NetfilterError) -> (table: String, chain: LiveChain) {
        let attributes = try Attributes(message: message)
        guard let table = attributes.string(Chain.table), let name = attributes.string(Chain.name) else {
            throw .malformedReply("a chain without table or name")
        }
        var chain = LiveChain(name: name, handle: try attributes.u64(Chain.handle) ?? 0)
        if let hook = try attributes.nested(Chain.hook), let number = try hook.u32(Chain.hookNumber) {
            chain.hookNumber = number
            chain.priority = Int32(bitPattern: try hook.u32(Chain.hookPriority) ?? 0)
            chain.type = attributes.string(Chain.type)
            chain.policy = try attributes.u32(Chain.policy)
        }
        chain.comment = attributes.comment(userData: Chain.userData, commentType: UInt8(0))  // NFTNL_UDATA_CHAIN_COMMENT
        return (table, chain)
    }

    static func set(_ message: NetlinkMessage) throws(NetfilterError) -> (table: String, set: LiveSet) {
        let attributes = try Attributes(message: message)
        guard let table = attributes.string(Set.table), let name = attributes.string(Set.name) else {
            throw .malformedReply("a set without table or name")
        }
        let set = LiveSet(
            name: name, handle: try attributes.u64(Set.handle) ?? 0,
            keyTypeID: try attributes.u32(Set.keyType) ?? 0, keyLength: try attributes.u32(Set.keyLength) ?? 0,
            flags: try attributes.u32(Set.flags) ?? 0,
            comment: attributes.comment(userData: Set.userData, commentType: UInt8(7)))  // NFTNL_UDATA_SET_COMMENT
        return (table, set)
    }

    static func setElements(_ message: NetlinkMessage) throws(NetfilterError) -> (table: String, set: String, keys: [[UInt8]]) {
        let attributes = try Attributes(message: message)
        guard let table = attributes.string(SetElements.table), let set = attributes.string(SetElements.set) else {
            throw .malformedReply("set elements without table or set")
        }
        var keys: [[UInt8]] = []
        if let list = try attributes.nested(SetElements.elements) {
            // The kernel numbers list entries NFTA_LIST_ELEM (1); libnftnl numbers
            // them 1, 2, 3…; the kernel ignores the type, and so does this parser.
            for element in list.entries.map(\.value) {
                guard let key = try Attributes(element).dataValue(SetElements.key) else {
                    throw .malformedReply("an element of set \(set) without a key")
                }
                keys.append(key)
            }
        }
        return (table, set, keys)
    }

    static func rule(_ message: NetlinkMessage, family: NFT.Family) throws(NetfilterError) -> (table: String, chain: String, rule: LiveRule) {
        let attributes = try Attributes(message: message)
        guard let table = attributes.string(Rule.table), let chain = attributes.string(Rule.chain) else {
            throw .malformedReply("a rule without table or chain")
        }
        var lowered: [LowExpr] = []
        if let list = try attributes.nested(Rule.expressions) {
            for element in list.all(listElement) {
                lowered.append(try expression(Attributes(element)))
            }
        }
        let rule = LiveRule(
            handle: try attributes.u64(Rule.handle) ?? 0,
            comment: attributes.comment(userData: Rule.userData, commentType: UInt8(0)),  // NFTNL_UDATA_RULE_COMMENT
            lowered: lowered, family: family)
        return (table, chain, rule)
    }

    /// One expression (`NFTA_EXPR_NAME` 1, `NFTA_EXPR_DATA` 2). Attributes outside
    /// what the vocabulary writes make it `.other`, so a rule changed behind the
    /// agent's back never compares equal by accident.
    static func expression(_ attributes: Attributes) throws(NetfilterError) -> LowExpr {
        guard let name = attributes.string(1) else { throw .malformedReply("an expression without a name") }
        let data = try attributes.nested(2) ?? Attributes()
        let types = data.types
        func only(_ allowed: [UInt16], required: [UInt16]) -> Bool {
            types.isSubset(of: Swift.Set(allowed)) && Swift.Set(required).isSubset(of: types)
        }
        func u32(_ type: UInt16) throws(NetfilterError) -> UInt32 { try data.u32(type) ?? 0 }

        switch name {
        case "meta" where only([1, 2], required: [1, 2]):  // DREG, KEY
            return .meta(key: try u32(2), dreg: try u32(1))
        case "cmp" where only([1, 2, 3], required: [1, 2, 3]):  // SREG, OP, DATA
            guard let value = try data.dataValue(3) else { break }
            return .cmp(sreg: try u32(1), op: try u32(2), data: value)
        case "bitwise" where only([1, 2, 3, 4, 5, 6], required: [1, 2, 3, 4, 5]):  // SREG, DREG, LEN, MASK, XOR, OP
            // Only the mask-and-xor form (NFT_BITWISE_BOOL, 0) is in the vocabulary.
            guard try u32(6) == 0, let mask = try data.dataValue(4), let xor = try data.dataValue(5),
                mask.count == Int(try u32(3)), xor.count == mask.count
            else { break }
            return .bitwise(sreg: try u32(1), dreg: try u32(2), mask: mask, xor: xor)
        case "payload" where only([1, 2, 3, 4], required: [1, 2, 3, 4]):  // DREG, BASE, OFFSET, LEN
            return .payload(base: try u32(2), offset: try u32(3), length: try u32(4), dreg: try u32(1))
        case "socket" where only([1, 2, 3], required: [1, 2]):  // KEY, DREG, LEVEL
            let key = try u32(1)
            return .socket(key: key, dreg: try u32(2), level: key == K.socketCgroupV2 ? try u32(3) : 0)
        case "lookup" where only([1, 2, 4, 5], required: [1, 2]):  // SET, SREG, SET_ID, FLAGS
            guard let set = data.string(1) else { break }
            return .lookup(sreg: try u32(2), set: set, flags: try u32(5))
        case "immediate" where only([1, 2], required: [1, 2]):  // DREG, DATA
            guard let value = try data.nested(2) else { break }
            if let verdict = try value.nested(2) {  // NFTA_DATA_VERDICT
                // Jumps and gotos name a chain; they are not in the vocabulary.
                guard try u32(1) == K.regVerdict, verdict.types == [1], let code = try verdict.u32(1) else { break }
                return .verdict(Int32(bitPattern: code))
            }
            guard let bytes = value[1], value.types == [1] else { break }
            return .immediate(dreg: try u32(1), data: bytes)
        case "redir" where only([1, 2, 3], required: []):  // REG_PROTO_MIN, REG_PROTO_MAX, FLAGS
            let minimum = try u32(1)
            // The kernel reports proto_max = proto_min when only a minimum was given.
            guard (try data.u32(2) ?? minimum) == minimum else { break }
            return .redirect(protoRegister: minimum, flags: try u32(3))
        case "fib" where only([1, 2, 3], required: [1, 2, 3]):  // DREG, RESULT, FLAGS
            return .fib(flags: try u32(3), result: try u32(2), dreg: try u32(1))
        case "nat" where only([1, 2, 3, 4, 7], required: [1, 2, 3]):  // TYPE, FAMILY, REG_ADDR_MIN, REG_ADDR_MAX, FLAGS
            let minimum = try u32(3)
            guard (try data.u32(4) ?? minimum) == minimum else { break }
            return .nat(type: try u32(1), family: try u32(2), addressRegister: minimum, flags: try u32(7))
        case "reject" where only([1, 2], required: [1]):  // TYPE, ICMP_CODE
            let type = try u32(1)
            // The kernel reports no code for a TCP reset; nft sends 0.
            return .reject(type: type, code: type == K.rejectTCPReset ? 0 : try data.u8(2) ?? 0)
        default:
            break
        }
        return .other(describe(name: name, data: data))
    }

    /// Text for an expression outside the vocabulary: libnftnl's format for a
    /// counter, attribute numbers and bytes otherwise.
    static func describe(name: String, data: Attributes) -> String {
        if name == "counter", let bytes = try? data.u64(1), let packets = try? data.u64(2) {
            return "counter pkts \(packets) bytes \(bytes)"
        }
        let fields = data.entries.map { "\($0.type)=\(hexKey($0.value))" }
        return ([name] + fields).joined(separator: " ")
    }
}
