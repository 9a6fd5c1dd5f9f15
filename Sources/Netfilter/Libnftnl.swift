import CNetlink
import Glibc

// Building nf_tables messages with libnftnl: thin owners of libnftnl objects and
// the conversions from values. Allocation failures throw; nothing force-unwraps a
// C result. Replies from the kernel are never given to libnftnl, whose parsers
// exit() the process on attributes they consider malformed (see ReplyParser).

func attribute<T: RawRepresentable>(_ value: T) -> UInt16 where T.RawValue: BinaryInteger {
    UInt16(truncatingIfNeeded: value.rawValue)
}

func attribute(_ value: Int) -> UInt16 {
    UInt16(truncatingIfNeeded: value)
}

/// Runs a libnftnl `*_snprintf` into a buffer and returns the text.
func render(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) -> String {
    var size = 4096
    while true {
        var buffer = [CChar](repeating: 0, count: size)
        let written = buffer.withUnsafeMutableBufferPointer { pointer -> Int32 in
            guard let base = pointer.baseAddress else { return -1 }
            return body(base, size)
        }
        if written < 0 { return "" }
        if Int(written) < size || size >= 1 << 20 {
            let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
            return String(decoding: bytes, as: UTF8.self)
        }
        size *= 4
    }
}

/// User data (udata) TLVs as nft writes them: type (1 byte), length (1 byte), value.
enum UserData {
    static func encode(_ entries: [(type: UInt8, value: [UInt8])]) -> [UInt8] {
        var result: [UInt8] = []
        for (type, value) in entries where value.count <= 255 {
            result += [type, UInt8(value.count)] + value
        }
        return result
    }

    /// A comment as nft stores it: the string with its terminating NUL.
    static func strz(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

    static func u32(_ value: UInt32) -> [UInt8] { hostBytes(value) }

    /// Parses TLVs; nil when the data is truncated.
    static func decode(_ data: [UInt8]) -> [UInt8: [UInt8]]? {
        var result: [UInt8: [UInt8]] = [:]
        var index = 0
        while index < data.count {
            guard index + 2 <= data.count else { return nil }
            let type = data[index]
            let length = Int(data[index + 1])
            guard index + 2 + length <= data.count else { return nil }
            result[type] = Array(data[(index + 2)..<(index + 2 + length)])
            index += 2 + length
        }
        return result
    }

    /// The string in a strz value (up to the first NUL).
    static func text(_ value: [UInt8]?) -> String? {
        guard let value else { return nil }
        return String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
    }
}

// MARK: - Expressions

extension LowExpr {
    /// A new libnftnl expression, owned by the caller (nil for `.other`, which the
    /// agent never writes). `setIDs` gives the batch-local ids of sets created in
    /// the same transaction, as nft sets them alongside the name.
    func makeNftnl(setIDs: [String: UInt32] = [:]) -> OpaquePointer? {
        func new(_ name: String) -> OpaquePointer? { nftnl_expr_alloc(name) }
        func setData(_ expression: OpaquePointer, _ type: Int, _ data: [UInt8]) {
            data.withUnsafeBytes { raw in
                _ = nftnl_expr_set(expression, attribute(type), raw.baseAddress, UInt32(data.count))
            }
        }
        switch self {
        case .meta(let key, let dreg):
            guard let expression = new("meta") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_META_KEY), key)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_META_DREG), dreg)
            return expression
        case .cmp(let sreg, let op, let data):
            guard let expression = new("cmp") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_CMP_SREG), sreg)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_CMP_OP), op)
            setData(expression, NFTNL_EXPR_CMP_DATA, data)
            return expression
        case .bitwise(let sreg, let dreg, let mask, let xor):
            guard let expression = new("bitwise") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_BITWISE_SREG), sreg)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_BITWISE_DREG), dreg)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_BITWISE_LEN), UInt32(mask.count))
            setData(expression, NFTNL_EXPR_BITWISE_MASK, mask)
            setData(expression, NFTNL_EXPR_BITWISE_XOR, xor)
            return expression
        case .payload(let base, let offset, let length, let dreg):
            guard let expression = new("payload") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_PAYLOAD_DREG), dreg)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_PAYLOAD_BASE), base)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_PAYLOAD_LEN), length)
            return expression
        case .socket(let key, let dreg, let level):
            guard let expression = new("socket") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_SOCKET_KEY), key)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_SOCKET_DREG), dreg)
            if key == K.socketCgroupV2 {
                nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_SOCKET_LEVEL), level)
            }
            return expression
        case .lookup(let sreg, let set, let flags):
            guard let expression = new("lookup") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_LOOKUP_SREG), sreg)
            _ = nftnl_expr_set_str(expression, attribute(NFTNL_EXPR_LOOKUP_SET), set)
            if let id = setIDs[set] {
                nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_LOOKUP_SET_ID), id)
            }
            if flags != 0 {
                nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_LOOKUP_FLAGS), flags)
            }
            return expression
        case .verdict(let code):
            guard let expression = new("immediate") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_IMM_DREG), K.regVerdict)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: code))
            return expression
        case .immediate(let dreg, let data):
            guard let expression = new("immediate") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_IMM_DREG), dreg)
            setData(expression, NFTNL_EXPR_IMM_DATA, data)
            return expression
        case .redirect(let register, let flags):
            guard let expression = new("redir") else { return nil }
            if register != 0 {
                nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_REDIR_REG_PROTO_MIN), register)
            }
            if flags != 0 {
                nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_REDIR_FLAGS), flags)
            }
            return expression
        case .fib(let flags, let result, let dreg):
            guard let expression = new("fib") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_FIB_DREG), dreg)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_FIB_RESULT), result)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_FIB_FLAGS), flags)
            return expression
        case .nat(let type, let family, let register, let flags):
            guard let expression = new("nat") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_NAT_TYPE), type)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_NAT_FAMILY), family)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_NAT_REG_ADDR_MIN), register)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_NAT_REG_ADDR_MAX), register)
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_NAT_FLAGS), flags)
            return expression
        case .reject(let type, let code):
            guard let expression = new("reject") else { return nil }
            nftnl_expr_set_u32(expression, attribute(NFTNL_EXPR_REJECT_TYPE), type)
            nftnl_expr_set_u8(expression, attribute(NFTNL_EXPR_REJECT_CODE), code)
            return expression
        case .other:
            return nil
        }
    }
}

