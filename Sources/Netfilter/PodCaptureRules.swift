/// What the table inside one workload's own network namespace depends on.
public struct PodCaptureParameters: Hashable, Sendable {
    /// A network (a prefix) whose traffic is never captured.
    public enum Network: Hashable, Sendable {
        case ipv4(NFT.IPv4Address, length: Int)
        case ipv6(NFT.IPv6Address, length: Int)
    }

    public var tableName = "mesh_agent"
    public var mark: UInt32 = 0x539
    public var markMask: UInt32 = 0xfff
    public var outboundPort: UInt16 = 15001
    public var inboundPlaintextPort: UInt16 = 15006
    public var tunnelPort: UInt16 = 15008
    /// The workload's ports whose PeerAuthentication mode is STRICT: plaintext
    /// to them is refused in the kernel. Plaintext to any other port goes to
    /// the inbound-plaintext listener, which decides.
    public var strictPorts: [UInt16] = []
    /// Ports never captured, to or from the workload (`captureExclusions.ports`).
    public var excludedPorts: [UInt16] = []
    /// Networks never captured, to or from the workload (`captureExclusions.cidrs`).
    public var excludedNetworks: [Network] = []

    public init() {}
}

/// Builds the table inside a workload's own network namespace (pure).
///
/// Everything in that namespace belongs to the one workload, so nothing is
/// matched by cgroup: all TCP it opens goes to the agent's outbound listener
/// in the namespace, and all TCP that arrives goes to the agent's inbound
/// listeners there, except:
///
/// - the agent's own sockets (its mark): its dials to peers and to the workload;
/// - loopback: it never leaves the namespace;
/// - health probes from the node, which the node's table source-NATs to
///   169.254.7.127 (fd16:9254:7127:1337:ffff:ffff:ffff:ffff), as Istio does, so a
///   probe reaches a STRICT workload;
/// - HBONE to the tunnel port, which the agent's tunnel listener here accepts;
/// - the workload's capture exclusions (ports, networks), as a port set and
///   one rule per network.
///
/// ```
/// table inet mesh_agent {
///     set strict_ports { type inet_service; … }
///     set excluded_ports { type inet_service; … }
///     chain output {
///         type nat hook output priority -100; policy accept;
///         meta mark & 0x00000fff == 0x00000539 return
///         meta l4proto != tcp return
///         ip daddr 127.0.0.0/8 return
///         ip6 daddr ::1 return
///         tcp dport @excluded_ports return
///         ip daddr 10.0.0.0/8 return                   (one per excluded network)
///         meta l4proto tcp redirect to :15001
///     }
///     chain prerouting {
///         type nat hook prerouting priority -100; policy accept;
///         iifname "lo" return
///         ip saddr 169.254.7.127 return
///         ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff return
///         tcp dport 15008 return
///         tcp dport @excluded_ports return
///         ip saddr 10.0.0.0/8 return                   (one per excluded network)
///         tcp dport @strict_ports return
///         meta l4proto tcp redirect to :15006
///     }
///     chain input {
///         type filter hook input priority 0; policy accept;
///         iifname "lo" return
///         ip saddr 169.254.7.127 return
///         ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff return
///         tcp dport @excluded_ports return
///         ip saddr 10.0.0.0/8 return                   (one per excluded network)
///         tcp dport @strict_ports reject with tcp reset
///     }
/// }
/// ```
public enum PodCaptureRules {
    public static let tableComment = "mesh-agent capture inside one workload's network namespace; owned by mesh-agent, which replaces it as a whole"
    public static let excludedPortSetName = "excluded_ports"
    /// Where the node's table sends health probes from (Istio's addresses).
    public static let probeSourceIPv4 = CaptureRules.probeSourceIPv4
    public static let probeSourceIPv6 = CaptureRules.probeSourceIPv6

    public static func table(for parameters: PodCaptureParameters) -> NFT.Table {
        NFT.Table(
            family: .inet,
            name: parameters.tableName,
            comment: tableComment,
            sets: [
                CaptureRules.strictPortSet(ports: parameters.strictPorts),
                NFT.NamedSet(
                    name: excludedPortSetName, keyType: .inetService, comment: "ports never captured, either way (captureExclusions)",
                    elements: Set(parameters.excludedPorts.map(NFT.SetElement.port))),
            ],
            chains: [outputChain(parameters), preroutingChain(parameters), inputChain(parameters)])
    }

