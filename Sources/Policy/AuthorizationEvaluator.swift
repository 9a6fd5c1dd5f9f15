import NIOCore

/// The AuthorizationPolicies in force, indexed by namespace so that finding a
/// workload's policies looks at its own namespace and the root namespace only.
public struct AuthorizationPolicySet: Hashable, Sendable {
    public let rootNamespace: String
    /// Every policy, ordered by namespace, then name.
    public let policies: [AuthorizationPolicy]
    private let byNamespace: [String: [AuthorizationPolicy]]

    public init(_ policies: [AuthorizationPolicy] = [], rootNamespace: String) {
        self.rootNamespace = rootNamespace
        self.policies = policies.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        self.byNamespace = Dictionary(grouping: self.policies, by: \.namespace)
    }

    /// The policies that apply to a workload: those of its namespace and, as in
    /// Istio, those of the root namespace, each when its selector picks the
    /// workload's labels. Compile this once per workload and policy change; a
    /// decision then costs the same however many policies other workloads have.
    public func forWorkload(namespace: String, labels: [String: String]) -> WorkloadAuthorization {
        var applicable = (byNamespace[rootNamespace] ?? []).filter { $0.selects(labels: labels) }
        if namespace != rootNamespace {
            applicable += (byNamespace[namespace] ?? []).filter { $0.selects(labels: labels) }
        }
        return WorkloadAuthorization(applicable)
    }

    /// Rules that name HTTP attributes yet apply to a port declared TCP-only
    /// (`protocol: tcp`) of one of `workloads`: there no request is ever seen,
    /// so such a rule cannot mean what it says. Istio's validation rejects
    /// these; so does the agent, one error per rule, at the rule.
    public func tcpOnlyConflicts(_ workloads: [(name: String, namespace: String, labels: [String: String], tcpPorts: Set<UInt16>)]) -> [YAMLError] {
        var places: [String: (policy: AuthorizationPolicy, index: Int, ports: [String])] = [:]
        var order: [String] = []
        for workload in workloads where !workload.tcpPorts.isEmpty {
            for policy in forWorkload(namespace: workload.namespace, labels: workload.labels).policies {
                for (index, rule) in policy.rules.enumerated() where rule.usesHTTPAttributes {
                    for port in workload.tcpPorts.sorted() where rule.mayApply(toPort: port) {
                        let key = "\(policy.reference)#\(index)"
                        if places[key] == nil {
                            places[key] = (policy, index, [])
                            order.append(key)
                        }
                        places[key]?.ports.append("port \(port) of \(workload.namespace)/\(workload.name)")
                    }
                }
            }
        }
        return order.compactMap { key in
            guard let place = places[key] else { return nil }
            let rule = place.policy.rules[place.index]
            return YAMLError(
                file: place.policy.file, line: rule.line ?? place.policy.line, keyPath: "spec.rules[\(place.index)]",
                reason: "names HTTP attributes (\(rule.httpAttributeNames.joined(separator: ", "))) but applies to \(place.ports.joined(separator: ", ")), declared protocol: tcp, where no HTTP request is seen; limit the rule with to.operation.ports, or declare the port http")
        }
    }

    /// Policies that are valid but probably not what their author meant.
    public var warnings: [String] {
        var warnings: [String] = []
        for policy in policies where policy.rules.isEmpty && policy.action != .ALLOW {
            warnings.append("AuthorizationPolicy \(policy.reference) (\(policy.source)) has no rules, so this \(policy.action.rawValue) policy matches nothing")
        }
        return warnings
    }
}

/// What decided an authorization question.
public struct AuthorizationDecision: Hashable, Sendable, CustomStringConvertible {
    public enum Outcome: String, Hashable, Sendable {
        case allow, deny
    }

    /// The rule that decided: a policy and the index of its rule.
    public struct RuleReference: Hashable, Sendable, CustomStringConvertible {
        public var policy: String
        public var action: AuthorizationPolicy.Action
        public var ruleIndex: Int
        /// `file:line` of the rule.
        public var source: String

        public var description: String { "\(action.rawValue) policy \(policy) rules[\(ruleIndex)] (\(source))" }
    }

    public var outcome: Outcome
    /// The deciding rule; nil when no rule decided (no policy at all, or no
    /// ALLOW policy matched).
    public var rule: RuleReference?
    /// Why, in words, built only when someone reads it (decisions are made per
    /// request; their reasons are mostly not logged).
    public var reason: String {
        switch why {
        case .decidedByRule:
            guard let rule else { return outcome == .allow ? "allowed" : "denied" }
            return outcome == .allow ? "allowed by \(rule)" : "denied by \(rule)"
        case .noAllowPolicy:
            return "no ALLOW policy applies to the workload"
        case .noAllowMatched(let names):
            return "no ALLOW policy matched (applicable: \(names))"
        case .text(let text):
            return text
        }
    }

