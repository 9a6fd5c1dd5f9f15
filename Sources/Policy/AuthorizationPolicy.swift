/// Istio's `AuthorizationPolicy` (security.istio.io/v1 and v1beta1): who may do
/// what to the workloads a selector picks.
///
/// ```yaml
/// apiVersion: security.istio.io/v1
/// kind: AuthorizationPolicy
/// metadata: {name: orders-reserve, namespace: shop}
/// spec:
///   selector: {matchLabels: {app: orders}}    # absent: the whole namespace
///   action: ALLOW                             # ALLOW (default) | DENY | AUDIT
///   rules:
///   - from: [{source: {principals: ["cluster.local/ns/shop/sa/checkout"]}}]
///     to: [{operation: {methods: ["POST"], paths: ["/reserve"]}}]
///     when: [{key: request.headers[x-tenant], values: ["acme"]}]
/// ```
///
/// A rule matches when one of its `from` entries, one of its `to` entries and
/// every `when` condition match; within an entry every field given must match,
/// and a field matches when any of its values does (for `not…` fields: when
/// none does). A policy without rules matches nothing; a rule `{}` matches
/// everything.
public struct AuthorizationPolicy: PolicyObject, Hashable, Sendable {
    public enum Action: String, Hashable, Sendable, CaseIterable {
        case ALLOW, DENY, AUDIT
    }

    public static let apiVersions = ["security.istio.io/v1", "security.istio.io/v1beta1"]
    public static let kind = "AuthorizationPolicy"
    /// Istio's annotation for a policy that is evaluated and logged, never enforced.
    public static let dryRunAnnotation = "istio.io/dry-run"
    /// A time-bound grant: the policy stops applying at this RFC 3339 instant.
    public static let expiresAnnotation = "mesh-agent.io/expires"

    public var name: String
    public var namespace: String
    /// nil: every workload of the namespace (of the mesh, in the root namespace).
    public var matchLabels: [String: String]?
    public var action: Action
    public var rules: [Rule]
    /// `istio.io/dry-run: "true"`: the policy's effect is logged, not enforced.
    public var dryRun: Bool
    /// `mesh-agent.io/expires`, in seconds since the epoch: from then on the
    /// policy does not apply, without a reload.
    public var expires: Double?
    public var file: String
    public var line: Int?

    public init(
        name: String, namespace: String, matchLabels: [String: String]? = nil, action: Action = .ALLOW, rules: [Rule] = [],
        dryRun: Bool = false, file: String = "", line: Int? = nil
    ) {
        self.name = name
        self.namespace = namespace
        self.matchLabels = matchLabels?.isEmpty == true ? nil : matchLabels
        self.action = action
        self.rules = rules
        self.dryRun = dryRun
        self.file = file
        self.line = line
    }

    /// Whether a time-bound grant has stopped applying at `now`.
    public func hasExpired(at now: Double) -> Bool {
        expires.map { now >= $0 } ?? false
    }

    /// True if some rule needs an HTTP request to be decided.
    public var usesHTTPAttributes: Bool { rules.contains(where: \.usesHTTPAttributes) }

    public struct Rule: Hashable, Sendable {
        /// nil: any source. Otherwise one entry must match.
        public var from: [Source]?
        /// nil: any operation. Otherwise one entry must match.
        public var to: [Operation]?
        /// Every condition must match.
        public var when: [Condition]
        public var line: Int?

        public init(from: [Source]? = nil, to: [Operation]? = nil, when: [Condition] = [], line: Int? = nil) {
            self.from = from
            self.to = to
            self.when = when
            self.line = line
        }

        public var usesHTTPAttributes: Bool {
            (from ?? []).contains(where: \.usesHTTPAttributes) || (to ?? []).contains(where: \.usesHTTPAttributes)
                || when.contains(where: { $0.key.isHTTP })
        }
    }

    /// `from[].source`. An absent list is nil (not constrained).
    public struct Source: Hashable, Sendable {
        public var principals: [StringPattern]?
        public var notPrincipals: [StringPattern]?
        public var requestPrincipals: [StringPattern]?
        public var notRequestPrincipals: [StringPattern]?
        public var namespaces: [StringPattern]?
        public var notNamespaces: [StringPattern]?
        public var ipBlocks: [IPPrefix]?
        public var notIpBlocks: [IPPrefix]?
        public var remoteIpBlocks: [IPPrefix]?
        public var notRemoteIpBlocks: [IPPrefix]?

        public init() {}

        public var usesHTTPAttributes: Bool { requestPrincipals != nil || notRequestPrincipals != nil }
    }

