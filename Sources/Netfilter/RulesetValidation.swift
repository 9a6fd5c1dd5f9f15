import LinuxNet

extension NFT.Table {
    /// nft refuses comments longer than this (`NFTNL_UDATA_COMMENT_MAXLEN`).
    public static let maxCommentLength = 128
    /// Longest table, chain and set name the kernel accepts (`NFT_NAME_MAXLEN` - 1).
    public static let maxNameLength = 255
    /// A bound on rule size that keeps every netlink message small.
    public static let maxExpressionsPerRule = 64

    /// Checks what the kernel would otherwise reject half-way through a transaction,
    /// with a message that names the offending object.
    public func validate() throws(NetfilterError) {
        func check(name: String, what: String) throws(NetfilterError) {
            guard !name.isEmpty, name.utf8.count <= Self.maxNameLength, !name.utf8.contains(0) else {
                throw .invalidRuleset("\(what) name \(quoted(name)) must be 1 to \(Self.maxNameLength) bytes")
            }
        }
        func check(comment: String?, what: String) throws(NetfilterError) {
            guard let comment else { return }
            guard comment.utf8.count <= Self.maxCommentLength, !comment.utf8.contains(0) else {
                throw .invalidRuleset("the comment of \(what) is longer than \(Self.maxCommentLength) bytes or contains a NUL byte; shorten it")
            }
        }
        try check(name: name, what: "table")
        try check(comment: comment, what: "table \(name)")
        var setNames = Set<String>()
        for set in sets {
            try check(name: set.name, what: "set")
            try check(comment: set.comment, what: "set \(set.name)")
            guard setNames.insert(set.name).inserted else {
                throw .invalidRuleset("set \(set.name) is declared twice")
            }
            if let element = set.elements.first(where: { $0.keyType != set.keyType }) {
                throw .invalidRuleset("set \(set.name) of type \(set.keyType) cannot hold \(element.keyType) element \(element)")
            }
        }
        var chainNames = Set<String>()
        for chain in chains {
            try check(name: chain.name, what: "chain")
            try check(comment: chain.comment, what: "chain \(chain.name)")
            guard chainNames.insert(chain.name).inserted else {
                throw .invalidRuleset("chain \(chain.name) is declared twice")
            }
            for rule in chain.rules {
                let what = "rule \(quoted(rule.comment)) in chain \(chain.name)"
                guard !rule.comment.isEmpty else {
                    throw .invalidRuleset("a rule in chain \(chain.name) has no comment; every rule must say why it exists")
                }
                try check(comment: rule.comment, what: what)
                guard !rule.expressions.isEmpty, rule.expressions.count <= Self.maxExpressionsPerRule else {
                    throw .invalidRuleset("\(what) must have 1 to \(Self.maxExpressionsPerRule) expressions")
                }
                for expression in rule.expressions {
                    try expression.validate(in: self, what: what)
                }
            }
        }
    }
}

extension NFT.Expression {
    func validate(in table: NFT.Table, what: String) throws(NetfilterError) {
        switch self {
        case .ipv4DestinationIn, .ipv4DestinationNotIn, .ipv4DestinationInSet, .ipv4SourceIn, .snatIPv4:
            guard table.family != .ip6 else { throw .invalidRuleset("\(what): an ip6 table cannot match IPv4 addresses") }
        case .ipv6DestinationIn, .ipv6DestinationNotIn, .ipv6DestinationInSet, .ipv6SourceIn, .snatIPv6:
            guard table.family != .ip else { throw .invalidRuleset("\(what): an ip table cannot match IPv6 addresses") }
        default:
            break
        }
        switch self {
        case .ipv4DestinationIn(_, let length), .ipv4DestinationNotIn(_, let length), .ipv4SourceIn(_, let length):
            guard (1...32).contains(length) else {
                throw .invalidRuleset("\(what): IPv4 prefix length \(length) is not in 1...32")
            }
        case .ipv6DestinationIn(_, let length), .ipv6DestinationNotIn(_, let length), .ipv6SourceIn(_, let length):
            guard (1...128).contains(length) else {
                throw .invalidRuleset("\(what): IPv6 prefix length \(length) is not in 1...128")
            }
        case .socketCgroupV2(let level, _):
            guard (0...Int(UInt32.max)).contains(level) else {
                throw .invalidRuleset("\(what): cgroup level \(level) is negative")
            }
        case .inputInterface(let name), .inputInterfaceNot(let name):
            guard !name.isEmpty, name.utf8.count < 16, !name.utf8.contains(0) else {
                throw .invalidRuleset("\(what): interface name \(quoted(name)) must be 1 to 15 bytes")
            }
        default:
            break
        }
        if let reference = setReference {
            guard let set = table.set(named: reference.name) else {
                throw .invalidRuleset("\(what) refers to set \(reference.name), which the table does not declare")
            }
            guard set.keyType == reference.keyType else {
                throw .invalidRuleset("\(what) needs set \(reference.name) to be of type \(reference.keyType), not \(set.keyType)")
            }
        }
    }
}