    enum Why: Hashable, Sendable {
        case decidedByRule
        case noAllowPolicy
        case noAllowMatched(String)
        case text(String)
    }

    var why: Why
    /// AUDIT policies whose rules matched: logged, not enforced.
    public var audits: [String] = []
    /// What the policies marked `istio.io/dry-run` would change: the outcome if
    /// they were enforced with the others. nil when no dry-run policy applies.
    public var dryRun: DryRunResult?

    public struct DryRunResult: Hashable, Sendable {
        public var outcome: Outcome
        public var rule: RuleReference?
    }

    public init(outcome: Outcome, rule: RuleReference?, reason: String, audits: [String] = [], dryRun: DryRunResult? = nil) {
        self.init(outcome: outcome, rule: rule, why: .text(reason), audits: audits, dryRun: dryRun)
    }

    init(outcome: Outcome, rule: RuleReference?, why: Why, audits: [String] = [], dryRun: DryRunResult? = nil) {
        self.outcome = outcome
        self.rule = rule
        self.why = why
        self.audits = audits
        self.dryRun = dryRun
    }

    /// `namespace/name` of the deciding policy, for the access log.
    public var policy: String? { rule?.policy }

    public var description: String { "\(outcome.rawValue): \(reason)" }
}

/// An L4 question may need the HTTP request to be answered.
public enum ConnectionAuthorization: Hashable, Sendable {
    case decided(AuthorizationDecision)
    /// Some rule that could change the outcome names HTTP attributes: decide
    /// per request.
    case inspectRequests
}

/// The policies that apply to one workload, grouped by action, and Istio's
/// evaluation: DENY before ALLOW; with no ALLOW policy everything not denied is
/// allowed; with ALLOW policies something must match one. AUDIT never changes
/// the outcome. Dry-run policies are evaluated on the side.
public struct WorkloadAuthorization: Hashable, Sendable {
    public let policies: [AuthorizationPolicy]
    private let deny: [CompiledPolicy]
    private let allow: [CompiledPolicy]
    private let audit: [CompiledPolicy]
    private let dryRunDeny: [CompiledPolicy]
    private let dryRunAllow: [CompiledPolicy]
    private let allowNames: String
    private let dryRunAllowNames: String

    /// A policy with what a decision reports about its rules made in advance,
    /// so that deciding builds no strings. A class: walking the lists then
    /// costs a reference, not a copy of the policy.
    final class CompiledPolicy: Hashable, Sendable {
        let policy: AuthorizationPolicy
        let references: [AuthorizationDecision.RuleReference]
        let reference: String

        init(_ policy: AuthorizationPolicy) {
            self.policy = policy
            self.references = policy.rules.indices.map { policy.reference(rule: $0) }
            self.reference = policy.reference
        }

        static func == (lhs: CompiledPolicy, rhs: CompiledPolicy) -> Bool { lhs.policy == rhs.policy }
        func hash(into hasher: inout Hasher) { hasher.combine(policy) }
    }

    public init(_ policies: [AuthorizationPolicy]) {
        self.policies = policies
        let compiled = policies.map(CompiledPolicy.init)
        let enforced = compiled.filter { !$0.policy.dryRun }
        let dryRun = compiled.filter(\.policy.dryRun)
        deny = enforced.filter { $0.policy.action == .DENY }
        allow = enforced.filter { $0.policy.action == .ALLOW }
        audit = compiled.filter { $0.policy.action == .AUDIT }
        dryRunDeny = deny + dryRun.filter { $0.policy.action == .DENY }
        dryRunAllow = allow + dryRun.filter { $0.policy.action == .ALLOW }
        allowNames = allow.map(\.reference).joined(separator: ", ")
        dryRunAllowNames = dryRunAllow.map(\.reference).joined(separator: ", ")
    }