// MARK: - Objects

/// Owners of libnftnl objects. Each frees its object when it goes away.
final class NftnlTable {
    let pointer: OpaquePointer
    init() throws(NetfilterError) {
        guard let pointer = nftnl_table_alloc() else { throw .outOfMemory }
        self.pointer = pointer
    }
    deinit { nftnl_table_free(pointer) }
}

final class NftnlChain {
    let pointer: OpaquePointer
    init() throws(NetfilterError) {
        guard let pointer = nftnl_chain_alloc() else { throw .outOfMemory }
        self.pointer = pointer
    }
    deinit { nftnl_chain_free(pointer) }
}

final class NftnlRule {
    let pointer: OpaquePointer
    init() throws(NetfilterError) {
        guard let pointer = nftnl_rule_alloc() else { throw .outOfMemory }
        self.pointer = pointer
    }
    deinit { nftnl_rule_free(pointer) }

    /// libnftnl's text for the rule, as in `nft --debug=netlink`.
    var text: String {
        render { nftnl_rule_snprintf($0, $1, pointer, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0) }
    }
}

final class NftnlSet {
    let pointer: OpaquePointer
    init() throws(NetfilterError) {
        guard let pointer = nftnl_set_alloc() else { throw .outOfMemory }
        self.pointer = pointer
    }
    deinit { nftnl_set_free(pointer) }

    /// Adds elements by key. Fails only when libnftnl cannot allocate.
    func add(keys: [[UInt8]]) throws(NetfilterError) {
        for key in keys {
            guard let element = nftnl_set_elem_alloc() else { throw .outOfMemory }
            key.withUnsafeBytes { raw in
                _ = nftnl_set_elem_set(element, attribute(NFTNL_SET_ELEM_KEY), raw.baseAddress, UInt32(key.count))
            }
            nftnl_set_elem_add(pointer, element)
        }
    }
}

func setUserData(_ data: [UInt8], _ setter: (UnsafeRawPointer?, UInt32) -> Void) {
    guard !data.isEmpty else { return }
    data.withUnsafeBytes { raw in setter(raw.baseAddress, UInt32(data.count)) }
}

extension NFT.Table {
    func makeNftnlTable() throws(NetfilterError) -> NftnlTable {
        let table = try NftnlTable()
        _ = nftnl_table_set_str(table.pointer, attribute(NFTNL_TABLE_NAME), name)
        nftnl_table_set_u32(table.pointer, attribute(NFTNL_TABLE_FAMILY), UInt32(family.protocolNumber))
        nftnl_table_set_u32(table.pointer, attribute(NFTNL_TABLE_FLAGS), 0)
        if let comment {
            let data = UserData.encode([(UInt8(NFTNL_UDATA_TABLE_COMMENT.rawValue), UserData.strz(comment))])
            setUserData(data) { _ = nftnl_table_set_data(table.pointer, attribute(NFTNL_TABLE_USERDATA), $0, $1) }
        }
        return table
    }

