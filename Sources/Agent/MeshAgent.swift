import Dispatch
import Foundation
import Identity
import LinuxNet
import Logging
import NIOCore
import NIOPosix
import Netfilter
import Policy
import Prometheus
import Proxy
import TLS
import Workloads
import Metrics
import NIOConcurrencyHelpers
import NIOHTTP1

/// The agent: owns capture (the nftables table), the workload registry and the
/// listeners, and runs them from start to drain.
///
/// Order matters. Listeners are bound before the capture rules exist (a
/// redirected connection to an unbound port would be refused), and on shutdown
/// the rules go first in `failureMode: open` (new connections flow uncaptured)
/// but stay in `closed` (nothing leaves a workload unprotected).
public final class MeshAgent: Sendable {
    /// How often cgroups are looked for and the live table checked against the desired one.
    static let rescanInterval: Duration = .seconds(1)
    static let driftCheckEvery = 10

    private let configPath: String
    private let logger: Logger

    public init(configPath: String, logger: Logger) {
        self.configPath = configPath
        self.logger = logger
    }

    enum Event: Sendable {
        case tick
        case reload
        case reopenLogs
        case terminate(signal: String)
    }

    /// Runs until SIGTERM or SIGINT, then drains and returns.
    public func run() async throws {
        guard Privileges.isRoot else { throw AgentError.notRoot }
        // Signals are taken over first: a SIGTERM that arrives while the agent
        // starts (or just as it says ready) waits in the stream instead of
        // being lost between ignoring the default action and watching for it.
        let events = Self.events()
        let systemd = SystemdNotifier()
        _ = Self.metricsRegistry  // before any metric is made
        if let interval = systemd.watchdogInterval, interval < Self.rescanInterval {
            logger.warning("WatchdogSec is shorter than \(Self.rescanInterval * 2): the agent pings once per \(Self.rescanInterval) and may be restarted while healthy; use WatchdogSec=10s or more")
        }
        let config = try AgentConfig.load(path: configPath)
        let policies = try PolicyLoader.load(directory: config.policyDir, rootNamespace: config.rootNamespace, defaultMode: config.mtlsMode)
        try policies.check(against: config.workloads)
        PolicyEnforcement.log(policies, from: config.policyDir, logger: logger)

        let mount = try CgroupV2Mount.discover()
        logger.info("cgroup v2 is mounted at \(mount.path)")
        let netfilter = try NetfilterClient()
        let sockDiag = try SockDiagClient()
        let conntrack = Self.openConntrack(logger: logger)
        let registry = WorkloadRegistry(mount: mount, logger: logger)
        registry.update(config.workloads, from: .config)
        let accessLog = try AccessLogWriter(path: config.accessLog, limit: config.accessLogLimit)
        let trustBundle = try TrustBundleWatcher(path: config.ca.trustBundle, logger: logger)
        let svids = SVIDManager(issuer: try Self.loadAuthority(config), lifetime: config.certificateTTL, logger: logger)
        let agentIdentity = try config.agentIdentity
        svids.setIdentities(registry.presentIdentities.union([agentIdentity]))
        let workloadTLS = WorkloadTLS(svids: svids, bundle: { trustBundle.bundle }, acceptedTrustDomains: [config.trustDomain])

        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let connections = ConnectionTracker(maximum: config.limits.maxConnections)
        let state = AgentState(policy: PolicyStatus(generation: 1, loadedAt: Date().timeIntervalSince1970, directory: config.policyDir, policies: policies))
        let authorizer = InboundAuthorizer(
            AuthorizationSnapshot(
                generation: 1, policies: policies.authorization, requestAuthentication: policies.requestAuthentication,
                peerAuthentication: policies.peerAuthentication, workloads: registry.members.map(\.workload)))
        let observability = [
            AdminServer(binding: .tcp(port: config.ports.metrics), routes: ["/metrics": { Self.metricsResponse() }], group: group, logger: logger),
            AdminServer(binding: .tcp(port: config.ports.readiness), routes: [
                "/healthz/ready": {
                    state.current.ready
                        ? AdminServer.Response(contentType: "text/plain", body: Data("ready\n".utf8))
                        : AdminServer.Response(status: .serviceUnavailable, contentType: "text/plain", body: Data("not ready\n".utf8))
                },
            ], group: group, logger: logger),
        ]
        let admin = AdminServer(
            path: config.adminSocket,
            routes: [
                "/v1/certs": { AdminServer.Response(body: try AdminViews.encode(AdminViews.certificates(svids))) },
                "/v1/connections": { AdminServer.Response(body: try AdminViews.encode(AdminViews.connections(connections))) },
                "/v1/rules": {
                    guard let parameters = state.current.captureParameters else {
                        return AdminServer.Response(status: .serviceUnavailable, body: Data(#"{"error":"the capture table is not installed yet"}"#.utf8))
                    }
                    return AdminServer.Response(body: try AdminViews.encode(AdminViews.rules(desired: CaptureRules.table(for: parameters), netfilter: netfilter)))
                },
                // The same as SIGHUP: the control loop reloads; its log says how it went.
                "POST /v1/reload": {
                    kill(getpid(), SIGHUP)
                    return AdminServer.Response(body: Data(#"{"reload":"requested"}"#.utf8))
                },
                "/v1/policies": {
                    AdminServer.Response(body: try AdminViews.encode(AdminViews.policies(state.current.policy)))
                },
                "/v1/workloads": {
                    AdminServer.Response(body: try AdminViews.encode(AdminViews.workloads(registry, modes: state.current.peerAuthentication)))
                },
                "/v1/status": {
                    let now = state.current
                    let certificates = svids.statuses()
                    let members = registry.members
                    let status = AdminViews.StatusView(
                        version: MeshAgentVersion.current,
                        uptimeSeconds: Int((ContinuousClock.now - state.started).components.seconds),
                        node: config.node, trustDomain: config.trustDomain, captureMode: config.captureMode.rawValue,
                        table: "inet mesh_agent", rules: now.rules, ready: now.ready,
                        workloads: members.count, workloadsPresent: members.filter { $0.cgroupID != nil }.count,
                        connections: connections.count, peerAuthentications: now.peerAuthentication.policies.count,
                        authorizationPolicies: now.policy.policies.authorization.policies.count, policyGeneration: now.policy.generation,
                        defaultMTLSMode: now.peerAuthentication.defaultMode.rawValue, certificates: certificates.count,
                        earliestCertificateExpiry: certificates.compactMap(\.notAfter).min().map(Certificate.formatTime))
                    return AdminServer.Response(body: try AdminViews.encode(status))
                },
            ],
            queryRoutes: [
                "/v1/policy/explain": { parameters in
                    AdminServer.Response(body: try AdminViews.encode(
                        AdminViews.explain(parameters, registry: registry, authorizer: authorizer)))
                },
            ],
            group: group,
            logger: logger
        )
        let destinations = NodeDestinations(registry: registry, agentPorts: config.ports.all, logger: logger)
        let connectTimeout = config.limits.connectTimeout.timeAmount
        // The source agent presents the workload's certificate and accepts only an
        // agent at the other end; the destination agent answers as itself.
        let tunnelClient = TunnelClient(
            configuration: .init(tunnelPort: config.ports.tunnel, mark: config.mark, connectTimeout: connectTimeout),
            group: group,
            clientContext: { source in try workloadTLS.context(for: source, role: .client, expectedPeer: agentIdentity) },
            logger: logger
        )
        let outbound = OutboundProxy(
            configuration: .init(
                port: config.ports.outbound, mark: config.mark,
                connectTimeout: connectTimeout, meshNetworks: config.meshNetworks
            ),
            group: group,
            identifier: CgroupSourceIdentifier(sockDiag: sockDiag, conntrack: conntrack, registry: registry),
            destinations: destinations,
            accessLog: accessLog,
            connections: connections,
            tunnel: tunnelClient,
            authorizer: authorizer,
            logger: logger
        )
        let tunnelServer = TunnelServer(
            configuration: .init(port: config.ports.tunnel, mark: config.mark, connectTimeout: connectTimeout),
            group: group,
            serverContext: { try workloadTLS.context(for: agentIdentity, role: .server) },
            destinations: destinations,
            accessLog: accessLog,
            connections: connections,
            authorizer: authorizer,
            logger: logger
        )
        let inboundPlaintext = InboundPlaintextProxy(
            configuration: .init(port: config.ports.inboundPlaintext, mark: config.mark, connectTimeout: connectTimeout),
            group: group,
            destinations: destinations,
            accessLog: accessLog,
            connections: connections,
            authorizer: authorizer,
            logger: logger
        )
        let listeners = Listeners(outbound: outbound, tunnel: tunnelServer, inboundPlaintext: inboundPlaintext)
        do {
            try await admin.start()
            for server in observability { try await server.start() }
            try await listeners.start()
        } catch {
            await listeners.stopAccepting()
            for server in observability { await server.stop() }
            await admin.stop()
            try? await group.shutdownGracefully()
            throw error
        }

        var capture = Capture(config: config, registry: registry, netfilter: netfilter, peerAuthentication: policies.peerAuthentication, logger: logger)
        do {
            try capture.install()
        } catch {
            await listeners.stopAccepting()
            for server in observability { await server.stop() }
            await admin.stop()
            try? await group.shutdownGracefully()
            throw error
        }
        state.publish(capture)
        state.update { $0.ready = true }
        logger.info("mesh-agent ready: node \(config.node), trust domain \(config.trustDomain), \(registry.members.count) workload(s), table inet \(capture.parameters.tableName)")
        notify(systemd, ["READY=1", "STATUS=ready: \(registry.members.count) workload(s), capture installed"])

        var ticks = 0
        var currentConfig = config
        let enforcement = PolicyEnforcement(state: state, authorizer: authorizer, connections: connections, registry: registry, logger: logger)
        // The policy files and the JWKS files they name: a change to either reloads.
        func policyFingerprint(_ config: AgentConfig) -> [String] {
            PolicyLoader.fingerprint(directory: config.policyDir, extraFiles: state.current.policy.policies.requestAuthentication.jwksFiles)
        }
        var lastPolicyFingerprint = policyFingerprint(config)
        var agentMetrics = AgentMetrics()
        agentMetrics.update(connections: connections.count, registry: registry, certificates: svids.statuses())
        loop: for await event in events {
            switch event {
            case .tick:
                ticks += 1
                // Policy files are watched: an edit applies within a tick, without SIGHUP.
                let fingerprint = policyFingerprint(currentConfig)
                if fingerprint != lastPolicyFingerprint {
                    logger.info("policy files in \(currentConfig.policyDir) changed: reloading them")
                    enforcement.reload(config: currentConfig, capture: &capture)
                    state.publish(capture)
                    // Taken again: a reload may have changed which JWKS files are named.
                    lastPolicyFingerprint = policyFingerprint(currentConfig)
                }
                registry.rescan()
                capture.sync()
                state.publish(capture)
                destinations.refreshAddresses()
                svids.setIdentities(registry.presentIdentities.union([agentIdentity]))
                if trustBundle.poll() != nil {
                    svids.renewAll(because: "the trust bundle \(trustBundle.path) changed")
                }
                svids.tick()
                agentMetrics.update(connections: connections.count, registry: registry, certificates: svids.statuses())
                accessLog.writeDropSummary()
                if ticks % Self.driftCheckEvery == 0 {
                    capture.reconcile()
                    state.publish(capture)
                }
                if systemd.watchdogInterval != nil {
                    // Alive means the control loop runs and every event loop
                    // answers; a wedged loop stops the pings and systemd restarts us.
                    for eventLoop in group.makeIterator() {
                        try? await eventLoop.submit {}.get()
                    }
                    notify(systemd, ["WATCHDOG=1"])
                }
            case .reload:
                notify(systemd, ["RELOADING=1", "STATUS=reloading \(configPath)"])
                let previousLimit = currentConfig.accessLogLimit
                currentConfig = reload(current: currentConfig, registry: registry, capture: &capture, enforcement: enforcement)
                if currentConfig.accessLogLimit != previousLimit {
                    accessLog.change(limit: currentConfig.accessLogLimit)
                    let limit = currentConfig.accessLogLimit
                    logger.info("access log limit is now \(limit.linesPerSecond == 0 ? "off" : "\(limit.linesPerSecond) lines/s, burst \(limit.burst)")")
                }
                lastPolicyFingerprint = policyFingerprint(currentConfig)
                state.publish(capture)
                svids.setIdentities(registry.presentIdentities.union([agentIdentity]))
                reloadAuthority(currentConfig, svids: svids)
                notify(systemd, ["READY=1", "STATUS=ready: \(registry.members.count) workload(s), reloaded"])
            case .reopenLogs:
                do {
                    try accessLog.reopen()
                    logger.info("reopened the access log \(accessLog.path) (SIGUSR1)")
                } catch {
                    logger.error("\(error); access log lines keep going to the file that was open")
                }
            case .terminate(let signal):
                logger.info("received \(signal): draining")
                notify(systemd, ["STOPPING=1", "STATUS=draining \(connections.count) connection(s)"])
                state.update { $0.ready = false }
                break loop
            }
        }

        // Drain. In failureMode open, new connections stop being captured first;
        // the table itself goes only after the drain, because unregistering its
        // nat hook makes the kernel drop the NAT state of the connections that
        // are still being proxied.
        if currentConfig.failureMode == .open {
            capture.stopCapturing()
        } else {
            logger.info("failureMode closed: leaving table inet \(capture.parameters.tableName) in place; workload traffic stays captured until the agent is back")
        }
        await listeners.stopAccepting()
        let open = connections.count
        if open > 0 {
            logger.info("waiting up to \(currentConfig.drainTimeout) for \(open) connection(s) to finish")
            let clock = ContinuousClock()
            let deadline = clock.now + currentConfig.drainTimeout
            while connections.count > 0, clock.now < deadline {
                try? await Task.sleep(for: .milliseconds(50))
            }
            if connections.count > 0 {
                logger.warning("drain deadline passed: closing \(connections.count) connection(s)")
                connections.closeAll()
                while connections.count > 0, clock.now < deadline + .seconds(5) {
                    try? await Task.sleep(for: .milliseconds(10))
                }
            }
        }
        if currentConfig.failureMode == .open {
            capture.remove()
        }
        for server in observability { await server.stop() }
        await admin.stop()
        try? await group.shutdownGracefully()
        // Lines of the loops' last tick, if their scheduled write did not run.
        accessLog.flush()
        logger.info("mesh-agent stopped")
    }

    /// The process's metrics, in Prometheus text format. The metrics system is
    /// bootstrapped once per process (swift-metrics allows no second time).
    static let metricsRegistry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()

    static func metricsResponse() -> AdminServer.Response {
        AdminServer.Response(contentType: "text/plain; version=0.0.4; charset=utf-8", body: Data(metricsRegistry.emitToBuffer()))
    }

    /// Conntrack recovers a client's port that NAT changed; without it (no
    /// nf_conntrack_netlink) such a rare connection is refused rather than
    /// misattributed, and the agent says so once.
    static func openConntrack(logger: Logger) -> ConntrackClient? {
        do {
            return try ConntrackClient()
        } catch {
            logger.warning("conntrack lookups unavailable (\(error)); a workload connection whose source port NAT had to change will be refused")
            return nil
        }
    }

    /// The node CA that signs this node's workload certificates.
    static func loadAuthority(_ config: AgentConfig) throws -> LocalCA {
        try LocalCA(certificatePath: config.ca.certificate, keyPath: config.ca.key, trustDomain: config.trustDomain)
    }

    /// SIGHUP re-reads the node CA too (a new intermediate after a root rotation);
    /// certificates are re-issued only if it changed, and a broken one is refused.
    private func reloadAuthority(_ config: AgentConfig, svids: SVIDManager) {
        do {
            let authority = try Self.loadAuthority(config)
            if svids.issuerCertificateChanged(to: authority) {
                svids.renewAll(issuer: authority, because: "the node CA \(config.ca.certificate) changed")
            }
        } catch {
            logger.error("node CA not reloaded, the previous one stays in force: \(error)")
        }
    }

    private func reload(current: AgentConfig, registry: WorkloadRegistry, capture: inout Capture, enforcement: PolicyEnforcement) -> AgentConfig {
        let config: AgentConfig
        do {
            config = try AgentConfig.load(path: configPath)
        } catch {
            logger.error("reload refused, the running configuration stays in force: \(error)")
            return current
        }
        var restartOnly: [String] = []
        if config.ports != current.ports { restartOnly.append("ports") }
        if config.mark != current.mark || config.markMask != current.markMask { restartOnly.append("mark/markMask") }
        if config.trustDomain != current.trustDomain { restartOnly.append("trustDomain") }
        if config.accessLog != current.accessLog { restartOnly.append("accessLog") }
        if config.limits != current.limits { restartOnly.append("limits") }
        if config.meshNetworks != current.meshNetworks { restartOnly.append("meshNetworks") }
        if config.rootNamespace != current.rootNamespace { restartOnly.append("rootNamespace") }
        if !restartOnly.isEmpty {
            logger.warning("reload: \(restartOnly.joined(separator: ", ")) changed; these take effect on restart, the running values stay")
        }
        var applied = current
        applied.workloads = config.workloads
        applied.failureMode = config.failureMode
        applied.drainTimeout = config.drainTimeout
        applied.accessLogLimit = config.accessLogLimit
        applied.policyDir = config.policyDir
        applied.mtlsMode = config.mtlsMode
        registry.update(config.workloads, from: .config)
        if !enforcement.reload(config: applied, capture: &capture) {
            // The workloads may have changed even though the policies did not load.
            enforcement.recompile()
        }
        capture.sync()
        logger.info("reloaded \(configPath): \(registry.members.count) workload(s)")
        return applied
    }

    private func notify(_ systemd: SystemdNotifier, _ fields: [String]) {
        if let error = systemd.notify(fields) {
            logger.warning("\(error)")
        }
    }

    /// Signals and the rescan timer as one stream, consumed by the control loop.
    static func events() -> AsyncStream<Event> {
        AsyncStream { continuation in
            let queue = DispatchQueue(label: "mesh-agent.signals")
            var sources: [DispatchSourceProtocol] = []
            for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT"), (SIGHUP, "SIGHUP"), (SIGUSR1, "SIGUSR1")] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
                source.setEventHandler {
                    switch number {
                    case SIGHUP: continuation.yield(.reload)
                    case SIGUSR1: continuation.yield(.reopenLogs)
                    default: continuation.yield(.terminate(signal: name))
                    }
                }
                source.resume()
                sources.append(source)
            }
            let timer = DispatchSource.makeTimerSource(queue: queue)
            let interval = Int(rescanInterval.components.seconds * 1000)
            timer.schedule(deadline: .now() + .milliseconds(interval), repeating: .milliseconds(interval))
            timer.setEventHandler { continuation.yield(.tick) }
            timer.resume()
            sources.append(timer)
            let retained = DispatchSources(sources)
            continuation.onTermination = { _ in retained.cancel() }
        }
    }
}

/// The agent's listeners, started together before capture exists and stopped
/// together when it drains.
struct Listeners {
    let outbound: OutboundProxy
    let tunnel: TunnelServer
    let inboundPlaintext: InboundPlaintextProxy

    func start() async throws {
        try await tunnel.start()
        try await inboundPlaintext.start()
        try await outbound.start()
    }

    func stopAccepting() async {
        await outbound.stopAccepting()
        await inboundPlaintext.stopAccepting()
        await tunnel.stopAccepting()
        // Pooled peer connections would otherwise keep bringing new streams.
        tunnel.drain()
    }
}

/// Keeps the signal and timer sources alive for as long as the event stream is
/// consumed; Dispatch sources are thread-safe but not marked Sendable.
private final class DispatchSources: @unchecked Sendable {
    private let sources: [DispatchSourceProtocol]
    init(_ sources: [DispatchSourceProtocol]) { self.sources = sources }
    func cancel() { sources.forEach { $0.cancel() } }
}

extension Duration {
    var timeAmount: TimeAmount {
        let (seconds, attoseconds) = components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

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
        refreshMembership()
    }

    private mutating func refreshMembership() {
        parameters.workloadCgroupLevels = registry.levels
        parameters.workloadCgroups = registry.elementsByLevel
        (parameters.strictPorts, parameters.permissivePorts) = guardedPorts
    }

    /// Every configured workload port, by the mTLS mode its PeerAuthentication
    /// gives it. Ports of workloads not running yet are guarded too: STRICT
    /// must hold from the first packet, whoever listens.
    var guardedPorts: (strict: [UInt16], permissive: [UInt16]) {
        var strict: [UInt16] = []
        var permissive: [UInt16] = []
        for member in registry.members {
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

    /// Replaces any table of ours (a stale one from an earlier run included) in one transaction.
    mutating func install() throws {
        refreshMembership()
        try netfilter.replace(desired)
        rulesStatus = "installed"
        logger.info("installed table inet \(parameters.tableName): cgroup levels \(parameters.workloadCgroupLevels), \(parameters.workloadCgroups.values.map(\.count).reduce(0, +)) workload cgroup(s)")
    }

    /// Brings the kernel's sets up to the registry's current membership. New or
    /// gone cgroups become set-element changes; a new cgroup depth needs a new set
    /// and rule, so the table is replaced (still in one transaction). Whoever
    /// rescanned the registry (the timer, a reload, an identity miss on an event
    /// loop), the difference is taken against what is installed, so nothing is lost.
    mutating func sync() {
        if registry.levels != parameters.workloadCgroupLevels {
            reinstall()
            return
        }
        let target = registry.elementsByLevel
        let changes = WorkloadRegistry.difference(from: parameters.workloadCgroups, to: target)
        let ports = guardedPorts
        let portsChanged = ports.strict != parameters.strictPorts || ports.permissive != parameters.permissivePorts
        guard !changes.isEmpty || portsChanged else { return }
        do {
            try syncPortSets(strict: ports.strict, permissive: ports.permissive)
            for (level, ids) in changes.removed.sorted(by: { $0.key < $1.key }) {
                try netfilter.removeElements(ids.map(NFT.SetElement.cgroup), fromSet: CaptureRules.workloadSetName(level: level), inTable: parameters.tableName)
            }
            for (level, ids) in changes.added.sorted(by: { $0.key < $1.key }) {
                try netfilter.addElements(ids.map(NFT.SetElement.cgroup), toSet: CaptureRules.workloadSetName(level: level), inTable: parameters.tableName)
            }
            parameters.workloadCgroups = target
        } catch {
            logger.error("cannot update capture set elements: \(error); replacing the whole table")
            reinstall()
        }
    }

    /// A port moving between modes leaves its old set before it joins the new
    /// one, so no port is ever in both (rejected and redirected at once); for
    /// that instant it is unguarded rather than ambiguous.
    private mutating func syncPortSets(strict: [UInt16], permissive: [UInt16]) throws {
        let sets = [
            (name: CaptureRules.strictPortSetName, current: parameters.strictPorts, target: strict),
            (name: CaptureRules.permissivePortSetName, current: parameters.permissivePorts, target: permissive),
        ]
        for set in sets {
            let removed = Set(set.current).subtracting(set.target)
            if !removed.isEmpty {
                try netfilter.removeElements(removed.sorted().map(NFT.SetElement.port), fromSet: set.name, inTable: parameters.tableName)
            }
        }
        for set in sets {
            let added = Set(set.target).subtracting(set.current)
            if !added.isEmpty {
                try netfilter.addElements(added.sorted().map(NFT.SetElement.port), toSet: set.name, inTable: parameters.tableName)
            }
        }
        (parameters.strictPorts, parameters.permissivePorts) = (strict, permissive)
    }

    /// Compares the live table with the desired one and repairs any drift.
    /// Times the live table was found not to be the desired one, by what was found.
    private static let drift: [String: Metrics.Counter] = Dictionary(
        uniqueKeysWithValues: ["missing", "differs", "unreadable"].map { ($0, Metrics.Counter(label: "mesh_agent_nft_drift_total", dimensions: [("found", $0)])) })

    mutating func reconcile() {
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
        do {
            for (level, ids) in parameters.workloadCgroups.sorted(by: { $0.key < $1.key }) where !ids.isEmpty {
                try netfilter.removeElements(ids.map(NFT.SetElement.cgroup), fromSet: CaptureRules.workloadSetName(level: level), inTable: parameters.tableName)
            }
            parameters.workloadCgroups = [:]
            logger.info("stopped capturing new connections (failureMode open); open connections drain")
        } catch {
            logger.error("cannot empty the capture sets: \(error); new connections will be refused until the table is removed")
        }
    }

    func remove() {
        do {
            if try netfilter.delete(tableNamed: parameters.tableName) {
                logger.info("removed table inet \(parameters.tableName) (failureMode open)")
            }
        } catch {
            logger.error("cannot remove table inet \(parameters.tableName): \(error); remove it with: nft delete table inet \(parameters.tableName)")
        }
    }
}

public enum AgentError: Error, CustomStringConvertible {
    case notRoot
    case accessLog(path: String, reason: String)
    case adminSocket(path: String, reason: String)

    public var description: String {
        switch self {
        case .notRoot:
            return "mesh-agent must run as root (it programs nftables, reads socket cgroups over sock_diag and marks its sockets); run it with sudo or as the systemd service"
        case .accessLog(let path, let reason):
            return "cannot open the access log \(path): \(reason); check the directory exists and is writable, or set accessLog: \"-\" for stdout"
        case .adminSocket(let path, let reason):
            return "cannot serve the admin API on \(path): \(reason)"
        }
    }
}