    /// The decision for a connection, or `.inspectRequests` when it depends on
    /// the HTTP requests the connection carries.
    ///
    /// On a port declared TCP-only no request will be seen, so it is decided
    /// here, as Istio decides TCP traffic: an ALLOW rule that names HTTP
    /// attributes matches nothing, and a DENY rule matches on its other fields
    /// alone (failing closed).
    public func authorize(_ connection: ConnectionAttributes, tcpOnly: Bool = false) -> ConnectionAuthorization {
        let context = MatchContext(connection: connection, request: nil, tcpOnly: tcpOnly)
        guard case .decided(var decision) = Self.evaluate(deny: deny, allow: allow, allowNames: allowNames, context) else {
            return .inspectRequests
        }
        guard decision.outcome == .allow else { return .decided(decision) }
        // Once allowed, audits and dry-run effects are only reported; they need the
        // request too when they name HTTP attributes.
        var audits: [String] = []
        for compiled in audit {
            switch compiled.policy.firstMatch(context) {
            case .matched: audits.append(compiled.reference)
            case .unknown: return .inspectRequests
            case .none: break
            }
        }
        decision.audits = audits
        if hasDryRun {
            guard case .decided(let shadow) = Self.evaluate(deny: dryRunDeny, allow: dryRunAllow, allowNames: dryRunAllowNames, context) else {
                return .inspectRequests
            }
            decision.dryRun = .init(outcome: shadow.outcome, rule: shadow.rule)
        }
        return .decided(decision)
    }

    /// The decision for one HTTP request on a connection.
    public func authorize(_ connection: ConnectionAttributes, request: HTTPRequestAttributes) -> AuthorizationDecision {
        let context = MatchContext(connection: connection, request: request)
        // With the request known, every match is decided.
        guard case .decided(var decision) = Self.evaluate(deny: deny, allow: allow, allowNames: allowNames, context) else {
            return AuthorizationDecision(outcome: .deny, rule: nil, reason: "policy could not be decided")
        }
        if !audit.isEmpty {
            decision.audits = audit.filter { if case .matched = $0.policy.firstMatch(context) { return true } else { return false } }.map(\.reference)
        }
        if hasDryRun, case .decided(let shadow) = Self.evaluate(deny: dryRunDeny, allow: dryRunAllow, allowNames: dryRunAllowNames, context) {
            decision.dryRun = .init(outcome: shadow.outcome, rule: shadow.rule)
        }
        return decision
    }

    private var hasDryRun: Bool { dryRunDeny.count != deny.count || dryRunAllow.count != allow.count }

    private static func evaluate(
        deny: [CompiledPolicy], allow: [CompiledPolicy], allowNames: String, _ context: MatchContext
    ) -> ConnectionAuthorization {
        var undecided = false
        for compiled in deny {
            switch compiled.policy.firstMatch(context) {
            case .matched(let index):
                return .decided(AuthorizationDecision(outcome: .deny, rule: compiled.references[index], why: .decidedByRule))
            case .unknown:
                undecided = true
            case .none:
                break
            }
        }
        guard !allow.isEmpty else {
            if undecided { return .inspectRequests }
            return .decided(AuthorizationDecision(outcome: .allow, rule: nil, why: .noAllowPolicy))
        }
        var allowUndecided = false
        for compiled in allow {
            switch compiled.policy.firstMatch(context) {
            case .matched(let index):
                if undecided { return .inspectRequests }
                return .decided(AuthorizationDecision(outcome: .allow, rule: compiled.references[index], why: .decidedByRule))
            case .unknown:
                allowUndecided = true
            case .none:
                continue
            }
        }
        if allowUndecided { return .inspectRequests }
        return .decided(AuthorizationDecision(outcome: .deny, rule: nil, why: .noAllowMatched(allowNames)))
    }
}

// MARK: - Matching

/// Kleene's three values: a rule that names an HTTP attribute matches
/// `unknown` when only the connection is known.
enum Match: Equatable {
    case yes, no, unknown

    init(_ value: Bool) { self = value ? .yes : .no }

    static func && (lhs: Match, rhs: @autoclosure () -> Match) -> Match {
        if lhs == .no { return .no }
        let right = rhs()
        if right == .no { return .no }
        return lhs == .yes && right == .yes ? .yes : .unknown
    }

    var negated: Match {
        switch self {
        case .yes: return .no
        case .no: return .yes
        case .unknown: return .unknown
        }
    }

    /// Whether any of `items` matches.
    static func any<S: Sequence>(_ items: S, _ match: (S.Element) -> Match) -> Match {
        var result = Match.no
        for item in items {
            switch match(item) {
            case .yes: return .yes
            case .unknown: result = .unknown
            case .no: break
            }
        }
        return result
    }
}

/// One decision's inputs. A class, passed by reference through every matcher:
/// as a struct it was copied (strings, addresses and all) at each step.
final class MatchContext {
    let connection: ConnectionAttributes
    let request: HTTPRequestAttributes?
    /// No request will come (a TCP-only port): HTTP fields are settled by the
    /// action of the policy being matched.
    let tcpOnly: Bool
    /// The action of the policy whose rules are being matched.
    var action: AuthorizationPolicy.Action = .ALLOW

