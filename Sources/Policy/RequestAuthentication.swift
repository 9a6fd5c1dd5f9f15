import Foundation

/// Istio's `RequestAuthentication` (security.istio.io/v1 and v1beta1): which
/// issuers' JWTs the selected workloads accept, with which keys, and where in a
/// request the token is.
///
/// ```yaml
/// apiVersion: security.istio.io/v1
/// kind: RequestAuthentication
/// metadata: {name: shop-users, namespace: shop}
/// spec:
///   selector: {matchLabels: {app: orders}}   # absent or empty: the whole namespace
///   jwtRules:
///   - issuer: https://login.example.com
///     audiences: [orders]                    # optional: aud must name one of them
///     jwksUri: /etc/mesh-agent/jwks/login.json   # or file:///..., or jwks: '{"keys":[...]}'
///     fromHeaders: [{name: x-jwt, prefix: "Bearer "}]   # default: Authorization: Bearer
///     fromParams: [access_token]             # default with no fromHeaders either
///     forwardOriginalToken: false            # default: the token header is removed
/// ```
///
/// The agent never fetches keys over the network: `jwksUri` must be a local file
/// (downloaded by whatever the operator trusts), and an issuer's OpenID discovery
/// is not done. Fields that make Envoy rewrite requests (`outputPayloadToHeader`,
/// `outputClaimToHeaders`), `fromCookies` and `timeout` are refused rather than
/// ignored, as are `targetRef` and `targetRefs` (there are no gateways or
/// services to attach to).
public struct RequestAuthentication: PolicyObject, Hashable, Sendable {
    public static let apiVersions = ["security.istio.io/v1", "security.istio.io/v1beta1"]
    public static let kind = "RequestAuthentication"

    /// One entry of `spec.jwtRules`.
    public struct JWTRule: Hashable, Sendable {
        public enum KeySource: Hashable, Sendable {
            /// `jwks`: the JWKS text itself.
            case inline(String)
            /// `jwksUri`: an absolute path (a `file://` URL is turned into its path).
            case file(String)
        }

        public var issuer: String
        /// Empty: any audience (or none) is accepted.
        public var audiences: [String]
        public var keys: KeySource
        public var fromHeaders: [TokenLocation.Header]
        public var fromParams: [String]
        public var forwardOriginalToken: Bool
        /// `spec.jwtRules[N]`, and the line of its `jwks` or `jwksUri`, for errors
        /// found when the key set is read.
        public var keyPath: String
        public var line: Int?

        public init(
            issuer: String, audiences: [String] = [], keys: KeySource, fromHeaders: [TokenLocation.Header] = [], fromParams: [String] = [],
            forwardOriginalToken: Bool = false, keyPath: String = "", line: Int? = nil
        ) {
            self.issuer = issuer
            self.audiences = audiences
            self.keys = keys
            self.fromHeaders = fromHeaders
            self.fromParams = fromParams
            self.forwardOriginalToken = forwardOriginalToken
            self.keyPath = keyPath
            self.line = line
        }

        /// Where this rule looks for a token. With neither `fromHeaders` nor
        /// `fromParams`, Istio's defaults: `Authorization: Bearer <token>`, then the
        /// `access_token` query parameter (RFC 6750 §2.1, §2.3).
        public var tokenLocations: [TokenLocation] {
            guard fromHeaders.isEmpty && fromParams.isEmpty else {
                return fromHeaders.map(TokenLocation.header) + fromParams.map(TokenLocation.queryParameter)
            }
            return TokenLocation.defaults
        }

        /// The key path of `jwks` or `jwksUri`, whichever is set.
        public var keysKeyPath: String {
            switch keys {
            case .inline: return "\(keyPath).jwks"
            case .file: return "\(keyPath).jwksUri"
            }
        }
    }

    public var name: String
    public var namespace: String
    /// `spec.selector.matchLabels`; nil for a namespace-wide (or, in the root
    /// namespace, mesh-wide) policy.
    public var matchLabels: [String: String]?
    public var jwtRules: [JWTRule]
    /// Where the policy was read: the file, and the line its document starts on.
    public var file: String
    public var line: Int?

