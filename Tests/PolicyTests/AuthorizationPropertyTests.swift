import NIOCore
import TestFixtures
import Testing

@testable import Policy

/// Random policy sets and requests, checked against properties any correct
/// evaluator has: DENY always wins, order and repetition do not matter, and an
/// answer given from the connection alone is the answer every request on it
/// would get.
@Suite struct AuthorizationPropertyTests {
    static let principals = ["cluster.local/ns/shop/sa/checkout", "cluster.local/ns/shop/sa/reporting", "cluster.local/ns/web/sa/frontend"]
    static let principalPatterns = principals + ["*", "*/sa/checkout", "cluster.local/ns/web/*"]
    static let namespaces = ["shop", "web", "sh*", "*"]
    static let methods = ["GET", "POST", "DELETE"]
    static let paths = ["/reserve", "/admin", "/api/v1/orders", "/"]
    static let pathPatterns = paths + ["/api/*", "*/orders", "*"]
    static let networks = ["10.77.0.0/24", "10.77.1.0/24", "10.77.0.0/16"]
    static let sourceIPs = ["10.77.0.5", "10.77.1.5", "10.77.9.5"]
    static let ports: [UInt16] = [8080, 9090]

    static func pick<T>(_ items: [T], _ random: inout SeededRandom) -> T {
        items[Int(random.next() % UInt64(items.count))]
    }

    static func some<T>(_ items: [T], _ random: inout SeededRandom) -> [T] {
        (0..<(1 + Int(random.next() % 2))).map { _ in pick(items, &random) }
    }

    static func maybe(_ random: inout SeededRandom, _ percent: UInt64 = 30) -> Bool {
        random.next() % 100 < percent
    }

    static func rule(_ random: inout SeededRandom) -> AuthorizationPolicy.Rule {
        var rule = AuthorizationPolicy.Rule()
        if maybe(&random, 60) {
            var source = AuthorizationPolicy.Source()
            if maybe(&random) { source.principals = some(principalPatterns, &random).compactMap(StringPattern.init) }
            if maybe(&random) { source.notPrincipals = some(principalPatterns, &random).compactMap(StringPattern.init) }
            if maybe(&random) { source.namespaces = some(namespaces, &random).compactMap(StringPattern.init) }
            if maybe(&random) { source.ipBlocks = some(networks, &random).compactMap { try? IPPrefix($0) } }
            if maybe(&random, 15) { source.requestPrincipals = [.presence] }
            if source == AuthorizationPolicy.Source() { source.notNamespaces = [.exact("blog")] }
            rule.from = [source]
        }
        if maybe(&random, 60) {
            var operation = AuthorizationPolicy.Operation()
            if maybe(&random) { operation.ports = Set(some(ports, &random)) }
            if maybe(&random) { operation.methods = some(methods, &random).compactMap(StringPattern.init) }
            if maybe(&random) { operation.notMethods = some(methods, &random).compactMap(StringPattern.init) }
            if maybe(&random) { operation.paths = some(pathPatterns, &random).compactMap(StringPattern.init) }
            if maybe(&random) { operation.notPaths = some(pathPatterns, &random).compactMap(StringPattern.init) }
            if operation == AuthorizationPolicy.Operation() { operation.notPorts = [1] }
            rule.to = [operation]
        }
        if maybe(&random, 20) {
            rule.when = [AuthorizationPolicy.Condition(key: .requestHeader("x-tenant"), values: [.pattern(.exact("acme"))])]
        }
        return rule
    }

    static func policySet(_ random: inout SeededRandom) -> [AuthorizationPolicy] {
        (0..<(1 + Int(random.next() % 5))).map { index in
            let action = pick([AuthorizationPolicy.Action.ALLOW, .DENY, .DENY, .AUDIT], &random)
            let rules = (0..<Int(random.next() % 3)).map { _ in rule(&random) }
            return AuthorizationPolicy(name: "p\(index)", namespace: "shop", action: action, rules: rules, dryRun: maybe(&random, 10))
        }
    }

    static func connection(_ random: inout SeededRandom) -> ConnectionAttributes {
        let principal: String? = maybe(&random, 20) ? nil : pick(principals, &random)
        let port = pick(ports, &random)
        return ConnectionAttributes(
            sourcePrincipal: principal, sourceAddress: try? SocketAddress(ipAddress: pick(sourceIPs, &random), port: 40000),
            destinationAddress: try? SocketAddress(ipAddress: "10.77.0.2", port: Int(port)), destinationPort: port)
    }

    static func request(_ random: inout SeededRandom) -> HTTPRequestAttributes {
        HTTPRequestAttributes(
            method: pick(methods, &random), path: pick(paths, &random), host: "orders.shop",
            headers: maybe(&random, 50) ? [HTTPField(name: "X-Tenant", value: "acme")] : [],
            identity: maybe(&random, 30) ? RequestIdentity(issuer: "https://issuer.example", subject: "alice") : nil)
    }

    @Test(arguments: 0..<8)
    func propertiesHoldForRandomPolicySets(_ batch: Int) {
        var random = SeededRandom(seed: UInt64(batch) &* 7919)
        for _ in 0..<250 {
            let policies = Self.policySet(&random)
            let workload = WorkloadAuthorization(policies)
            let shuffled = WorkloadAuthorization(policies.shuffled(using: &random))
            let connection = Self.connection(&random)
            let l4 = workload.authorize(connection)
            for _ in 0..<6 {
                let request = Self.request(&random)
                let decision = workload.authorize(connection, request: request)
                let context = MatchContext(connection: connection, request: request)

                // DENY always wins.
                let denyMatches = policies.contains { policy in
                    policy.action == .DENY && !policy.dryRun && policy.rules.contains { $0.matches(context) == .yes }
                }
                if denyMatches {
                    #expect(decision.outcome == .deny, "seed batch \(batch): \(policies) \(connection) \(request)")
                    #expect(decision.rule?.action == .DENY)
                }
                // Neither AUDIT nor dry-run policies change the outcome.
                let enforced = WorkloadAuthorization(policies.filter { !$0.dryRun && $0.action != .AUDIT })
                #expect(enforced.authorize(connection, request: request).outcome == decision.outcome)
                // Deterministic, and independent of the order policies were given in.
                #expect(workload.authorize(connection, request: request) == decision)
                #expect(shuffled.authorize(connection, request: request).outcome == decision.outcome)
                // A decision from the connection alone holds for every request on it.
                if case .decided(let early) = l4 {
                    #expect(early.outcome == decision.outcome, "L4 said \(early) but the request gets \(decision): \(policies)")
                }
            }
            #expect(workload.authorize(connection) == l4)
        }
    }
}
