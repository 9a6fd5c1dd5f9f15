import Foundation
import Config
import Logging
import Metrics
import Policy
import Proxy
import Workloads

/// Loads the policy directory and puts the result in force everywhere at once:
/// the capture table's guarded ports (PeerAuthentication), the data path's
/// authorization snapshot, and the connections already open, which are checked
/// again so that revoked access ends. A directory that fails to load changes
/// nothing; the reasons are logged, counted and kept for `agentctl policies`.
struct PolicyEnforcement {
    let state: AgentState
    let authorizer: InboundAuthorizer
    let connections: ConnectionTracker
    let registry: WorkloadRegistry
    let logger: Logger
    private let reloads = Counter(label: "mesh_agent_policy_reloads_total", dimensions: [("result", "success")])
    private let failedReloads = Counter(label: "mesh_agent_policy_reloads_total", dimensions: [("result", "failure")])
    private let generationGauge = Gauge(label: "mesh_agent_policy_generation")
    private let revokedConnections = Counter(label: "mesh_agent_connections_revoked_total")

    init(state: AgentState, authorizer: InboundAuthorizer, connections: ConnectionTracker, registry: WorkloadRegistry, logger: Logger) {
        self.state = state
        self.authorizer = authorizer
        self.connections = connections
        self.registry = registry
        self.logger = logger
        generationGauge.record(state.current.policy.generation)
    }

    /// Re-reads `config.policyDir`; returns whether the new set is in force.
    @discardableResult
    func reload(config: AgentConfig, capture: inout Capture) -> Bool {
        let policies: PolicySet
        do {
            policies = try PolicyLoader.load(directory: config.policyDir, rootNamespace: config.rootNamespace, defaultMode: config.mtlsMode)
            try policies.check(against: config.workloads)
        } catch {
            failedReloads.increment()
            logger.error("\(error)")
            state.update {
                $0.policy.lastError = error.errors.map(\.description)
                $0.policy.lastErrorAt = Date().timeIntervalSince1970
            }
            return false
        }
        Self.log(policies, from: config.policyDir, logger: logger)
        capture.peerAuthentication = policies.peerAuthentication
        var generation = 0
        state.update {
            $0.policy.generation += 1
            $0.policy.loadedAt = Date().timeIntervalSince1970
            $0.policy.directory = config.policyDir
            $0.policy.policies = policies
            $0.policy.lastError = nil
            $0.policy.lastErrorAt = nil
            generation = $0.policy.generation
        }
        reloads.increment()
        generationGauge.record(generation)
        apply(policies, generation: generation, pathRules: config.http)
        return true
    }

    /// Compiles the policies in force again for the registry's workloads (after
    /// the workloads or the config's path rules changed) and re-checks open
    /// connections.
    func recompile(config: AgentConfig) {
        let status = state.current.policy
        apply(status.policies, generation: status.generation, pathRules: config.http)
    }

    /// Time-bound grants whose instant has come stop applying: the policies
    /// in force are compiled again without them, and the connections only
    /// they allowed are closed with `grant expired: NAMESPACE/NAME`. For the
    /// control loop's tick; nothing happens when no grant expired since.
    func expireGrants(config: AgentConfig, now: Double = wallClock()) {
        let applied = authorizer.snapshot.policies.policies
        let expired = applied.filter { $0.hasExpired(at: now) }
        guard !expired.isEmpty else { return }
        let names = expired.map(\.reference).joined(separator: ", ")
        logger.info("time-bound grant(s) expired: \(names); they no longer apply")
        let status = state.current.policy
        apply(status.policies, generation: status.generation, pathRules: config.http, now: now, because: "grant expired: \(names)")
    }

    private func apply(_ policies: PolicySet, generation: Int, pathRules: HTTPPath.Rules, now: Double = wallClock(), because: String? = nil) {
        // Expired grants stay loaded (agentctl policies shows them) but are
        // not compiled into what the data path decides with.
        let inForce = AuthorizationPolicySet(
            policies.authorization.policies.filter { !$0.hasExpired(at: now) }, rootNamespace: policies.authorization.rootNamespace)
        authorizer.update(
            AuthorizationSnapshot(
                generation: generation, policies: inForce, requestAuthentication: policies.requestAuthentication,
                peerAuthentication: policies.peerAuthentication, pathRules: pathRules, workloads: registry.members.map(\.workload)))
        let closed = connections.recheck(authorizer, because: because)
        if closed > 0 {
            revokedConnections.increment(by: closed)
            logger.info("policy generation \(generation): closed \(closed) open connection(s) it no longer allows")
        }
    }

    static func log(_ policies: PolicySet, from directory: String, logger: Logger) {
        var parts = [
            "\(policies.files.count) file(s)", "\(policies.authorization.policies.count) AuthorizationPolicy(s)",
            "\(policies.requestAuthentication.policies.count) RequestAuthentication(s)",
            "\(policies.peerAuthentication.policies.count) PeerAuthentication(s)", "default mTLS mode \(policies.peerAuthentication.defaultMode)",
        ]
        if policies.skippedDocumentCount > 0 {
            parts.append("\(policies.skippedDocumentCount) document(s) of other kinds ignored")
        }
        logger.info("policies from \(directory): \(parts.joined(separator: ", "))")
        for warning in policies.warnings {
            logger.warning("\(warning)")
        }
    }
}
