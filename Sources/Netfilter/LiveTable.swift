/// A table as the kernel holds it, read back with netlink dumps.
public struct LiveTable: Hashable, Sendable, CustomStringConvertible {
    public var family: NFT.Family
    public var name: String
    public var handle: UInt64
    public var comment: String?
    public var sets: [LiveSet]
    public var chains: [LiveChain]
    /// The ruleset generation the snapshot is consistent with.
    public var generation: UInt32

    public init(
        family: NFT.Family, name: String, handle: UInt64 = 0, comment: String? = nil, sets: [LiveSet] = [], chains: [LiveChain] = [],
        generation: UInt32 = 0
    ) {
        self.family = family
        self.name = name
        self.handle = handle
        self.comment = comment
        self.sets = sets
        self.chains = chains
        self.generation = generation
    }

    public func set(named name: String) -> LiveSet? { sets.first { $0.name == name } }
    public func chain(named name: String) -> LiveChain? { chains.first { $0.name == name } }

    /// The live table in the rule vocabulary, or nil if something in it (a rule, a
    /// set type, a chain hook) cannot be expressed there.
    public var table: NFT.Table? {
        var result = NFT.Table(family: family, name: name, comment: comment)
        for set in sets {
            guard let keyType = set.keyType, set.flags == 0, set.elements.count == set.elementKeys.count else { return nil }
            result.sets.append(NFT.NamedSet(name: set.name, keyType: keyType, comment: set.comment, elements: set.elements))
        }
        for chain in chains {
            guard chain.isBase == (chain.base != nil) else { return nil }
            var rules: [NFT.Rule] = []
            for rule in chain.rules {
                guard let expressions = rule.expressions else { return nil }
                rules.append(NFT.Rule(expressions, comment: rule.comment ?? ""))
            }
            result.chains.append(NFT.Chain(name: chain.name, base: chain.base, comment: chain.comment, rules: rules))
        }
        return result
    }

    /// Like `nft -a list table`, with libnftnl's expression text for rules outside
    /// the vocabulary.
    public var description: String {
        var lines = ["table \(family) \(name) { # handle \(handle)"]
        if let comment { lines.append("\tcomment \(quoted(comment))") }
        for set in sets {
            lines.append("\tset \(set.name) { # handle \(set.handle)")
            lines.append("\t\ttype \(set.keyType?.description ?? "type-id \(set.keyTypeID) length \(set.keyLength)")")
            if set.flags != 0 { lines.append("\t\tflags 0x\(String(set.flags, radix: 16))") }
            if let comment = set.comment { lines.append("\t\tcomment \(quoted(comment))") }
            if !set.elementKeys.isEmpty {
                let shown = set.elements.sorted().map(\.description)
                    + set.elementKeys.filter { key in !set.elements.contains { $0.keyBytes == key } }.map(hexKey)
                lines.append("\t\telements = { \(shown.joined(separator: ", ")) }")
            }
            lines.append("\t}")
        }
        for chain in chains {
            lines.append("\tchain \(chain.name) { # handle \(chain.handle)")
            if let comment = chain.comment { lines.append("\t\tcomment \(quoted(comment))") }
            if chain.isBase { lines.append("\t\t\(chain.baseDescription)") }
            for rule in chain.rules { lines.append("\t\t\(rule) # handle \(rule.handle)") }
            lines.append("\t}")
        }
        lines.append("}")
        return lines.joined(separator: "\n")
    }
}

public struct LiveSet: Hashable, Sendable {
    public var name: String
    public var handle: UInt64
    public var keyTypeID: UInt32
    public var keyLength: UInt32
    public var flags: UInt32
    public var comment: String?
    /// The raw keys of all elements.
    public var elementKeys: Set<[UInt8]>

    public init(name: String, handle: UInt64 = 0, keyTypeID: UInt32, keyLength: UInt32, flags: UInt32 = 0, comment: String? = nil, elementKeys: Set<[UInt8]> = []) {
        self.name = name
        self.handle = handle
        self.keyTypeID = keyTypeID
        self.keyLength = keyLength
        self.flags = flags
        self.comment = comment
        self.elementKeys = elementKeys
    }

    /// The key type, if it is one the vocabulary knows.
    public var keyType: NFT.SetKeyType? { NFT.SetKeyType(typeID: keyTypeID, keyLength: Int(keyLength)) }

    /// The elements, decoded by the key type (those that decode).
    public var elements: Set<NFT.SetElement> {
        guard let keyType else { return [] }
        return Set(elementKeys.compactMap { NFT.SetElement(keyType: keyType, keyBytes: $0) })
    }
}

public struct LiveChain: Hashable, Sendable {
    public var name: String
    public var handle: UInt64
    /// Base chain attributes as the kernel reports them (nil for a regular chain).
    public var type: String?
    public var hookNumber: UInt32?
    public var priority: Int32?
    public var policy: UInt32?
    public var comment: String?
    public var rules: [LiveRule]