    /// `to[].operation`.
    public struct Operation: Hashable, Sendable {
        public var hosts: [StringPattern]?
        public var notHosts: [StringPattern]?
        public var ports: Set<UInt16>?
        public var notPorts: Set<UInt16>?
        public var methods: [StringPattern]?
        public var notMethods: [StringPattern]?
        public var paths: [StringPattern]?
        public var notPaths: [StringPattern]?

        public init() {}

        public var usesHTTPAttributes: Bool {
            hosts != nil || notHosts != nil || methods != nil || notMethods != nil || paths != nil || notPaths != nil
        }
    }

    /// `when[]`: a key and the values it must (or must not) have.
    public struct Condition: Hashable, Sendable {
        public var key: ConditionKey
        /// nil when not given; otherwise one must match.
        public var values: [ConditionValue]?
        /// nil when not given; otherwise none may match.
        public var notValues: [ConditionValue]?

        public init(key: ConditionKey, values: [ConditionValue]? = nil, notValues: [ConditionValue]? = nil) {
            self.key = key
            self.values = values
            self.notValues = notValues
        }
    }

    /// The attributes a `when` condition can name.
    public enum ConditionKey: Hashable, Sendable, CustomStringConvertible {
        case sourceIP
        case remoteIP
        case sourceNamespace
        case sourcePrincipal
        case destinationIP
        case destinationPort
        case requestPrincipal
        case requestAudiences
        case requestPresenter
        /// `request.auth.claims[a][b]`: the path into nested claims.
        case requestClaim([String])
        /// `request.headers[name]`, the name lowercased.
        case requestHeader(String)

        public var isHTTP: Bool {
            switch self {
            case .sourceIP, .remoteIP, .sourceNamespace, .sourcePrincipal, .destinationIP, .destinationPort: return false
            case .requestPrincipal, .requestAudiences, .requestPresenter, .requestClaim, .requestHeader: return true
            }
        }

        public var description: String {
            switch self {
            case .sourceIP: return "source.ip"
            case .remoteIP: return "remote.ip"
            case .sourceNamespace: return "source.namespace"
            case .sourcePrincipal: return "source.principal"
            case .destinationIP: return "destination.ip"
            case .destinationPort: return "destination.port"
            case .requestPrincipal: return "request.auth.principal"
            case .requestAudiences: return "request.auth.audiences"
            case .requestPresenter: return "request.auth.presenter"
            case .requestClaim(let path): return "request.auth.claims" + path.map { "[\($0)]" }.joined()
            case .requestHeader(let name): return "request.headers[\(name)]"
            }
        }
    }

    /// A `when` value, typed by its key.
    public enum ConditionValue: Hashable, Sendable {
        case pattern(StringPattern)
        case network(IPPrefix)
        case port(UInt16)
    }
}

/// Istio's string matching: `value` exactly, `prefix*`, `*suffix`, or `*` for
/// "present and not empty".
public enum StringPattern: Hashable, Sendable, CustomStringConvertible {
    case exact(String)
    case prefix(String)
    case suffix(String)
    case presence

    /// Parses a pattern; nil when `*` is anywhere but at one end (Istio's matchers
    /// have no infix wildcard, and such a value would silently never match).
    public init?(_ text: String) {
        if text == "*" {
            self = .presence
            return
        }
        let stars = text.filter { $0 == "*" }.count
        if stars == 0 {
            self = .exact(text)
        } else if stars == 1, text.hasSuffix("*") {
            self = .prefix(String(text.dropLast()))
        } else if stars == 1, text.hasPrefix("*") {
            self = .suffix(String(text.dropFirst()))
        } else {
            return nil
        }
    }

    public func matches(_ value: String) -> Bool {
        switch self {
        case .exact(let expected): return value == expected
        case .prefix(let prefix): return value.hasPrefix(prefix)
        case .suffix(let suffix): return value.hasSuffix(suffix)
        case .presence: return !value.isEmpty
        }
    }

    /// The same match ignoring ASCII case, for host names.
    func matchesIgnoringCase(_ value: String) -> Bool {
        switch self {
        case .exact(let expected): return value.lowercased() == expected.lowercased()
        case .prefix(let prefix): return value.lowercased().hasPrefix(prefix.lowercased())
        case .suffix(let suffix): return value.lowercased().hasSuffix(suffix.lowercased())
        case .presence: return !value.isEmpty
        }
    }

    public var description: String {
        switch self {
        case .exact(let value): return value
        case .prefix(let prefix): return prefix + "*"
        case .suffix(let suffix): return "*" + suffix
        case .presence: return "*"
        }
    }
}
