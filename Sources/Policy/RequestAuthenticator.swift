import Foundation

/// The RequestAuthentication policies in force, their key sets read and checked,
/// and which of them apply to a workload.
///
/// As in Istio (`getConfigsForWorkload`), a workload gets the jwtRules of every
/// policy of its own namespace whose selector picks it (no selector picks all)
/// and of every policy of the root namespace whose selector picks it — in the
/// root namespace a policy without a selector is mesh-wide, and one with a
/// selector applies to matching workloads of every namespace. All those rules
/// are combined, as Istio combines them into one Envoy filter.
public struct RequestAuthenticationSet: Sendable {
    public let rootNamespace: String
    /// Every policy, ordered by namespace, then name.
    public let policies: [RequestAuthentication]
    /// The `jwksUri` files the policies read, sorted, so that the agent can watch
    /// them and reload when one changes.
    public let jwksFiles: [String]
    /// Keys left out of key sets, private keys found in them, policies without
    /// rules.
    public let warnings: [String]

    private struct CompiledPolicy: Sendable {
        var policy: RequestAuthentication
        var rules: [RequestAuthenticator.Rule]
    }
    private let namespaces: [String: [CompiledPolicy]]

    /// Reads every key set (inline, or through `readFile` for `jwksUri`). All or
    /// nothing: every rule whose key set cannot be read or used is reported, each
    /// at the file and line of its `jwks` or `jwksUri`, and so is a policy defined
    /// twice.
    public init(
        _ policies: [RequestAuthentication] = [], rootNamespace: String,
        readFile: (String) throws -> Data = RequestAuthenticationSet.readKeySetFile
    ) throws(PolicyLoadError) {
        var errors = PolicyLoader.duplicates(policies)
        var seen = Set<String>()
        let unique = policies.filter { seen.insert($0.reference).inserted }

        var files: [String: Result<Data, Error>] = [:]
        var warnings: [String] = []
        var namespaces: [String: [CompiledPolicy]] = [:]
        let sorted = unique.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        for policy in sorted {
            if policy.jwtRules.isEmpty {
                warnings.append("RequestAuthentication \(policy.reference) (\(policy.source)) has no jwtRules and does nothing")
            }
            var rules: [RequestAuthenticator.Rule] = []
            for rule in policy.jwtRules {
                func failure(_ reason: String) -> YAMLError {
                    YAMLError(file: policy.file, line: rule.line, keyPath: rule.keysKeyPath, reason: reason)
                }
                let text: Data
                var origin = ""
                switch rule.keys {
                case .inline(let json):
                    text = Data(json.utf8)
                case .file(let path):
                    origin = "\(path): "
                    let result = files[path] ?? Result { try readFile(path) }
                    files[path] = result
                    switch result {
                    case .success(let data):
                        text = data
                    case .failure(let error):
                        errors.append(failure("cannot read the JWKS file \(path): \(Self.describe(error))"))
                        continue
                    }
                }
                do {
                    let keys = try JSONWebKeySet(json: text)
                    warnings += keys.warnings.map { "RequestAuthentication \(policy.reference) (\(policy.source)) \(rule.keysKeyPath): \(origin)\($0)" }
                    rules.append(
                        RequestAuthenticator.Rule(
                            issuer: rule.issuer, audiences: rule.audiences, keys: keys, locations: rule.tokenLocations,
                            forwardOriginalToken: rule.forwardOriginalToken, policy: policy.reference))
                } catch {
                    errors.append(failure("\(origin)unusable key set: \(error.reason)"))
                }
            }
            namespaces[policy.namespace, default: []].append(CompiledPolicy(policy: policy, rules: rules))
        }
        guard errors.isEmpty else { throw PolicyLoadError(errors) }

        self.rootNamespace = rootNamespace
        self.policies = sorted
        self.jwksFiles = files.keys.sorted()
        self.warnings = warnings
        self.namespaces = namespaces
    }

    /// No RequestAuthentication at all.
    public init(rootNamespace: String) {
        self.rootNamespace = rootNamespace
        self.policies = []
        self.jwksFiles = []
        self.warnings = []
        self.namespaces = [:]
    }