    public init(
        name: String, handle: UInt64 = 0, type: String? = nil, hookNumber: UInt32? = nil, priority: Int32? = nil, policy: UInt32? = nil,
        comment: String? = nil, rules: [LiveRule] = []
    ) {
        self.name = name
        self.handle = handle
        self.type = type
        self.hookNumber = hookNumber
        self.priority = priority
        self.policy = policy
        self.comment = comment
        self.rules = rules
    }

    public var isBase: Bool { hookNumber != nil }

    /// The base chain in the vocabulary, when its type, hook and policy are known.
    public var base: NFT.BaseChain? {
        guard let type, let chainType = NFT.ChainType(rawValue: type), let hookNumber, let hook = NFT.Hook(number: hookNumber) else {
            return nil
        }
        guard let policy = NFT.Policy(verdict: policy ?? 1) else { return nil }
        return NFT.BaseChain(type: chainType, hook: hook, priority: priority ?? 0, policy: policy)
    }

    /// `type nat hook output priority -100; policy accept;`, with numbers for
    /// anything unknown; empty for a regular chain.
    public var baseDescription: String {
        guard let hookNumber else { return "" }
        if let base { return base.description }
        let hook = NFT.Hook(number: hookNumber)?.rawValue ?? "\(hookNumber)"
        let policyName = policy.flatMap { NFT.Policy(verdict: $0)?.rawValue } ?? policy.map { "verdict \($0)" } ?? "accept"
        return "type \(type ?? "?") hook \(hook) priority \(priority ?? 0); policy \(policyName);"
    }
}

public struct LiveRule: Hashable, Sendable, CustomStringConvertible {
    public var handle: UInt64
    public var comment: String?
    /// The rule in the vocabulary, nil when it uses anything outside it.
    public var expressions: [NFT.Expression]?
    /// The wire form, compared with the desired rule's.
    var lowered: [LowExpr]

    init(handle: UInt64, comment: String?, lowered: [LowExpr], family: NFT.Family) {
        self.handle = handle
        self.comment = comment
        self.lowered = lowered
        self.expressions = Decoder.expressions(from: lowered, family: family)
    }

    /// The rule's expressions in libnftnl's debug format (`[ meta load mark => reg 1 ]`),
    /// as `nft --debug=netlink` prints them.
    public var netlinkExpressions: [String] { lowered.map(\.description) }

    /// nft syntax when the rule is in the vocabulary, else libnftnl's text.
    public var description: String {
        if let expressions {
            return NFT.Rule(expressions, comment: comment ?? "").description
        }
        let body = netlinkExpressions.joined(separator: " ")
        return comment.map { "\(body) comment \(quoted($0))" } ?? body
    }
}

func hexKey(_ key: [UInt8]) -> String {
    "0x" + key.map { byte in
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }.joined()
}

// MARK: - Drift

/// How the live table differs from the desired one.
public enum Drift: Hashable, Sendable, CustomStringConvertible {
    case inSync
    /// The table does not exist.
    case missing
    /// One human-readable line per difference, e.g.
    /// `chain output: rule 3 is missing: ip daddr 127.0.0.0/8 return comment "…"`.
    case differs([String])

    public var description: String {
        switch self {
        case .inSync: return "in sync"
        case .missing: return "the table is missing"
        case .differs(let lines): return lines.joined(separator: "\n")
        }
    }

    /// How many elements of a set are listed before "and N more".
    static let elementsShown = 10

    /// Compares a desired table with a snapshot of the live one. Rules compare by
    /// their wire form (the libnftnl expressions) and comment; set elements as
    /// sets of keys.
    public static func between(desired: NFT.Table, live: LiveTable) -> Drift {
        var lines: [String] = []
        if desired.comment != live.comment {
            lines.append("table: comment is \(describe(live.comment)), want \(describe(desired.comment))")
        }
        for set in desired.sets {
            guard let liveSet = live.set(named: set.name) else {
                lines.append("set \(set.name): missing")
                continue
            }
            lines += differences(desired: set, live: liveSet)
        }
        for liveSet in live.sets where desired.set(named: liveSet.name) == nil {
            lines.append("set \(liveSet.name): not in the desired table")
        }
        for chain in desired.chains {
            guard let liveChain = live.chain(named: chain.name) else {
                lines.append("chain \(chain.name): missing")
                continue
            }
            lines += differences(desired: chain, live: liveChain, family: desired.family)
        }
        for liveChain in live.chains where desired.chain(named: liveChain.name) == nil {
            lines.append("chain \(liveChain.name): not in the desired table")
        }
        return lines.isEmpty ? .inSync : .differs(lines)
    }

