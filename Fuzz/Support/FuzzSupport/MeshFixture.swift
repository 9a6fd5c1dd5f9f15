import Foundation
import NIOCore
import Policy
@testable import Proxy
import TestFixtures
import TLS
import Workloads

/// One workload and the policy that guards it, as the HTTP targets decide
/// requests: the same rule shapes as the demo (methods and path prefixes, a
/// DENY that wins over them, paths that need a verified token), and the JWT
/// fixtures' issuer. Its rules are simple enough that a target can tell from
/// a path alone whether a request to it may ever reach the workload.
public enum MeshFixture {
    public static let policyYAML = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: orders-public, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          action: ALLOW
          rules:
          - to:
            - operation: {methods: ["GET", "HEAD", "POST"], paths: ["/public/*", "/shop.Orders/Reserve"]}
          - from:
            - source: {requestPrincipals: ["\(JWTFixtures.issuer)/alice"]}
            to:
            - operation: {paths: ["/api/*"]}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-admin, namespace: shop}
        spec:
          action: DENY
          rules:
          - to:
            - operation: {paths: ["/public/admin", "/public/admin/*"]}
        ---
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: shop-users, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          jwtRules:
          - issuer: \(JWTFixtures.issuer)
            audiences: [shop]
            jwks: '\(JWTFixtures.jwks)'
        """

    /// Whether policy can allow a request for `path` (normalized): what the
    /// workload may see.
    public static func mayReachWorkload(_ path: String) -> Bool {
        let publicPath = path.hasPrefix("/public/") && path != "/public/admin" && !path.hasPrefix("/public/admin/")
        return publicPath || path == "/shop.Orders/Reserve" || path.hasPrefix("/api/")
    }

    public static let workload = Workload(
        name: "orders", namespace: "shop", serviceAccount: "orders",
        identity: try! SpiffeID("spiffe://\(trustDomain)/ns/shop/sa/orders"), labels: ["app": "orders"], ports: [8080])

    public static let trustDomain = "cluster.local"
    public static let workloadAddress = try! SocketAddress(ipAddress: "10.77.0.2", port: 8080)

    /// A connection from checkout over the tunnel.
    public static let connection = ConnectionAttributes(
        peer: try! SpiffeID("spiffe://\(trustDomain)/ns/shop/sa/checkout"), source: try! SocketAddress(ipAddress: "10.77.0.1", port: 40000),
        destination: workloadAddress)

    public static let policies: PolicySet = {
        do {
            let file = try PolicyFile.parse(policyYAML, file: "fuzz-fixture.yaml")
            return PolicySet(
                peerAuthentication: PeerAuthenticationSet(rootNamespace: "istio-system", defaultMode: .PERMISSIVE),
                authorization: AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: "istio-system"),
                requestAuthentication: try RequestAuthenticationSet(file.requestAuthentications, rootNamespace: "istio-system"))
        } catch {
            fatalError("the fuzz fixture's policy does not load: \(error)")
        }
    }()

    public static let snapshot = AuthorizationSnapshot(
        generation: 1, policies: policies.authorization, requestAuthentication: policies.requestAuthentication, workloads: [workload])

    /// The workload's request decision, as the data path makes it.
    public static var workloadPolicy: WorkloadPolicy { snapshot.policy(for: workload) }

    /// Decides requests on the tunnel connection from checkout.
    static var inspector: HTTPRequestInspector {
        var entry = AccessLogEntry(time: 0, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
        entry.protocol = "http"
        return HTTPRequestInspector(workload: workload, connection: connection, authorizer: InboundAuthorizer(snapshot), connectionEntry: entry)
    }
}

/// Access-log lines, checked and dropped: a reason is documented as safe to
/// log (it quotes a request only escaped and shortened, if at all).
final class CheckingAccessLog: AccessLogSink {
    /// The inspected connections the fuzz targets drive are never spliced.
    let observesRequests = false

    func record(_ entry: AccessLogEntry) {
        Fuzzing.requireLoggable(entry.reason, "the access-log reason")
    }

    func observe(_ entry: AccessLogEntry) {
        Fuzzing.requireLoggable(entry.reason, "the access-log reason")
    }
}
