import Config
import Foundation
import LinuxNet
import Logging
import Metrics
import Netfilter
import Policy
import Proxy
import Workloads

/// The workloads captured in network namespaces of their own (pods,
/// containers, services with `PrivateNetwork=`): for each, a table and the
/// agent's three listeners inside its namespace, where its own address is the
/// source of what the agent dials for it (as ztunnel's in-pod mode does).
///
/// Kept by the control loop, like `Capture`: one change at a time. A
/// workload's capture is made whole or not at all: listeners first (a
/// redirected connection to an unbound port would be refused), then the table
/// in one netlink batch; whatever step fails undoes the ones before it, and
/// the workload waits, with the reason shown, until the next tick tries again.
struct NamespaceCaptures {
    /// One workload's capture, up and running.
    struct Scope {
        let spec: WorkloadSpec
        let namespace: SocketNamespace
        let netfilter: NetfilterClient
        let destinations: NamespaceDestinations
        let listeners: Listeners
        let sockets: ListeningSockets
        var parameters: PodCaptureParameters
        var rulesStatus: String
        let since: Date

        var workload: Workload { spec.workload }
    }

    /// What `agentctl workloads` shows of a namespace workload.
    struct Status: Sendable, Equatable {
        var netns: String?
        var addresses: [String]
        /// `captured`, or `waiting: REASON`.
        var state: String
        var since: Date?
    }

    private(set) var scopes: [String: Scope] = [:]
    /// Workloads whose capture could not be made yet, and why.
    private(set) var waiting: [String: String] = [:]
    /// Where each capture's listening sockets are registered for the next
    /// agent, and where the previous agent's wait to be claimed.
    let sockets: PodSockets
    /// Another agent took over: it owns the captures now, and this one only
    /// drains the connections it has.
    private(set) var handedOver = false
    let logger: Logger

    private static let enrolled = Metrics.Counter(label: "mesh_agent_netns_captures_total", dimensions: [("result", "installed")])
    private static let failed = Metrics.Counter(label: "mesh_agent_netns_captures_total", dimensions: [("result", "failed")])
    private static let removed = Metrics.Counter(label: "mesh_agent_netns_captures_total", dimensions: [("result", "removed")])
    private static let drift = Metrics.Counter(label: "mesh_agent_nft_drift_total", dimensions: [("found", "netns")])

    init(sockets: PodSockets = PodSockets(), logger: Logger) {
        self.sockets = sockets
        self.logger = logger
    }

    /// The addresses of every captured workload, as text.
    var addresses: [String] {
        scopes.values.flatMap(\.destinations.ownAddresses).sorted()
    }

    /// Each namespace workload's status, by qualified name.
    var statuses: [String: Status] {
        var result: [String: Status] = [:]
        for (key, scope) in scopes {
            result[key] = Status(
                netns: scope.namespace.handle.path, addresses: scope.destinations.ownAddresses, state: "captured (\(scope.rulesStatus))",
                since: scope.since)
        }
        for (key, reason) in waiting { result[key] = Status(netns: nil, addresses: [], state: "waiting: \(reason)", since: nil) }
        return result
    }

    /// Makes the captures match the registry: a capture for every present
    /// workload in a namespace of its own, none for the others; a workload
    /// whose namespace changed (its processes restarted elsewhere) is
    /// captured again there, and one whose ports changed mode gets its table
    /// updated.
    mutating func sync(services: AgentServices, config: AgentConfig, peerAuthentication: PeerAuthenticationSet) async {
        guard !handedOver else { return }
        let wanted = Dictionary(
            services.registry.members.filter { !$0.spec.network.isHost && $0.isPresent }.map { ($0.workload.qualifiedName, $0) },
            uniquingKeysWith: { first, _ in first })
        for (key, scope) in scopes where wanted[key]?.spec != scope.spec {
            await remove(key, because: wanted[key] == nil ? "it is gone" : "its declaration changed")
        }
        waiting = waiting.filter { wanted[$0.key] != nil }
        for (key, member) in wanted.sorted(by: { $0.key < $1.key }) {
            if var scope = scopes[key] {
                if case .namespace(.ofCgroup) = member.spec.network,
                    let current = try? NamespaceHandle.of(cgroup: member.cgroup, mount: services.mount),
                    current.identity != scope.namespace.handle.identity
                {
                    await remove(key, because: "its processes now run in another network namespace (\(current.identity))")
                } else {
                    refresh(&scope, config: config, peerAuthentication: peerAuthentication, namespaceThread: services.namespaceThread)
                    scopes[key] = scope
                    continue
                }
            }
            do {
                scopes[key] = try await make(member.spec, services: services, config: config, peerAuthentication: peerAuthentication)
                waiting[key] = nil
                Self.enrolled.increment()
            } catch {
                if waiting[key] != "\(error)" {
                    logger.warning("cannot capture workload \(key) in its network namespace yet: \(error); trying again every second")
                    Self.failed.increment()
                }
                waiting[key] = "\(error)"
            }
        }
    }