    static func outputChain(_ parameters: PodCaptureParameters) -> NFT.Chain {
        var rules: [NFT.Rule] = [
            NFT.Rule(
                [.markMasked(mask: parameters.markMask, equals: parameters.mark & parameters.markMask), .return],
                comment: "the agent's own connections carry its mark and are never captured, or they would loop back to it"),
            NFT.Rule([.l4protoNot(.tcp), .return], comment: "only TCP is captured; other protocols pass untouched"),
            NFT.Rule(
                [.ipv4DestinationIn(prefix: NFT.IPv4Address(127, 0, 0, 0), length: 8), .return],
                comment: "loopback never leaves the workload's namespace"),
            NFT.Rule([.ipv6DestinationEquals(.loopback), .return], comment: "loopback never leaves the workload's namespace"),
            NFT.Rule([.tcpDestinationPortInSet(excludedPortSetName), .return], comment: "excluded ports are never captured (captureExclusions)"),
        ]
        rules += exclusionRules(parameters.excludedNetworks, matchingDestination: true)
        rules.append(
            NFT.Rule(
                [.l4proto(.tcp), .redirect(toPort: parameters.outboundPort)],
                comment: "TCP the workload opens goes to the agent's outbound listener in this namespace"))
        return NFT.Chain(
            name: CaptureRules.outputChainName,
            base: NFT.BaseChain(type: .nat, hook: .output, priority: NFT.Priority.dstnat, policy: .accept),
            rules: rules)
    }

    static func preroutingChain(_ parameters: PodCaptureParameters) -> NFT.Chain {
        var rules = inboundExemptions(parameters, tunnelPort: parameters.tunnelPort)
        rules.append(NFT.Rule([.tcpDestinationPortInSet(CaptureRules.strictPortSetName), .return], comment: "plaintext to a STRICT port is refused in input"))
        rules.append(
            NFT.Rule(
                [.l4proto(.tcp), .redirect(toPort: parameters.inboundPlaintextPort)],
                comment: "other plaintext TCP goes to the inbound-plaintext listener, as an unauthenticated source"))
        return NFT.Chain(
            name: CaptureRules.preroutingChainName,
            base: NFT.BaseChain(type: .nat, hook: .prerouting, priority: NFT.Priority.dstnat, policy: .accept),
            rules: rules)
    }

    static func inputChain(_ parameters: PodCaptureParameters) -> NFT.Chain {
        var rules = inboundExemptions(parameters, tunnelPort: nil)
        rules.append(
            NFT.Rule(
                [.tcpDestinationPortInSet(CaptureRules.strictPortSetName), .rejectTCPReset],
                comment: "plaintext to a STRICT workload port is refused; peers must come through the agent's mTLS tunnel"))
        return NFT.Chain(
            name: CaptureRules.inputChainName,
            base: NFT.BaseChain(type: .filter, hook: .input, priority: NFT.Priority.filter, policy: .accept),
            rules: rules)
    }

    /// What arrives and is never redirected nor refused.
    private static func inboundExemptions(_ parameters: PodCaptureParameters, tunnelPort: UInt16?) -> [NFT.Rule] {
        var rules: [NFT.Rule] = [
            NFT.Rule(
                [.inputInterface("lo"), .return],
                comment: "loopback: the workload's own connections and the agent's dials to it"),
            NFT.Rule(
                [.ipv4SourceIn(prefix: probeSourceIPv4, length: 32), .return],
                comment: "health probes from the node (source-NATed there) reach the workload unproxied"),
            NFT.Rule(
                [.ipv6SourceIn(prefix: probeSourceIPv6, length: 128), .return],
                comment: "health probes from the node (source-NATed there) reach the workload unproxied"),
        ]
        if let tunnelPort {
            rules.append(NFT.Rule([.tcpDestinationPort(tunnelPort), .return], comment: "HBONE reaches the agent's tunnel listener in this namespace"))
        }
        rules.append(NFT.Rule([.tcpDestinationPortInSet(excludedPortSetName), .return], comment: "excluded ports are never captured (captureExclusions)"))
        return rules + exclusionRules(parameters.excludedNetworks, matchingDestination: false)
    }

    /// One `return` per excluded network: by destination on the way out, by source on the way in.
    private static func exclusionRules(_ networks: [PodCaptureParameters.Network], matchingDestination: Bool) -> [NFT.Rule] {
        networks.map { network in
            let match: NFT.Expression
            switch (network, matchingDestination) {
            case (.ipv4(let prefix, let length), true): match = .ipv4DestinationIn(prefix: prefix, length: length)
            case (.ipv6(let prefix, let length), true): match = .ipv6DestinationIn(prefix: prefix, length: length)
            case (.ipv4(let prefix, let length), false): match = .ipv4SourceIn(prefix: prefix, length: length)
            case (.ipv6(let prefix, let length), false): match = .ipv6SourceIn(prefix: prefix, length: length)
            }
            return NFT.Rule([match, .return], comment: "an excluded network is never captured (captureExclusions)")
        }
    }
}
