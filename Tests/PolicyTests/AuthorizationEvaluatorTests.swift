import NIOCore
import Testing

@testable import Policy

/// Policies as files, then questions and the answers Istio gives.
@Suite struct AuthorizationEvaluatorTests {
    static let checkout = "cluster.local/ns/shop/sa/checkout"
    static let reporting = "cluster.local/ns/shop/sa/reporting"
    static let frontend = "cluster.local/ns/web/sa/frontend"

    /// Parses `documents` (each: `NAMESPACE/NAME`, then the spec) into a set.
    static func policies(_ documents: [(String, String)]) throws -> AuthorizationPolicySet {
        let text = documents.map { reference, spec in
            let parts = reference.split(separator: "/")
            return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: \(parts[1]), namespace: \(parts[0])}\nspec:\n\(spec)"
        }.joined(separator: "\n---\n")
        let file = try PolicyFile.parse(text, file: "test.yaml")
        return AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: "istio-system")
    }

    static func connection(from principal: String?, ip: String = "10.77.0.1", port: UInt16 = 8080) -> ConnectionAttributes {
        ConnectionAttributes(
            sourcePrincipal: principal, sourceAddress: try? SocketAddress(ipAddress: ip, port: 40000),
            destinationAddress: try? SocketAddress(ipAddress: "10.77.0.2", port: Int(port)), destinationPort: port)
    }

    static func request(
        _ method: String = "GET", _ path: String = "/", host: String = "orders.shop:8080", headers: [String: String] = [:], identity: RequestIdentity? = nil
    ) -> HTTPRequestAttributes {
        HTTPRequestAttributes(
            method: method, path: path, host: host, headers: headers.sorted { $0.key < $1.key }.map { HTTPField(name: $0.key, value: $0.value) },
            identity: identity)
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var policies: [(String, String)]
        var labels: [String: String] = ["app": "orders"]
        var namespace = "shop"
        var connection: ConnectionAttributes
        var request: HTTPRequestAttributes?
        /// "allow", "deny" or "inspect" (L4 needs the request); then the deciding
        /// policy, or nil when no rule decided.
        var expected: String
        var policy: String?

        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "no policy allows", policies: [], connection: connection(from: nil), expected: "allow"),
        Case(
            name: "spec {} allows nothing", policies: [("shop/allow-nothing", "  {}\n")],
            connection: connection(from: checkout), expected: "deny"),
        Case(
            name: "rules [{}] allows everything", policies: [("shop/allow-all", "  rules: [{}]\n")],
            connection: connection(from: nil), expected: "allow", policy: "shop/allow-all"),
        Case(
            name: "DENY rules [{}] denies everything", policies: [("shop/deny-all", "  action: DENY\n  rules: [{}]\n")],
            connection: connection(from: checkout), expected: "deny", policy: "shop/deny-all"),
        Case(
            name: "DENY without rules matches nothing", policies: [("shop/deny-none", "  action: DENY\n")],
            connection: connection(from: checkout), expected: "allow"),
        Case(
            name: "DENY beats a matching ALLOW",
            policies: [
                ("shop/allow-all", "  rules: [{}]\n"),
                ("shop/deny-reporting", "  action: DENY\n  rules: [{from: [{source: {principals: [\"\(reporting)\"]}}]}]\n"),
            ],
            connection: connection(from: reporting), expected: "deny", policy: "shop/deny-reporting"),
        Case(
            name: "ALLOW by principal",
            policies: [("shop/checkout", "  rules: [{from: [{source: {principals: [\"\(checkout)\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "allow", policy: "shop/checkout"),
        Case(
            name: "ALLOW present, other principal denied",
            policies: [("shop/checkout", "  rules: [{from: [{source: {principals: [\"\(checkout)\"]}}]}]\n")],
            connection: connection(from: reporting), expected: "deny"),
        Case(
            name: "plaintext has no principal",
            policies: [("shop/any-principal", "  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n")],
            connection: connection(from: nil), expected: "deny"),
        Case(
            name: "DENY notPrincipals * refuses plaintext (Istio's example)",
            policies: [("shop/require-mtls", "  action: DENY\n  rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]\n")],
            connection: connection(from: nil), expected: "deny", policy: "shop/require-mtls"),
        Case(
            name: "DENY notPrincipals * lets mTLS through",
            policies: [("shop/require-mtls", "  action: DENY\n  rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "allow"),
        Case(
            name: "principal suffix match",
            policies: [("shop/sa", "  rules: [{from: [{source: {principals: [\"*/sa/checkout\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "allow", policy: "shop/sa"),
        Case(
            name: "principal prefix match",
            policies: [("shop/td", "  rules: [{from: [{source: {principals: [\"cluster.local/ns/web/*\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "deny"),
        Case(
            name: "namespaces from the principal",
            policies: [("shop/same-ns", "  rules: [{from: [{source: {namespaces: [\"shop\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "allow", policy: "shop/same-ns"),
        Case(
            name: "notNamespaces",
            policies: [("shop/not-web", "  action: DENY\n  rules: [{from: [{source: {notNamespaces: [\"shop\"]}}]}]\n")],
            connection: connection(from: frontend), expected: "deny", policy: "shop/not-web"),
        Case(
            name: "ipBlocks",
            policies: [("shop/net", "  rules: [{from: [{source: {ipBlocks: [\"10.77.0.0/24\"]}}]}]\n")],
            connection: connection(from: nil, ip: "10.77.0.9"), expected: "allow", policy: "shop/net"),
        Case(
            name: "ipBlocks outside",
            policies: [("shop/net", "  rules: [{from: [{source: {ipBlocks: [\"10.77.0.0/24\"]}}]}]\n")],
            connection: connection(from: nil, ip: "10.77.1.9"), expected: "deny"),
        Case(
            name: "notIpBlocks",
            policies: [("shop/net", "  action: DENY\n  rules: [{from: [{source: {notIpBlocks: [\"10.77.0.0/24\"]}}]}]\n")],
            connection: connection(from: nil, ip: "10.77.1.9"), expected: "deny", policy: "shop/net"),
        Case(
            name: "ports", policies: [("shop/port", "  rules: [{to: [{operation: {ports: [\"9090\"]}}]}]\n")],
            connection: connection(from: checkout, port: 8080), expected: "deny"),
        Case(
            name: "notPorts",
            policies: [("shop/port", "  action: DENY\n  rules: [{to: [{operation: {notPorts: [\"9090\"]}}]}]\n")],
            connection: connection(from: checkout, port: 8080), expected: "deny", policy: "shop/port"),
        Case(
            name: "all fields of a source must match",
            policies: [("shop/both", "  rules: [{from: [{source: {principals: [\"\(checkout)\"], ipBlocks: [\"10.77.5.0/24\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "deny"),
        Case(
            name: "one of several from entries is enough",
            policies: [
                ("shop/either", "  rules: [{from: [{source: {principals: [\"\(reporting)\"]}}, {source: {ipBlocks: [\"10.77.0.0/16\"]}}]}]\n")
            ],
            connection: connection(from: checkout), expected: "allow", policy: "shop/either"),
        Case(
            name: "when source.principal and destination.port",
            policies: [
                ("shop/when", "  rules: [{when: [{key: source.principal, values: [\"\(checkout)\"]}, {key: destination.port, values: [\"8080\"]}]}]\n")
            ],
            connection: connection(from: checkout), expected: "allow", policy: "shop/when"),
        Case(
            name: "when notValues",
            policies: [("shop/when", "  rules: [{when: [{key: source.namespace, notValues: [\"shop\"]}]}]\n")],
            connection: connection(from: checkout), expected: "deny"),
        Case(
            name: "when source.ip and destination.ip",
            policies: [
                ("shop/when", "  rules: [{when: [{key: source.ip, values: [\"10.77.0.1\"]}, {key: destination.ip, values: [\"10.77.0.0/24\"]}]}]\n")
            ],
            connection: connection(from: nil), expected: "allow", policy: "shop/when"),
        Case(
            name: "root namespace policies apply to every namespace",
            policies: [("istio-system/mesh-deny", "  action: DENY\n  rules: [{from: [{source: {namespaces: [\"web\"]}}]}]\n")],
            connection: connection(from: frontend), expected: "deny", policy: "istio-system/mesh-deny"),
        Case(
            name: "other namespaces' policies do not apply",
            policies: [("blog/deny-all", "  action: DENY\n  rules: [{}]\n")],
            connection: connection(from: frontend), expected: "allow"),
        Case(
            name: "a selector that does not pick the workload does not apply",
            policies: [("shop/deny-ledger", "  selector: {matchLabels: {app: ledger}}\n  action: DENY\n  rules: [{}]\n")],
            connection: connection(from: checkout), expected: "allow"),
        Case(
            name: "a selector needs every label",
            policies: [("shop/deny-v2", "  selector: {matchLabels: {app: orders, version: v2}}\n  action: DENY\n  rules: [{}]\n")],
            labels: ["app": "orders", "version": "v2"],
            connection: connection(from: checkout), expected: "deny", policy: "shop/deny-v2"),
        Case(
            name: "AUDIT never changes the outcome",
            policies: [("shop/audit-all", "  action: AUDIT\n  rules: [{}]\n")],
            connection: connection(from: checkout), expected: "allow"),
        // L4 questions that need the request.
        Case(
            name: "ALLOW with methods needs the request",
            policies: [("shop/get", "  rules: [{to: [{operation: {methods: [\"GET\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "inspect"),
        Case(
            name: "an HTTP ALLOW for another principal is decided at L4",
            policies: [("shop/get", "  rules: [{from: [{source: {principals: [\"\(reporting)\"]}}], to: [{operation: {methods: [\"GET\"]}}]}]\n")],
            connection: connection(from: checkout), expected: "deny"),
        Case(
            name: "an HTTP DENY on another port is decided at L4",
            policies: [("shop/no-delete", "  action: DENY\n  rules: [{to: [{operation: {ports: [\"9090\"], methods: [\"DELETE\"]}}]}]\n")],
            connection: connection(from: checkout, port: 8080), expected: "allow"),
        Case(
            name: "an L4 DENY decides before HTTP ALLOW rules",
            policies: [
                ("shop/get", "  rules: [{to: [{operation: {methods: [\"GET\"]}}]}]\n"),
                ("shop/deny-plain", "  action: DENY\n  rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]\n"),
            ],
            connection: connection(from: nil), expected: "deny", policy: "shop/deny-plain"),
        // L7 answers.
        Case(
            name: "method and path allowed",
            policies: [("shop/reserve", "  rules: [{from: [{source: {principals: [\"\(checkout)\"]}}], to: [{operation: {methods: [\"POST\"], paths: [\"/reserve\"]}}]}]\n")],
            connection: connection(from: checkout), request: request("POST", "/reserve"), expected: "allow", policy: "shop/reserve"),
        Case(
            name: "other method refused",
            policies: [("shop/reserve", "  rules: [{to: [{operation: {methods: [\"POST\"], paths: [\"/reserve\"]}}]}]\n")],
            connection: connection(from: checkout), request: request("GET", "/reserve"), expected: "deny"),
        Case(
            name: "other path refused",
            policies: [("shop/reserve", "  rules: [{to: [{operation: {methods: [\"POST\"], paths: [\"/reserve\"]}}]}]\n")],
            connection: connection(from: checkout), request: request("POST", "/reserve/x"), expected: "deny"),
        Case(
            name: "path prefix",
            policies: [("shop/api", "  rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n")],
            connection: connection(from: checkout), request: request("GET", "/api/v1/orders"), expected: "allow", policy: "shop/api"),
        Case(
            name: "notPaths in DENY",
            policies: [("shop/only-api", "  action: DENY\n  rules: [{to: [{operation: {notPaths: [\"/api/*\"]}}]}]\n")],
            connection: connection(from: checkout), request: request("GET", "/admin"), expected: "deny", policy: "shop/only-api"),
        Case(
            name: "notMethods",
            policies: [("shop/read-only", "  rules: [{to: [{operation: {notMethods: [\"DELETE\", \"PUT\"]}}]}]\n")],
            connection: connection(from: checkout), request: request("DELETE", "/x"), expected: "deny"),
        Case(
            name: "hosts ignore case and port",
            policies: [("shop/host", "  rules: [{to: [{operation: {hosts: [\"orders.shop\"]}}]}]\n")],
            connection: connection(from: checkout), request: request(host: "Orders.Shop:8080"), expected: "allow", policy: "shop/host"),
        Case(
            name: "hosts with a port match exactly",
            policies: [("shop/host", "  rules: [{to: [{operation: {hosts: [\"orders.shop:9090\"]}}]}]\n")],
            connection: connection(from: checkout), request: request(host: "orders.shop:8080"), expected: "deny"),
        Case(
            name: "notHosts",
            policies: [("shop/host", "  action: DENY\n  rules: [{to: [{operation: {notHosts: [\"*.shop\"]}}]}]\n")],
            connection: connection(from: checkout), request: request(host: "evil.example"), expected: "deny", policy: "shop/host"),
        Case(
            name: "request header condition",
            policies: [("shop/tenant", "  rules: [{when: [{key: \"request.headers[x-tenant]\", values: [\"acme\"]}]}]\n")],
            connection: connection(from: checkout), request: request(headers: ["X-Tenant": "acme"]), expected: "allow", policy: "shop/tenant"),
        Case(
            name: "missing header does not match values",
            policies: [("shop/tenant", "  rules: [{when: [{key: \"request.headers[x-tenant]\", values: [\"*\"]}]}]\n")],
            connection: connection(from: checkout), request: request(), expected: "deny"),
        Case(
            name: "missing header matches notValues",
            policies: [("shop/tenant", "  action: DENY\n  rules: [{when: [{key: \"request.headers[x-tenant]\", notValues: [\"acme\"]}]}]\n")],
            connection: connection(from: checkout), request: request(), expected: "deny", policy: "shop/tenant"),
        Case(
            name: "requestPrincipals * requires a token (Istio's example)",
            policies: [("shop/jwt", "  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]\n")],
            connection: connection(from: checkout), request: request(), expected: "deny"),
        Case(
            name: "requestPrincipals with a token",
            policies: [("shop/jwt", "  rules: [{from: [{source: {requestPrincipals: [\"https://issuer.example/*\"]}}]}]\n")],
            connection: connection(from: checkout),
            request: request(identity: RequestIdentity(issuer: "https://issuer.example", subject: "alice")), expected: "allow", policy: "shop/jwt"),
        Case(
            name: "claims list contains",
            policies: [("shop/admins", "  rules: [{when: [{key: \"request.auth.claims[groups]\", values: [\"admins\"]}]}]\n")],
            connection: connection(from: checkout),
            request: request(identity: RequestIdentity(issuer: "i", subject: "s", claims: .object(["groups": .array([.string("dev"), .string("admins")])]))),
            expected: "allow", policy: "shop/admins"),
        Case(
            name: "nested claim",
            policies: [("shop/role", "  rules: [{when: [{key: \"request.auth.claims[realm][role]\", values: [\"ops\"]}]}]\n")],
            connection: connection(from: checkout),
            request: request(identity: RequestIdentity(issuer: "i", subject: "s", claims: .object(["realm": .object(["role": .string("ops")])]))),
            expected: "allow", policy: "shop/role"),
        Case(
            name: "claim absent without token",
            policies: [("shop/role", "  rules: [{when: [{key: \"request.auth.claims[role]\", values: [\"ops\"]}]}]\n")],
            connection: connection(from: checkout), request: request(), expected: "deny"),
        Case(
            name: "audiences and presenter",
            policies: [
                ("shop/aud", "  rules: [{when: [{key: request.auth.audiences, values: [\"orders\"]}, {key: request.auth.presenter, values: [\"web\"]}]}]\n")
            ],
            connection: connection(from: checkout),
            request: request(identity: RequestIdentity(issuer: "i", subject: "s", audiences: ["x", "orders"], presenter: "web")),
            expected: "allow", policy: "shop/aud"),
    ]

    @Test(arguments: cases)
    func decides(_ item: Case) throws {
        let set = try Self.policies(item.policies)
        let workload = set.forWorkload(namespace: item.namespace, labels: item.labels)
        if let request = item.request {
            let decision = workload.authorize(item.connection, request: request)
            #expect(decision.outcome.rawValue == item.expected, "\(decision)")
            #expect(decision.policy == item.policy, "\(decision)")
            return
        }
        switch workload.authorize(item.connection) {
        case .inspectRequests:
            #expect(item.expected == "inspect")
        case .decided(let decision):
            #expect(decision.outcome.rawValue == item.expected, "\(decision)")
            #expect(decision.policy == item.policy, "\(decision)")
        }
    }

    @Test func theDecidingRuleIsNamedWithItsLine() throws {
        let set = try Self.policies([("shop/two", "  action: DENY\n  rules:\n  - from: [{source: {namespaces: [\"blog\"]}}]\n  - from: [{source: {namespaces: [\"web\"]}}]\n")])
        guard case .decided(let decision) = set.forWorkload(namespace: "shop", labels: [:]).authorize(Self.connection(from: Self.frontend)) else {
            Issue.record("expected a decision")
            return
        }
        #expect(decision.rule == .init(policy: "shop/two", action: .DENY, ruleIndex: 1, source: "test.yaml:8"))
        #expect(decision.reason == "denied by DENY policy shop/two rules[1] (test.yaml:8)")
    }

    @Test func auditsAreReportedAndDryRunShadowsTheOutcome() throws {
        let text = """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: audit, namespace: shop}
            spec: {action: AUDIT, rules: [{to: [{operation: {paths: ["/admin*"]}}]}]}
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: would-deny, namespace: shop, annotations: {istio.io/dry-run: "true"}}
            spec: {action: DENY, rules: [{from: [{source: {principals: ["\(Self.reporting)"]}}]}]}
            """
        let set = AuthorizationPolicySet(try PolicyFile.parse(text, file: "t.yaml").authorizationPolicies, rootNamespace: "istio-system")
        let workload = set.forWorkload(namespace: "shop", labels: [:])
        let decision = workload.authorize(Self.connection(from: Self.reporting), request: Self.request("GET", "/admin/users"))
        #expect(decision.outcome == .allow)
        #expect(decision.audits == ["shop/audit"])
        #expect(decision.dryRun?.outcome == .deny)
        #expect(decision.dryRun?.rule?.policy == "shop/would-deny")
        // The audit names a path: the connection alone cannot say whether it applies.
        #expect(workload.authorize(Self.connection(from: Self.reporting)) == .inspectRequests)
        let other = workload.authorize(Self.connection(from: Self.checkout), request: Self.request("GET", "/"))
        #expect(other.audits.isEmpty)
        #expect(other.dryRun?.outcome == .allow)
    }

    @Test func workloadsSeeOnlyTheirPolicies() throws {
        var documents: [(String, String)] = []
        for index in 0..<50 {
            documents.append(("ns\(index)/p", "  action: DENY\n  rules: [{}]\n"))
        }
        documents.append(("shop/orders", "  selector: {matchLabels: {app: orders}}\n  rules: [{}]\n"))
        documents.append(("istio-system/mesh", "  action: AUDIT\n  rules: [{}]\n"))
        let set = try Self.policies(documents)
        #expect(set.forWorkload(namespace: "shop", labels: ["app": "orders"]).policies.map(\.reference) == ["istio-system/mesh", "shop/orders"])
        #expect(set.forWorkload(namespace: "shop", labels: ["app": "ledger"]).policies.map(\.reference) == ["istio-system/mesh"])
        #expect(set.forWorkload(namespace: "ns7", labels: [:]).policies.map(\.reference) == ["istio-system/mesh", "ns7/p"])
    }

    @Test func tcpOnlyPortsAreDecidedAsIstioDecidesTCP() throws {
        let set = try Self.policies([
            ("shop/get-only", "  rules: [{to: [{operation: {methods: [\"GET\"]}}]}, {from: [{source: {principals: [\"\(Self.reporting)\"]}}]}]\n"),
            ("shop/no-admin", "  action: DENY\n  rules: [{from: [{source: {principals: [\"\(Self.frontend)\"]}}], to: [{operation: {paths: [\"/admin\"]}}]}]\n"),
            ("shop/only-api", "  action: DENY\n  rules: [{from: [{source: {namespaces: [\"blog\"]}}], to: [{operation: {notPaths: [\"/api/*\"]}}]}]\n"),
        ])
        let workload = set.forWorkload(namespace: "shop", labels: [:])
        func outcome(_ principal: String, tcpOnly: Bool) -> String {
            switch workload.authorize(Self.connection(from: principal), tcpOnly: tcpOnly) {
            case .inspectRequests: return "inspect"
            case .decided(let decision): return "\(decision.outcome.rawValue) \(decision.policy ?? "-")"
            }
        }
        // An ALLOW rule naming methods matches nothing without requests; another rule still can.
        #expect(outcome(Self.checkout, tcpOnly: false) == "inspect")
        #expect(outcome(Self.checkout, tcpOnly: true) == "deny -")
        #expect(outcome(Self.reporting, tcpOnly: true) == "allow shop/get-only")
        // A DENY rule is enforced on its other fields alone: it fails closed.
        #expect(outcome(Self.frontend, tcpOnly: true) == "deny shop/no-admin")
        #expect(outcome("cluster.local/ns/blog/sa/x", tcpOnly: true) == "deny shop/only-api")
    }

    @Test func rulesNamingHTTPOnATCPPortAreRefusedAtTheRule() throws {
        let set = try Self.policies([
            ("shop/get-only", "  selector: {matchLabels: {app: db}}\n  rules:\n  - to: [{operation: {methods: [\"GET\"]}}]\n  - to: [{operation: {ports: [\"8080\"], paths: [\"/x\"]}}]\n"),
            ("istio-system/mesh", "  action: DENY\n  rules:\n  - when: [{key: \"request.headers[x-debug]\", values: [\"1\"]}]\n    to: [{operation: {notPorts: [\"5432\"]}}]\n"),
        ])
        let conflicts = set.tcpOnlyConflicts([
            ("db", "shop", ["app": "db"], [5432, 6379]), ("web", "shop", ["app": "web"], []),
        ])
        #expect(conflicts.map(\.description) == [
            "test.yaml:17: spec.rules[0]: names HTTP attributes (request.headers[x-debug]) but applies to port 6379 of shop/db, declared protocol: tcp, where no HTTP request is seen; limit the rule with to.operation.ports, or declare the port http",
            "test.yaml:7: spec.rules[0]: names HTTP attributes (methods) but applies to port 5432 of shop/db, port 6379 of shop/db, declared protocol: tcp, where no HTTP request is seen; limit the rule with to.operation.ports, or declare the port http",
        ])
        #expect(set.tcpOnlyConflicts([("db", "shop", ["app": "db"], [])]).isEmpty)
    }
}

