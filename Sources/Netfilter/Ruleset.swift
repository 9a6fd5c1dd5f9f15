import CNetlink
import Glibc
import LinuxNet

/// nftables rulesets as plain values.
///
/// A ``NFT/Table`` is what the agent wants the kernel to hold. It is pure data:
/// building one never touches the kernel, and ``NetfilterClient`` installs it as a
/// whole in one transaction. Expressions are a small vocabulary, each lowered to
/// exactly the libnftnl expressions `nft` emits for the same text, so that
/// `nft list table` prints the rules back in their readable form.
public enum NFT {
    /// Address families of nftables tables.
    public enum Family: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case inet
        case ip
        case ip6

        /// The `NFPROTO_*` number used in the netlink header.
        public var protocolNumber: UInt8 {
            switch self {
            case .inet: return 1  // NFPROTO_INET
            case .ip: return 2  // NFPROTO_IPV4
            case .ip6: return 10  // NFPROTO_IPV6
            }
        }

        public init?(protocolNumber: UInt8) {
            guard let family = Family.allCases.first(where: { $0.protocolNumber == protocolNumber }) else {
                return nil
            }
            self = family
        }

        public var description: String { rawValue }
    }

    /// One table and everything in it, in the order it is created and listed.
    public struct Table: Hashable, Sendable, CustomStringConvertible {
        public var family: Family
        public var name: String
        public var comment: String?
        public var sets: [NamedSet]
        public var chains: [Chain]

        public init(family: Family = .inet, name: String, comment: String? = nil, sets: [NamedSet] = [], chains: [Chain] = []) {
            self.family = family
            self.name = name
            self.comment = comment
            self.sets = sets
            self.chains = chains
        }

        public func set(named name: String) -> NamedSet? { sets.first { $0.name == name } }
        public func chain(named name: String) -> Chain? { chains.first { $0.name == name } }

        /// The table in `nft` syntax, laid out like `nft list table` prints it
        /// (cgroup elements are shown as ids, not paths).
        public var description: String {
            var lines = ["table \(family) \(name) {"]
            if let comment { lines.append("\tcomment \(quoted(comment))") }
            var blocks: [[String]] = []
            for set in sets {
                var block = ["\tset \(set.name) {", "\t\ttype \(set.keyType)"]
                if let comment = set.comment { block.append("\t\tcomment \(quoted(comment))") }
                if !set.elements.isEmpty {
                    block.append("\t\telements = { \(set.elements.sorted().map(\.description).joined(separator: ", ")) }")
                }
                block.append("\t}")
                blocks.append(block)
            }
            for chain in chains {
                var block = ["\tchain \(chain.name) {"]
                if let comment = chain.comment { block.append("\t\tcomment \(quoted(comment))") }
                if let base = chain.base { block.append("\t\t\(base)") }
                block += chain.rules.map { "\t\t\($0)" }
                block.append("\t}")
                blocks.append(block)
            }
            for (index, block) in blocks.enumerated() {
                if index > 0 { lines.append("") }
                lines += block
            }
            lines.append("}")
            return lines.joined(separator: "\n")
        }
    }

    /// A named set: membership as data, so that adding a workload is a set-element
    /// update and never a ruleset rewrite.
    public struct NamedSet: Hashable, Sendable {
        public var name: String
        public var keyType: SetKeyType
        public var comment: String?
        public var elements: Set<SetElement>

        public init(name: String, keyType: SetKeyType, comment: String? = nil, elements: Set<SetElement> = []) {
            self.name = name
            self.keyType = keyType
            self.comment = comment
            self.elements = elements
        }
    }

    /// Key types of sets, with the numbers `nft` gives its data types.
    public enum SetKeyType: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case cgroupsv2
        case inetService = "inet_service"
        case ipv4Address = "ipv4_addr"
        case ipv6Address = "ipv6_addr"

        /// nft's datatype id (`TYPE_*` in nftables' datatype.h), stored in the set's
        /// `NFTA_SET_KEY_TYPE`; verified by reading back sets created by nft 1.0.6.
        public var typeID: UInt32 {
            switch self {
            case .ipv4Address: return 7
            case .ipv6Address: return 8
            case .inetService: return 13
            case .cgroupsv2: return 46
            }
        }

        public var keyLength: Int {
            switch self {
            case .ipv4Address: return 4
            case .ipv6Address: return 16
            case .inetService: return 2
            case .cgroupsv2: return 8
            }
        }

        /// nft's byte order of the key (1 host, 2 big endian), kept in the set's user
        /// data as `NFTNL_UDATA_SET_KEYBYTEORDER` exactly as nft writes it.
        var byteOrder: UInt32 {
            self == .cgroupsv2 ? 1 : 2
        }

        public init?(typeID: UInt32, keyLength: Int) {
            guard let type = SetKeyType.allCases.first(where: { $0.typeID == typeID && $0.keyLength == keyLength }) else {
                return nil
            }
            self = type
        }

        public var description: String { rawValue }
    }

    /// A set element, typed by the set it belongs to.
    public enum SetElement: Hashable, Sendable, Comparable, CustomStringConvertible {
        case cgroup(CgroupID)
        case port(UInt16)
        case ipv4(IPv4Address)
        case ipv6(IPv6Address)

        public var keyType: SetKeyType {
            switch self {
            case .cgroup: return .cgroupsv2
            case .port: return .inetService
            case .ipv4: return .ipv4Address
            case .ipv6: return .ipv6Address
            }
        }

        /// The key as the kernel stores it: cgroup ids in host byte order (nft's
        /// cgroupsv2 type is a host-endian 64-bit integer), the rest in network order.
        public var keyBytes: [UInt8] {
            switch self {
            case .cgroup(let id): return hostBytes(id.rawValue)
            case .port(let port): return [UInt8(port >> 8), UInt8(port & 0xff)]
            case .ipv4(let address): return address.bytes
            case .ipv6(let address): return address.bytes
            }
        }

        public init?(keyType: SetKeyType, keyBytes: [UInt8]) {
            guard keyBytes.count == keyType.keyLength else { return nil }
            switch keyType {
            case .cgroupsv2:
                var value: UInt64 = 0
                withUnsafeMutableBytes(of: &value) { raw in
                    for (index, byte) in keyBytes.enumerated() { raw[index] = byte }
                }
                self = .cgroup(CgroupID(value))
            case .inetService:
                self = .port(UInt16(keyBytes[0]) << 8 | UInt16(keyBytes[1]))
            case .ipv4Address:
                guard let address = IPv4Address(bytes: keyBytes) else { return nil }
                self = .ipv4(address)
            case .ipv6Address:
                guard let address = IPv6Address(bytes: keyBytes) else { return nil }
                self = .ipv6(address)
            }
        }

        public var description: String {
            switch self {
            case .cgroup(let id): return id.description
            case .port(let port): return String(port)
            case .ipv4(let address): return address.description
            case .ipv6(let address): return address.description
            }
        }

        public static func < (lhs: SetElement, rhs: SetElement) -> Bool {
            func rank(_ element: SetElement) -> Int {
                switch element {
                case .cgroup: return 0
                case .port: return 1
                case .ipv4: return 2
                case .ipv6: return 3
                }
            }
            switch (lhs, rhs) {
            case (.cgroup(let a), .cgroup(let b)): return a < b
            case (.port(let a), .port(let b)): return a < b
            case (.ipv4(let a), .ipv4(let b)): return a < b
            case (.ipv6(let a), .ipv6(let b)): return a < b
            default: return rank(lhs) < rank(rhs)
            }
        }
    }

    /// Elements to add to or remove from one set, as one step of
    /// ``NetfilterClient/updateElements(_:inTable:family:)``.
    public struct SetElementChange: Hashable, Sendable {
        public enum Action: Hashable, Sendable {
            case add
            case remove
        }

        /// The name of the set, in the table the update applies to.
        public var set: String
        public var action: Action
        public var elements: [SetElement]

        public init(set: String, action: Action, elements: [SetElement]) {
            self.set = set
            self.action = action
            self.elements = elements
        }

        public static func add(_ elements: [SetElement], to set: String) -> SetElementChange {
            SetElementChange(set: set, action: .add, elements: elements)
        }

        public static func remove(_ elements: [SetElement], from set: String) -> SetElementChange {
            SetElementChange(set: set, action: .remove, elements: elements)
        }
    }

    /// An IPv4 address; `rawValue` holds a.b.c.d as the number a·2²⁴ + b·2¹⁶ + c·2⁸ + d.
    public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
        public var rawValue: UInt32

        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
            rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
        }

        public init?(bytes: [UInt8]) {
            guard bytes.count == 4 else { return nil }
            self.init(bytes[0], bytes[1], bytes[2], bytes[3])
        }

        /// Parses dotted-quad text ("127.0.0.1").
        public init?(_ text: String) {
            var address = in_addr()
            guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
            rawValue = UInt32(bigEndian: address.s_addr)
        }

        /// Network byte order.
        public var bytes: [UInt8] {
            [UInt8(rawValue >> 24), UInt8((rawValue >> 16) & 0xff), UInt8((rawValue >> 8) & 0xff), UInt8(rawValue & 0xff)]
        }

        public var description: String { bytes.map(String.init).joined(separator: ".") }

        public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// An IPv6 address, as its 16 bytes in network order split in two halves.
    public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
        public var high: UInt64
        public var low: UInt64

        public init(high: UInt64, low: UInt64) {
            self.high = high
            self.low = low
        }

        public init?(bytes: [UInt8]) {
            guard bytes.count == 16 else { return nil }
            high = bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
            low = bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
        }

        /// Parses any textual form `inet_pton` accepts ("::1", "fd00::/8" is not an address).
        public init?(_ text: String) {
            var address = in6_addr()
            guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &address) { Array($0) }
            self.init(bytes: bytes)
        }

        public static let loopback = IPv6Address(high: 0, low: 1)

        public var bytes: [UInt8] {
            (0..<8).map { UInt8((high >> (56 - 8 * UInt64($0))) & 0xff) }
                + (0..<8).map { UInt8((low >> (56 - 8 * UInt64($0))) & 0xff) }
        }

        public var description: String {
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { raw in
                for (index, byte) in bytes.enumerated() { raw[index] = byte }
            }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            guard inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count)) != nil else {
                return bytes.map { String($0, radix: 16) }.joined(separator: ":")
            }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }

        public static func < (lhs: IPv6Address, rhs: IPv6Address) -> Bool {
            (lhs.high, lhs.low) < (rhs.high, rhs.low)
        }
    }

    /// A chain. Base chains (`base != nil`) are attached to a netfilter hook;
    /// regular chains are only reached by jumps.
    public struct Chain: Hashable, Sendable {
        public var name: String
        public var base: BaseChain?
        public var comment: String?
        public var rules: [Rule]

        public init(name: String, base: BaseChain? = nil, comment: String? = nil, rules: [Rule] = []) {
            self.name = name
            self.base = base
            self.comment = comment
            self.rules = rules
        }
    }

    /// How a base chain is attached: `type nat hook output priority -100; policy accept;`.
    public struct BaseChain: Hashable, Sendable, CustomStringConvertible {
        public var type: ChainType
        public var hook: Hook
        public var priority: Int32
        public var policy: Policy

        public init(type: ChainType, hook: Hook, priority: Int32, policy: Policy = .accept) {
            self.type = type
            self.hook = hook
            self.priority = priority
            self.policy = policy
        }

        public var description: String {
            "type \(type.rawValue) hook \(hook.rawValue) priority \(priority); policy \(policy.rawValue);"
        }
    }

    public enum ChainType: String, Hashable, Sendable, CaseIterable {
        case filter
        case nat
        case route
    }

    public enum Hook: String, Hashable, Sendable, CaseIterable {
        case prerouting
        case input
        case forward
        case output
        case postrouting

        /// `NF_INET_*` hook number.
        public var number: UInt32 {
            switch self {
            case .prerouting: return 0
            case .input: return 1
            case .forward: return 2
            case .output: return 3
            case .postrouting: return 4
            }
        }

        public init?(number: UInt32) {
            guard let hook = Hook.allCases.first(where: { $0.number == number }) else { return nil }
            self = hook
        }
    }

    public enum Policy: String, Hashable, Sendable, CaseIterable {
        case accept
        case drop

        /// The netfilter verdict the kernel stores (`NF_ACCEPT` 1, `NF_DROP` 0).
        public var verdict: UInt32 { self == .accept ? 1 : 0 }

        public init?(verdict: UInt32) {
            switch verdict {
            case 1: self = .accept
            case 0: self = .drop
            default: return nil
            }
        }
    }

    /// Standard chain priorities. nft 1.0.6 accepts the name `dstnat` only in the
    /// prerouting hook, so an output nat chain is written with the number (-100).
    public enum Priority {
        public static let dstnat: Int32 = -100
        public static let filter: Int32 = 0
        public static let srcnat: Int32 = 100
    }

    /// A rule: matches and statements evaluated left to right, and the comment that
    /// says why it exists (shown by `nft list` as `comment "..."`).
    public struct Rule: Hashable, Sendable, CustomStringConvertible {
        public var expressions: [Expression]
        public var comment: String

        public init(_ expressions: [Expression], comment: String) {
            self.expressions = expressions
            self.comment = comment
        }

        /// The rule in `nft` syntax.
        public var description: String {
            var words = expressions.map(\.description)
            if !comment.isEmpty { words.append("comment \(quoted(comment))") }
            return words.joined(separator: " ")
        }
    }

    public enum L4Protocol: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case tcp = 6
        case udp = 17

        public var description: String { self == .tcp ? "tcp" : "udp" }
    }

    /// The rule vocabulary. Matches first, then statements and verdicts.
    public enum Expression: Hashable, Sendable, CustomStringConvertible {
        /// `meta mark & MASK == VALUE` (`meta mark VALUE` when the mask is all ones).
        case markMasked(mask: UInt32, equals: UInt32)
        /// `meta l4proto tcp`
        case l4proto(L4Protocol)
        /// `meta l4proto != tcp`
        case l4protoNot(L4Protocol)
        /// `ip daddr PREFIX/LENGTH` (`ip daddr ADDRESS` for length 32).
        case ipv4DestinationIn(prefix: IPv4Address, length: Int)
        /// `ip daddr != PREFIX/LENGTH`
        case ipv4DestinationNotIn(prefix: IPv4Address, length: Int)
        /// `ip6 daddr PREFIX/LENGTH` (`ip6 daddr ADDRESS` for length 128).
        case ipv6DestinationIn(prefix: IPv6Address, length: Int)
        /// `ip6 daddr != PREFIX/LENGTH`
        case ipv6DestinationNotIn(prefix: IPv6Address, length: Int)
        /// `ip saddr PREFIX/LENGTH` (`ip saddr ADDRESS` for length 32).
        case ipv4SourceIn(prefix: IPv4Address, length: Int)
        /// `ip6 saddr PREFIX/LENGTH` (`ip6 saddr ADDRESS` for length 128).
        case ipv6SourceIn(prefix: IPv6Address, length: Int)
        /// `ip daddr @SET` (a set of type ipv4_addr)
        case ipv4DestinationInSet(String)
        /// `ip6 daddr @SET` (a set of type ipv6_addr)
        case ipv6DestinationInSet(String)
        /// `socket cgroupv2 level N @SET`: the socket's cgroup ancestor at depth N
        /// below the cgroup v2 root is in SET (a set of type cgroupsv2).
        case socketCgroupV2(level: Int, inSet: String)
        /// `iifname "NAME"`
        case inputInterface(String)
        /// `iifname != "NAME"`
        case inputInterfaceNot(String)
        /// `tcp dport PORT`
        case tcpDestinationPort(UInt16)
        /// `tcp dport @SET` (a set of type inet_service)
        case tcpDestinationPortInSet(String)
        /// `accept`
        case accept
        /// `drop`
        case drop
        /// `return`
        case `return`
        /// `redirect to :PORT` (needs a TCP or UDP match earlier in the rule).
        case redirect(toPort: UInt16)
        /// `reject with tcp reset`
        case rejectTCPReset
        /// `fib saddr type local`: the packet's source is one of this
        /// namespace's own addresses (it was made here, not forwarded).
        case sourceAddressIsLocal
        /// `snat ip to ADDRESS` (in a nat chain of the postrouting hook).
        case snatIPv4(IPv4Address)
        /// `snat ip6 to ADDRESS`
        case snatIPv6(IPv6Address)

        /// `ip daddr ADDRESS`
        public static func ipv4DestinationEquals(_ address: IPv4Address) -> Expression {
            .ipv4DestinationIn(prefix: address, length: 32)
        }

        /// `ip6 daddr ADDRESS`
        public static func ipv6DestinationEquals(_ address: IPv6Address) -> Expression {
            .ipv6DestinationIn(prefix: address, length: 128)
        }

        /// The set this expression looks up, if any, and the key type it needs.
        public var setReference: (name: String, keyType: SetKeyType)? {
            switch self {
            case .ipv4DestinationInSet(let name): return (name, .ipv4Address)
            case .ipv6DestinationInSet(let name): return (name, .ipv6Address)
            case .socketCgroupV2(_, let name): return (name, .cgroupsv2)
            case .tcpDestinationPortInSet(let name): return (name, .inetService)
            default: return nil
            }
        }

        public var description: String {
            switch self {
            case .markMasked(let mask, let value):
                return mask == .max ? "meta mark \(hex32(value))" : "meta mark & \(hex32(mask)) == \(hex32(value))"
            case .l4proto(let proto): return "meta l4proto \(proto)"
            case .l4protoNot(let proto): return "meta l4proto != \(proto)"
            case .ipv4DestinationIn(let prefix, let length):
                return "ip daddr \(prefixText(prefix.description, length, full: 32))"
            case .ipv4DestinationNotIn(let prefix, let length):
                return "ip daddr != \(prefixText(prefix.description, length, full: 32))"
            case .ipv6DestinationIn(let prefix, let length):
                return "ip6 daddr \(prefixText(prefix.description, length, full: 128))"
            case .ipv6DestinationNotIn(let prefix, let length):
                return "ip6 daddr != \(prefixText(prefix.description, length, full: 128))"
            case .ipv4SourceIn(let prefix, let length):
                return "ip saddr \(prefixText(prefix.description, length, full: 32))"
            case .ipv6SourceIn(let prefix, let length):
                return "ip6 saddr \(prefixText(prefix.description, length, full: 128))"
            case .ipv4DestinationInSet(let set): return "ip daddr @\(set)"
            case .ipv6DestinationInSet(let set): return "ip6 daddr @\(set)"
            case .socketCgroupV2(let level, let set): return "socket cgroupv2 level \(level) @\(set)"
            case .inputInterface(let name): return "iifname \(quoted(name))"
            case .inputInterfaceNot(let name): return "iifname != \(quoted(name))"
            case .tcpDestinationPort(let port): return "tcp dport \(port)"
            case .tcpDestinationPortInSet(let set): return "tcp dport @\(set)"
            case .accept: return "accept"
            case .drop: return "drop"
            case .return: return "return"
            case .redirect(let port): return "redirect to :\(port)"
            case .rejectTCPReset: return "reject with tcp reset"
            case .sourceAddressIsLocal: return "fib saddr type local"
            case .snatIPv4(let address): return "snat ip to \(address)"
            case .snatIPv6(let address): return "snat ip6 to \(address)"
            }
        }
    }
}

// MARK: - Helpers

func quoted(_ text: String) -> String {
    var result = "\""
    for character in text {
        if character == "\"" || character == "\\" { result.append("\\") }
        result.append(character)
    }
    return result + "\""
}

func hex32(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

private func prefixText(_ address: String, _ length: Int, full: Int) -> String {
    length == full ? address : "\(address)/\(length)"
}

func hostBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}
