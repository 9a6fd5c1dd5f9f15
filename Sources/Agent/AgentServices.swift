import Foundation
import CNIServer
import Config
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

/// The agent's parts, built from the config before any socket is bound, in the
/// order they depend on each other; started in that order and stopped in
/// reverse.
///
/// Order matters. Listeners are bound before the capture rules exist (a
/// redirected connection to an unbound port would be refused), and on shutdown
/// the rules go first in `failureMode: open` (new connections flow uncaptured)
/// but stay in `closed` (nothing leaves a workload unprotected).
struct AgentServices {
    let config: AgentConfig
    let configPath: String
    let logger: Logger
    let systemd: SystemdNotifier
    let group: MultiThreadedEventLoopGroup
    let netfilter: NetfilterClient
    let registry: WorkloadRegistry
    let destinations: NodeDestinations
    let accessLog: AccessLogWriter
    let trustBundle: TrustBundleWatcher
    let svids: SVIDManager
    /// The agent's own identity: the tunnel server answers as it.
    let agentIdentity: SpiffeID
    let connections: ConnectionTracker
    let state: AgentState
    let authorizer: InboundAuthorizer
    let enforcement: PolicyEnforcement
    let listeners: Listeners
    /// Every listening socket of the node's namespace, handed over by the agent before this one or made here.
    let sockets: ListeningSockets
    /// The listening sockets of workloads in namespaces of their own, as the
    /// agent before this one handed them over and as this one will.
    let podSockets: PodSockets
    /// The running agent this one takes over from, if one handed its sockets over.
    let takeover: Handover.Taking?
    /// Hands this agent's sockets to the next one.
    let handover: Handover.Giving
    /// What the listeners of workloads in namespaces of their own are made from.
    let workloadTLS: WorkloadTLS
    let mount: CgroupV2Mount
    /// Makes sockets inside workloads' network namespaces.
    let namespaceThread: NamespaceThread
    /// Pods from container engines, Kubernetes and the CNI plugin.
    let podSources: PodSources
    /// The CNI plugin's enrollments of the agent before this one.
    let cniEnrollments: CNIEnrollments
    /// Where the CNI plugin asks to enroll pods (`workloadSources.cni`).
    let enrollmentServer: EnrollmentServer?
    /// The observed service graph's recorder; nil when `graph.enabled` is false.
    let graph: GraphRecorder?
    /// The admin API, then Prometheus and the readiness probe; made once the
    /// parts they show exist.
    private(set) var servers: [AdminServer] = []

    /// The sockets systemd kept in its file descriptor store while the
    /// previous process restarted, if any were meant for this one.
    private static func fromSystemd(logger: Logger) -> [(name: String, fd: CInt)] {
        switch SystemdListenFDs.take() {
        case .none:
            return []
        case .ignored(let reason):
            logger.warning("ignoring the descriptors systemd passed: \(reason)")
            return []
        case .descriptors(let named):
            logger.info("systemd passed \(named.count) stored socket(s): \(named.map(\.name).joined(separator: ", "))")
            return named.map { ($0.name, $0.fd) }
        }
    }

