extension AdminViews {
    public struct PoliciesView: Codable, Sendable {
        public struct Row: Codable, Sendable {
            public var kind: String
            public var namespace: String
            public var name: String
            /// `key=value,…`, or nil for namespace-wide (mesh-wide in the root namespace).
            public var selector: String?
            /// ALLOW / DENY / AUDIT, or the mTLS mode of a PeerAuthentication.
            public var action: String
            public var rules: Int?
            public var dryRun: Bool?
            public var source: String
            /// A time-bound grant's end (`mesh-agent.io/expires`), RFC 3339,
            /// and the seconds left at the time of the answer (0 once expired).
            public var expires: String?
            public var secondsLeft: Int?

            enum CodingKeys: String, CodingKey {
                case kind, namespace, name, selector, action, rules, source, expires
                case dryRun = "dry_run"
                case secondsLeft = "seconds_left"
            }

            public init(
                kind: String, namespace: String, name: String, selector: String?, action: String, rules: Int?, dryRun: Bool?, source: String,
                expires: String? = nil, secondsLeft: Int? = nil
            ) {
                self.expires = expires
                self.secondsLeft = secondsLeft
                self.kind = kind
                self.namespace = namespace
                self.name = name
                self.selector = selector
                self.action = action
                self.rules = rules
                self.dryRun = dryRun
                self.source = source
            }
        }

        public var generation: Int
        public var loadedAt: String
        public var directory: String
        public var files: [String]
        public var policies: [Row]
        public var warnings: [String]
        public var lastReloadError: [String]?
        public var lastReloadErrorAt: String?

        enum CodingKeys: String, CodingKey {
            case generation, directory, files, policies, warnings
            case loadedAt = "loaded_at"
            case lastReloadError = "last_reload_error"
            case lastReloadErrorAt = "last_reload_error_at"
        }

        public init(
            generation: Int, loadedAt: String, directory: String, files: [String], policies: [Row], warnings: [String],
            lastReloadError: [String]?, lastReloadErrorAt: String?
        ) {
            self.generation = generation
            self.loadedAt = loadedAt
            self.directory = directory
            self.files = files
            self.policies = policies
            self.warnings = warnings
            self.lastReloadError = lastReloadError
            self.lastReloadErrorAt = lastReloadErrorAt
        }
    }

    /// The answer to `agentctl policy explain`.
    public struct ExplainView: Codable, Sendable {
        /// allow, deny, or "depends on the request" when L4 cannot decide and no
        /// request was described.
        public var decision: String
        /// Which check decided: peer_authentication, l4 or l7.
        public var layer: String
        public var workload: String
        public var source: String
        public var port: Int
        public var policy: String?
        public var rule: String?
        public var reason: String
        public var audited: [String]?
        public var dryRun: String?
        public var path: String?
        /// `iss/sub` of the verified token, when a --jwt was given.
        public var requestPrincipal: String?
        /// The status the agent would answer the request with itself (400,
        /// 401, 403); nil when the request would be forwarded.
        public var responseStatus: Int?

        enum CodingKeys: String, CodingKey {
            case decision, layer, workload, source, port, policy, rule, reason, audited, path
            case requestPrincipal = "request_principal"
            case dryRun = "dry_run"
            case responseStatus = "response_status"
        }

        /// The explanation starts as what is always known and is filled in as
        /// the decision goes further, so what it did not reach stays nil.
        public init(
            decision: String, layer: String, workload: String, source: String, port: Int, policy: String? = nil, rule: String? = nil,
            reason: String, audited: [String]? = nil, dryRun: String? = nil, path: String? = nil, requestPrincipal: String? = nil,
            responseStatus: Int? = nil
        ) {
            self.decision = decision
            self.layer = layer
            self.workload = workload
            self.source = source
            self.port = port
            self.policy = policy
            self.rule = rule
            self.reason = reason
            self.audited = audited
            self.dryRun = dryRun
            self.path = path
            self.requestPrincipal = requestPrincipal
            self.responseStatus = responseStatus
        }
    }
}
