extension AuthorizationPolicy {
    /// Reads a document whose `kind` is AuthorizationPolicy, validating it as
    /// Istio does and more strictly where a mistake would silently widen access:
    /// unknown keys, `*` inside a value, empty lists, principals written with the
    /// `spiffe://` scheme, bad networks and ports, unknown `when` keys and
    /// features the agent does not implement are all errors with file, line and
    /// key path.
    public static func parse(_ document: YAMLNode) throws -> AuthorizationPolicy {
        var top = try document.mapping()
        let metadata = try KubernetesNames.objectMetadata(&top, kind: kind, apiVersions: apiVersions)
        var policy = AuthorizationPolicy(name: metadata.name, namespace: metadata.namespace, file: document.file, line: document.line)
        if let dryRun = metadata.annotations[dryRunAnnotation] {
            switch dryRun.lowercased() {
            case "true": policy.dryRun = true
            case "false": policy.dryRun = false
            default:
                throw document.error("metadata.annotations.\(dryRunAnnotation) must be \"true\" or \"false\", got \"\(dryRun)\"")
            }
        }
        if let expires = metadata.annotations[expiresAnnotation] {
            guard let time = RFC3339.parse(expires) else {
                throw document.error(
                    "metadata.annotations.\(expiresAnnotation) must be an RFC 3339 time like 2026-12-08T18:00:00Z, got \"\(expires)\"")
            }
            policy.expires = time
        }
        if let specNode = top.take("spec"), !specNode.isNull {
            var spec = try specNode.mapping()
            for unsupported in ["targetRef", "targetRefs"] where spec.take(unsupported) != nil {
                throw spec.error(key: unsupported, "is not supported: mesh-agent attaches policies to workloads with spec.selector")
            }
            if spec.take("provider") != nil {
                throw spec.error(key: "provider", "is not supported: mesh-agent has no external authorization (action CUSTOM)")
            }
            if let selectorNode = spec.take("selector") {
                policy.matchLabels = try KubernetesNames.selector(selectorNode)
            }
            if let actionNode = spec.take("action") {
                let text = try actionNode.string()
                guard text != "CUSTOM" else {
                    throw actionNode.error("CUSTOM (external authorization) is not supported by mesh-agent; use ALLOW, DENY or AUDIT")
                }
                policy.action = try actionNode.oneOf(Action.self, Action.allCases)
            }
            if let rulesNode = spec.take("rules"), !rulesNode.isNull {
                policy.rules = try rulesNode.sequence().map(parseRule)
            }
            try spec.finish(allowed: ["selector", "action", "rules", "provider", "targetRef", "targetRefs"])
        }
        try top.finish(allowed: ["apiVersion", "kind", "metadata", "spec"])
        return policy
    }

    private static func parseRule(_ node: YAMLNode) throws -> Rule {
        guard !node.isNull else {
            throw node.error("a rule must not be empty; write {} for a rule that matches every request")
        }
        var mapping = try node.mapping()
        var rule = Rule(line: node.line)
        if let fromNode = mapping.take("from") {
            rule.from = try nonEmptyList(fromNode).map { entry in
                var from = try entry.mapping()
                let source = try from.require("source")
                try from.finish(allowed: ["source"])
                return try parseSource(source)
            }
        }
        if let toNode = mapping.take("to") {
            rule.to = try nonEmptyList(toNode).map { entry in
                var to = try entry.mapping()
                let operation = try to.require("operation")
                try to.finish(allowed: ["operation"])
                return try parseOperation(operation)
            }
        }
        if let whenNode = mapping.take("when") {
            rule.when = try nonEmptyList(whenNode).map(parseCondition)
        }
        try mapping.finish(allowed: ["from", "to", "when"])
        return rule
    }

