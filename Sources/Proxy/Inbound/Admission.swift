import NIOCore
import Policy
import TLS
import Workloads

/// How a connection to a workload on this node reached the agent, and what it
/// proved about its source.
public enum Arrival: Equatable, Sendable {
    /// From a workload on this node, captured by the outbound listener; its
    /// identity from its socket's cgroup. No tunnel is involved, so this agent
    /// enforces the destination's policy, as the destination's agent would.
    case sameNode(source: Workload)
    /// Through the tunnel, from a peer that proved `peer` in mutual TLS.
    case tunnel(peer: SpiffeID)
    /// In plaintext from outside the node (a PERMISSIVE port redirected to the
    /// inbound-plaintext listener): no identity.
    case plaintext

    /// The `path` label of the admission counters.
    var label: String {
        switch self {
        case .sameNode: return "same_node"
        case .tunnel: return "tunnel"
        case .plaintext: return "inbound_plaintext"
        }
    }
}

/// Why a connection to a workload is not forwarded.
public enum AdmissionRefusal: Equatable, Sendable {
    /// No present workload serves that address and port on this node.
    case notAWorkload
    /// An address or port no workload connection is ever sent to.
    case forbidden(ForbiddenDestination)
    /// Plaintext to a port whose PeerAuthentication mode is STRICT (the kernel
    /// resets such connections; this holds if one got past it, in the instant
    /// a port changes mode, say).
    case plaintextToStrictPort(PeerAuthenticationSet.Decision)
    /// Authorization policy denied the connection.
    case denied(AuthorizationDecision)
    /// `limits.maxConnections` connections are open.
    case overConnectionLimit

    /// Every `label`.
    static let labels = ["not_a_workload", "forbidden_destination", "strict_mtls", "denied_by_policy", "over_connection_limit"]

    /// The `result` label of the admission counters.
    var label: String {
        switch self {
        case .notAWorkload: return "not_a_workload"
        case .forbidden: return "forbidden_destination"
        case .plaintextToStrictPort: return "strict_mtls"
        case .denied: return "denied_by_policy"
        case .overConnectionLimit: return "over_connection_limit"
        }
    }
}

/// What to do with a connection to a workload on this node.
package struct AdmissionPlan: Sendable {
    package enum Decision: Equatable, Sendable {
        case refuse(AdmissionRefusal)
        /// Forward it to `workload` at the destination address, bytes spliced
        /// as they are, or with every HTTP request decided on its own.
        case forward(Workload, inspectRequests: Bool)
    }

    package var decision: Decision
    /// The connection's access-log line as far as admission knows it; a
    /// refusal's is complete.
    package var entry: AccessLogEntry
    /// The connection's attributes as policy saw them.
    package var attributes: ConnectionAttributes
    package var arrival: Arrival
    /// What authorization policy said of the connection, when admission got
    /// that far.
    package var authorization: ConnectionAuthorization?

    /// What a forwarded connection is admitted again with when the policy changes.
    var policyCheck: TrackedPolicyCheck? {
        guard case .forward(let workload, let inspected) = decision, let destination = entry.destinationAddress else { return nil }
        return TrackedPolicyCheck(
            arrival: arrival, source: entry.sourceAddress, destination: destination, workload: workload, inspected: inspected)
    }
}

/// The one decision every inbound path makes before anything is dialled:
/// whether the destination is a workload here, whether its PeerAuthentication
/// lets this source in, what its authorization policy says at L4, and whether
/// its requests must be inspected. Pure: the listeners carry the plan out.
package enum Admission {
    /// - Parameters:
    ///   - source: the client's address (the peer agent's, for the tunnel);
    ///   - destination: where the connection is going (the CONNECT target,
    ///     the original destination);
    ///   - resolved: what `destination` is on this node;
    ///   - policy: the policy in force;
    ///   - now: the access log's time for the connection.
    package static func plan(
        _ arrival: Arrival, source: SocketAddress?, destination: SocketAddress, resolved: LocalDestination, policy: AuthorizationSnapshot,
        now: Double
    ) -> AdmissionPlan {
        var entry = openingEntry(arrival, source: source, destination: destination, now: now)
        let attributes = ConnectionAttributes(peer: arrival.peerIdentity, source: source, destination: destination)
        func refuse(_ refusal: AdmissionRefusal, _ reason: String) -> AdmissionPlan {
            entry.action = .deny
            entry.reason = reason
            return AdmissionPlan(decision: .refuse(refusal), entry: entry, attributes: attributes, arrival: arrival, authorization: nil)
        }

        let workload: Workload
        switch resolved {
        case .workload(let found):
            workload = found
        case .forbidden(let kind):
            return refuse(.forbidden(kind), "\(arrival.targetWording) \(kind.reason(destination))")
        case .elsewhere:
            return refuse(.notAWorkload, "\(arrival.targetWording) \(destination.authority) is not a workload port on this node")
        }
        entry.destinationWorkload = workload.qualifiedName
        entry.destinationIdentity = workload.identity.description

        if case .plaintext = arrival {
            let port = UInt16(clamping: destination.port ?? 0)
            let mode = policy.peerAuthentication.decision(namespace: workload.namespace, labels: workload.labels, port: port)
            if mode.mode == .STRICT {
                entry.policy = mode.policy
                return refuse(.plaintextToStrictPort(mode), "plaintext is refused: the port's mTLS mode is \(mode)")
            }
        }

        let authorization = policy.authorize(attributes, to: workload)
        switch authorization {
        case .decided(let decision):
            entry.record(decision)
            guard decision.outcome == .allow else {
                return AdmissionPlan(
                    decision: .refuse(.denied(decision)), entry: entry, attributes: attributes, arrival: arrival, authorization: authorization)
            }
            return AdmissionPlan(
                decision: .forward(workload, inspectRequests: false), entry: entry, attributes: attributes, arrival: arrival, authorization: authorization)
        case .inspectRequests:
            entry.protocol = "http"
            return AdmissionPlan(
                decision: .forward(workload, inspectRequests: true), entry: entry, attributes: attributes, arrival: arrival, authorization: authorization)
        }
    }

    /// The access-log line a connection starts with: who, from where, to where.
    package static func openingEntry(_ arrival: Arrival, source: SocketAddress?, destination: SocketAddress, now: Double) -> AccessLogEntry {
        var entry: AccessLogEntry
        switch arrival {
        case .sameNode(let workload):
            entry = AccessLogEntry(time: now, direction: .outbound, tls: .none, action: .allow, reason: "same-node")
            entry.sourceWorkload = workload.qualifiedName
            entry.sourceIdentity = workload.identity.description
        case .tunnel(let peer):
            entry = AccessLogEntry(time: now, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
            entry.sourceIdentity = peer.description
        case .plaintext:
            entry = AccessLogEntry(time: now, direction: .inbound, tls: .none, action: .allow, reason: "permissive")
        }
        entry.sourceAddress = source
        entry.destinationAddress = destination
        return entry
    }
}

extension Arrival {
    /// The identity policy sees; nil for plaintext.
    package var peerIdentity: SpiffeID? {
        switch self {
        case .sameNode(let source): return source.identity
        case .tunnel(let peer): return peer
        case .plaintext: return nil
        }
    }

    /// How a refusal's reason names the destination.
    var targetWording: String {
        switch self {
        case .sameNode: return "destination"
        case .tunnel: return "CONNECT target"
        case .plaintext: return "plaintext to"
        }
    }
}