    /// Reads the config and the policies, finds the kernel facilities, and
    /// makes every part. Nothing is bound or installed yet.
    static func build(configPath: String, events: ControlEvents, metrics: PrometheusCollectorRegistry, logger: Logger) throws -> AgentServices {
        let config = try AgentConfig.load(path: configPath)
        warnIfDescriptorsRunShort(config.limits, logger: logger)
        let policies = try PolicyLoader.load(directory: config.policyDir, rootNamespace: config.rootNamespace, defaultMode: config.mtlsMode)
        try policies.check(against: config.workloads)
        PolicyEnforcement.log(policies, from: config.policyDir, logger: logger)

        // A running agent hands its sockets over (an upgrade); after a restart
        // under systemd, the file descriptor store has them.
        let takeover = Handover.Taking.request(path: Handover.path(adminSocket: config.adminSocket), logger: logger)
        let (nodeSockets, podSockets) = PodSockets.split(takeover?.sockets ?? fromSystemd(logger: logger))
        let sockets = ListeningSockets(inherited: nodeSockets, logger: logger)
        let mount = try CgroupV2Mount.discover()
        logger.info("cgroup v2 is mounted at \(mount.path)")
        let netfilter = try NetfilterClient()
        let sockDiag = try SockDiagClient()
        let conntrack = openConntrack(logger: logger)
        let registry = WorkloadRegistry(mount: mount, logger: logger)
        registry.update(config.workloads, from: .config)
        var cniEnrollments = CNIEnrollments(adminSocket: config.adminSocket, logger: logger)
        if config.workloadSources.cni != nil, config.workloadSources.kubernetes == nil {
            cniEnrollments.load(mount: mount)
            registry.update(cniEnrollments.specs(trustDomain: config.trustDomain), from: CNIEnrollments.source)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: config.limits.eventLoopCount(cores: System.coreCount))
        let graphTally = config.graph.enabled ? GraphTally(loops: Array(group.makeIterator()), watchesRequests: config.graph.http) : nil
        let accessLog = try AccessLogWriter(path: config.accessLog, limit: config.accessLogLimit, requests: config.accessLogRequests, graph: graphTally)
        let graph = graphTally.map { GraphRecorder(config: config.graph, tally: $0, accessLog: accessLog, logger: logger) }
        // Opened now, so a database that cannot be used is reported at start.
        graph?.flushSoon()
        let trustBundle = try TrustBundleWatcher(path: config.ca.trustBundle, logger: logger)
        let svids = SVIDManager(issuer: try loadAuthority(config), lifetime: config.certificateTTL, logger: logger)
        let agentIdentity = try config.agentIdentity
        svids.setIdentities(registry.presentIdentities.union([agentIdentity]))
        let workloadTLS = WorkloadTLS(svids: svids, bundle: { trustBundle.bundle }, acceptedTrustDomains: [config.trustDomain])

        let connections = ConnectionTracker(maximum: config.limits.maxConnections, splicer: makeSplicer(config.limits, logger: logger))
        let state = AgentState(policy: PolicyStatus(generation: 1, loadedAt: Date().timeIntervalSince1970, directory: config.policyDir, policies: policies))
        let authorizer = InboundAuthorizer(
            AuthorizationSnapshot(
                generation: 1, policies: policies.authorization, requestAuthentication: policies.requestAuthentication,
                peerAuthentication: policies.peerAuthentication, pathRules: config.http, workloads: registry.members.map(\.workload)))
        let enforcement = PolicyEnforcement(state: state, authorizer: authorizer, connections: connections, registry: registry, logger: logger)
        let destinations = NodeDestinations(registry: registry, agentPorts: config.ports.all, logger: logger)
        let listeners = Listeners(
            config: config, group: group, workloadTLS: workloadTLS, agentIdentity: agentIdentity,
            identifier: CgroupSourceIdentifier(sockDiag: sockDiag, conntrack: conntrack, registry: registry), destinations: destinations,
            accessLog: accessLog, connections: connections, authorizer: authorizer, sockets: sockets, logger: logger)
        let handover = Handover.Giving(
            path: Handover.path(adminSocket: config.adminSocket), sockets: { sockets.all + podSockets.all }, logger: logger,
            prepare: { try events.prepareHandover(on: group.next()) },
            abandoned: { events.handoverAbandoned() },
            superseded: { pid in events.superseded(by: pid) })

        var services = AgentServices(
            config: config, configPath: configPath, logger: logger, systemd: SystemdNotifier(), group: group, netfilter: netfilter, registry: registry,
            destinations: destinations, accessLog: accessLog, trustBundle: trustBundle, svids: svids, agentIdentity: agentIdentity,
            connections: connections, state: state, authorizer: authorizer, enforcement: enforcement, listeners: listeners, sockets: sockets,
            podSockets: podSockets, takeover: takeover, handover: handover, workloadTLS: workloadTLS, mount: mount, namespaceThread: try NamespaceThread(),
            podSources: try PodSources(config: config, group: group, registry: registry, logger: logger) { events.workloadsChanged() },
            cniEnrollments: cniEnrollments,
            enrollmentServer: config.workloadSources.cni.map { settings in
                EnrollmentServer(path: settings.socket, group: group, logger: logger) { request in
                    try await events.cni(request, on: group.next())
                }
            },
            graph: graph)
        services.servers = AdminRoutes.servers(for: services, events: events, metrics: metrics)
        return services
    }

