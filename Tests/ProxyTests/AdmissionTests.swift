import NIOCore
import Policy
import TLS
import Testing
@testable import Proxy
import Workloads

/// Every way a connection can reach a workload on this node, against every kind
/// of destination, mTLS mode and policy outcome: the one admission decision the
/// three listeners carry out, without sockets.
@Suite struct AdmissionTests {
    static let orders = try! Workload(
        name: "orders", namespace: "shop", serviceAccount: "orders", identity: SpiffeID("spiffe://cluster.local/ns/shop/sa/orders"),
        labels: ["app": "orders"], ports: [8080, 5432], tcpPorts: [5432])
    static let checkout = try! Workload(
        name: "checkout", namespace: "shop", serviceAccount: "checkout", identity: SpiffeID("spiffe://cluster.local/ns/shop/sa/checkout"))
    static let peer = try! SpiffeID("spiffe://cluster.local/ns/web/sa/frontend")
    static let source = try! SocketAddress(ipAddress: "10.77.0.1", port: 40000)
    static let destination = try! SocketAddress(ipAddress: "10.77.0.2", port: 8080)

    enum Arrivals: String, CaseIterable {
        case sameNode, tunnel, plaintext

        var arrival: Arrival {
            switch self {
            case .sameNode: return .sameNode(source: AdmissionTests.checkout)
            case .tunnel: return .tunnel(peer: AdmissionTests.peer)
            case .plaintext: return .plaintext
            }
        }
    }

    /// The policy in force, by what it makes of the callers above.
    enum Policies: String, CaseIterable {
        /// No policy at all: everything is allowed.
        case none
        /// ALLOW for authenticated callers only (L4).
        case allowAuthenticated
        /// DENY for everyone at L4.
        case denyAll
        /// A rule naming paths: requests are inspected.
        case needsRequests
        /// No policy, but the port is STRICT.
        case strict

        func snapshot() throws -> AuthorizationSnapshot {
            let text: String
            switch self {
            case .none, .strict: text = ""
            case .allowAuthenticated:
                text = policy(action: "ALLOW", rule: "from: [{source: {principals: [\"*\"]}}]")
            case .denyAll:
                text = policy(action: "DENY", rule: "from: [{source: {notPrincipals: [\"nobody\"]}}]")
            case .needsRequests:
                text = policy(action: "ALLOW", rule: "to: [{operation: {paths: [\"/orders/*\"]}}]")
            }
            let file = try PolicyFile.parse(text, file: "policies.yaml")
            var peerAuthentications: [PeerAuthentication] = []
            if self == .strict {
                peerAuthentications = try PolicyFile.parse(
                    """
                    apiVersion: security.istio.io/v1
                    kind: PeerAuthentication
                    metadata: {name: strict, namespace: shop}
                    spec: {mtls: {mode: STRICT}}
                    """, file: "strict.yaml"
                ).peerAuthentications
            }
            return AuthorizationSnapshot(
                generation: 1, policies: AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: "istio-system"),
                peerAuthentication: PeerAuthenticationSet(peerAuthentications, rootNamespace: "istio-system", defaultMode: .PERMISSIVE),
                workloads: [AdmissionTests.orders])
        }

