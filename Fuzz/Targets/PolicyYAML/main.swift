import Foundation
import FuzzSupport
import Policy
import TestFixtures

/// A file of policyDir as the loader reads it: `PolicyFile.parse` (Yams, then
/// the PeerAuthentication, AuthorizationPolicy and RequestAuthentication
/// readers), the sets compiled as a reload compiles them (key sets read, a
/// `jwksUri` file standing for the JWT fixtures' keys), and decisions made
/// with them for every workload a policy selects: the connection, a request
/// with a token, and the mTLS mode of a port.
Fuzzing.run { bytes in
    let file: PolicyFile
    do {
        file = try PolicyFile.parse(Fuzzing.text(bytes), file: "fuzz.yaml")
    } catch {
        _ = "\(error)"
        return
    }
    let root = "istio-system"
    let authorization = AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: root)
    let requestAuthentication: RequestAuthenticationSet
    do {
        requestAuthentication = try RequestAuthenticationSet(
            file.requestAuthentications, rootNamespace: root, readFile: { _ in Data(JWTFixtures.jwks.utf8) })
    } catch {
        _ = "\(error)"
        return
    }
    let policies = PolicySet(
        peerAuthentication: PeerAuthenticationSet(file.peerAuthentications, rootNamespace: root, defaultMode: .PERMISSIVE),
        authorization: authorization, requestAuthentication: requestAuthentication)
    _ = policies.warnings
    let workloads = selectedWorkloads(file)
    _ = authorization.tcpOnlyConflicts(workloads.map { ("w", $0.namespace, $0.labels, [8080]) })
    for workload in workloads {
        _ = policies.mode(namespace: workload.namespace, labels: workload.labels, port: 8080)
        let decision = WorkloadPolicy(
            authorization: authorization.forWorkload(namespace: workload.namespace, labels: workload.labels),
            authenticator: requestAuthentication.authenticator(namespace: workload.namespace, labels: workload.labels))
        _ = decision.decide(MeshFixture.connection)
        _ = decision.decide(PolicyTarget.request, on: MeshFixture.connection, now: JWTFixtures.now)
    }
}

/// A workload for each policy: in its namespace, with the labels its selector
/// asks for.
private func selectedWorkloads(_ file: PolicyFile) -> [(namespace: String, labels: [String: String])] {
    let objects: [any PolicyObject] = file.peerAuthentications + file.authorizationPolicies + file.requestAuthentications
    return objects.map { ($0.namespace, $0.matchLabels ?? [:]) }
}

private enum PolicyTarget {
    static let request = RequestHead(
        method: "GET", target: "/public/orders?x=1",
        fields: [HTTPField(name: "host", value: "orders.shop"), HTTPField(name: "authorization", value: "Bearer \(JWTFixtures.Token.rs256)")])
}