    private static func parseSource(_ node: YAMLNode) throws -> Source {
        var mapping = try node.mapping()
        guard !mapping.entries.isEmpty else {
            throw node.error("must not be empty; leave out `from` to match every source")
        }
        var source = Source()
        source.principals = try mapping.take("principals").map(principals)
        source.notPrincipals = try mapping.take("notPrincipals").map(principals)
        source.requestPrincipals = try mapping.take("requestPrincipals").map { try patterns($0) }
        source.notRequestPrincipals = try mapping.take("notRequestPrincipals").map { try patterns($0) }
        source.namespaces = try mapping.take("namespaces").map { try patterns($0) }
        source.notNamespaces = try mapping.take("notNamespaces").map { try patterns($0) }
        source.ipBlocks = try mapping.take("ipBlocks").map(networks)
        source.notIpBlocks = try mapping.take("notIpBlocks").map(networks)
        source.remoteIpBlocks = try mapping.take("remoteIpBlocks").map(networks)
        source.notRemoteIpBlocks = try mapping.take("notRemoteIpBlocks").map(networks)
        try mapping.finish(allowed: [
            "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces", "notNamespaces",
            "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
        ])
        return source
    }

    private static func parseOperation(_ node: YAMLNode) throws -> Operation {
        var mapping = try node.mapping()
        guard !mapping.entries.isEmpty else {
            throw node.error("must not be empty; leave out `to` to match every operation")
        }
        var operation = Operation()
        operation.hosts = try mapping.take("hosts").map { try patterns($0) }
        operation.notHosts = try mapping.take("notHosts").map { try patterns($0) }
        operation.ports = try mapping.take("ports").map(ports)
        operation.notPorts = try mapping.take("notPorts").map(ports)
        operation.methods = try mapping.take("methods").map(methods)
        operation.notMethods = try mapping.take("notMethods").map(methods)
        operation.paths = try mapping.take("paths").map(paths)
        operation.notPaths = try mapping.take("notPaths").map(paths)
        try mapping.finish(allowed: ["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"])
        return operation
    }

    private static func parseCondition(_ node: YAMLNode) throws -> Condition {
        var mapping = try node.mapping()
        let keyNode = try mapping.require("key")
        let key = try conditionKey(keyNode)
        let valueNodes = try mapping.take("values").map(nonEmptyList)
        let notValueNodes = try mapping.take("notValues").map(nonEmptyList)
        try mapping.finish(allowed: ["key", "values", "notValues"])
        guard valueNodes != nil || notValueNodes != nil else {
            throw node.error("a condition needs `values` or `notValues`")
        }
        func typed(_ nodes: [YAMLNode]) throws -> [ConditionValue] {
            try nodes.map { node in
                switch key {
                case .sourceIP, .remoteIP, .destinationIP:
                    return .network(try network(node))
                case .destinationPort:
                    return .port(try port(node))
                default:
                    return .pattern(try pattern(node))
                }
            }
        }
        return Condition(key: key, values: try valueNodes.map(typed), notValues: try notValueNodes.map(typed))
    }

    private static let supportedKeys =
        "source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], request.headers[NAME]"

    private static func conditionKey(_ node: YAMLNode) throws -> ConditionKey {
        let text = try node.nonEmptyString()
        switch text {
        case "source.ip": return .sourceIP
        case "remote.ip": return .remoteIP
        case "source.namespace": return .sourceNamespace
        case "source.principal": return .sourcePrincipal
        case "destination.ip": return .destinationIP
        case "destination.port": return .destinationPort
        case "request.auth.principal": return .requestPrincipal
        case "request.auth.audiences": return .requestAudiences
        case "request.auth.presenter": return .requestPresenter
        case "connection.sni":
            throw node.error("connection.sni is not supported: inbound tunnel connections are addressed by the CONNECT target, not SNI")
        default: break
        }
        if text.hasPrefix("request.auth.claims[") {
            let path = try bracketed(text.dropFirst("request.auth.claims".count), node: node)
            return .requestClaim(path)
        }
        if text.hasPrefix("request.headers[") {
            let path = try bracketed(text.dropFirst("request.headers".count), node: node)
            guard path.count == 1, let name = path.first, name.allSatisfy(isTokenCharacter) else {
                throw node.error("\"\(text)\": write one header name, e.g. request.headers[x-tenant]")
            }
            return .requestHeader(name.lowercased())
        }
        if text.hasPrefix("experimental.") {
            throw node.error("\"\(text)\": experimental keys are not supported by mesh-agent")
        }
        throw node.error("unknown condition key \"\(text)\"; supported: \(supportedKeys)")
    }