    /// The combined rules for a workload in `namespace` with `labels`.
    public func authenticator(namespace: String, labels: [String: String]) -> RequestAuthenticator {
        var rules: [RequestAuthenticator.Rule] = []
        for scope in namespace == rootNamespace ? [namespace] : [namespace, rootNamespace] {
            for compiled in namespaces[scope] ?? [] where compiled.policy.selects(labels: labels) {
                rules += compiled.rules
            }
        }
        return RequestAuthenticator(rules: rules)
    }

    /// Reads a `jwksUri` file, refusing one larger than a key set may be.
    public static func readKeySetFile(_ path: String) throws -> Data {
        let handle: FileHandle
        do {
            handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        } catch {
            throw JSONWebKeySetError(describe(error))
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: JSONWebKeySet.maximumSize + 1) ?? Data()
        } catch {
            throw JSONWebKeySetError(describe(error))
        }
        guard data.count <= JSONWebKeySet.maximumSize else {
            throw JSONWebKeySetError("the file is larger than \(JSONWebKeySet.maximumSize) bytes, more than any key set")
        }
        return data
    }

    static func describe(_ error: Error) -> String {
        if let error = error as? JSONWebKeySetError { return error.reason }
        if let error = error as? CocoaError { return error.localizedDescription }
        return "\(error)"
    }
}

/// What request authentication made of one request.
public enum RequestAuthenticationResult: Equatable, Sendable {
    /// No token where the rules look: the request goes on without a request
    /// principal, and authorization decides (Istio's semantics).
    case noToken
    case authenticated(RequestIdentity)
    /// A token was there and is not acceptable: answer 401. The reason is safe to
    /// log and to send.
    case rejected(reason: String)
}

/// The jwtRules that apply to one workload. A value type that shares its key
/// sets, cheap to keep per workload and to use from any thread.
public struct RequestAuthenticator: Sendable {
    /// One jwtRule, its key set read.
    public struct Rule: Sendable {
        public var issuer: String
        public var audiences: [String]
        public var keys: JSONWebKeySet
        public var locations: [TokenLocation]
        public var forwardOriginalToken: Bool
        /// `namespace/name` of the policy the rule belongs to.
        public var policy: String

        public init(
            issuer: String, audiences: [String] = [], keys: JSONWebKeySet, locations: [TokenLocation] = TokenLocation.defaults,
            forwardOriginalToken: Bool = false, policy: String = ""
        ) {
            self.issuer = issuer
            self.audiences = audiences
            self.keys = keys
            self.locations = locations
            self.forwardOriginalToken = forwardOriginalToken
            self.policy = policy
        }
    }

    public let rules: [Rule]
    /// Every place any rule reads, each once.
    private let locations: [TokenLocation]

    public init(rules: [Rule] = []) {
        self.rules = rules
        var seen = Set<TokenLocation>()
        self.locations = rules.flatMap(\.locations).filter { seen.insert($0).inserted }
    }

    /// No rule applies: requests are not looked at, tokens and all pass as they are.
    public var isEmpty: Bool { rules.isEmpty }

