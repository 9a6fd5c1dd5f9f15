/// Least-privilege Istio policies from an observed graph: for each destination
/// workload, an `AuthorizationPolicy` that allows exactly the callers, ports,
/// methods and paths that were seen allowed, written as dry-run
/// (`istio.io/dry-run: "true"`) so that applying it changes nothing until an
/// operator promotes it; and, where no plaintext reached the workload, a
/// `PeerAuthentication` STRICT for it.
public struct PolicySuggestion: Sendable, Equatable {
    /// One file to write: `NAMESPACE-NAME.yaml`, or `…-strict.yaml`.
    public struct File: Sendable, Equatable {
        public var name: String
        public var text: String
    }

    public var files: [File]
    /// Workloads no policy could be written for, and why.
    public var skipped: [(workload: String, reason: String)]

    public static func == (a: PolicySuggestion, b: PolicySuggestion) -> Bool {
        a.files == b.files && a.skipped.map { "\($0.workload) \($0.reason)" } == b.skipped.map { "\($0.workload) \($0.reason)" }
    }

    /// `labels` gives each destination workload (`namespace/name`) the labels
    /// its policy selects it by.
    public init(edges: [Edge], labels: [String: [String: String]]) {
        files = []
        skipped = []
        let byWorkload = Dictionary(grouping: edges, by: \.key.destinationWorkload)
        for workload in byWorkload.keys.sorted() {
            let parts = workload.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2 else {
                skipped.append((workload, "not a NAMESPACE/NAME workload name"))
                continue
            }
            guard let selector = labels[workload], !selector.isEmpty else {
                skipped.append((workload, "it has no labels to select it by (or is not on this node): give it labels, e.g. app: \(parts[1]), and suggest again"))
                continue
            }
            let seen = byWorkload[workload] ?? []
            let allowed = seen.filter { $0.key.decision == "allow" }
            var unexpressed: [String] = []
            let rules = Self.rules(allowed, unexpressed: &unexpressed)
            guard !rules.isEmpty else {
                skipped.append((workload, "nothing was allowed to it in the window; an ALLOW policy would refuse every caller"))
                continue
            }
            let stem = "\(parts[0])-\(parts[1])"
            let requests = allowed.reduce(UInt64(0)) { $0.addingSaturated($1.counts.requests) }
            let connections = allowed.reduce(UInt64(0)) { $0.addingSaturated($1.counts.connections) }
            let first = allowed.map(\.counts.firstSeen).min() ?? 0
            let last = allowed.map(\.counts.lastSeen).max() ?? 0
            var text = """
                # What \(workload) was observed to allow: \(connections) connection(s), \(requests) request(s),
                # \(GraphTime.format(first)) to \(GraphTime.format(last)). Dry-run: the access log shows
                # what it would deny (audit: deny); remove the annotation to enforce it.\(Self.unexpressedNote(unexpressed))
                apiVersion: security.istio.io/v1
                kind: AuthorizationPolicy
                metadata:
                  name: \(Self.policyName(parts[1], suffix: "observed"))
                  namespace: \(parts[0])
                  annotations:
                    istio.io/dry-run: "true"
                spec:\n
                """
            text += Self.selector(selector)
            text += "  action: ALLOW\n  rules:\n"
            for rule in rules { text += rule }
            // `shop-api/orders` and `shop/api-orders` (or a workload named
            // `orders-strict`) would share a name: the later one takes the
            // form with `_`, which no namespace or name holds.
            let strictWanted = !seen.contains(where: \.key.isPlaintextPeer)
            let taken = Set(files.map(\.name))
            let clear = !taken.contains("\(stem).yaml") && !(strictWanted && taken.contains("\(stem)-strict.yaml"))
            let (policyName, strictName) = clear ? ("\(stem).yaml", "\(stem)-strict.yaml") : ("\(parts[0])_\(parts[1]).yaml", "\(parts[0])_\(parts[1])_strict.yaml")
            files.append(File(name: policyName, text: text))
            if strictWanted {
                files.append(File(name: strictName, text: Self.strict(name: parts[1], namespace: parts[0], selector: selector)))
            }
        }
    }

    /// A caller as policy names it: a principal, or a plaintext address.
    private enum Caller: Hashable, Comparable {
        case principal(String)
        case address(String)
    }

    /// One rule per group of callers allowed the same operations: the rules
    /// read as "these callers may do this".
    private static func rules(_ edges: [Edge], unexpressed: inout [String]) -> [String] {
        var byCaller: [Caller: [Edge]] = [:]
        for edge in edges {
            if let identity = edge.key.sourceIdentity {
                let principal = identity.hasPrefix("spiffe://") ? String(identity.dropFirst("spiffe://".count)) : identity
                byCaller[.principal(principal), default: []].append(edge)
            } else if let address = edge.key.sourceAddress {
                byCaller[.address(address), default: []].append(edge)
            }
        }
        var callersByOperations: [[String]: [Caller]] = [:]
        for (caller, edges) in byCaller {
            let allowed = operations(edges, unexpressed: &unexpressed)
            // A rule with no operation would allow every operation: a caller
            // whose every request is unexpressed gets no rule.
            guard !allowed.isEmpty else { continue }
            callersByOperations[allowed, default: []].append(caller)
        }
        return callersByOperations.map { operations, callers in
            (callers.sorted(), operations)
        }.sorted { $0.0.lexicographicallyPrecedes($1.0) }.map { callers, operations in
            var rule = "  - from:\n"
            let principals = callers.compactMap { if case .principal(let p) = $0 { return p } else { return nil } }
            let addresses = callers.compactMap { if case .address(let a) = $0 { return a } else { return nil } }
            if !principals.isEmpty {
                rule += "    - source:\n        principals: [\(principals.map(quoted).joined(separator: ", "))]\n"
            }
            if !addresses.isEmpty {
                // Plaintext only: a tunnel from the same node arrives from the
                // same address, with an identity, and must not match here.
                let blocks = addresses.map { $0.contains(":") ? "\($0)/128" : "\($0)/32" }
                rule += "    - source:\n        ipBlocks: [\(blocks.map(quoted).joined(separator: ", "))]\n        notPrincipals: [\"*\"]\n"
            }
            rule += "    to:\n"
            for operation in operations { rule += operation }
            return rule
        }
    }