    /// Binds the admin API, the metrics and readiness servers and the
    /// listeners, then installs the capture table, replacing any stale one.
    /// In `failureMode: closed` the table comes first: a workload connection
    /// made while the agent starts waits (or is refused), never leaves in
    /// plaintext. A step that fails undoes the ones before it.
    func start() async throws -> (Capture, NamespaceCaptures) {
        var capture = Capture(
            config: config, registry: registry, netfilter: netfilter, peerAuthentication: state.current.peerAuthentication, logger: logger)
        do {
            if config.failureMode == .closed { try capture.install() }
            for server in servers { try await server.start() }
            try await listeners.start()
            try capture.install()
        } catch {
            await stopServing()
            sockets.closeAll()
            throw error
        }
        let unused = sockets.closeUnclaimed()
        if !unused.isEmpty {
            logger.info("closed the sockets handed over that this config does not use: \(unused.joined(separator: ", "))")
            if systemd.settings != nil {
                for name in unused { notify(["FDSTOREREMOVE=1", "FDNAME=\(name)"]) }
            }
        }
        podSources.start()
        // Workloads in namespaces of their own are captured before the agent
        // says it is ready; one that cannot be yet waits, and is retried every tick.
        var namespaces = NamespaceCaptures(sockets: podSockets, logger: logger)
        await namespaces.sync(services: self, config: config, peerAuthentication: state.current.peerAuthentication)
        capture.namespaceAddresses = namespaces.addresses
        capture.sync()
        state.publish(capture)
        state.publish(namespaces)
        state.update { $0.ready = true }
        logger.info("mesh-agent ready: node \(config.node), trust domain \(config.trustDomain), \(registry.members.count) workload(s), table inet \(capture.parameters.tableName)")
        notify(["READY=1", "STATUS=ready: \(registry.members.count) workload(s), capture installed"])
        storeSocketsWithSystemd()
        takeover?.confirmReady(logger: logger)
        if let enrollmentServer {
            do {
                try await enrollmentServer.start()
            } catch {
                logger.error("\(error); the CNI plugin cannot enroll pods (ADD fails and the runtime retries)")
            }
        }
        do {
            try handover.start()
        } catch {
            logger.warning("cannot offer this agent's sockets to a successor (\(error)); an upgrade will bind anew")
        }
        return (capture, namespaces)
    }

    /// Under systemd, the listening sockets go into the service's file
    /// descriptor store (`FileDescriptorStoreMax=` in the unit), so that the
    /// next process after a restart gets them back and no connection is
    /// refused in between. Elsewhere this does nothing.
    private func storeSocketsWithSystemd() {
        guard systemd.settings != nil else { return }
        for (name, fd) in sockets.all {
            notify(["FDSTORE=1", "FDNAME=\(name)"], descriptors: [fd])
        }
    }

    /// Stops in reverse. In failureMode open, new connections stop being
    /// captured first; the table itself goes only after the drain, because
    /// unregistering its nat hook makes the kernel drop the NAT state of the
    /// connections still being proxied.
    func drain(capture: inout Capture, namespaces: inout NamespaceCaptures, config: AgentConfig) async {
        handover.stop()
        if !capture.owned {
            logger.info("the agent that took over keeps table inet \(capture.parameters.tableName); draining this one's connections")
        } else if config.failureMode == .open {
            capture.stopCapturing()
        } else {
            logger.info("failureMode closed: leaving table inet \(capture.parameters.tableName) in place; workload traffic stays captured until the agent is back")
        }
        await enrollmentServer?.stop()
        await podSources.stop()
        await listeners.stopAccepting()
        await namespaces.stopAccepting()
        await waitForConnections(upTo: config.drainTimeout)
        // Its connections were ended above; their log lines go out on the loops.
        connections.splicer?.shutdown()
        await namespaces.close(removingTables: config.failureMode == .open && capture.owned)
        if config.failureMode == .open {
            capture.remove()
        }
        await stopServing()
        sockets.closeAll()
        _ = podSockets.closeUnclaimed()
        // Lines of the loops' last tick, if their scheduled write did not run.
        accessLog.flush()
        logger.info("mesh-agent stopped")
    }

