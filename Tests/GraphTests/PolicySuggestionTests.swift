import NIOCore
import Policy
import Testing
@testable import Graph

@Suite struct PolicySuggestionTests {
    static let checkout = "spiffe://cluster.local/ns/shop/sa/checkout"
    static let cart = "spiffe://cluster.local/ns/shop/sa/cart"
    static let labels = ["shop/orders": ["app": "orders"], "shop/ledger": ["app": "ledger", "tier": "data"]]

    static func edge(
        _ source: String?, address: String? = nil, to workload: String = "shop/orders", port: UInt16 = 8080, method: String? = nil,
        path: String? = nil, decision: String = "allow", tls: String? = nil
    ) -> Edge {
        Edge(
            key: EdgeKey(
                sourceIdentity: source, sourceAddress: address, destinationWorkload: workload, destinationPort: port,
                protocol: method == nil ? "tcp" : "http", tls: tls ?? (source == nil ? "none" : "mutual"), method: method, pathTemplate: path,
                decision: decision),
            counts: EdgeCounts(connections: method == nil ? 1 : 0, requests: method == nil ? 0 : 1, firstSeen: 1_700_000_000, lastSeen: 1_700_000_100))
    }

    static let observed = [
        edge(checkout, method: "GET", path: "/orders/{id}"),
        edge(checkout, method: "GET", path: "/orders/{id}/items/{id}"),
        edge(checkout, method: "POST", path: "/reserve"),
        edge(checkout, method: "GET", path: "/healthz"),
        edge(cart, method: "GET", path: "/healthz"),
        edge(checkout, to: "shop/ledger", port: 8090),
        edge(nil, address: "10.77.0.9", to: "shop/ledger", port: 8090),
        // Refused attempts are not what the workload needs.
        edge("spiffe://cluster.local/ns/web/sa/frontend", method: "DELETE", path: "/orders/{id}", decision: "deny"),
    ]

    /// The suggested files with the dry-run annotation removed: what an
    /// operator applies to enforce them.
    static func enforced(_ suggestion: PolicySuggestion) throws -> PolicyFile {
        var all = PolicyFile()
        for file in suggestion.files {
            let text = file.text.replacingOccurrences(of: "    istio.io/dry-run: \"true\"\n", with: "").replacingOccurrences(of: "  annotations:\n", with: "")
            let parsed = try PolicyFile.parse(text, file: file.name)
            all.authorizationPolicies += parsed.authorizationPolicies
            all.peerAuthentications += parsed.peerAuthentications
        }
        return all
    }

