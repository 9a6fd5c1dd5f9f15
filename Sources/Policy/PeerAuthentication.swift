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
public struct PeerAuthentication: PolicyObject, Hashable, Sendable {
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
}

// MARK: - Parsing

extension PeerAuthentication {
    /// Reads a document whose `kind` is PeerAuthentication. Unknown keys, wrong
    /// types, unknown modes, ports out of range and port-level modes without a
    /// selector are errors naming the file, line and key path.
    public static func parse(_ document: YAMLNode) throws -> PeerAuthentication {
        var top = try document.mapping()
        let (name, namespace) = try KubernetesNames.objectHeader(&top, kind: kind, apiVersions: apiVersions)

        var policy = PeerAuthentication(name: name, namespace: namespace, file: document.file, line: document.line)
        if let specNode = top.take("spec"), !specNode.isNull {
            var spec = try specNode.mapping()
            if let selectorNode = spec.take("selector") {
                policy.matchLabels = try KubernetesNames.selector(selectorNode)
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
}
