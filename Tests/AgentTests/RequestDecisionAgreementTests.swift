import AdminAPI
import Foundation
import LinuxNet
import Logging
import NIOCore
import NIOHTTP1
import Policy
import TestFixtures
import Testing
import TLS
@testable import Agent
@testable import Proxy
@testable import Workloads

/// `agentctl policy explain` and the data path must give the same answer to
/// every request a user can send: the same decision, status, policy and rule.
/// Random requests (methods, targets with dot segments and escapes, headers,
/// tokens, callers) go to both entry points: the inspector that decides
/// requests on inspected connections, and the admin API's explain.
@Suite struct RequestDecisionAgreementTests {
    static let policies = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: orders-read, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          action: ALLOW
          rules:
          - from: [{source: {principals: ["cluster.local/ns/shop/sa/checkout"]}}]
            to: [{operation: {methods: ["GET", "HEAD"], paths: ["/orders/*", "/public*"]}}]
          - to: [{operation: {methods: ["DELETE"]}}]
            when: [{key: "request.headers[x-role]", values: ["admin"]}]
          - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
            to: [{operation: {paths: ["/me", "/me/*"]}}]
          - from: [{source: {ipBlocks: ["10.77.9.0/24"]}}]
            to: [{operation: {notPaths: ["/orders/*"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-admin, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          action: DENY
          rules:
          - to: [{operation: {paths: ["/admin*"]}}]
          - from: [{source: {notPrincipals: ["*"]}}]
            to: [{operation: {methods: ["DELETE"]}}]
          - from: [{source: {ipBlocks: ["10.77.66.0/24"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: no-posts
          namespace: shop
          annotations: {"istio.io/dry-run": "true"}
        spec:
          selector: {matchLabels: {app: orders}}
          action: DENY
          rules:
          - to: [{operation: {methods: ["POST"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: audit-orders, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          action: AUDIT
          rules:
          - to: [{operation: {paths: ["/orders/*"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: issuer, namespace: shop}
        spec:
          selector: {matchLabels: {app: orders}}
          jwtRules:
          - issuer: https://issuer.example
            jwks: '\(JWTFixtures.jwks)'
        """

    /// What one entry point answered.
    struct Answer: Equatable, CustomStringConvertible {
        var decision: String
        /// The status the agent answers itself; nil when forwarded.
        var status: Int?
        var policy: String?
        var rule: Int?
        /// What dry-run policies would have decided, where that differs from
        /// the decision in outcome or rule: "OUTCOME POLICY".
        var dryRun: String?

        var description: String {
            "\(decision) status \(status.map(String.init) ?? "-") policy \(policy ?? "-") rule \(rule.map(String.init) ?? "-") dry-run \(dryRun ?? "-")"
        }
    }

    /// The pieces random requests are made of.
    static let methods = ["GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS", "get", "G(T"]
    static let segments = [
        "orders", "public", "admin", "me", "..", ".", "%2e%2e", "%2E", "%2F", "%41dmin", "", "a;b", "..;", "%7e", "~", "%zz", "x%00", "Orders",
    ]
    static let queries = ["", "?q=1", "?a=%2F", "?bad=%G1", "?x=1#frag"]
    static let hosts = ["orders", "orders.shop:8080", "[fd77::2]:8080", "bad host"]
    static let roles = ["admin", "user", "admin,user"]
    static let callers: [String?] = ["cluster.local/ns/shop/sa/checkout", "cluster.local/ns/shop/sa/other", "cluster.local/ns/web/sa/checkout", nil]
    static let sources = ["10.77.0.1", "10.77.9.5", "10.77.66.7"]

    struct Fixture {
        let registry: WorkloadRegistry
        let authorizer: InboundAuthorizer
        let peerAuthentication: PeerAuthenticationSet
        let workload: Workload
    }

    static func fixture() throws -> Fixture {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("agreement-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try policies.write(to: directory.appendingPathComponent("policies.yaml"), atomically: true, encoding: .utf8)
        let set = try PolicyLoader.load(directory: directory.path, rootNamespace: "istio-system", defaultMode: .PERMISSIVE)

        let workload = Workload(
            name: "orders", namespace: "shop", serviceAccount: "orders",
            identity: try SpiffeID(trustDomain: "cluster.local", namespace: "shop", serviceAccount: "orders"), labels: ["app": "orders"],
            ports: [8080])
        let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let registry = WorkloadRegistry(logger: quiet) { cgroup in [(path: cgroup, id: CgroupID(1))] }
        registry.update([WorkloadSpec(workload: workload, cgroup: try CgroupPath(validating: "/orders"), source: .config)], from: .config)
        let authorizer = InboundAuthorizer(
            AuthorizationSnapshot(
                generation: 1, policies: set.authorization, requestAuthentication: set.requestAuthentication, peerAuthentication: set.peerAuthentication,
                workloads: [workload]))
        return Fixture(registry: registry, authorizer: authorizer, peerAuthentication: set.peerAuthentication, workload: workload)
    }

    @Test func explainAndTheDataPathAgreeOnRandomRequests() throws {
        let seed = ProcessInfo.processInfo.environment["AGREEMENT_SEED"].flatMap(UInt64.init) ?? 0x6D65_7368_2D61_6731
        var random = SeededRandom(seed: seed)
        let fixture = try Self.fixture()
        var inspectedRequests = 0
        var outcomes = Set<String>()
        for round in 0..<3000 {
            let caller = Self.callers.randomElement(using: &random) ?? nil
            let sourceIP = Self.sources.randomElement(using: &random)!
            let method = Self.methods.randomElement(using: &random)!
            let target = Self.target(using: &random)
            var headers: [(String, String)] = [("host", Self.hosts.randomElement(using: &random)!)]
            if Bool.random(using: &random) { headers.append(("x-role", Self.roles.randomElement(using: &random)!)) }
            let token: String? = [nil, JWTFixtures.Token.rs256, JWTFixtures.Token.es256, JWTFixtures.Token.otherIssuer, "abc.def.ghi"]
                .randomElement(using: &random)!
            // Valid tokens, and the same tokens two hours after they expired.
            let now = Bool.random(using: &random) ? JWTFixtures.now : JWTFixtures.expiry + 7200
            let context = "seed \(seed) round \(round): \(caller ?? "plaintext") from \(sourceIP): \(method) \(target) \(headers) token \(token.map { String($0.prefix(12)) } ?? "none") now \(now)"

            let connection = ConnectionAttributes(
                peer: try caller.map { try SpiffeID("spiffe://\($0)") },
                source: try SocketAddress(ipAddress: sourceIP, port: 40000), destination: try SocketAddress(ipAddress: "10.77.0.2", port: 8080))
            var parameters: [(name: String, value: String)] = [
                ("to_workload", "shop/orders"), ("port", "8080"), ("source_ip", sourceIP), ("method", method), ("path", target),
            ]
            if let caller { parameters.append(("from", caller)) }
            for (name, value) in headers { parameters.append(("header", "\(name)=\(value)")) }
            if let token { parameters.append(("jwt", token)) }
            let view = try AdminViews.explain(
                parameters, registry: fixture.registry, authorizer: fixture.authorizer, now: now)
            let explained = Answer(
                decision: view.decision, status: view.responseStatus, policy: view.policy, rule: Self.ruleIndex(view.rule),
                dryRun: Self.differingDryRun(view))

            // The data path decides the connection first; only an inspected one
            // has its requests decided.
            switch fixture.authorizer.snapshot.authorize(connection, to: fixture.workload) {
            case .decided(let decision):
                #expect(view.layer == "l4", "\(context)")
                #expect(
                    explained == Answer(
                        decision: decision.outcome.rawValue, status: nil, policy: decision.policy, rule: decision.rule?.ruleIndex,
                        dryRun: decision.dryRun.flatMap { dry in
                            dry.outcome != decision.outcome || dry.rule != decision.rule ? "\(dry.outcome.rawValue) \(dry.rule?.policy ?? "-")" : nil
                        }), "\(context)")
                outcomes.insert("l4 \(decision.outcome.rawValue)")
            case .inspectRequests:
                inspectedRequests += 1
                var entry = AccessLogEntry(time: 0, direction: .inbound, tls: caller == nil ? .none : .mutual, action: .allow, reason: "test")
                entry.destinationWorkload = fixture.workload.qualifiedName
                let inspector = HTTPRequestInspector(
                    workload: fixture.workload, connection: connection, authorizer: fixture.authorizer, connectionEntry: entry)
                var fields = HTTPHeaders(headers)
                if let token { fields.add(name: "authorization", value: "Bearer \(token)") }
                let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: target, headers: fields)
                let inspected: Answer
                switch inspector.inspect(RequestHead(head), keepAlive: head.isKeepAlive, now: now) {
                case .forward(let forwarded, let entry):
                    inspected = Answer(decision: "allow", status: nil, policy: entry.policy, rule: entry.rule, dryRun: Self.dryRun(entry))
                    #expect(forwarded.target == view.path.map { path in target.firstIndex(of: "?").map { path + target[$0...] } ?? path }, "\(context)")
                case .respond(let response, let entry):
                    inspected = Answer(
                        decision: entry.action.rawValue, status: Int(response.status.code), policy: entry.policy, rule: entry.rule,
                        dryRun: Self.dryRun(entry))
                }
                #expect(view.layer == "l7", "\(context)")
                #expect(explained == inspected, "\(context)")
                outcomes.insert("l7 \(inspected.decision) \(inspected.status.map(String.init) ?? "forwarded")")
            }
        }
        // The generator must reach every kind of answer, or agreement means little.
        #expect(inspectedRequests > 1000, "seed \(seed)")
        for expected in ["l7 allow forwarded", "l7 deny 400", "l7 deny 401", "l7 deny 403", "l4 deny"] {
            #expect(outcomes.contains(expected), "seed \(seed): no request ended \(expected); got \(outcomes.sorted())")
        }
    }

    /// A request-target: mostly origin form with dot segments, escapes and
    /// doubled slashes; sometimes a form only OPTIONS or a proxy may use.
    static func target(using random: inout SeededRandom) -> String {
        switch Int.random(in: 0..<20, using: &random) {
        case 0: return "*"
        case 1: return "http://orders/orders/1"
        case 2: return "orders/1"
        default:
            let count = Int.random(in: 1...4, using: &random)
            let path = (0..<count).map { _ in segments.randomElement(using: &random)! }.joined(separator: Bool.random(using: &random) ? "/" : "//")
            return "/" + path + queries.randomElement(using: &random)!
        }
    }

    static func dryRun(_ entry: AccessLogEntry) -> String? {
        entry.audit.map { "\($0) \(entry.auditPolicy ?? "-")" }
    }

    /// Explain shows what dry-run policies would decide whenever one applies;
    /// the access log only where it differs from the decision.
    static func differingDryRun(_ view: AdminViews.ExplainView) -> String? {
        guard let dryRun = view.dryRun, let space = dryRun.firstIndex(of: " ") ?? Optional(dryRun.endIndex) else { return nil }
        let outcome = String(dryRun[..<space])
        let rule = dryRun[space...]
        // "deny (DENY policy shop/no-posts rules[0] (file:line))"
        let policy = rule.range(of: "policy ").map { found in String(rule[found.upperBound...].prefix { $0 != " " }) }
        let index = ruleIndex(String(rule))
        guard outcome != view.decision || policy != view.policy || index != ruleIndex(view.rule) else { return nil }
        return "\(outcome) \(policy ?? "-")"
    }

    /// `N` from explain's "… rules[N] (file:line)".
    static func ruleIndex(_ description: String?) -> Int? {
        guard let description, let open = description.range(of: "rules["), let close = description[open.upperBound...].firstIndex(of: "]") else {
            return nil
        }
        return Int(description[open.upperBound..<close])
    }
}