    public init(name: String, namespace: String, matchLabels: [String: String]? = nil, jwtRules: [JWTRule] = [], file: String = "", line: Int? = nil) {
        self.name = name
        self.namespace = namespace
        self.matchLabels = matchLabels?.isEmpty == true ? nil : matchLabels
        self.jwtRules = jwtRules
        self.file = file
        self.line = line
    }
}

/// Where in a request a token may be.
public enum TokenLocation: Hashable, Sendable, CustomStringConvertible {
    /// A header (name lowercased) whose value is `prefix` followed by the token.
    /// A value that does not start with the prefix carries no token, as in Envoy.
    public struct Header: Hashable, Sendable {
        public var name: String
        public var prefix: String

        public init(name: String, prefix: String = "") {
            self.name = name.lowercased()
            self.prefix = prefix
        }
    }

    case header(Header)
    case queryParameter(String)

    public static let defaults: [TokenLocation] = [
        .header(Header(name: "authorization", prefix: "Bearer ")),
        .queryParameter("access_token"),
    ]

    public var description: String {
        switch self {
        case .header(let header): return header.prefix.isEmpty ? "header \(header.name)" : "header \(header.name) (\(loggable(header.prefix)) prefix)"
        case .queryParameter(let name): return "query parameter \(name)"
        }
    }
}

// MARK: - Parsing

extension RequestAuthentication {
    /// Reads a document whose `kind` is RequestAuthentication. Unknown keys, wrong
    /// types, unsupported fields and key sources the agent cannot use are errors
    /// naming the file, line and key path. Key sets are read later, by
    /// ``RequestAuthenticationSet``.
    public static func parse(_ document: YAMLNode) throws -> RequestAuthentication {
        var top = try document.mapping()
        let (name, namespace) = try KubernetesNames.objectHeader(&top, kind: kind, apiVersions: apiVersions)

        var policy = RequestAuthentication(name: name, namespace: namespace, file: document.file, line: document.line)
        if let specNode = top.take("spec"), !specNode.isNull {
            var spec = try specNode.mapping()
            for key in ["targetRef", "targetRefs"] where spec.entries.contains(where: { $0.key == key }) {
                throw spec.error(key: key, "not supported: use spec.selector (mesh-agent has no gateways or services to attach a policy to)")
            }
            if let selectorNode = spec.take("selector") {
                policy.matchLabels = try KubernetesNames.selector(selectorNode)
            }
            if let rulesNode = spec.take("jwtRules"), !rulesNode.isNull {
                policy.jwtRules = try rulesNode.sequence().map(JWTRule.parse)
            }
            try spec.finish(allowed: ["selector", "jwtRules"])
        }
        try top.finish(allowed: ["apiVersion", "kind", "metadata", "spec"])
        return policy
    }
}

extension RequestAuthentication.JWTRule {
    static let unsupportedFields: [(key: String, hint: String)] = [
        ("outputPayloadToHeader", "the agent does not rewrite requests; the application can read the original token (forwardOriginalToken: true)"),
        ("outputClaimToHeaders", "the agent does not rewrite requests; the application can read the original token (forwardOriginalToken: true)"),
        ("fromCookies", "send the token in a header or a query parameter"),
        ("timeout", "the agent never fetches keys, so there is nothing to time out"),
    ]

