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
    /// The inbound-plaintext listener: plaintext from outside the node to a
    /// PERMISSIVE workload port is redirected there.
    public var inboundPlaintextPort: UInt16
    /// The cgroup depths below the cgroup v2 root at which workloads are matched;
    /// one set per depth.
    public var workloadCgroupLevels: [Int]
    /// Initial elements of each level's set. Levels not in `workloadCgroupLevels`
    /// are ignored.
    public var workloadCgroups: [Int: [CgroupID]]
    /// The TCP ports local workloads serve, by PeerAuthentication mode: initial
    /// elements of the sets `strict_ports` and `permissive_ports`. A port belongs in
    /// at most one of them.
    public var strictPorts: [UInt16]
    public var permissivePorts: [UInt16]
    /// Whether workloads live in namespaces of their own on this node: then
    /// connections from the node itself to them (health probes) are
    /// source-NATed to the address their tables let through.
    public var probeSourceNAT = false
    /// The addresses of those workloads: elements of `pod_addresses_v4` and `pod_addresses_v6`.
    public var podAddressesIPv4: [NFT.IPv4Address] = []
    public var podAddressesIPv6: [NFT.IPv6Address] = []

    public init(
        tableName: String = "mesh_agent",
        mark: UInt32 = 0x539,
        markMask: UInt32 = 0xfff,
        outboundPort: UInt16 = 15001,
        inboundPlaintextPort: UInt16 = 15006,
        workloadCgroupLevels: [Int] = [],
        workloadCgroups: [Int: [CgroupID]] = [:],
        strictPorts: [UInt16] = [],
        permissivePorts: [UInt16] = []
    ) {
        self.tableName = tableName
        self.mark = mark
        self.markMask = markMask
        self.outboundPort = outboundPort
        self.inboundPlaintextPort = inboundPlaintextPort
        self.workloadCgroupLevels = workloadCgroupLevels
        self.workloadCgroups = workloadCgroups
        self.strictPorts = strictPorts
        self.permissivePorts = permissivePorts
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
///     set strict_ports { type inet_service; comment "workload ports that accept only mutual TLS (PeerAuthentication STRICT)" }
///     set permissive_ports { type inet_service; comment "workload ports that also accept plaintext from outside the node (PERMISSIVE)" }
///     chain output {
///         type nat hook output priority -100; policy accept;
///         meta mark & 0x00000fff == 0x00000539 return comment "…"
///         meta l4proto != tcp return comment "…"
///         ip daddr 127.0.0.0/8 return comment "…"
///         ip6 daddr ::1 return comment "…"
///         meta l4proto tcp socket cgroupv2 level 2 @workloads_l2 redirect to :15001 comment "…"
///     }
///     chain prerouting {
///         type nat hook prerouting priority -100; policy accept;
///         iifname "lo" return comment "…"
///         tcp dport @permissive_ports redirect to :15006 comment "…"
///     }
///     chain input {
///         type filter hook input priority 0; policy accept;
///         iifname "lo" return comment "…"
///         tcp dport @strict_ports reject with tcp reset comment "…"
///     }
/// }
/// ```
///
/// Outbound: the capture rule repeats `meta l4proto tcp` although an earlier rule
/// already returned for other protocols: nft refuses `redirect to :PORT` without a
/// transport protocol match in the same rule, and the rule must stay loadable by
/// `nft -f` (see nft/mesh-agent.nft) and correct on its own.
///
/// Inbound (the guard): the workload ports are in two sets by PeerAuthentication
/// mode, so a workload or a policy change is a set-element update. Connections
/// from outside the node to a PERMISSIVE port are redirected in prerouting (nat,
/// first packet of a connection) to the inbound-plaintext listener; those to a
/// STRICT port are answered with a TCP reset in input, so a peer has to come
/// through the agent's mTLS tunnel port. Connections from the node itself (the
/// agent's own dials to workloads, same-node workloads, anything to 127.0.0.0/8 or
/// to the node's own addresses) arrive on `lo` and pass both chains untouched.
/// `tcp dport @SET` carries its own `meta l4proto tcp` (nft writes one and lists
/// it as `tcp dport`), which is also the transport match `redirect` and
/// `reject with tcp reset` need.
public enum CaptureRules {
    public static let tableComment = "mesh-agent transparent capture; owned by mesh-agent, which replaces it as a whole"

    /// The output chain is a nat chain at dstnat priority (-100) in the output hook,
    /// where `redirect` rewrites locally generated connections.
    public static let outputChainName = "output"
    /// A nat chain at dstnat priority in the prerouting hook: redirects plaintext
    /// from outside to PERMISSIVE ports.
    public static let preroutingChainName = "prerouting"
    /// A filter chain at filter priority (0) in the input hook: resets plaintext
    /// from outside to STRICT ports.
    public static let inputChainName = "input"

    /// The set of workload ports that accept only mutual TLS (elements
    /// `NFT.SetElement.port`).
    public static let strictPortSetName = "strict_ports"
    /// The set of workload ports that also accept plaintext from outside the node
    /// (elements `NFT.SetElement.port`).
    public static let permissivePortSetName = "permissive_ports"

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

    public static func strictPortSet(ports: [UInt16] = []) -> NFT.NamedSet {
        portSet(strictPortSetName, comment: "workload ports that accept only mutual TLS (PeerAuthentication STRICT)", ports: ports)
    }

    public static func permissivePortSet(ports: [UInt16] = []) -> NFT.NamedSet {
        portSet(permissivePortSetName, comment: "workload ports that also accept plaintext from outside the node (PERMISSIVE)", ports: ports)
    }

    private static func portSet(_ name: String, comment: String, ports: [UInt16]) -> NFT.NamedSet {
        NFT.NamedSet(name: name, keyType: .inetService, comment: comment, elements: Set(ports.map(NFT.SetElement.port)))
    }

    public static func table(for parameters: CaptureParameters) -> NFT.Table {
        let levels = levels(of: parameters)
        var sets = levels.map { workloadSet(level: $0, cgroups: parameters.workloadCgroups[$0] ?? []) }
            + [strictPortSet(ports: parameters.strictPorts), permissivePortSet(ports: parameters.permissivePorts)]
        var chains = [outputChain(for: parameters), preroutingChain(for: parameters), inputChain(for: parameters)]
        if parameters.probeSourceNAT {
            sets += [
                NFT.NamedSet(
                    name: podAddressSetIPv4, keyType: .ipv4Address, comment: "addresses of workloads captured in their own network namespace",
                    elements: Set(parameters.podAddressesIPv4.map(NFT.SetElement.ipv4))),
                NFT.NamedSet(
                    name: podAddressSetIPv6, keyType: .ipv6Address, comment: "addresses of workloads captured in their own network namespace",
                    elements: Set(parameters.podAddressesIPv6.map(NFT.SetElement.ipv6))),
            ]
            chains.append(postroutingChain(for: parameters))
        }
        return NFT.Table(family: .inet, name: parameters.tableName, comment: tableComment, sets: sets, chains: chains)
    }

    /// Where the node's connections to pods come from (Istio's addresses).
    public static let probeSourceIPv4 = NFT.IPv4Address(169, 254, 7, 127)
    public static let probeSourceIPv6 = NFT.IPv6Address(high: 0xfd16_9254_7127_1337, low: 0xffff_ffff_ffff_ffff)
    public static let postroutingChainName = "postrouting"
    public static let podAddressSetIPv4 = "pod_addresses_v4"
    public static let podAddressSetIPv6 = "pod_addresses_v6"

    /// Connections the node itself makes to a workload in its own namespace
    /// (the kubelet's health probes, any host process) leave with the source
    /// that workload's table lets through unproxied, as Istio does: a probe
    /// reaches a STRICT workload. Only what is made on the node (its source is
    /// a local address): traffic the node forwards to its pods from elsewhere
    /// keeps its source and meets the pod's capture.
    public static func postroutingChain(for parameters: CaptureParameters) -> NFT.Chain {
        let why = "connections from the node itself to a pod (health probes) come from the address the pod's table lets through"
        return NFT.Chain(
            name: postroutingChainName,
            base: NFT.BaseChain(type: .nat, hook: .postrouting, priority: NFT.Priority.srcnat, policy: .accept),
            rules: [
                NFT.Rule(
                    [.markMasked(mask: parameters.markMask, equals: parameters.mark & parameters.markMask), .return],
                    comment: "the agent's own connections to workloads (its tunnel, its dials) keep their source"),
                NFT.Rule(
                    [.sourceAddressIsLocal, .ipv4DestinationInSet(podAddressSetIPv4), .l4proto(.tcp), .snatIPv4(probeSourceIPv4)],
                    comment: why),
                NFT.Rule(
                    [.sourceAddressIsLocal, .ipv6DestinationInSet(podAddressSetIPv6), .l4proto(.tcp), .snatIPv6(probeSourceIPv6)],
                    comment: why),
            ])
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

    public static func preroutingChain(for parameters: CaptureParameters) -> NFT.Chain {
        guardChain(
            preroutingChainName, NFT.BaseChain(type: .nat, hook: .prerouting, priority: NFT.Priority.dstnat, policy: .accept),
            NFT.Rule(
                [.tcpDestinationPortInSet(permissivePortSetName), .redirect(toPort: parameters.inboundPlaintextPort)],
                comment: "plaintext from outside to a PERMISSIVE workload port goes to the inbound-plaintext listener, as an unauthenticated source"))
    }

    public static func inputChain(for parameters: CaptureParameters) -> NFT.Chain {
        guardChain(
            inputChainName, NFT.BaseChain(type: .filter, hook: .input, priority: NFT.Priority.filter, policy: .accept),
            NFT.Rule(
                [.tcpDestinationPortInSet(strictPortSetName), .rejectTCPReset],
                comment: "plaintext from outside to a STRICT workload port is refused; peers must come through the agent's mTLS tunnel"))
    }

    /// An inbound chain: traffic from the node itself returns first, then the guard.
    private static func guardChain(_ name: String, _ base: NFT.BaseChain, _ guardRule: NFT.Rule) -> NFT.Chain {
        NFT.Chain(
            name: name, base: base,
            rules: [
                NFT.Rule(
                    [.inputInterface("lo"), .return],
                    comment: "traffic from this node itself (the agent's own dials, same-node workloads) comes in on lo and is never guarded"),
                guardRule,
            ])
    }
}