    init(connection: ConnectionAttributes, request: HTTPRequestAttributes?, tcpOnly: Bool = false) {
        self.connection = connection
        self.request = request
        self.tcpOnly = tcpOnly
    }

    /// What an HTTP field matches when there is no request.
    var withoutRequest: Match {
        guard tcpOnly else { return .unknown }
        return action == .DENY ? .yes : .no
    }
}

enum PolicyMatch {
    case matched(ruleIndex: Int)
    case unknown
    case none
}

extension AuthorizationPolicy {
    /// The first rule that surely matches; `.unknown` if none does but one may.
    func firstMatch(_ context: MatchContext) -> PolicyMatch {
        var undecided = false
        context.action = action
        for (index, rule) in rules.enumerated() {
            switch rule.matches(context) {
            case .yes: return .matched(ruleIndex: index)
            case .unknown: undecided = true
            case .no: break
            }
        }
        return undecided ? .unknown : .none
    }

    func reference(rule index: Int) -> AuthorizationDecision.RuleReference {
        let line = rules[index].line ?? line
        return AuthorizationDecision.RuleReference(
            policy: reference, action: action, ruleIndex: index, source: line.map { "\(file):\($0)" } ?? file)
    }
}

extension AuthorizationPolicy.Rule {
    /// Whether the rule's `to` entries let it apply to `port` at all.
    func mayApply(toPort port: UInt16) -> Bool {
        guard let to else { return true }
        return to.contains { operation in
            (operation.ports?.contains(port) ?? true) && !(operation.notPorts?.contains(port) ?? false)
        }
    }

    /// The HTTP fields and keys the rule names, for messages.
    var httpAttributeNames: [String] {
        var names: [String] = []
        for source in from ?? [] {
            if source.requestPrincipals != nil { names.append("requestPrincipals") }
            if source.notRequestPrincipals != nil { names.append("notRequestPrincipals") }
        }
        for operation in to ?? [] {
            for (name, present) in [
                ("methods", operation.methods != nil), ("notMethods", operation.notMethods != nil), ("paths", operation.paths != nil),
                ("notPaths", operation.notPaths != nil), ("hosts", operation.hosts != nil), ("notHosts", operation.notHosts != nil),
            ] where present {
                names.append(name)
            }
        }
        names += when.filter(\.key.isHTTP).map(\.key.description)
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }

    func matches(_ context: MatchContext) -> Match {
        let from = self.from.map { sources in Match.any(sources) { $0.matches(context) } } ?? .yes
        return from
            && (to.map { operations in Match.any(operations) { $0.matches(context) } } ?? .yes)
            && when.reduce(Match.yes) { result, condition in result && condition.matches(context) }
    }
}

/// A list field: absent matches; present matches when any value does.
private func field<T>(_ values: [T]?, _ match: (T) -> Match) -> Match {
    guard let values else { return .yes }
    return Match.any(values, match)
}

/// A `not…` field: absent matches; present matches when no value does.
private func notField<T>(_ values: [T]?, _ match: (T) -> Match) -> Match {
    guard let values else { return .yes }
    return Match.any(values, match).negated
}

/// A pair of HTTP fields (`methods` and `notMethods`, …). Without a request
/// their outcome is unknown, or settled by the context on a TCP-only port.
private func http<T>(
    _ context: MatchContext, _ values: [T]?, _ notValues: [T]?, _ match: (HTTPRequestAttributes, T) -> Match
) -> Match {
    guard values != nil || notValues != nil else { return .yes }
    guard let request = context.request else { return context.withoutRequest }
    return field(values) { match(request, $0) } && notField(notValues) { match(request, $0) }
}

private func optional(_ value: String?, _ pattern: StringPattern) -> Match {
    guard let value else { return .no }
    return Match(pattern.matches(value))
}

private func address(_ address: SocketAddress?, in network: IPPrefix) -> Match {
    guard let address else { return .no }
    return Match(network.contains(address))
}

extension AuthorizationPolicy.Source {
    func matches(_ context: MatchContext) -> Match {
        let connection = context.connection
        let source = connection.sourceAddress
        return field(principals) { optional(connection.sourcePrincipal, $0) }
            && notField(notPrincipals) { optional(connection.sourcePrincipal, $0) }
            && field(namespaces) { optional(connection.sourceNamespace, $0) }
            && notField(notNamespaces) { optional(connection.sourceNamespace, $0) }
            && field(ipBlocks) { address(source, in: $0) }
            && notField(notIpBlocks) { address(source, in: $0) }
            // Without X-Forwarded-For or PROXY protocol the remote address is the peer's.
            && field(remoteIpBlocks) { address(source, in: $0) }
            && notField(notRemoteIpBlocks) { address(source, in: $0) }
            && http(context, requestPrincipals, notRequestPrincipals) { request, pattern in optional(request.identity?.principal, pattern) }
    }
}