    static func decide(_ file: PolicyFile, workload: String, source: String?, address: String? = nil, port: UInt16, method: String? = nil, path: String? = nil) throws
        -> AuthorizationDecision.Outcome
    {
        let namespace = String(workload.split(separator: "/")[0])
        let set = AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: "istio-system")
        let policy = set.forWorkload(namespace: namespace, labels: labels[workload] ?? [:])
        let connection = ConnectionAttributes(
            sourcePrincipal: source.map { String($0.dropFirst("spiffe://".count)) },
            sourceAddress: try address.map { try SocketAddress(ipAddress: $0, port: 40000) }, destinationAddress: nil, destinationPort: port)
        if let method, let path {
            return policy.authorize(connection, request: HTTPRequestAttributes(method: method, path: path, host: "orders")).outcome
        }
        switch policy.authorize(connection) {
        case .decided(let decision): return decision.outcome
        // Decided per request: any request of the caller's, as an L4-only rule would allow it.
        case .inspectRequests: return policy.authorize(connection, request: HTTPRequestAttributes(method: "GET", path: "/", host: "orders")).outcome
        }
    }

    @Test func everyObservedRequestIsAllowedOnceEnforcedAndNothingElse() throws {
        let suggestion = PolicySuggestion(edges: Self.observed, labels: Self.labels)
        #expect(suggestion.skipped.isEmpty)
        let file = try Self.enforced(suggestion)
        for edge in Self.observed where edge.key.decision == "allow" {
            // A concrete request for the template, as a client sent it.
            let path = edge.key.pathTemplate?.replacingOccurrences(of: "{id}", with: "4711")
            let outcome = try Self.decide(
                file, workload: edge.key.destinationWorkload, source: edge.key.sourceIdentity, address: edge.key.sourceAddress,
                port: edge.key.destinationPort, method: edge.key.method, path: path)
            #expect(outcome == .allow, "\(edge.key)")
        }
        let refused: [(String?, String?, UInt16, String?, String?)] = [
            (Self.checkout, nil, 8080, "DELETE", "/orders/1"),  // a method never seen
            (Self.checkout, nil, 8080, "GET", "/admin"),  // a path never seen
            (Self.checkout, nil, 8080, "POST", "/orders/1"),  // a method seen, but on another path
            (Self.cart, nil, 8080, "GET", "/orders/1"),  // a path seen, but from another caller
            ("spiffe://cluster.local/ns/web/sa/frontend", nil, 8080, "DELETE", "/orders/1"),  // the refused attempt
            (Self.cart, nil, 8090, nil, nil),  // a caller never seen at ledger
            (nil, "10.77.0.10", 8090, nil, nil),  // another plaintext address
        ]
        for (source, address, port, method, path) in refused {
            let workload = port == 8080 ? "shop/orders" : "shop/ledger"
            let outcome = try Self.decide(file, workload: workload, source: source, address: address, port: port, method: method, path: path)
            #expect(outcome == .deny, "\(source ?? address ?? "?") \(method ?? "") \(path ?? "") on \(port)")
        }
    }

    @Test func aPlaintextAddressRuleDoesNotAdmitAnIdentityFromTheSameAddress() throws {
        let file = try Self.enforced(PolicySuggestion(edges: Self.observed, labels: Self.labels))
        let outcome = try Self.decide(file, workload: "shop/ledger", source: Self.cart, address: "10.77.0.9", port: 8090)
        #expect(outcome == .deny)
    }

    @Test func theFilesAreDryRunAndStrictOnlyWherePlaintextWasNotSeen() throws {
        let suggestion = PolicySuggestion(edges: Self.observed, labels: Self.labels)
        #expect(suggestion.files.map(\.name) == ["shop-ledger.yaml", "shop-orders.yaml", "shop-orders-strict.yaml"])
        let policies = try suggestion.files.map { try PolicyFile.parse($0.text, file: $0.name) }
        #expect(policies[0].authorizationPolicies.map(\.dryRun) == [true])
        #expect(policies[1].authorizationPolicies.map(\.dryRun) == [true])
        #expect(policies[1].authorizationPolicies.first?.name == "orders-observed")
        let strict = try #require(policies[2].peerAuthentications.first)
        #expect(strict.name == "orders-strict" && strict.namespace == "shop")
        #expect(suggestion.files[2].text.contains("mode: STRICT"))
    }

    @Test func aCallerOnTheSameNodeIsNoReasonToHoldBackStrict() {
        // Same node: no TLS, but an identity; STRICT does not guard it.
        let sameNode = Self.edge(Self.checkout, to: "shop/ledger", port: 8090, tls: "none")
        let suggestion = PolicySuggestion(edges: [sameNode], labels: Self.labels)
        #expect(suggestion.files.map(\.name) == ["shop-ledger.yaml", "shop-ledger-strict.yaml"])
    }

    @Test func pathsAreGeneralizedOnlyAtVariableSegmentsAndMethodsStayWithTheirPaths() {
        let orders = PolicySuggestion(edges: Self.observed, labels: Self.labels).files.first { $0.name == "shop-orders.yaml" }?.text ?? ""
        #expect(orders.contains(#"methods: ["GET"]"# + "\n" + #"        paths: ["/healthz", "/orders/*"]"#))
        #expect(orders.contains(#"methods: ["POST"]"# + "\n" + #"        paths: ["/reserve"]"#))
        #expect(!orders.contains("\"/*\""), "never everything")
    }

    /// A first segment that varies (`/12345`) or no path at all (`OPTIONS *`)
    /// could only be allowed with `/*` or `*`, every path: left out and named.
    @Test func whatOnlyEveryPathWouldAllowIsLeftOutAndNamed() throws {
        let edges = [
            Self.edge(Self.checkout, method: "GET", path: "/{id}"),
            Self.edge(Self.checkout, method: "GET", path: "/admin"),
            Self.edge(Self.checkout, method: "OPTIONS", path: PathTemplate.generalize("*")),
            Self.edge(Self.cart, method: "GET", path: "/{id}/items"),
        ]
        let suggestion = PolicySuggestion(edges: edges, labels: Self.labels)
        let orders = try #require(suggestion.files.first { $0.name == "shop-orders.yaml" }).text
        #expect(orders.contains(#"methods: ["GET"]"# + "\n" + #"        paths: ["/admin"]"#))
        #expect(!orders.contains("\"/*\"") && !orders.contains("\"*\""), "never every path")
        #expect(orders.contains("#   GET /{id} on port 8080\n#   GET /{id}/items on port 8080\n#   OPTIONS {…} on port 8080\n"))
        // Cart's only request is unexpressed: it gets no rule, not a rule with no operation.
        #expect(!orders.contains("sa/cart"))
        let file = try Self.enforced(suggestion)
        #expect(try Self.decide(file, workload: "shop/orders", source: Self.cart, port: 8080, method: "GET", path: "/4711/items") == .deny)
        #expect(try Self.decide(file, workload: "shop/orders", source: Self.checkout, port: 8080, method: "GET", path: "/admin") == .allow)
    }

    @Test func workloadsWhoseFileNamesWouldCollideGetDistinctFiles() {
        let labels = ["shop-api/orders": ["app": "a"], "shop/api-orders": ["app": "b"], "shop/api-orders-strict": ["app": "c"]]
        let edges = labels.keys.map { Self.edge(Self.checkout, to: $0) }
        let names = PolicySuggestion(edges: edges, labels: labels).files.map(\.name)
        #expect(Set(names).count == names.count, "\(names)")
        #expect(names.count == 6)
    }

    @Test func aGrantsCommentCannotCarryYAML() throws {
        let text = PolicySuggestion.grant(
            name: "g", namespace: "shop", labels: ["app": "orders"], principal: "x\n---\nkind: AuthorizationPolicy", expires: "2030-01-01T00:00:00Z")
        #expect(text.hasPrefix("# Time-bound grant: x?---?kind: AuthorizationPolicy may reach"))
    }

    @Test func workloadsWithoutLabelsOrWithNothingAllowedAreSkippedWithTheReason() {
        let suggestion = PolicySuggestion(
            edges: [Self.edge(Self.checkout, to: "shop/unlabelled"), Self.edge(Self.checkout, decision: "deny")], labels: Self.labels)
        #expect(suggestion.files.isEmpty)
        #expect(suggestion.skipped.map(\.workload) == ["shop/orders", "shop/unlabelled"])
        #expect(suggestion.skipped[0].reason.hasPrefix("nothing was allowed"))
        #expect(suggestion.skipped[1].reason.contains("no labels"))
    }

    @Test func aGrantIsAValidPolicyForOnePrincipalThatExpires() throws {
        let text = PolicySuggestion.grant(
            name: "grant-checkout-ledger", namespace: "shop", labels: Self.labels["shop/ledger"] ?? [:],
            principal: "cluster.local/ns/shop/sa/checkout", expires: "2026-12-08T18:00:00Z", port: 8090, method: "GET", path: "/balance/*")
        let policy = try #require(try PolicyFile.parse(text, file: "grant.yaml").authorizationPolicies.first)
        #expect(policy.expires == 1_796_752_800 && policy.matchLabels == ["app": "ledger", "tier": "data"])
        #expect(policy.action == .ALLOW && policy.rules.count == 1 && !policy.dryRun)
        #expect(text.contains(#"principals: ["cluster.local/ns/shop/sa/checkout"]"#))
        #expect(text.contains(#"- operation: {ports: ["8090"], methods: ["GET"], paths: ["/balance/*"]}"#))
    }

    @Test func labelsAndNamesFromOutsideAreQuotedAndCut() {
        #expect(PolicySuggestion.quoted("a\"b\n") == #""a\"b\x0a""#)
        #expect(PolicySuggestion.policyName(String(repeating: "x", count: 80), suffix: "observed").count == 63)
    }
}
