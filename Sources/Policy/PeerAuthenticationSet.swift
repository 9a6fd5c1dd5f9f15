/// The PeerAuthentication policies in force, indexed by namespace, and Istio's
/// resolution of a workload port's inbound mTLS mode.
///
/// Precedence, narrowest first; a level whose mode is UNSET passes the decision
/// to the next one:
///
/// 1. the workload's policy (a selector in the workload's namespace whose
///    matchLabels are all among the workload's labels): its mode for the port in
///    `portLevelMtls`, then its `mtls.mode`;
/// 2. the namespace-wide policy (no selector) of the workload's namespace;
/// 3. the mesh-wide policy (no selector) of the root namespace;
/// 4. the configured default (`mtlsMode` in agent.yaml).
///
/// As in Istio, policies with a selector in the root namespace apply to nothing,
/// and of several policies at one level only one applies. Istio takes the oldest;
/// files carry no creation time, so the one whose name sorts first applies, and
/// ``warnings`` names the others. DISABLE counts as PERMISSIVE
/// (``PeerAuthentication/Mode/effective``).
public struct PeerAuthenticationSet: Hashable, Sendable {
    public let rootNamespace: String
    public let defaultMode: MTLSMode
    /// Every policy, ordered by namespace, then name.
    public let policies: [PeerAuthentication]

    /// One namespace's policies, each list ordered by name (the first applies).
    private struct Namespace: Hashable, Sendable {
        var namespaceWide: [PeerAuthentication] = []
        var selecting: [PeerAuthentication] = []
    }
    private let namespaces: [String: Namespace]

    public init(_ policies: [PeerAuthentication] = [], rootNamespace: String, defaultMode: MTLSMode) {
        self.rootNamespace = rootNamespace
        self.defaultMode = defaultMode
        self.policies = policies.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        var namespaces: [String: Namespace] = [:]
        for policy in self.policies {
            if policy.isNamespaceWide {
                namespaces[policy.namespace, default: Namespace()].namespaceWide.append(policy)
            } else {
                namespaces[policy.namespace, default: Namespace()].selecting.append(policy)
            }
        }
        self.namespaces = namespaces
    }

    /// What decided a workload port's mode.
    public struct Decision: Hashable, Sendable, CustomStringConvertible {
        public enum Level: String, Hashable, Sendable {
            case port, workload, namespace, mesh
            /// No policy set a mode: the configured default.
            case `default`
        }

        public var mode: MTLSMode
        public var level: Level
        /// `namespace/name` of the deciding policy; nil for the default.
        public var policy: String?

        public var description: String {
            guard let policy else { return "\(mode.rawValue) (the configured default)" }
            return "\(mode.rawValue) (\(level.rawValue)-level, PeerAuthentication \(policy))"
        }
    }

    /// The inbound mTLS mode of `port` on a workload in `namespace` with `labels`.
    public func mode(namespace: String, labels: [String: String], port: UInt16) -> MTLSMode {
        decision(namespace: namespace, labels: labels, port: port).mode
    }

    /// The mode and the policy that set it.
    public func decision(namespace: String, labels: [String: String], port: UInt16) -> Decision {
        var decision = Decision(mode: defaultMode, level: .default, policy: nil)
        func apply(_ mode: PeerAuthentication.Mode, _ level: Decision.Level, _ policy: PeerAuthentication) {
            guard let effective = mode.effective else { return }
            decision = Decision(mode: effective, level: level, policy: policy.reference)
        }
        if let mesh = namespaces[rootNamespace]?.namespaceWide.first {
            apply(mesh.mode, .mesh, mesh)
        }
        guard namespace != rootNamespace, let own = namespaces[namespace] else { return decision }
        if let namespaceWide = own.namespaceWide.first {
            apply(namespaceWide.mode, .namespace, namespaceWide)
        }
        if let workload = own.selecting.first(where: { $0.selects(labels: labels) }) {
            apply(workload.mode, .workload, workload)
            if let portMode = workload.portLevelModes[port] {
                apply(portMode, .port, workload)
            }
        }
        return decision
    }

    /// Policies that never apply, or apply only where another one loses: several
    /// namespace-wide policies in one namespace, selectors in the root namespace,
    /// and selectors in one namespace that can pick the same workload.
    public var warnings: [String] {
        var warnings: [String] = []
        for name in namespaces.keys.sorted() {
            guard let namespace = namespaces[name] else { continue }
            if let first = namespace.namespaceWide.first, namespace.namespaceWide.count > 1 {
                let scope = name == rootNamespace ? "mesh-wide" : "namespace-wide"
                let others = namespace.namespaceWide.dropFirst().map(\.reference).joined(separator: ", ")
                warnings.append(
                    "PeerAuthentication \(others) ignored: \(first.reference) is also \(scope) and applies (first by name; Istio would take the oldest)")
            }
            if name == rootNamespace {
                for policy in namespace.selecting {
                    warnings.append("PeerAuthentication \(policy.reference) (\(policy.source)) ignored: a policy with a selector in the root namespace applies to no workload, as in Istio")
                }
                continue
            }
            for (index, first) in namespace.selecting.enumerated() {
                for second in namespace.selecting[(index + 1)...] where compatible(first.matchLabels ?? [:], second.matchLabels ?? [:]) {
                    warnings.append(
                        "PeerAuthentication \(first.reference) and \(second.reference) can select the same workload; where both do, \(first.reference) applies (first by name; Istio would take the oldest)")
                }
            }
        }
        return warnings
    }

    /// Whether some set of labels satisfies both selectors: no label with two values.
    private func compatible(_ a: [String: String], _ b: [String: String]) -> Bool {
        a.allSatisfy { key, value in b[key].map { $0 == value } ?? true }
    }
}