    /// The operations a caller was seen doing: per port, the methods and path
    /// prefixes of its HTTP requests (grouped so that each path is allowed
    /// exactly the methods seen on it), or the port alone where no request
    /// was seen.
    private static func operations(_ edges: [Edge], unexpressed: inout [String]) -> [String] {
        var operations: [String] = []
        let byPort = Dictionary(grouping: edges, by: \.key.destinationPort)
        for port in byPort.keys.sorted() {
            let requests = (byPort[port] ?? []).filter { $0.key.method != nil && $0.key.pathTemplate != nil }
            guard !requests.isEmpty else {
                operations.append("    - operation:\n        ports: [\"\(port)\"]\n")
                continue
            }
            var methodsByPath: [String: Set<String>] = [:]
            for (method, edges) in Dictionary(grouping: requests, by: { $0.key.method ?? "" }) {
                let allowed = PolicyPaths.paths(for: Set(edges.compactMap(\.key.pathTemplate)))
                for path in allowed.paths {
                    methodsByPath[path, default: []].insert(method)
                }
                for template in allowed.unexpressed where !unexpressed.contains("\(method) \(template) on port \(port)") {
                    unexpressed.append("\(method) \(template) on port \(port)")
                }
            }
            guard !methodsByPath.isEmpty else { continue }
            var pathsByMethods: [[String]: [String]] = [:]
            for (path, methods) in methodsByPath {
                pathsByMethods[methods.sorted(), default: []].append(path)
            }
            for methods in pathsByMethods.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                let paths = (pathsByMethods[methods] ?? []).sorted()
                operations.append(
                    "    - operation:\n        ports: [\"\(port)\"]\n        methods: [\(methods.map(quoted).joined(separator: ", "))]\n"
                        + "        paths: [\(paths.map(quoted).joined(separator: ", "))]\n")
            }
        }
        return operations
    }

    /// Header lines naming the requests the policy does not allow although
    /// they were seen: allowing them would mean allowing every path.
    private static func unexpressedNote(_ unexpressed: [String]) -> String {
        guard !unexpressed.isEmpty else { return "" }
        return "\n# Seen but NOT allowed here: a path whose first segment varies, or no path at all, cannot be\n"
            + "# allowed without allowing every path; write a rule by hand if these are needed:\n"
            + unexpressed.sorted().map { "#   \(commentSafe($0))" }.joined(separator: "\n")
    }

    /// Text for a `#` comment: control characters (a newline would end the
    /// comment and start YAML) become `?`.
    static func commentSafe(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0.properties.generalCategory == .control ? "?" : $0 }))
    }

    private static func strict(name: String, namespace: String, selector: [String: String]) -> String {
        var text = """
            # No plaintext reached \(namespace)/\(name) in the window. PeerAuthentication has no
            # dry-run: this refuses plaintext as soon as it is applied. Apply it once
            # agentctl policy report lists no strict blockers for the workload.
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata:
              name: \(policyName(name, suffix: "strict"))
              namespace: \(namespace)
            spec:\n
            """
        text += Self.selector(selector)
        text += "  mtls:\n    mode: STRICT\n"
        return text
    }

    /// A time-bound grant (`agentctl policy grant`): an ALLOW policy for one
    /// principal to one workload, annotated `mesh-agent.io/expires`.
    public static func grant(
        name: String, namespace: String, labels: [String: String], principal: String, expires: String, port: UInt16? = nil,
        method: String? = nil, path: String? = nil
    ) -> String {
        var text = """
            # Time-bound grant: \(commentSafe(principal)) may reach the workload until \(commentSafe(expires)).
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata:
              name: \(name)
              namespace: \(namespace)
              annotations:
                mesh-agent.io/expires: \(quoted(expires))
            spec:\n
            """
        text += selector(labels)
        text += "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\(quoted(principal))]\n"
        var operation: [String] = []
        if let port { operation.append("ports: [\"\(port)\"]") }
        if let method, let path { operation.append("methods: [\(quoted(method))], paths: [\(quoted(path))]") }
        if !operation.isEmpty {
            text += "    to:\n    - operation: {\(operation.joined(separator: ", "))}\n"
        }
        return text
    }

    /// `spec.selector` picking a workload by its labels.
    private static func selector(_ labels: [String: String]) -> String {
        labels.sorted { $0.key < $1.key }.reduce("  selector:\n    matchLabels:\n") { text, label in
            text + "      \(quoted(label.key)): \(quoted(label.value))\n"
        }
    }

    /// `NAME-SUFFIX`, cut to the 63 characters a Kubernetes name may have.
    static func policyName(_ name: String, suffix: String) -> String {
        let room = 63 - suffix.count - 1
        var stem = String(name.prefix(room))
        while stem.hasSuffix("-") { stem.removeLast() }
        return "\(stem)-\(suffix)"
    }

    /// A YAML double-quoted scalar: quotes, backslashes and control characters
    /// escaped, so a path or label from outside cannot end the string.
    static func quoted(_ text: String) -> String {
        doubleQuoted(text) { "\\x" + ($0.value < 0x10 ? "0" : "") + String($0.value, radix: 16) }
    }
}