    private func make(_ spec: WorkloadSpec, services: AgentServices, config: AgentConfig, peerAuthentication: PeerAuthenticationSet) async throws
        -> Scope
    {
        let handle: NamespaceHandle
        switch spec.network {
        case .host:
            throw NamespaceCaptureError.hostWorkload
        case .namespace(.path(let path)):
            handle = try NamespaceHandle(path: path)
        case .namespace(.ofCgroup):
            handle = try NamespaceHandle.of(cgroup: spec.cgroup, mount: services.mount)
        }
        let node = try NamespaceHandle.current()
        guard handle.identity != node.identity else {
            throw NamespaceCaptureError.nodeNamespace(handle.path)
        }
        let namespace = SocketNamespace(handle: handle, thread: services.namespaceThread)
        let netfilter = try NetfilterClient(namespace: handle.namespace)
        let sockDiag = try SockDiagClient(namespace: handle.namespace)
        let conntrack = try? ConntrackClient(namespace: handle.namespace)
        let destinations = NamespaceDestinations(workload: spec.workload, agentPorts: config.ports.all)
        destinations.update(try namespace.runAndWait { try InterfaceAddresses.current() })
        var workloadLogger = logger
        workloadLogger[metadataKey: "workload"] = "\(spec.workload.qualifiedName)"
        // The agent before this one may have handed over this namespace's
        // sockets: connections waiting in their queues are served, not refused.
        let sockets = ListeningSockets(inherited: self.sockets.take(for: handle.identity), namespace: namespace, logger: workloadLogger)
        let listeners = Listeners(
            config: config, group: services.group, workloadTLS: services.workloadTLS, agentIdentity: services.agentIdentity,
            identifier: CgroupSourceIdentifier(sockDiag: sockDiag, conntrack: conntrack, registry: services.registry), destinations: destinations,
            accessLog: services.accessLog, connections: services.connections, authorizer: services.authorizer, sockets: sockets,
            namespace: namespace, logger: workloadLogger)
        let parameters = Self.parameters(for: spec, config: config, peerAuthentication: peerAuthentication)
        let rulesStatus: String
        do {
            try await listeners.start()
            rulesStatus = try Self.install(PodCaptureRules.table(for: parameters), with: netfilter)
        } catch {
            await listeners.close()
            sockets.closeAll()
            throw error
        }
        self.sockets.register(sockets, for: handle.identity)
        logger.info(
            "capturing workload \(spec.workload.qualifiedName) in network namespace \(handle): addresses \(destinations.ownAddresses.joined(separator: ", ")), table inet \(parameters.tableName) \(rulesStatus)"
        )
        return Scope(
            spec: spec, namespace: namespace, netfilter: netfilter, destinations: destinations, listeners: listeners, sockets: sockets,
            parameters: parameters, rulesStatus: rulesStatus, since: Date())
    }

    /// The table is kept when it already is the desired one (an agent
    /// restarted with the workload running); else replaced in one transaction.
    private static func install(_ table: NFT.Table, with netfilter: NetfilterClient) throws -> String {
        if (try? netfilter.drift(desired: table)) == .inSync { return "kept" }
        try netfilter.replace(table)
        return "installed"
    }

    static func parameters(for spec: WorkloadSpec, config: AgentConfig, peerAuthentication: PeerAuthenticationSet) -> PodCaptureParameters {
        var parameters = PodCaptureParameters()
        parameters.mark = config.mark
        parameters.markMask = config.markMask
        parameters.outboundPort = config.ports.outbound
        parameters.inboundPlaintextPort = config.ports.inboundPlaintext
        parameters.tunnelPort = config.ports.tunnel
        let workload = spec.workload
        parameters.strictPorts = workload.ports.filter {
            peerAuthentication.mode(namespace: workload.namespace, labels: workload.labels, port: $0) == .STRICT
        }.sorted()
        parameters.excludedPorts = spec.exclusions.ports
        parameters.excludedNetworks = spec.exclusions.networks.compactMap(Self.network)
        return parameters
    }

    /// `10.0.0.0/8` as the table writes it; the config checked the text already.
    private static func network(_ text: String) -> PodCaptureParameters.Network? {
        guard let prefix = try? IPPrefix(text) else { return nil }
        if prefix.bytes.count == 4, let address = NFT.IPv4Address(bytes: prefix.bytes) {
            return .ipv4(address, length: prefix.length)
        }
        if let address = NFT.IPv6Address(bytes: prefix.bytes) {
            return .ipv6(address, length: prefix.length)
        }
        return nil
    }

