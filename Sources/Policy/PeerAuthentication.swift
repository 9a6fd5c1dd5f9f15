/// The mTLS mode in force for inbound connections to a workload port: what the
/// agent's capture table does with plaintext from outside the node.
///
/// - `STRICT`: only mutual TLS through the agent's tunnel; plaintext is reset.
/// - `PERMISSIVE`: mutual TLS, and plaintext too (redirected to the
///   inbound-plaintext listener, where policy sees an unauthenticated source).
public enum MTLSMode: String, Sendable {
    case PERMISSIVE, STRICT
}

/// Istio's `PeerAuthentication` (security.istio.io/v1 and v1beta1): the mTLS mode
/// of a namespace, or of the workloads a selector picks, optionally per port.
///
/// ```yaml
/// apiVersion: security.istio.io/v1
/// kind: PeerAuthentication
/// metadata: {name: strict-orders, namespace: shop}
/// spec:
///   selector: {matchLabels: {app: orders}}   # absent or empty: the whole namespace
///   mtls: {mode: STRICT}                     # UNSET | PERMISSIVE | STRICT | DISABLE
///   portLevelMtls:                           # only with a selector
///     8080: {mode: PERMISSIVE}
/// ```
///
/// A policy without a selector in the root namespace is mesh-wide.
public struct PeerAuthentication: Hashable, Sendable {
    /// The mode as written. `effective` turns it into what the agent enforces.
    public enum Mode: String, Hashable, Sendable, CaseIterable {
        /// Inherit from the enclosing level (port → workload → namespace → mesh → config).
        case unset = "UNSET"
        case permissive = "PERMISSIVE"
        case strict = "STRICT"
        /// In Istio, no mTLS at all. The agent has no inbound mode without mTLS —
        /// its tunnel always authenticates peers — so DISABLE admits plaintext and
        /// leaves the tunnel open, which is PERMISSIVE.
        case disable = "DISABLE"

        /// The inbound mode this sets, or nil for UNSET (inherit). DISABLE is
        /// PERMISSIVE.
        public var effective: MTLSMode? {
            switch self {
            case .unset: return nil
            case .permissive, .disable: return .PERMISSIVE
            case .strict: return .STRICT
            }
        }
    }

    public static let apiVersions = ["security.istio.io/v1", "security.istio.io/v1beta1"]
    public static let kind = "PeerAuthentication"

    public var name: String
    public var namespace: String
    /// `spec.selector.matchLabels`; nil for a namespace-wide (or, in the root
    /// namespace, mesh-wide) policy. An empty selector is stored as nil, as Istio
    /// treats it.
    public var matchLabels: [String: String]?
    /// `spec.mtls.mode` (UNSET when `mtls` is absent).
    public var mode: Mode
    /// `spec.portLevelMtls`; only with a selector.
    public var portLevelModes: [UInt16: Mode]
    /// Where the policy was read: the file, and the line its document starts on.
    public var file: String
    public var line: Int?

    public init(
        name: String, namespace: String, matchLabels: [String: String]? = nil, mode: Mode = .unset, portLevelModes: [UInt16: Mode] = [:],
        file: String = "", line: Int? = nil
    ) {
        self.name = name
        self.namespace = namespace
        self.matchLabels = matchLabels?.isEmpty == true ? nil : matchLabels
        self.mode = mode
        self.portLevelModes = portLevelModes
        self.file = file
        self.line = line
    }

    /// `file:line`, for messages.
    public var source: String { line.map { "\(file):\($0)" } ?? file }

    /// `namespace/name`, as policies are named in logs and warnings.
    public var reference: String { "\(namespace)/\(name)" }

    /// True if the policy has no selector: it covers its whole namespace.
    public var isNamespaceWide: Bool { matchLabels == nil }

    /// Whether the selector picks a workload with these labels (every label it
    /// names, with the same value). A namespace-wide policy selects everything.
    public func selects(labels: [String: String]) -> Bool {
        guard let matchLabels else { return true }
        return matchLabels.allSatisfy { labels[$0.key] == $0.value }
    }
}

// MARK: - Parsing

