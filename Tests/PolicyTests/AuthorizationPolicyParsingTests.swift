import Testing

@testable import Policy

@Suite struct AuthorizationPolicyParsingTests {
    static let file = "/etc/mesh-agent/policies/shop.yaml"

    static func document(_ spec: String, annotations: String? = nil) -> String {
        var text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\n"
        if let annotations { text += "  annotations: \(annotations)\n" }
        return text + "spec:\n" + spec
    }

    func parse(_ text: String) throws -> AuthorizationPolicy {
        let file = try PolicyFile.parse(text, file: Self.file)
        #expect(file.authorizationPolicies.count == 1)
        return try #require(file.authorizationPolicies.first)
    }

    func error(_ text: String) -> String? {
        do {
            _ = try PolicyFile.parse(text, file: Self.file)
            return nil
        } catch {
            return error.errors.first?.description
        }
    }

    @Test func readsEveryField() throws {
        let policy = try parse(
            Self.document(
                """
                  selector: {matchLabels: {app: orders}}
                  action: DENY
                  rules:
                  - from:
                    - source:
                        principals: ["cluster.local/ns/shop/sa/checkout", "*/sa/admin"]
                        notPrincipals: ["cluster.local/ns/shop/sa/bad"]
                        requestPrincipals: ["https://issuer.example/*"]
                        notRequestPrincipals: ["*"]
                        namespaces: ["shop"]
                        notNamespaces: ["test-*"]
                        ipBlocks: ["10.77.0.0/16", "fd77::1"]
                        notIpBlocks: ["10.77.9.0/24"]
                        remoteIpBlocks: ["10.77.1.0/24"]
                        notRemoteIpBlocks: ["10.77.2.0/24"]
                    to:
                    - operation:
                        hosts: ["orders.shop", "*.example.com"]
                        notHosts: ["admin.example.com"]
                        ports: ["8080", 9090]
                        notPorts: ["15000"]
                        methods: ["GET", "POST"]
                        notMethods: ["DELETE"]
                        paths: ["/reserve", "/api/*", "*/info"]
                        notPaths: ["/admin*"]
                    when:
                    - key: request.auth.claims[groups]
                      values: ["admins"]
                    - key: request.auth.claims[realm][role]
                      notValues: ["guest"]
                    - key: request.headers[X-Tenant]
                      values: ["acme"]
                    - key: source.ip
                      values: ["10.77.0.0/16"]
                    - key: destination.port
                      values: ["8080"]
                  - {}
                """))
        #expect(policy.reference == "shop/p")
        #expect(policy.action == .DENY)
        #expect(policy.matchLabels == ["app": "orders"])
        #expect(policy.rules.count == 2)
        #expect(policy.rules[0].line == 10)
        let source = try #require(policy.rules[0].from?.first)
        #expect(source.principals == [.exact("cluster.local/ns/shop/sa/checkout"), .suffix("/sa/admin")])
        #expect(source.requestPrincipals == [.prefix("https://issuer.example/")])
        #expect(source.notRequestPrincipals == [.presence])
        #expect(source.ipBlocks?.map(\.description) == ["10.77.0.0/16", "fd77::1/128"])
        let operation = try #require(policy.rules[0].to?.first)
        #expect(operation.ports == [8080, 9090])
        #expect(operation.paths == [.exact("/reserve"), .prefix("/api/"), .suffix("/info")])
        #expect(policy.rules[0].when.map(\.key.description) == [
            "request.auth.claims[groups]", "request.auth.claims[realm][role]", "request.headers[x-tenant]", "source.ip", "destination.port",
        ])
        #expect(policy.rules[0].when[3].values == [.network(try IPPrefix("10.77.0.0/16"))])
        #expect(policy.rules[0].when[4].values == [.port(8080)])
        #expect(policy.rules[1] == AuthorizationPolicy.Rule(line: 43))
        #expect(policy.usesHTTPAttributes)
        #expect(!policy.dryRun)
    }

    @Test func emptySpecIsAnAllowPolicyWithoutRules() throws {
        let policy = try parse(Self.document("  {}\n"))
        #expect(policy.action == .ALLOW)
        #expect(policy.rules.isEmpty)
        #expect(policy.matchLabels == nil)
        let bare = try parse("apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n")
        #expect(bare.rules.isEmpty && bare.action == .ALLOW)
    }

    @Test func dryRunAnnotation() throws {
        #expect(try parse(Self.document("  action: DENY\n  rules: [{}]\n", annotations: "{istio.io/dry-run: \"true\"}")).dryRun)
        #expect(error(Self.document("  rules: [{}]\n", annotations: "{istio.io/dry-run: \"maybe\"}"))?.contains("must be \"true\" or \"false\"") == true)
    }

    @Test func aGrantStopsApplyingAtItsExpiryInstant() throws {
        let grant = try parse(Self.document("  rules: [{}]\n", annotations: "{mesh-agent.io/expires: \"2026-12-08T18:00:00Z\"}"))
        let instant = 1_796_752_800.0  // 2026-12-08T18:00:00Z
        #expect(grant.expires == instant)
        #expect(!grant.hasExpired(at: instant - 0.001))
        #expect(grant.hasExpired(at: instant))
        #expect(try parse(Self.document("  rules: [{}]\n", annotations: "{mesh-agent.io/expires: \"2026-12-08T19:00:00.5+01:00\"}")).expires == instant + 0.5)
        #expect(!(try parse(Self.document("  rules: [{}]\n"))).hasExpired(at: .greatestFiniteMagnitude), "no annotation, no end")
        let refused = error(Self.document("  rules: [{}]\n", annotations: "{mesh-agent.io/expires: \"tomorrow\"}"))
        #expect(refused?.contains("mesh-agent.io/expires must be an RFC 3339 time like 2026-12-08T18:00:00Z, got \"tomorrow\"") == true)
    }

    static let invalid: [(spec: String, expected: String)] = [
        ("  action: CUSTOM\n", ":7: spec.action: CUSTOM (external authorization) is not supported"),
        ("  action: allow\n", ":7: spec.action: must be one of ALLOW, DENY, AUDIT"),
        ("  provider: {name: ext}\n", ":7: spec.provider: is not supported"),
        ("  targetRefs: []\n", ":7: spec.targetRefs: is not supported"),
        ("  rules: [{frm: []}]\n", ":7: spec.rules[0].frm: unknown key"),
        ("  rules:\n  -\n", ":8: spec.rules[0]: a rule must not be empty"),
        ("  rules: [{from: []}]\n", ":7: spec.rules[0].from: must not be an empty list"),
        ("  rules: [{from: [{}]}]\n", ":7: spec.rules[0].from[0].source: is required"),
        ("  rules: [{from: [{source: {}}]}]\n", ":7: spec.rules[0].from[0].source: must not be empty"),
        ("  rules: [{to: [{operation: {}}]}]\n", ":7: spec.rules[0].to[0].operation: must not be empty"),
        ("  rules: [{from: [{source: {principals: []}}]}]\n", ":7: spec.rules[0].from[0].source.principals: must not be an empty list"),
        ("  rules: [{from: [{source: {principals: [\"\"]}}]}]\n", ":7: spec.rules[0].from[0].source.principals[0]: must not be empty"),
        ("  rules: [{from: [{source: {principals: [\"spiffe://td/ns/a/sa/b\"]}}]}]\n", "write principals without the spiffe:// scheme, e.g. \"td/ns/a/sa/b\""),
        ("  rules: [{from: [{source: {principals: [\"td/*/sa/b\"]}}]}]\n", "`*` may only stand alone"),
        ("  rules: [{from: [{source: {namespaces: [\"*a*\"]}}]}]\n", "`*` may only stand alone"),
        ("  rules: [{from: [{source: {ipBlocks: [\"10.77.0.1/16\"]}}]}]\n", "host bits are set after /16; did you mean 10.77.0.0/16?"),
        ("  rules: [{from: [{source: {ipBlocks: [\"10.77.0.0/33\"]}}]}]\n", "the prefix length must be a number from 0 to 32"),
        ("  rules: [{from: [{source: {ipBlocks: [\"orders\"]}}]}]\n", "is not an IPv4 or IPv6 address"),
        ("  rules: [{from: [{source: {users: [\"x\"]}}]}]\n", "source.users: unknown key"),
        ("  rules: [{to: [{operation: {ports: [\"0\"]}}]}]\n", "\"0\" is not a port"),
        ("  rules: [{to: [{operation: {ports: [\"65536\"]}}]}]\n", "\"65536\" is not a port"),
        ("  rules: [{to: [{operation: {ports: [\"http\"]}}]}]\n", "\"http\" is not a port"),
        ("  rules: [{to: [{operation: {methods: [\"GET /\"]}}]}]\n", "\"GET /\" is not an HTTP method"),
        ("  rules: [{to: [{operation: {paths: [\"admin\"]}}]}]\n", "a path starts with /"),
        ("  rules: [{to: [{operation: {paths: [\"/api/{*}/x\"]}}]}]\n", "path templates ({*}, {**}) are not supported"),
        ("  rules: [{when: [{key: \"request.headers[x]\"}]}]\n", ":7: spec.rules[0].when[0]: a condition needs `values` or `notValues`"),
        ("  rules: [{when: [{key: \"request.headers[x]\", values: []}]}]\n", "when[0].values: must not be an empty list"),
        ("  rules: [{when: [{key: request.method, values: [GET]}]}]\n", "unknown condition key \"request.method\""),
        ("  rules: [{when: [{key: connection.sni, values: [a]}]}]\n", "connection.sni is not supported"),
        ("  rules: [{when: [{key: \"request.auth.claims[]\", values: [a]}]}]\n", "every [NAME] must name something"),
        ("  rules: [{when: [{key: \"request.auth.claims[a]x\", values: [a]}]}]\n", "expected [NAME] after the key"),
        ("  rules: [{when: [{key: \"request.headers[a][b]\", values: [a]}]}]\n", "write one header name"),
        ("  rules: [{when: [{key: source.ip, values: [\"not-an-ip\"]}]}]\n", "is not an IPv4 or IPv6 address"),
        ("  rules: [{when: [{key: destination.port, values: [\"x\"]}]}]\n", "\"x\" is not a port"),
        ("  rules: [{when: [{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [x]}]}]\n", "experimental keys are not supported"),
        ("  selector: {matchLabels: {app: \"a b\"}}\n", "is not a label value"),
        ("  rules: {}\n", "spec.rules: expected a list"),
    ]

    @Test(arguments: invalid)
    func invalidPoliciesAreRefusedWithTheirPlace(_ spec: String, _ expected: String) {
        let found = error(Self.document(spec))
        #expect(found?.hasPrefix(Self.file) == true, "\(found ?? "no error")")
        #expect(found?.contains(expected) == true, "\(found ?? "no error") should contain \(expected)")
    }

    @Test func aPolicyDefinedTwiceIsRefused() throws {
        let found = PolicyLoader.duplicates([
            AuthorizationPolicy(name: "p", namespace: "shop", file: "/a.yaml", line: 1), AuthorizationPolicy(name: "p", namespace: "shop", file: "/b.yaml", line: 4),
        ])
        #expect(found.map(\.description) == ["/b.yaml:4: AuthorizationPolicy shop/p is already defined at /a.yaml:1"])
    }

    @Test func stringPatterns() {
        #expect(StringPattern("*") == .presence)
        #expect(StringPattern("abc") == .exact("abc"))
        #expect(StringPattern("abc*") == .prefix("abc"))
        #expect(StringPattern("*abc") == .suffix("abc"))
        #expect(StringPattern("a*c") == nil)
        #expect(StringPattern("**") == nil)
        #expect(StringPattern.presence.matches("x") && !StringPattern.presence.matches(""))
        #expect(StringPattern.prefix("/api/").matches("/api/x") && !StringPattern.prefix("/api/").matches("/api"))
        #expect(StringPattern.suffix("/info").matches("/x/info") && !StringPattern.suffix("/info").matches("/info/x"))
    }
}