    /// Open connections get up to `drainTimeout` to finish; then they are closed.
    private func waitForConnections(upTo drainTimeout: Duration) async {
        // A connection accepted just before the listeners stopped may still
        // wait for its first step, uncounted: the accepting loop hands it to
        // its own loop, which then runs it. Two rounds of every loop running
        // what it has queued come after both.
        for _ in 0..<2 {
            for eventLoop in group.makeIterator() {
                try? await eventLoop.submit {}.get()
            }
        }
        let open = connections.count
        guard open > 0 else { return }
        logger.info("waiting up to \(drainTimeout) for \(open) connection(s) to finish")
        let clock = ContinuousClock()
        let deadline = clock.now + drainTimeout
        while connections.count > 0, clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        guard connections.count > 0 else { return }
        logger.warning("drain deadline passed: closing \(connections.count) connection(s)")
        connections.closeAll()
        while connections.count > 0, clock.now < deadline + .seconds(5) {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Another agent asks for the sockets: this one stops accepting first, so
    /// that the two never accept on one socket; connections arriving
    /// meanwhile wait in the sockets' queues.
    func pauseForHandover() async {
        await listeners.pauseAccepting()
        for server in servers.dropFirst() { await server.stop() }
    }

    /// The agent that asked for the sockets did not become ready: this one
    /// accepts again, on the same sockets.
    func resumeAfterAbandonedHandover() async {
        do {
            for server in servers.dropFirst() { try await server.start() }
            await listeners.resumeAccepting()
            logger.info("the handover was not completed; this agent accepts again")
        } catch {
            logger.error("cannot accept again after an abandoned handover: \(error); restart the agent")
        }
    }

    /// Another agent took over: it accepts on the sockets now, and keeps the
    /// table. This one lets go of its copies of the sockets, tells tunnel
    /// peers to go to the new one, and serves its open connections until
    /// SIGTERM drains them.
    func handedOver(capture: inout Capture, to pid: Int32) async {
        capture.handOver()
        await listeners.stopAccepting()
        sockets.closeAll()
        state.update { $0.ready = false }
        notify(["STATUS=handed over to pid \(pid); draining on SIGTERM"])
        logger.info("the agent with pid \(pid) took over: this one accepts nothing new and drains its \(connections.count) connection(s) on SIGTERM")
    }

    private func stopServing() async {
        await listeners.close()
        for server in servers.reversed() { await server.stop() }
        // The last seconds' edges, so a restart keeps the whole graph: taken
        // while the loops that counted them still run.
        graph?.flushNow()
        graph?.tally.stopAskingLoops()
        try? await group.shutdownGracefully()
    }

    func notify(_ fields: [String], descriptors: [CInt] = []) {
        if let error = systemd.notify(fields, descriptors: descriptors) {
            logger.warning("\(error)")
        }
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
}

/// The kernel relay for plain connections, unless the config turns it off or
/// the kernel refuses it (the event loops carry every connection then).
private func makeSplicer(_ limits: AgentConfig.Limits, logger: Logger) -> KernelSplicer? {
    guard limits.kernelSplice else { return nil }
    do {
        // As many relay threads as event loops: one would cap bulk transfers at a core.
        return try KernelSplicer(threads: limits.eventLoopCount(cores: System.coreCount))
    } catch {
        logger.warning("\(error)")
        return nil
    }
}

/// Each proxied connection holds two sockets, and four pipe ends more while
/// the kernel splices it: a descriptor limit below what `maxConnections`
/// needs refuses connections with EMFILE long before the agent's own limit.
private func warnIfDescriptorsRunShort(_ limits: AgentConfig.Limits, logger: Logger) {
    let perConnection: UInt64 = limits.kernelSplice ? 6 : 2
    let needed = UInt64(limits.maxConnections) * perConnection + 1024
    if let available = DescriptorLimit.soft, available < needed {
        logger.warning("the file descriptor limit is \(available); limits.maxConnections \(limits.maxConnections) needs about \(needed): raise LimitNOFILE (systemd) or ulimit -n, or lower limits.maxConnections")
    }
}