    /// A table object carrying only family and name, to address the table.
    static func nftnlReference(name: String, family: NFT.Family) throws(NetfilterError) -> NftnlTable {
        let table = try NftnlTable()
        _ = nftnl_table_set_str(table.pointer, attribute(NFTNL_TABLE_NAME), name)
        nftnl_table_set_u32(table.pointer, attribute(NFTNL_TABLE_FAMILY), UInt32(family.protocolNumber))
        return table
    }
}

extension NFT.Chain {
    func makeNftnlChain(table: String, family: NFT.Family) throws(NetfilterError) -> NftnlChain {
        let chain = try NftnlChain()
        _ = nftnl_chain_set_str(chain.pointer, attribute(NFTNL_CHAIN_TABLE), table)
        _ = nftnl_chain_set_str(chain.pointer, attribute(NFTNL_CHAIN_NAME), name)
        nftnl_chain_set_u32(chain.pointer, attribute(NFTNL_CHAIN_FAMILY), UInt32(family.protocolNumber))
        if let base {
            nftnl_chain_set_u32(chain.pointer, attribute(NFTNL_CHAIN_HOOKNUM), base.hook.number)
            nftnl_chain_set_s32(chain.pointer, attribute(NFTNL_CHAIN_PRIO), base.priority)
            _ = nftnl_chain_set_str(chain.pointer, attribute(NFTNL_CHAIN_TYPE), base.type.rawValue)
            nftnl_chain_set_u32(chain.pointer, attribute(NFTNL_CHAIN_POLICY), base.policy.verdict)
        }
        if let comment {
            let data = UserData.encode([(UInt8(NFTNL_UDATA_CHAIN_COMMENT.rawValue), UserData.strz(comment))])
            setUserData(data) { _ = nftnl_chain_set_data(chain.pointer, attribute(NFTNL_CHAIN_USERDATA), $0, $1) }
        }
        return chain
    }
}

extension NFT.NamedSet {
    /// The set as nft creates it: no flags, nft's key type id and length, and user
    /// data with the key byte order followed by the comment.
    func makeNftnlSet(table: String, family: NFT.Family, id: UInt32?) throws(NetfilterError) -> NftnlSet {
        let set = try NftnlSet()
        _ = nftnl_set_set_str(set.pointer, attribute(NFTNL_SET_TABLE), table)
        _ = nftnl_set_set_str(set.pointer, attribute(NFTNL_SET_NAME), name)
        nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_FAMILY), UInt32(family.protocolNumber))
        nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_FLAGS), 0)
        nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_KEY_TYPE), keyType.typeID)
        nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_KEY_LEN), UInt32(keyType.keyLength))
        if let id {
            nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_ID), id)
        }
        var entries: [(type: UInt8, value: [UInt8])] = [(UInt8(NFTNL_UDATA_SET_KEYBYTEORDER.rawValue), UserData.u32(keyType.byteOrder))]
        if let comment {
            entries.append((UInt8(NFTNL_UDATA_SET_COMMENT.rawValue), UserData.strz(comment)))
        }
        setUserData(UserData.encode(entries)) { _ = nftnl_set_set_data(set.pointer, attribute(NFTNL_SET_USERDATA), $0, $1) }
        return set
    }

    /// A set object carrying only what addresses the set, for element messages.
    static func nftnlReference(name: String, table: String, family: NFT.Family, id: UInt32? = nil) throws(NetfilterError) -> NftnlSet {
        let set = try NftnlSet()
        _ = nftnl_set_set_str(set.pointer, attribute(NFTNL_SET_TABLE), table)
        _ = nftnl_set_set_str(set.pointer, attribute(NFTNL_SET_NAME), name)
        nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_FAMILY), UInt32(family.protocolNumber))
        if let id {
            nftnl_set_set_u32(set.pointer, attribute(NFTNL_SET_ID), id)
        }
        return set
    }
}

extension NFT.Rule {
    /// The rule as a libnftnl object, with the comment as nft writes it.
    func makeNftnlRule(table: String, chain: String, family: NFT.Family, setIDs: [String: UInt32] = [:]) throws(NetfilterError) -> NftnlRule {
        try Self.makeNftnlRule(lowered(family: family), comment: comment, table: table, chain: chain, family: family, setIDs: setIDs)
    }