    private static func differences(desired: NFT.NamedSet, live: LiveSet) -> [String] {
        let prefix = "set \(desired.name): "
        var lines: [String] = []
        if live.keyTypeID != desired.keyType.typeID || live.keyLength != UInt32(desired.keyType.keyLength) {
            let liveType = live.keyType?.description ?? "type id \(live.keyTypeID) (\(live.keyLength)-byte keys)"
            lines.append(prefix + "key type is \(liveType), want \(desired.keyType)")
            return lines
        }
        if live.flags != 0 {
            lines.append(prefix + "has flags 0x\(String(live.flags, radix: 16)), want none")
        }
        if live.comment != desired.comment {
            lines.append(prefix + "comment is \(describe(live.comment)), want \(describe(desired.comment))")
        }
        let desiredKeys = Set(desired.elements.map(\.keyBytes))
        let missing = desired.elements.filter { !live.elementKeys.contains($0.keyBytes) }.sorted()
        if !missing.isEmpty {
            lines.append(prefix + count(missing.count, "element") + " missing: " + list(missing.map(\.description)))
        }
        let unexpected = live.elementKeys.subtracting(desiredKeys)
        if !unexpected.isEmpty {
            let decoded = unexpected.compactMap { NFT.SetElement(keyType: desired.keyType, keyBytes: $0) }.sorted()
            let undecoded = unexpected.filter { NFT.SetElement(keyType: desired.keyType, keyBytes: $0) == nil }
                .sorted { $0.lexicographicallyPrecedes($1) }
            let shown = decoded.map(\.description) + undecoded.map(hexKey)
            lines.append(prefix + count(unexpected.count, "unexpected element") + ": " + list(shown))
        }
        return lines
    }

    private static func differences(desired: NFT.Chain, live: LiveChain, family: NFT.Family) -> [String] {
        let prefix = "chain \(desired.name): "
        var lines: [String] = []
        let wantBase = desired.base?.description ?? ""
        if live.baseDescription != wantBase {
            let liveText = live.isBase ? "\"\(live.baseDescription)\"" : "a regular chain"
            let wantText = desired.base == nil ? "a regular chain" : "\"\(wantBase)\""
            lines.append(prefix + "is \(liveText), want \(wantText)")
        }
        if live.comment != desired.comment {
            lines.append(prefix + "comment is \(describe(live.comment)), want \(describe(desired.comment))")
        }
        struct Key: Hashable {
            var lowered: [LowExpr]
            var comment: String
        }
        let want = desired.rules.map { Key(lowered: $0.lowered(family: family), comment: $0.comment) }
        let have = live.rules.map { Key(lowered: $0.lowered, comment: $0.comment ?? "") }
        guard want != have else { return lines }
        if want.count == have.count, Set(want) == Set(have),
            Dictionary(want.map { ($0, 1) }, uniquingKeysWith: +) == Dictionary(have.map { ($0, 1) }, uniquingKeysWith: +)
        {
            lines.append(prefix + "the rules are in a different order than desired")
            return lines
        }
        let (missing, unexpected) = unmatched(want, have)
        for index in missing {
            lines.append(prefix + "rule \(index + 1) is missing: \(desired.rules[index])")
        }
        for index in unexpected {
            let rule = live.rules[index]
            lines.append(prefix + "unexpected rule at position \(index + 1) (handle \(rule.handle)): \(rule)")
        }
        return lines
    }

    /// Indices outside a longest common subsequence of `a` and `b`.
    static func unmatched<T: Equatable>(_ a: [T], _ b: [T]) -> (inA: [Int], inB: [Int]) {
        var lengths = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in stride(from: a.count - 1, through: 0, by: -1) {
            for j in stride(from: b.count - 1, through: 0, by: -1) {
                lengths[i][j] = a[i] == b[j] ? lengths[i + 1][j + 1] + 1 : max(lengths[i + 1][j], lengths[i][j + 1])
            }
        }
        var onlyA: [Int] = []
        var onlyB: [Int] = []
        var i = 0
        var j = 0
        while i < a.count, j < b.count {
            if a[i] == b[j] {
                i += 1
                j += 1
            } else if lengths[i + 1][j] >= lengths[i][j + 1] {
                onlyA.append(i)
                i += 1
            } else {
                onlyB.append(j)
                j += 1
            }
        }
        onlyA += Array(i..<a.count)
        onlyB += Array(j..<b.count)
        return (onlyA, onlyB)
    }

    private static func describe(_ comment: String?) -> String {
        comment.map(quoted) ?? "none"
    }

    private static func count(_ number: Int, _ noun: String) -> String {
        "\(number) \(noun)\(number == 1 ? "" : "s")"
    }

    private static func list(_ items: [String]) -> String {
        let shown = items.prefix(elementsShown).joined(separator: ", ")
        return items.count > elementsShown ? shown + " and \(items.count - elementsShown) more" : shown
    }
}
