import Config
import Logging
import Metrics
import Netfilter
import Policy
import Workloads

/// The agent's side of the nftables table: what it should hold, and keeping the
/// kernel's copy equal to it.
struct Capture {
    private(set) var parameters: CaptureParameters
    let registry: WorkloadRegistry
    let netfilter: NetfilterClient
    let logger: Logger

    /// Which workload ports accept plaintext from outside the node.
    var peerAuthentication: PeerAuthenticationSet
    /// The table as last seen: "installed", "in sync", "missing" or "differs: …".
    private(set) var rulesStatus = "not installed"
    /// Whether this agent keeps the kernel's table. An agent that handed over
    /// to another leaves it alone from then on: the other keeps it now.
    private(set) var owned = true

    init(config: AgentConfig, registry: WorkloadRegistry, netfilter: NetfilterClient, peerAuthentication: PeerAuthenticationSet, logger: Logger) {
        var parameters = CaptureParameters()
        parameters.mark = config.mark
        parameters.markMask = config.markMask
        parameters.outboundPort = config.ports.outbound
        parameters.inboundPlaintextPort = config.ports.inboundPlaintext
        self.parameters = parameters
        self.registry = registry
        self.netfilter = netfilter
        self.peerAuthentication = peerAuthentication
        self.logger = logger
        self.netnsByDefault = config.captureMode == .netns
        refreshMembership()
    }

    /// The addresses of the workloads captured in their own namespaces, as
    /// the control loop last found them: the node source-NATs its own
    /// connections to them (health probes).
    var namespaceAddresses: [String] = []
    /// Whether this node has workloads in namespaces of their own, or is set
    /// up for them (`captureMode: netns`): the table then has the probe chain.
    private let netnsByDefault: Bool

    private mutating func refreshMembership() {
        parameters.workloadCgroupLevels = registry.levels
        parameters.workloadCgroups = registry.elementsByLevel
        (parameters.strictPorts, parameters.permissivePorts) = guardedPorts
        refreshProbeTargets(&parameters)
    }

    private func refreshProbeTargets(_ parameters: inout CaptureParameters) {
        parameters.probeSourceNAT = netnsByDefault || registry.members.contains { !$0.spec.network.isHost }
        parameters.podAddressesIPv4 = namespaceAddresses.compactMap(NFT.IPv4Address.init).sorted()
        parameters.podAddressesIPv6 = namespaceAddresses.compactMap(NFT.IPv6Address.init).sorted()
    }

    /// Every configured workload port, by the mTLS mode its PeerAuthentication
    /// gives it. Ports of workloads not running yet are guarded too: STRICT
    /// must hold from the first packet, whoever listens.
    ///
    /// Only workloads of the node's own namespace: a pod's ports are guarded by
    /// the table in its namespace, and the node's prerouting hook also sees
    /// the traffic it forwards to pods, which it must leave alone.
    var guardedPorts: (strict: [UInt16], permissive: [UInt16]) {
        var strict: [UInt16] = []
        var permissive: [UInt16] = []
        for member in registry.members where member.spec.network.isHost {
            let workload = member.workload
            for port in workload.ports {
                switch peerAuthentication.mode(namespace: workload.namespace, labels: workload.labels, port: port) {
                case .STRICT: strict.append(port)
                case .PERMISSIVE: permissive.append(port)
                }
            }
        }
        return (strict.sorted(), permissive.sorted())
    }

    var desired: NFT.Table { CaptureRules.table(for: parameters) }

    /// Leaves the table to the agent that took over.
    mutating func handOver() {
        owned = false
        rulesStatus = "kept by the agent that took over"
    }

    /// Makes the kernel's table the desired one: kept as it is when it
    /// already is (an agent that took over, or one restarted in
    /// `failureMode: closed`), else replaced whole in one transaction, a stale
    /// one from an earlier run included. Replacing drops the NAT state of
    /// connections the old rules redirected a moment before, so a table that
    /// needs no change is never replaced.
    mutating func install() throws {
        guard owned else { return }
        refreshMembership()
        let table = desired
        if (try? netfilter.drift(desired: table)) == .inSync {
            rulesStatus = "in sync"
            logger.info("table inet \(parameters.tableName) is already as desired; kept it")
            return
        }
        try netfilter.replace(table)
        rulesStatus = "installed"
        logger.info("installed table inet \(parameters.tableName): cgroup levels \(parameters.workloadCgroupLevels), \(parameters.workloadCgroups.values.map(\.count).reduce(0, +)) workload cgroup(s)")
    }