    static func makeNftnlRule(
        _ expressions: [LowExpr], comment: String, table: String, chain: String, family: NFT.Family, setIDs: [String: UInt32] = [:]
    ) throws(NetfilterError) -> NftnlRule {
        let rule = try NftnlRule()
        _ = nftnl_rule_set_str(rule.pointer, attribute(NFTNL_RULE_TABLE), table)
        _ = nftnl_rule_set_str(rule.pointer, attribute(NFTNL_RULE_CHAIN), chain)
        nftnl_rule_set_u32(rule.pointer, attribute(NFTNL_RULE_FAMILY), UInt32(family.protocolNumber))
        for low in expressions {
            guard let expression = low.makeNftnl(setIDs: setIDs) else {
                throw .invalidRuleset("cannot build expression \(low) of rule \(quoted(comment))")
            }
            nftnl_rule_add_expr(rule.pointer, expression)
        }
        if !comment.isEmpty {
            let data = UserData.encode([(UInt8(NFTNL_UDATA_RULE_COMMENT.rawValue), UserData.strz(comment))])
            setUserData(data) { _ = nftnl_rule_set_data(rule.pointer, attribute(NFTNL_RULE_USERDATA), $0, $1) }
        }
        return rule
    }

    /// libnftnl's debug text for the rule, the same lines `nft --debug=netlink` prints.
    public func libnftnlText(table: String = "t", chain: String = "c", family: NFT.Family = .inet) throws(NetfilterError) -> String {
        try makeNftnlRule(table: table, chain: chain, family: family).text
    }
}

// MARK: - Messages

/// The libnftnl object whose attributes make up a message's payload.
enum NftnlPayload {
    case table(NftnlTable)
    case chain(NftnlChain)
    case rule(NftnlRule)
    case set(NftnlSet)
    /// The set's elements (the set object carries the set's name and table).
    case setElements(NftnlSet)

    fileprivate func build(into header: UnsafeMutablePointer<nlmsghdr>) {
        switch self {
        case .table(let table): nftnl_table_nlmsg_build_payload(header, table.pointer)
        case .chain(let chain): nftnl_chain_nlmsg_build_payload(header, chain.pointer)
        case .rule(let rule): nftnl_rule_nlmsg_build_payload(header, rule.pointer)
        case .set(let set): nftnl_set_nlmsg_build_payload(header, set.pointer)
        case .setElements(let set): nftnl_set_elems_nlmsg_build_payload(header, set.pointer)
        }
    }
}

/// Encodes nf_tables messages with libnftnl, each into bytes of its own.
///
/// libnftnl writes messages into a caller's buffer without knowing its size,
/// so every message is built in a scratch buffer far larger than any message
/// the client makes: rules have at most 64 expressions and element lists are
/// sent in chunks of ``BatchBuilder/elementsPerMessage``.
final class NftnlEncoder {
    static let scratchSize = 1 << 18

    private let scratch: UnsafeMutableRawPointer

    init() {
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.scratchSize, alignment: 8)
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: Self.scratchSize)
    }

    deinit { scratch.deallocate() }

    private var buffer: UnsafeMutablePointer<CChar> { scratch.assumingMemoryBound(to: CChar.self) }

    /// One nf_tables message: `type` is an NFT_MSG_* number, `family` the
    /// NFPROTO_* number, `flags` the NLM_F_* flags besides NLM_F_REQUEST.
    func message(_ type: UInt32, family: UInt8, flags: Int32, sequence: UInt32, payload: NftnlPayload?) throws(NetfilterError) -> [UInt8] {
        guard
            let header = nftnl_nlmsg_build_hdr(
                buffer, UInt16(truncatingIfNeeded: type), UInt16(family), UInt16(truncatingIfNeeded: flags), sequence)
        else { throw .outOfMemory }
        payload?.build(into: header)
        return bytes(of: header)
    }

    /// The message that opens a batch (a transaction).
    func batchBegin(sequence: UInt32) throws(NetfilterError) -> [UInt8] {
        guard let header = nftnl_batch_begin(buffer, sequence) else { throw .outOfMemory }
        return bytes(of: header)
    }

    /// The message that commits a batch.
    func batchEnd(sequence: UInt32) throws(NetfilterError) -> [UInt8] {
        guard let header = nftnl_batch_end(buffer, sequence) else { throw .outOfMemory }
        return bytes(of: header)
    }

    /// The message's bytes, padded to 4 so that messages can follow each other.
    private func bytes(of header: UnsafeMutablePointer<nlmsghdr>) -> [UInt8] {
        let length = min(Int(header.pointee.nlmsg_len), Self.scratchSize)
        let aligned = (length + 3) & ~3
        return Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(header), count: length))
            + [UInt8](repeating: 0, count: aligned - length)
    }
}
