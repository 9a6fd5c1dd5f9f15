import LinuxNet

/// What the capture table depends on: the agent's configuration and the workload
/// cgroups known when the table is (re)built.
public struct CaptureParameters: Hashable, Sendable {
    /// The table the agent owns (family inet).
    public var tableName: String
    /// The SO_MARK the agent puts on its own sockets, and the bits of the mark that
    /// belong to the agent (other CNIs use other bits).
    public var mark: UInt32
    public var markMask: UInt32
    /// The outbound capture listener (loopback only).
    public var outboundPort: UInt16
    /// The cgroup depths below the cgroup v2 root at which workloads are matched;
    /// one set per depth.
    public var workloadCgroupLevels: [Int]
    /// Initial elements of each level's set. Levels not in `workloadCgroupLevels`
    /// are ignored.
    public var workloadCgroups: [Int: [CgroupID]]

    public init(
        tableName: String = "mesh_agent",
        mark: UInt32 = 0x539,
        markMask: UInt32 = 0xfff,
        outboundPort: UInt16 = 15001,
        workloadCgroupLevels: [Int] = [],
        workloadCgroups: [Int: [CgroupID]] = [:]
    ) {
        self.tableName = tableName
        self.mark = mark
        self.markMask = markMask
        self.outboundPort = outboundPort
        self.workloadCgroupLevels = workloadCgroupLevels
        self.workloadCgroups = workloadCgroups
    }
}

/// Builds the capture table (pure: no kernel access).
///
/// Host capture mode, one workload level (2), default configuration:
///
/// ```
/// table inet mesh_agent {
///     comment "mesh-agent transparent capture; owned by mesh-agent, which replaces it as a whole"
///     set workloads_l2 { type cgroupsv2; comment "workload cgroups at depth 2 below the cgroup v2 root" }
///     chain output {
///         type nat hook output priority -100; policy accept;
///         meta mark & 0x00000fff == 0x00000539 return comment "…"
///         meta l4proto != tcp return comment "…"
///         ip daddr 127.0.0.0/8 return comment "…"
///         ip6 daddr ::1 return comment "…"
///         meta l4proto tcp socket cgroupv2 level 2 @workloads_l2 redirect to :15001 comment "…"
///     }
/// }
/// ```
///
/// The capture rule repeats `meta l4proto tcp` although an earlier rule already
/// returned for other protocols: nft refuses `redirect to :PORT` without a
/// transport protocol match in the same rule, and the rule must stay loadable by
/// `nft -f` (see nft/mesh-agent.nft) and correct on its own.
public enum CaptureRules {
    public static let tableComment = "mesh-agent transparent capture; owned by mesh-agent, which replaces it as a whole"

    /// The output chain is a nat chain at dstnat priority (-100) in the output hook,
    /// where `redirect` rewrites locally generated connections.
    public static let outputChainName = "output"

    public static func workloadSetName(level: Int) -> String {
        "workloads_l\(level)"
    }

    /// The levels in use, each once, in ascending order.
    public static func levels(of parameters: CaptureParameters) -> [Int] {
        Array(Set(parameters.workloadCgroupLevels)).sorted()
    }

    public static func workloadSet(level: Int, cgroups: [CgroupID] = []) -> NFT.NamedSet {
        NFT.NamedSet(
            name: workloadSetName(level: level),
            keyType: .cgroupsv2,
            comment: "workload cgroups at depth \(level) below the cgroup v2 root",
            elements: Set(cgroups.map(NFT.SetElement.cgroup)))
    }

    public static func table(for parameters: CaptureParameters) -> NFT.Table {
        let levels = levels(of: parameters)
        return NFT.Table(
            family: .inet,
            name: parameters.tableName,
            comment: tableComment,
            sets: levels.map { workloadSet(level: $0, cgroups: parameters.workloadCgroups[$0] ?? []) },
            chains: [outputChain(for: parameters)])
    }

    public static func outputChain(for parameters: CaptureParameters) -> NFT.Chain {
        var rules: [NFT.Rule] = [
            NFT.Rule(
                [.markMasked(mask: parameters.markMask, equals: parameters.mark & parameters.markMask), .return],
                comment: "the agent's own connections carry its mark and are never captured, or they would loop back to it"),
            NFT.Rule(
                [.l4protoNot(.tcp), .return],
                comment: "only TCP is captured; other protocols pass untouched"),
            NFT.Rule(
                [.ipv4DestinationIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8), .return],
                comment: "loopback is never captured: it stays on this node and reaches the agent's own listeners"),
            NFT.Rule(
                [.ipv6DestinationEquals(.loopback), .return],
                comment: "loopback is never captured: it stays on this node and reaches the agent's own listeners"),
        ]
        for level in levels(of: parameters) {
            rules.append(
                NFT.Rule(
                    [.l4proto(.tcp), .socketCgroupV2(level: level, inSet: workloadSetName(level: level)), .redirect(toPort: parameters.outboundPort)],
                    comment: "TCP from workload cgroups at depth \(level) goes to the agent's outbound listener"))
        }
        return NFT.Chain(
            name: outputChainName,
            base: NFT.BaseChain(type: .nat, hook: .output, priority: NFT.Priority.dstnat, policy: .accept),
            rules: rules)
    }
}
