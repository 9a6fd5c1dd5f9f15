import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Policy
import TLS
import Workloads

/// The authorization policy in force, as one value: swapped whole on reload,
/// so a connection or request is decided by one generation of policy, never a
/// mix.
public struct AuthorizationSnapshot: Sendable {
    /// Increases with every reload that changed something.
    public var generation: Int
    public var policies: AuthorizationPolicySet
    public var requestAuthentication: RequestAuthenticationSet
    /// Which workload ports take plaintext from outside the node.
    public var peerAuthentication: PeerAuthenticationSet
    /// How request paths are normalized (the config's `http:`).
    public var pathRules: HTTPPath.Rules
    /// Compiled per workload (`namespace/name`) for the workloads the registry
    /// held when the snapshot was made; other workloads are compiled on demand.
    private var compiled: [String: WorkloadPolicy]

    public init(
        generation: Int, policies: AuthorizationPolicySet, requestAuthentication: RequestAuthenticationSet? = nil,
        peerAuthentication: PeerAuthenticationSet? = nil, pathRules: HTTPPath.Rules = .standard, workloads: [Workload]
    ) {
        self.generation = generation
        self.policies = policies
        self.requestAuthentication = requestAuthentication ?? RequestAuthenticationSet(rootNamespace: policies.rootNamespace)
        self.peerAuthentication = peerAuthentication ?? PeerAuthenticationSet(rootNamespace: policies.rootNamespace, defaultMode: .PERMISSIVE)
        self.pathRules = pathRules
        self.compiled = [:]
        for workload in workloads {
            compiled[workload.qualifiedName] = compile(workload)
        }
    }

    private func compile(_ workload: Workload) -> WorkloadPolicy {
        WorkloadPolicy(
            authorization: policies.forWorkload(namespace: workload.namespace, labels: workload.labels),
            authenticator: requestAuthentication.authenticator(namespace: workload.namespace, labels: workload.labels),
            tcpPorts: workload.tcpPorts, pathRules: pathRules)
    }

    public func policy(for workload: Workload) -> WorkloadPolicy {
        compiled[workload.qualifiedName] ?? compile(workload)
    }

    /// The L4 decision for a connection to `workload`.
    public func authorize(_ connection: ConnectionAttributes, to workload: Workload) -> ConnectionAuthorization {
        policy(for: workload).decide(connection)
    }
}

/// Decides inbound connections against the current snapshot, and counts the
/// answers.
public final class InboundAuthorizer: Sendable {
    private let current: NIOLockedValueBox<AuthorizationSnapshot>
    private let metrics = AuthorizationMetrics()

    public init(_ snapshot: AuthorizationSnapshot) {
        current = NIOLockedValueBox(snapshot)
    }

    public var snapshot: AuthorizationSnapshot {
        current.withLockedValue { $0 }
    }

    /// `workload`'s policy in the current snapshot, without copying the
    /// snapshot out of its lock (a request is decided by this alone).
    public func policy(for workload: Workload) -> WorkloadPolicy {
        current.withLockedValue { $0.policy(for: workload) }
    }

    public func update(_ snapshot: AuthorizationSnapshot) {
        current.withLockedValue { $0 = snapshot }
    }

    /// Counts what admission decided at L4.
    func record(_ plan: AdmissionPlan) {
        switch plan.decision {
        case .forward(_, inspectRequests: true): metrics.recordInspection()
        case .forward(_, inspectRequests: false): metrics.record(.allow, layer: "l4")
        case .refuse(.denied): metrics.record(.deny, layer: "l4")
        case .refuse: break
        }
    }

    /// Counts what the request decision said.
    func record(_ verdict: RequestVerdict) {
        switch verdict {
        case .refused: break
        case .unauthenticated: metrics.unauthenticated.increment()
        case .decided(let decision, _): metrics.record(decision.outcome, layer: "l7")
        }
    }
}

extension ConnectionAttributes {
    /// The attributes of an inbound connection to `destination` from a peer
    /// that proved `identity` (nil: plaintext).
    public init(peer identity: SpiffeID?, source: SocketAddress?, destination: SocketAddress) {
        self.init(
            sourcePrincipal: identity.map(\.principal), sourceAddress: source, destinationAddress: destination,
            destinationPort: UInt16(clamping: destination.port ?? 0))
    }
}

extension AccessLogEntry {
    /// Records what authorization decided about this connection or request.
    mutating func record(_ decision: AuthorizationDecision) {
        action = decision.outcome == .allow ? .allow : .deny
        policy = decision.policy
        rule = decision.rule?.ruleIndex
        if decision.outcome == .deny {
            reason = decision.reason
        }
        audited = decision.audits.isEmpty ? nil : decision.audits.joined(separator: ",")
        if let dryRun = decision.dryRun, dryRun.outcome != decision.outcome || dryRun.rule != decision.rule {
            audit = dryRun.outcome.rawValue
            auditPolicy = dryRun.rule?.policy
            auditRule = dryRun.rule?.ruleIndex
        }
    }
}

struct AuthorizationMetrics: Sendable {
    private let counters: [String: Counter]
    let unauthenticated = Counter(label: "mesh_agent_request_authentication_failures_total")

    init() {
        var counters: [String: Counter] = [:]
        for layer in ["l4", "l7"] {
            for decision in ["allow", "deny", "inspect"] where !(layer == "l7" && decision == "inspect") {
                counters["\(layer)/\(decision)"] = Counter(
                    label: "mesh_agent_authorization_decisions_total", dimensions: [("layer", layer), ("decision", decision)])
            }
        }
        self.counters = counters
    }

    func recordInspection() {
        counters["l4/inspect"]?.increment()
    }

    func record(_ outcome: AuthorizationDecision.Outcome, layer: String) {
        counters["\(layer)/\(outcome.rawValue)"]?.increment()
    }


}
