/// What Istio's security resources share: a name in a namespace, an optional
/// workload selector, and the file and line they were read from.
public protocol PolicyObject {
    static var kind: String { get }
    var name: String { get }
    var namespace: String { get }
    /// `spec.selector.matchLabels`; nil for a namespace-wide (in the root
    /// namespace, mesh-wide) policy.
    var matchLabels: [String: String]? { get }
    var file: String { get }
    /// The line the policy's document starts on.
    var line: Int? { get }
}

extension PolicyObject {
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
