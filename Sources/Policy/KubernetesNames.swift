/// Kubernetes' rules for object names, namespaces and labels, which policy
/// files must follow to be usable with Istio unchanged.
enum KubernetesNames {
    /// The metadata of a policy document that the agent uses.
    struct ObjectMetadata {
        var name: String
        var namespace: String
        var annotations: [String: String]
    }

    /// Reads `apiVersion`, `kind` and `metadata` of a policy document and returns
    /// its name and namespace. Labels and annotations are checked and ignored.
    static func objectHeader(_ top: inout YAMLMapping, kind: String, apiVersions: [String]) throws -> (name: String, namespace: String) {
        let metadata = try objectMetadata(&top, kind: kind, apiVersions: apiVersions)
        return (metadata.name, metadata.namespace)
    }

    /// Reads `apiVersion`, `kind` and `metadata` of a policy document.
    static func objectMetadata(_ top: inout YAMLMapping, kind: String, apiVersions: [String]) throws -> ObjectMetadata {
        let apiVersionNode = try top.require("apiVersion")
        let apiVersion = try apiVersionNode.string()
        guard apiVersions.contains(apiVersion) else {
            throw apiVersionNode.error("\(kind) is \(apiVersions.joined(separator: " or ")), got \"\(apiVersion)\"")
        }
        _ = try top.require("kind")
        var metadata = try top.require("metadata").mapping()
        let name = try objectName(try metadata.require("name"))
        let namespace = try Self.namespace(try metadata.require("namespace"))
        _ = try metadata.take("labels")?.stringMap()
        let annotations = try metadata.take("annotations")?.stringMap() ?? [:]
        try metadata.finish(allowed: ["name", "namespace", "labels", "annotations"])
        return ObjectMetadata(name: name, namespace: namespace, annotations: annotations)
    }

    /// `spec.selector`: `{matchLabels: {...}}`. An absent or empty matchLabels is
    /// nil, which Istio reads as "every workload of the namespace".
    static func selector(_ node: YAMLNode) throws -> [String: String]? {
        guard !node.isNull else { return nil }
        var selector = try node.mapping()
        var matchLabels: [String: String]?
        if let labelsNode = selector.take("matchLabels"), !labelsNode.isNull {
            let labels = try labels(labelsNode)
            matchLabels = labels.isEmpty ? nil : labels
        }
        try selector.finish(allowed: ["matchLabels"])
        return matchLabels
    }

    /// Kubernetes label selector keys and values.
    static func labels(_ node: YAMLNode) throws -> [String: String] {
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

    static func isLabelKey(_ key: String) -> Bool {
        let parts = key.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return isLabelName(key) }
        return isSubdomain(String(parts[0])) && isLabelName(String(parts[1]))
    }

    static func isLabelName(_ text: String) -> Bool {
        let extra = Set("-_.")
        return (1...63).contains(text.count) && text.allSatisfy { isAlphanumeric($0) || extra.contains($0) }
            && text.first.map(isAlphanumeric) == true && text.last.map(isAlphanumeric) == true
    }

    /// RFC 1123 subdomain: lowercase labels joined by dots, at most 253 characters.
    static func isSubdomain(_ text: String) -> Bool {
        text.count <= 253 && !text.isEmpty && text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isDNSLabel(String($0)) }
    }

    /// RFC 1123 label: 1 to 63 lowercase letters, digits and '-', not at either end.
    static func isDNSLabel(_ text: String) -> Bool {
        (1...63).contains(text.count) && text.allSatisfy { $0 == "-" || isAlphanumeric($0) && !$0.isUppercase }
            && text.first != "-" && text.last != "-"
    }

    static func isAlphanumeric(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber)
    }

    static func objectName(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        guard isSubdomain(value) else {
            throw node.error("\"\(value)\" is not a valid name: use at most 253 lowercase letters, digits, '-' and '.'")
        }
        return value
    }

    static func namespace(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        guard isDNSLabel(value) else {
            throw node.error("\"\(value)\" is not a valid namespace: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
        }
        return value
    }
}