    /// Finds the request's token, and verifies it with the rules of its issuer.
    ///
    /// - `headers`: names lowercased (``HTTPField``); `query`: the request target's
    ///   query without the `?`, nil for none; `now`: seconds since the epoch.
    ///
    /// The token's unverified `iss` chooses the rules that may verify it — those
    /// for that issuer that read the place the token was found; the first that
    /// accepts it decides. No rule for the issuer is a rejection, as in Envoy.
    ///
    /// Several different tokens in one request are rejected: Istio leaves the
    /// principal of such a request undefined, and choosing one would let a client
    /// pick which identity policy sees while another component reads the other
    /// token. The same token in two places is one token.
    public func authenticate(headers: [HTTPField], query: Substring?, now: Double) -> RequestAuthenticationResult {
        guard !rules.isEmpty else { return .noToken }
        let found = tokens(headers: headers, query: query)
        guard let first = found.first else { return .noToken }
        guard found.allSatisfy({ $0.token == first.token }) else {
            return .rejected(reason: "the request carries more than one token; send exactly one")
        }
        let token: JSONWebToken
        do {
            token = try JSONWebToken(compact: first.token)
        } catch {
            return .rejected(reason: error.description)
        }
        guard let issuer = token.unverifiedIssuer else {
            return .rejected(reason: "the token has no iss claim (or it is not a string)")
        }
        let ofIssuer = rules.filter { $0.issuer == issuer }
        guard !ofIssuer.isEmpty else { return .rejected(reason: "issuer \(loggable(issuer, limit: 200)) is not configured") }
        let places = Set(found.map(\.location))
        let candidates = ofIssuer.filter { $0.locations.contains(where: places.contains) }
        guard !candidates.isEmpty else {
            return .rejected(reason: "the token came in the \(first.location), which no rule for issuer \(loggable(issuer, limit: 200)) reads")
        }
        var failure: JSONWebTokenError?
        for rule in candidates {
            do {
                return .authenticated(try token.verify(keys: rule.keys, issuer: rule.issuer, audiences: rule.audiences, now: now))
            } catch {
                // A rule whose keys verified the signature explains more than one whose keys did not.
                if failure == nil || !Self.passedSignature(failure) && Self.passedSignature(error) { failure = error }
            }
        }
        return .rejected(reason: failure?.description ?? "the token was not accepted")
    }

    /// The header fields a proxy removes from a request this authenticator
    /// accepted a token of `issuer` in, before forwarding it: those that carry a
    /// token and that a rule of the issuer with `forwardOriginalToken: false` reads
    /// (Envoy removes the header the token came from; a query parameter stays).
    /// When rules of one issuer disagree, removing wins. Names are lowercased.
    public func tokenHeadersToRemove(from headers: [HTTPField], issuer: String) -> [String] {
        var names = Set<String>()
        for rule in rules where rule.issuer == issuer && !rule.forwardOriginalToken {
            for case .header(let location) in rule.locations
            where headers.contains(where: { $0.name == location.name && Self.token(in: $0.value, prefix: location.prefix) != nil }) {
                names.insert(location.name)
            }
        }
        return names.sorted()
    }

    // MARK: - Finding tokens

    private func tokens(headers: [HTTPField], query: Substring?) -> [(token: Substring, location: TokenLocation)] {
        var found: [(token: Substring, location: TokenLocation)] = []
        var parameters: [(name: String, value: Substring)]?
        for location in locations {
            switch location {
            case .header(let header):
                for field in headers where field.name == header.name {
                    if let token = Self.token(in: field.value, prefix: header.prefix) { found.append((token, location)) }
                }
            case .queryParameter(let name):
                guard let query else { continue }
                if parameters == nil { parameters = Self.parameters(query) }
                for parameter in parameters ?? [] where parameter.name == name {
                    found.append((parameter.value, location))
                }
            }
        }
        return found
    }

    /// The token in a header value: what follows `prefix` (compared exactly, as
    /// Envoy does), without surrounding spaces; nil if the value does not start with
    /// the prefix.
    static func token(in value: String, prefix: String) -> Substring? {
        guard value.utf8.starts(with: prefix.utf8) else { return nil }
        let start = value.utf8.index(value.utf8.startIndex, offsetBy: prefix.utf8.count)
        let rest = Substring(value.unicodeScalars[start...])
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = rest.firstIndex(where: { !blank($0) }), let last = rest.lastIndex(where: { !blank($0) }) else {
            return rest[rest.endIndex...]
        }
        return rest[first...last]
    }

    /// `name=value` pairs of a query, percent-decoded; a value that does not decode
    /// is kept as written (and then fails as a token).
    static func parameters(_ query: Substring) -> [(name: String, value: Substring)] {
        query.split(separator: "&", omittingEmptySubsequences: true).map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0]).removingPercentEncoding ?? String(parts[0])
            let raw = parts.count == 2 ? parts[1] : pair[pair.endIndex...]
            let value = String(raw).removingPercentEncoding.map { Substring($0) } ?? raw
            return (name, value)
        }
    }

    private static func passedSignature(_ error: JSONWebTokenError?) -> Bool {
        switch error {
        case .invalidClaim?, .wrongIssuer?, .expired?, .notYetValid?, .audienceNotAllowed?: return true
        default: return false
        }
    }
}