extension AuthorizationPolicy.Operation {
    func matches(_ context: MatchContext) -> Match {
        let port = context.connection.destinationPort
        return (ports.map { Match($0.contains(port)) } ?? .yes)
            && (notPorts.map { Match(!$0.contains(port)) } ?? .yes)
            && http(context, methods, notMethods) { request, pattern in Match(pattern.matches(request.method)) }
            && http(context, paths, notPaths) { request, pattern in Match(pattern.matches(request.path)) }
            && http(context, hosts, notHosts) { request, pattern in Self.host(request.host, matches: pattern) }
    }

    /// Hosts compare without case, and a pattern without a port also matches the
    /// host with its port removed (`orders.shop` matches `Orders.shop:8080`).
    private static func host(_ host: String, matches pattern: StringPattern) -> Match {
        if pattern.matchesIgnoringCase(host) { return .yes }
        guard !pattern.description.contains(":"), let withoutPort = Self.stripPort(host) else { return .no }
        return Match(pattern.matchesIgnoringCase(withoutPort))
    }

    static func stripPort(_ host: String) -> String? {
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let after = host[host.index(after: close)...]
            return after.hasPrefix(":") ? String(host[...close]) : nil
        }
        guard let colon = host.lastIndex(of: ":"), host.firstIndex(of: ":") == colon else { return nil }
        return String(host[..<colon])
    }
}

extension AuthorizationPolicy.Condition {
    func matches(_ context: MatchContext) -> Match {
        let match: (AuthorizationPolicy.ConditionValue) -> Match
        if key.isHTTP {
            guard let request = context.request else { return context.withoutRequest }
            match = { matches($0, request) }
        } else {
            match = { matches($0, context.connection) }
        }
        return (values.map { Match.any($0, match) } ?? .yes) && (notValues.map { Match.any($0, match).negated } ?? .yes)
    }

    // The parser types every value by its key: pairings not listed are
    // unreachable, and match nothing.

    private func matches(_ value: AuthorizationPolicy.ConditionValue, _ connection: ConnectionAttributes) -> Match {
        switch (key, value) {
        case (.sourceIP, .network(let network)), (.remoteIP, .network(let network)):
            return address(connection.sourceAddress, in: network)
        case (.destinationIP, .network(let network)):
            return address(connection.destinationAddress, in: network)
        case (.destinationPort, .port(let port)):
            return Match(connection.destinationPort == port)
        case (.sourceNamespace, .pattern(let pattern)):
            return optional(connection.sourceNamespace, pattern)
        case (.sourcePrincipal, .pattern(let pattern)):
            return optional(connection.sourcePrincipal, pattern)
        default:
            return .no
        }
    }

    private func matches(_ value: AuthorizationPolicy.ConditionValue, _ request: HTTPRequestAttributes) -> Match {
        guard case .pattern(let pattern) = value else { return .no }
        switch key {
        case .requestPrincipal:
            return optional(request.identity?.principal, pattern)
        case .requestPresenter:
            return optional(request.identity?.presenter, pattern)
        case .requestAudiences:
            return Match(request.identity?.audiences.contains(where: pattern.matches) ?? false)
        case .requestHeader(let name):
            return optional(request.header(name), pattern)
        case .requestClaim(let path):
            guard var claim = request.identity?.claims else { return .no }
            for name in path {
                guard let member = claim[name] else { return .no }
                claim = member
            }
            return Match(Self.claim(claim, matches: pattern))
        default:
            return .no
        }
    }

    /// A string claim matches the pattern; a list matches when one of its
    /// strings does (`groups: [admin, dev]`); numbers and booleans compare as
    /// they are written.
    private static func claim(_ claim: JSONValue, matches pattern: StringPattern) -> Bool {
        switch claim {
        case .string(let value): return pattern.matches(value)
        case .array(let values): return values.contains { value in
            if case .string(let text) = value { return pattern.matches(text) }
            return false
        }
        case .bool(let value): return pattern.matches(value ? "true" : "false")
        case .number(let value):
            let text = value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
            return pattern.matches(text)
        case .null, .object: return false
        }
    }
}