    /// Takes a tick's changes: the namespace's addresses (DHCP, a CNI adding
    /// one) and the ports' mTLS modes (a policy reload).
    private func refresh(_ scope: inout Scope, config: AgentConfig, peerAuthentication: PeerAuthenticationSet, namespaceThread: NamespaceThread) {
        if let interfaces = try? scope.namespace.runAndWait({ try InterfaceAddresses.current() }) {
            scope.destinations.update(interfaces)
        }
        let parameters = Self.parameters(for: scope.spec, config: config, peerAuthentication: peerAuthentication)
        guard parameters != scope.parameters else { return }
        do {
            try scope.netfilter.replace(PodCaptureRules.table(for: parameters))
            scope.parameters = parameters
            scope.rulesStatus = "updated"
            logger.info("updated the table of workload \(scope.workload.qualifiedName): STRICT ports \(parameters.strictPorts)")
        } catch {
            logger.error("cannot update the table of workload \(scope.workload.qualifiedName): \(error); the old one stays, and the next tick tries again")
        }
    }

    /// Compares every namespace's table with the desired one and repairs drift.
    mutating func reconcile() {
        guard !handedOver else { return }
        for key in scopes.keys.sorted() {
            guard var scope = scopes[key] else { continue }
            let desired = PodCaptureRules.table(for: scope.parameters)
            let drift: Drift
            do {
                drift = try scope.netfilter.drift(desired: desired)
            } catch {
                logger.warning("cannot read the table of workload \(key) back: \(error); reinstalling it")
                drift = .missing
            }
            guard drift != .inSync else { continue }
            Self.drift.increment()
            do {
                try scope.netfilter.replace(desired)
                scope.rulesStatus = "repaired"
                logger.warning("the table in the namespace of workload \(key) was \(drift == .missing ? "missing" : "changed"); reinstalled it")
            } catch {
                scope.rulesStatus = "repair failed: \(error)"
                logger.error("cannot reinstall the table of workload \(key): \(error); will retry")
            }
            scopes[key] = scope
        }
    }

    /// Undoes one workload's capture: its listeners, then its table.
    private mutating func remove(_ key: String, because reason: String) async {
        guard let scope = scopes.removeValue(forKey: key) else { return }
        await scope.listeners.stopAccepting()
        await scope.listeners.close()
        releaseSockets(of: scope)
        do {
            _ = try scope.netfilter.delete(tableNamed: scope.parameters.tableName)
        } catch {
            logger.warning("cannot remove the table of workload \(key) from its namespace: \(error)")
        }
        Self.removed.increment()
        logger.info("stopped capturing workload \(key) (\(reason)): its listeners and table are removed")
    }

    /// The agent stops: no namespace listener accepts anything new.
    func stopAccepting() async {
        for scope in scopes.values { await scope.listeners.stopAccepting() }
    }

    /// Another agent asks for the sockets: these stop accepting first, so
    /// that two agents never accept on one socket.
    func pauseAccepting() async {
        for scope in scopes.values { await scope.listeners.pauseAccepting() }
    }

    /// The agent that asked did not become ready: accept again.
    func resumeAccepting() async {
        for scope in scopes.values { await scope.listeners.resumeAccepting() }
    }

    /// Another agent took over every namespace's sockets and tables: this one
    /// lets go of its copies of the sockets and leaves the tables alone,
    /// even where a workload goes away meanwhile (the new agent removes it).
    mutating func handOver() async {
        handedOver = true
        for scope in scopes.values {
            await scope.listeners.stopAccepting()
            releaseSockets(of: scope)
        }
    }

    /// The agent's own descriptors of a capture's listening sockets: no longer
    /// offered to a successor, and closed (a listening channel still open
    /// keeps its own descriptor until it is closed too).
    private func releaseSockets(of scope: Scope) {
        sockets.unregister(scope.namespace.handle.identity)
        scope.sockets.closeAll()
    }

    /// After the drain: listeners closed; in `failureMode: open` the tables go
    /// too (the workloads' traffic flows uncaptured), in `closed` they stay,
    /// so nothing leaves a workload unprotected until the agent is back.
    mutating func close(removingTables: Bool) async {
        for (key, scope) in scopes.sorted(by: { $0.key < $1.key }) {
            await scope.listeners.close()
            releaseSockets(of: scope)
            if removingTables && !handedOver {
                do {
                    _ = try scope.netfilter.delete(tableNamed: scope.parameters.tableName)
                } catch {
                    logger.warning("cannot remove the table of workload \(key) from its namespace: \(error)")
                }
            }
        }
        scopes = [:]
    }
}

enum NamespaceCaptureError: Error, CustomStringConvertible {
    case hostWorkload
    case nodeNamespace(String)

    var description: String {
        switch self {
        case .hostWorkload:
            return "the workload is captured in the node's namespace (captureMode host)"
        case .nodeNamespace(let path):
            return "\(path) is the node's own network namespace; a workload there is captured with captureMode host"
        }
    }
}
