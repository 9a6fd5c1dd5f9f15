import NIOCore
import Policy

/// One authorization decision with 10 and with 10,000 policies loaded: the cost
/// the data path pays per connection (L4) and per request (L7), and the
/// per-reload cost of compiling a workload's policies.
func measurePolicyDecisions() throws {
    let connection = ConnectionAttributes(
        sourcePrincipal: "cluster.local/ns/shop/sa/checkout", sourceAddress: try SocketAddress(ipAddress: "10.77.0.1", port: 40000),
        destinationAddress: try SocketAddress(ipAddress: "10.77.0.2", port: 8080), destinationPort: 8080)
    let request = HTTPRequestAttributes(
        method: "POST", path: "/reserve", host: "orders.shop:8080",
        headers: [HTTPField(name: "content-type", value: "application/json"), HTTPField(name: "user-agent", value: "bench")])

    for total in [10, 10_000] {
        let set = try policySet(total: total)
        let clock = ContinuousClock()
        let compileStart = clock.now
        let workload = set.forWorkload(namespace: "shop", labels: ["app": "orders"])
        print("\(total) policies loaded; compiling shop/orders' \(workload.policies.count) took \(clock.now - compileStart)")
        measure("L4 decision, \(total) policies", per: "decision", iterations: 1_000_000, counting: "allowed") {
            if case .inspectRequests = workload.authorize(connection) { return true }
            return false
        }
        measure("L7 decision, \(total) policies", per: "decision", iterations: 1_000_000, counting: "allowed") {
            workload.authorize(connection, request: request).outcome == .allow
        }
        measure("compile + L4 decision, \(total) policies", per: "decision", iterations: total > 1000 ? 200 : 100_000, counting: "allowed") {
            if case .inspectRequests = set.forWorkload(namespace: "shop", labels: ["app": "orders"]).authorize(connection) { return true }
            return false
        }
    }
}

/// Policies spread over many namespaces, as a large mesh has them; the
/// measured workload (shop/orders) has the same handful in every run.
private func policySet(total: Int) throws -> AuthorizationPolicySet {
    var text = ""
    let shop = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: orders-allow, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          rules:
          - from: [{source: {principals: ["cluster.local/ns/shop/sa/checkout"]}}]
            to: [{operation: {methods: ["POST"], paths: ["/reserve"]}}]
          - from: [{source: {namespaces: ["shop"]}}]
            to: [{operation: {methods: ["GET"], paths: ["/orders/*"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-admin, namespace: shop}
        spec:
          action: DENY
          rules:
          - to: [{operation: {paths: ["/admin*"]}}]
          - from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: mesh-deny-plaintext, namespace: istio-system}
        spec:
          action: DENY
          rules:
          - from: [{source: {notPrincipals: ["*"]}}]

        """
    text += shop
    for index in 0..<(total - 3) {
        text += """
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: p\(index), namespace: ns\(index % 1000)}
            spec:
              selector: {matchLabels: {app: app\(index % 7)}}
              rules:
              - from: [{source: {principals: ["cluster.local/ns/ns\(index % 1000)/sa/caller\(index)"]}}]
                to: [{operation: {methods: ["GET"], paths: ["/v\(index)/*"]}}]

            """
    }
    let file = try PolicyFile.parse(text, file: "bench.yaml")
    return AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: "istio-system")
}