    static func parse(_ node: YAMLNode) throws -> RequestAuthentication.JWTRule {
        var rule = try node.mapping()
        for (key, hint) in unsupportedFields where rule.entries.contains(where: { $0.key == key }) {
            throw rule.error(key: key, "not supported by mesh-agent: \(hint)")
        }
        let issuer = try rule.require("issuer").nonEmptyString()
        var audiences: [String] = []
        if let audiencesNode = rule.take("audiences"), !audiencesNode.isNull {
            audiences = try audiencesNode.sequence().map { try $0.nonEmptyString() }
        }

        let inline = rule.take("jwks")
        let uri = rule.take("jwksUri")
        let keys: KeySource
        let line: Int?
        switch (inline, uri) {
        case (let inline?, nil):
            keys = .inline(try inline.nonEmptyString())
            line = rule.line(ofKey: "jwks")
        case (nil, let uri?):
            keys = .file(try filePath(uri))
            line = rule.line(ofKey: "jwksUri")
        case (.some, .some):
            throw rule.error(key: "jwksUri", "set either jwks (the key set itself) or jwksUri (a file holding it), not both")
        case (nil, nil):
            throw node.error(
                "needs jwks (the key set itself) or jwksUri (a local file holding it): mesh-agent does not discover an issuer's keys over the network")
        }

        var fromHeaders: [TokenLocation.Header] = []
        if let headersNode = rule.take("fromHeaders"), !headersNode.isNull {
            fromHeaders = try headersNode.sequence().map(header)
        }
        var fromParams: [String] = []
        if let paramsNode = rule.take("fromParams"), !paramsNode.isNull {
            fromParams = try paramsNode.sequence().map { try $0.nonEmptyString() }
        }
        let forward = try rule.take("forwardOriginalToken").map { try $0.bool() } ?? false
        try rule.finish(allowed: ["issuer", "audiences", "jwks", "jwksUri", "fromHeaders", "fromParams", "forwardOriginalToken"])
        return RequestAuthentication.JWTRule(
            issuer: issuer, audiences: audiences, keys: keys, fromHeaders: fromHeaders, fromParams: fromParams, forwardOriginalToken: forward,
            keyPath: node.keyPath, line: line ?? node.line)
    }

    private static func header(_ node: YAMLNode) throws -> TokenLocation.Header {
        var mapping = try node.mapping()
        let nameNode = try mapping.require("name")
        let name = try nameNode.nonEmptyString()
        guard name.utf8.allSatisfy(HTTPSyntax.isTokenByte) else {
            throw nameNode.error("\(loggable(name)) is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)")
        }
        let prefix = try mapping.take("prefix").map { try $0.string() } ?? ""
        try mapping.finish(allowed: ["name", "prefix"])
        return TokenLocation.Header(name: name, prefix: prefix)
    }

    /// `jwksUri` as a path: an absolute path as it is, or a `file:` URL without a
    /// host (`file:///path`, `file://localhost/path`), percent-escapes decoded.
    static func filePath(_ node: YAMLNode) throws -> String {
        let text = try node.nonEmptyString()
        let lowered = text.lowercased()
        if lowered.hasPrefix("http://") || lowered.hasPrefix("https://") {
            throw node.error(
                "\(loggable(text, limit: 200)): mesh-agent does not fetch keys over the network; download the JWKS to a file on the node "
                    + "(and refresh it as the issuer rotates keys) and set jwksUri to its path, e.g. /etc/mesh-agent/jwks/issuer.json")
        }
        if text.hasPrefix("/") { return text }
        guard lowered.hasPrefix("file:") else {
            throw node.error("\(loggable(text, limit: 200)) is not an absolute file path or a file:// URL")
        }
        var rest = text.dropFirst("file:".count)
        if rest.hasPrefix("//") {
            rest = rest.dropFirst(2)
            if rest.lowercased().hasPrefix("localhost/") { rest = rest.dropFirst("localhost".count) }
            guard rest.hasPrefix("/") else {
                throw node.error("\(loggable(text, limit: 200)): a file URL must name no host other than localhost: file:///path/to/jwks.json")
            }
        }
        guard rest.hasPrefix("/") else {
            throw node.error("\(loggable(text, limit: 200)): a file URL needs an absolute path: file:///path/to/jwks.json")
        }
        guard !rest.contains("?"), !rest.contains("#") else {
            throw node.error("\(loggable(text, limit: 200)): a file URL for jwksUri takes no query or fragment")
        }
        guard let path = rest.removingPercentEncoding, !path.contains("\0") else {
            throw node.error("\(loggable(text, limit: 200)): the file URL has an invalid percent-escape")
        }
        return path
    }
}