    /// Brings the kernel's sets up to the registry's current membership and
    /// the ports' mTLS modes, in one transaction: the kernel never holds half
    /// of a sync, and a port that changes mode leaves one set and joins the
    /// other at the same instant. A new cgroup depth needs a new set and rule,
    /// so the table is replaced instead (also in one transaction). Whoever
    /// rescanned the registry (the timer, a reload, a lookup miss), the
    /// difference is taken against what is installed, so nothing is lost.
    mutating func sync() {
        guard owned else { return }
        var target = parameters
        target.workloadCgroups = registry.elementsByLevel
        (target.strictPorts, target.permissivePorts) = guardedPorts
        refreshProbeTargets(&target)
        if registry.levels != parameters.workloadCgroupLevels || target.probeSourceNAT != parameters.probeSourceNAT {
            reinstall()
            return
        }
        let changes = Self.elementChanges(from: parameters, to: target)
        guard !changes.isEmpty else { return }
        do {
            try netfilter.updateElements(changes, inTable: parameters.tableName)
            parameters = target
        } catch {
            logger.error("cannot update capture set elements: \(error); replacing the whole table")
            reinstall()
        }
    }

    /// The set-element changes that turn the sets of `installed` into those of
    /// `target`: removals first, then additions, set by set in a fixed order.
    static func elementChanges(from installed: CaptureParameters, to target: CaptureParameters) -> [NFT.SetElementChange] {
        var removals: [NFT.SetElementChange] = []
        var additions: [NFT.SetElementChange] = []
        func compare(_ set: String, _ old: [NFT.SetElement], _ new: [NFT.SetElement]) {
            let gone = Set(old).subtracting(new)
            let came = Set(new).subtracting(old)
            if !gone.isEmpty { removals.append(.remove(old.filter(gone.contains), from: set)) }
            if !came.isEmpty { additions.append(.add(new.filter(came.contains), to: set)) }
        }
        for level in CaptureRules.levels(of: target) {
            compare(
                CaptureRules.workloadSetName(level: level), (installed.workloadCgroups[level] ?? []).map(NFT.SetElement.cgroup),
                (target.workloadCgroups[level] ?? []).map(NFT.SetElement.cgroup))
        }
        compare(CaptureRules.strictPortSetName, installed.strictPorts.map(NFT.SetElement.port), target.strictPorts.map(NFT.SetElement.port))
        compare(CaptureRules.permissivePortSetName, installed.permissivePorts.map(NFT.SetElement.port), target.permissivePorts.map(NFT.SetElement.port))
        if target.probeSourceNAT {
            compare(CaptureRules.podAddressSetIPv4, installed.podAddressesIPv4.map(NFT.SetElement.ipv4), target.podAddressesIPv4.map(NFT.SetElement.ipv4))
            compare(CaptureRules.podAddressSetIPv6, installed.podAddressesIPv6.map(NFT.SetElement.ipv6), target.podAddressesIPv6.map(NFT.SetElement.ipv6))
        }
        return removals + additions
    }

    /// Compares the live table with the desired one and repairs any drift.
    /// Times the live table was found not to be the desired one, by what was found.
    private static let drift: [String: Metrics.Counter] = Dictionary(
        uniqueKeysWithValues: ["missing", "differs", "unreadable"].map { ($0, Metrics.Counter(label: "mesh_agent_nft_drift_total", dimensions: [("found", $0)])) })

    mutating func reconcile() {
        guard owned else { return }
        refreshMembership()
        let finding: String
        do {
            switch try netfilter.drift(desired: desired) {
            case .inSync:
                rulesStatus = "in sync"
                return
            case .missing:
                logger.warning("table inet \(parameters.tableName) is gone from the kernel; reinstalling it")
                finding = "was missing"
                Self.drift["missing"]?.increment()
            case .differs(let lines):
                logger.warning("table inet \(parameters.tableName) differs from the desired ruleset; reinstalling it: \(lines.joined(separator: "; "))")
                finding = "differed (\(lines.count) difference(s))"
                Self.drift["differs"]?.increment()
            }
        } catch {
            logger.warning("cannot read table inet \(parameters.tableName) back: \(error); reinstalling it")
            finding = "could not be read back"
            Self.drift["unreadable"]?.increment()
        }
        rulesStatus = reinstall() ? "\(finding), reinstalled" : "\(finding), reinstall failed"
    }

    @discardableResult
    private mutating func reinstall() -> Bool {
        do {
            try install()
            return true
        } catch {
            logger.error("cannot install table inet \(parameters.tableName): \(error); will retry")
            rulesStatus = "install failed: \(error)"
            return false
        }
    }

    /// Empties the workload sets: no new connection is captured, while the table
    /// (and with it the NAT state of connections in flight) stays.
    mutating func stopCapturing() {
        guard owned else { return }
        var target = parameters
        target.workloadCgroups = [:]
        do {
            try netfilter.updateElements(Self.elementChanges(from: parameters, to: target), inTable: parameters.tableName)
            parameters = target
            logger.info("stopped capturing new connections (failureMode open); open connections drain")
        } catch {
            logger.error("cannot empty the capture sets: \(error); new connections will be refused until the table is removed")
        }
    }

    func remove() {
        guard owned else { return }
        do {
            if try netfilter.delete(tableNamed: parameters.tableName) {
                logger.info("removed table inet \(parameters.tableName) (failureMode open)")
            }
        } catch {
            logger.error("cannot remove table inet \(parameters.tableName): \(error); remove it with: nft delete table inet \(parameters.tableName)")
        }
    }
}