    /// `[a][b]` → ["a", "b"]; every part non-empty, nothing between or after.
    private static func bracketed(_ text: Substring, node: YAMLNode) throws -> [String] {
        var parts: [String] = []
        var rest = text
        while !rest.isEmpty {
            guard rest.first == "[", let close = rest.firstIndex(of: "]") else {
                throw node.error("\"\(try node.string())\": expected [NAME] after the key, e.g. request.auth.claims[groups]")
            }
            let part = rest[rest.index(after: rest.startIndex)..<close]
            guard !part.isEmpty, !part.contains("[") else {
                throw node.error("\"\(try node.string())\": every [NAME] must name something")
            }
            parts.append(String(part))
            rest = rest[rest.index(after: close)...]
        }
        guard !parts.isEmpty else { throw node.error("\"\(try node.string())\": expected [NAME] after the key") }
        return parts
    }

    // MARK: Values

    /// A list that must have at least one entry: an empty list in Istio means the
    /// same as no list, which quietly turns "these" into "anyone".
    private static func nonEmptyList(_ node: YAMLNode) throws -> [YAMLNode] {
        let items = try node.sequence()
        guard !items.isEmpty else {
            throw node.error("must not be an empty list; Istio would read it as absent (matching anything): remove the key or list values")
        }
        return items
    }

    private static func pattern(_ node: YAMLNode) throws -> StringPattern {
        let text = try node.string()
        guard !text.isEmpty else { throw node.error("must not be empty") }
        guard let pattern = StringPattern(text) else {
            throw node.error("\"\(text)\": `*` may only stand alone, begin a value (suffix match) or end it (prefix match)")
        }
        return pattern
    }

    private static func patterns(_ node: YAMLNode) throws -> [StringPattern] {
        try nonEmptyList(node).map(pattern)
    }

    private static func principals(_ node: YAMLNode) throws -> [StringPattern] {
        try nonEmptyList(node).map { item in
            let text = try item.string()
            if text.hasPrefix("spiffe://") {
                throw item.error("\"\(text)\": write principals without the spiffe:// scheme, e.g. \"\(text.dropFirst("spiffe://".count))\"")
            }
            return try pattern(item)
        }
    }

    private static func network(_ node: YAMLNode) throws -> IPPrefix {
        let text = try node.nonEmptyString()
        do {
            return try IPPrefix(text)
        } catch let error as IPPrefixError {
            throw node.error(error.description)
        }
    }

    private static func networks(_ node: YAMLNode) throws -> [IPPrefix] {
        try nonEmptyList(node).map(network)
    }

    private static func port(_ node: YAMLNode) throws -> UInt16 {
        let text = try node.string()
        guard let port = UInt16(text, radix: 10), port >= 1 else {
            throw node.error("\"\(text)\" is not a port: write a whole number from 1 to 65535")
        }
        return port
    }

    private static func ports(_ node: YAMLNode) throws -> Set<UInt16> {
        Set(try nonEmptyList(node).map(port))
    }

    private static func methods(_ node: YAMLNode) throws -> [StringPattern] {
        try nonEmptyList(node).map { item in
            let text = try item.string()
            guard text == "*" || (!text.isEmpty && text.allSatisfy { $0 == "*" || isTokenCharacter($0) }) else {
                throw item.error("\"\(text)\" is not an HTTP method")
            }
            return try pattern(item)
        }
    }

    private static func paths(_ node: YAMLNode) throws -> [StringPattern] {
        try nonEmptyList(node).map { item in
            let text = try item.string()
            if text.contains("{") {
                throw item.error("\"\(text)\": path templates ({*}, {**}) are not supported by mesh-agent; use a prefix (/api/*) or suffix (*/info) match")
            }
            let pattern = try pattern(item)
            switch pattern {
            case .exact(let path), .prefix(let path):
                guard path.hasPrefix("/") else {
                    throw item.error("\"\(text)\": a path starts with /, or with * for a suffix match")
                }
            case .suffix, .presence:
                break
            }
            return pattern
        }
    }

    /// RFC 9110 token characters (header names, methods).
    static func isTokenCharacter(_ character: Character) -> Bool {
        guard let ascii = character.asciiValue else { return false }
        return HTTPSyntax.isTokenByte(ascii)
    }
}