extension PeerAuthentication {
    /// Reads a document whose `kind` is PeerAuthentication. Unknown keys, wrong
    /// types, unknown modes, ports out of range and port-level modes without a
    /// selector are errors naming the file, line and key path.
    public static func parse(_ document: YAMLNode) throws -> PeerAuthentication {
        var top = try document.mapping()
        let apiVersionNode = try top.require("apiVersion")
        let apiVersion = try apiVersionNode.string()
        guard apiVersions.contains(apiVersion) else {
            throw apiVersionNode.error("PeerAuthentication is \(apiVersions.joined(separator: " or ")), got \"\(apiVersion)\"")
        }
        _ = try top.require("kind")
        var metadata = try top.require("metadata").mapping()
        let name = try subdomainName(try metadata.require("name"))
        let namespace = try namespaceName(try metadata.require("namespace"))
        for key in ["labels", "annotations"] {
            _ = try metadata.take(key)?.stringMap()
        }
        try metadata.finish(allowed: ["name", "namespace", "labels", "annotations"])

        var policy = PeerAuthentication(name: name, namespace: namespace, file: document.file, line: document.line)
        if let specNode = top.take("spec"), !specNode.isNull {
            var spec = try specNode.mapping()
            if let selectorNode = spec.take("selector") {
                var selector = try selectorNode.mapping()
                if let labelsNode = selector.take("matchLabels") {
                    let matchLabels = try labels(labelsNode)
                    policy.matchLabels = matchLabels.isEmpty ? nil : matchLabels
                }
                try selector.finish(allowed: ["matchLabels"])
            }
            if let mtls = spec.take("mtls") {
                policy.mode = try mode(in: mtls)
            }
            if let portsNode = spec.take("portLevelMtls") {
                guard !policy.isNamespaceWide else {
                    throw spec.error(
                        key: "portLevelMtls", "needs spec.selector.matchLabels; a namespace-wide or mesh-wide PeerAuthentication cannot set port-level mTLS")
                }
                policy.portLevelModes = try portLevelModes(portsNode)
            }
            try spec.finish(allowed: ["selector", "mtls", "portLevelMtls"])
        }
        try top.finish(allowed: ["apiVersion", "kind", "metadata", "spec"])
        return policy
    }

    /// `{mode: MODE}`; an empty mapping is UNSET.
    private static func mode(in node: YAMLNode) throws -> Mode {
        var mapping = try node.mapping()
        let mode = try mapping.take("mode").map { try $0.oneOf(Mode.self, Mode.allCases) } ?? .unset
        try mapping.finish(allowed: ["mode"])
        return mode
    }

    private static func portLevelModes(_ node: YAMLNode) throws -> [UInt16: Mode] {
        let mapping = try node.mapping()
        guard !mapping.entries.isEmpty else {
            throw node.error("must name at least one port when present")
        }
        var modes: [UInt16: Mode] = [:]
        for (key, value) in mapping.entries {
            guard let port = UInt16(key, radix: 10), port >= 1 else {
                throw mapping.error(key: key, "a port must be a whole number from 1 to 65535, got \"\(key)\"")
            }
            guard modes[port] == nil else {
                throw mapping.error(key: key, "port \(port) appears twice")
            }
            guard !value.isNull else { throw mapping.error(key: key, "must not be empty; write the port's mode, e.g. {mode: STRICT}") }
            modes[port] = try mode(in: value)
        }
        return modes
    }

    /// Kubernetes label selector keys and values.
    private static func labels(_ node: YAMLNode) throws -> [String: String] {
        let mapping = try node.mapping()
        var labels: [String: String] = [:]
        for (key, value) in mapping.entries {
            guard isLabelKey(key) else {
                throw mapping.error(
                    key: key, "\"\(key)\" is not a label key: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
            }
            let text = try value.string()
            guard text.isEmpty || isLabelName(text) else {
                throw value.error("\"\(text)\" is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
            }
            labels[key] = text
        }
        return labels
    }

    private static func isLabelKey(_ key: String) -> Bool {
        let parts = key.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return isLabelName(key) }
        return isSubdomain(String(parts[0])) && isLabelName(String(parts[1]))
    }

    private static func isLabelName(_ text: String) -> Bool {
        let extra = Set("-_.")
        return (1...63).contains(text.count) && text.allSatisfy { isAlphanumeric($0) || extra.contains($0) }
            && text.first.map(isAlphanumeric) == true && text.last.map(isAlphanumeric) == true
    }

    /// RFC 1123 subdomain: lowercase labels joined by dots, at most 253 characters.
    private static func isSubdomain(_ text: String) -> Bool {
        text.count <= 253 && !text.isEmpty && text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isDNSLabel(String($0)) }
    }

    /// RFC 1123 label: 1 to 63 lowercase letters, digits and '-', not at either end.
    private static func isDNSLabel(_ text: String) -> Bool {
        (1...63).contains(text.count) && text.allSatisfy { $0 == "-" || isAlphanumeric($0) && !$0.isUppercase }
            && text.first != "-" && text.last != "-"
    }

    private static func isAlphanumeric(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber)
    }

    private static func subdomainName(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        guard isSubdomain(value) else {
            throw node.error("\"\(value)\" is not a valid name: use at most 253 lowercase letters, digits, '-' and '.'")
        }
        return value
    }

    private static func namespaceName(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        guard isDNSLabel(value) else {
            throw node.error("\"\(value)\" is not a valid namespace: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
        }
        return value
    }
}