        private func policy(action: String, rule: String) -> String {
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: orders-policy, namespace: shop}
            spec:
              selector: {matchLabels: {app: orders}}
              action: \(action)
              rules:
              - \(rule)
            """
        }
    }

    enum Destinations: String, CaseIterable {
        case workload, loopback, agentPort, elsewhere

        var resolved: LocalDestination {
            switch self {
            case .workload: return .workload(AdmissionTests.orders)
            case .loopback: return .forbidden(.loopback)
            case .agentPort: return .forbidden(.agentPort)
            case .elsewhere: return .elsewhere
            }
        }
    }

    /// What each combination must come to.
    static func expected(_ arrival: Arrivals, _ destination: Destinations, _ policy: Policies) -> String {
        switch destination {
        case .loopback: return "refuse forbidden_destination"
        case .agentPort: return "refuse forbidden_destination"
        case .elsewhere: return "refuse not_a_workload"
        case .workload: break
        }
        switch policy {
        case .none: return "forward"
        case .strict: return arrival == .plaintext ? "refuse strict_mtls" : "forward"
        case .allowAuthenticated: return arrival == .plaintext ? "refuse denied_by_policy" : "forward"
        case .denyAll: return "refuse denied_by_policy"
        case .needsRequests: return "inspect"
        }
    }

    @Test(arguments: Arrivals.allCases, Destinations.allCases)
    func everyCombinationComesToItsPlan(arrival: Arrivals, destination: Destinations) throws {
        for policy in Policies.allCases {
            let plan = Admission.plan(
                arrival.arrival, source: Self.source, destination: Self.destination, resolved: destination.resolved, policy: try policy.snapshot(),
                now: 1_800_000_000)
            let context = "\(arrival) to \(destination) under \(policy)"
            let got: String
            switch plan.decision {
            case .forward(let workload, let inspected):
                #expect(workload == Self.orders, "\(context)")
                got = inspected ? "inspect" : "forward"
            case .refuse(let refusal):
                got = "refuse \(refusal.label)"
            }
            #expect(got == Self.expected(arrival, destination, policy), "\(context)")

            // One set of access-log fields, whatever the listener.
            let entry = plan.entry
            #expect(entry.time == 1_800_000_000)
            #expect(entry.sourceAddress == Self.source && entry.destinationAddress == Self.destination, "\(context)")
            #expect(entry.action == (got.hasPrefix("refuse") ? .deny : .allow), "\(context)")
            #expect(entry.protocol == (got == "inspect" ? "http" : "tcp"), "\(context)")
            switch arrival {
            case .sameNode:
                #expect(entry.direction == .outbound && entry.tls == .none, "\(context)")
                #expect(entry.sourceWorkload == "shop/checkout" && entry.sourceIdentity == Self.checkout.identity.description, "\(context)")
                if !got.hasPrefix("refuse") { #expect(entry.reason == "same-node", "\(context)") }
            case .tunnel:
                #expect(entry.direction == .inbound && entry.tls == .mutual && entry.sourceIdentity == Self.peer.description, "\(context)")
                if !got.hasPrefix("refuse") { #expect(entry.reason == "hbone", "\(context)") }
            case .plaintext:
                #expect(entry.direction == .inbound && entry.tls == .none && entry.sourceIdentity == nil, "\(context)")
                if !got.hasPrefix("refuse") { #expect(entry.reason == "permissive", "\(context)") }
            }
            if destination == .workload {
                #expect(entry.destinationWorkload == "shop/orders" && entry.destinationIdentity == Self.orders.identity.description, "\(context)")
            } else {
                #expect(entry.destinationWorkload == nil, "\(context): no workload is named for a refused destination")
            }
            if got == "refuse denied_by_policy" {
                #expect(entry.policy == "shop/orders-policy" || policy == .allowAuthenticated, "\(context)")
                #expect(!entry.reason.isEmpty)
            }
            if got == "refuse strict_mtls" {
                #expect(entry.policy == "shop/strict" && entry.reason.contains("STRICT"), "\(context)")
            }
            if case .forbidden = destination.resolved {
                #expect(entry.reason.contains(Self.destination.authority), "\(context)")
            }
            // A forwarded connection is admitted again, as itself, on a reload.
            if let check = plan.policyCheck {
                #expect(check.arrival == arrival.arrival && check.destination == Self.destination && check.source == Self.source)
                #expect(check.inspected == (got == "inspect"))
            } else {
                #expect(got.hasPrefix("refuse"), "\(context)")
            }
        }
    }

    @Test func aTCPOnlyPortIsDecidedWithoutRequests() throws {
        let tcp = try SocketAddress(ipAddress: "10.77.0.2", port: 5432)
        let plan = Admission.plan(
            .tunnel(peer: Self.peer), source: Self.source, destination: tcp, resolved: .workload(Self.orders),
            policy: try Policies.needsRequests.snapshot(), now: 0)
        // ALLOW rules naming HTTP match nothing on a TCP-only port, as in Istio.
        #expect(plan.decision == .refuse(.denied(plan.authorization.flatMap {
            if case .decided(let decision) = $0 { return decision } else { return nil }
        }!)))
    }
}
