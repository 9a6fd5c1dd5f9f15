/// Which edges an operator asked to see.
public struct EdgeFilter: Sendable, Equatable {
    /// Edges whose source or destination is in this namespace.
    public var namespace: String?
    /// Edges to or from this workload: `name` or `namespace/name` of the
    /// destination, or the service account of the source's identity.
    public var workload: String?
    /// Edges last seen at or after this time (seconds since the epoch).
    public var since: Double?

    public init(namespace: String? = nil, workload: String? = nil, since: Double? = nil) {
        self.namespace = namespace
        self.workload = workload
        self.since = since
    }

    public func matches(_ edge: Edge) -> Bool {
        if let since, edge.counts.lastSeen < since { return false }
        if let namespace, edge.key.destinationNamespace != namespace, edge.key.sourceNamespace != namespace { return false }
        if let workload {
            let destination = edge.key.destinationWorkload
            let destinationName = destination.split(separator: "/").last.map(String.init) ?? destination
            let sourceAccount = edge.key.sourceIdentity?.split(separator: "/").last.map(String.init)
            if destination != workload, destinationName != workload, sourceAccount != workload { return false }
        }
        return true
    }
}

/// How the graph is shown: a table, Graphviz DOT.
public enum GraphView {
    public static let tableHeader = ["SOURCE", "DESTINATION", "PORT", "PROTO", "TLS", "METHOD", "PATH", "DECISION", "POLICY", "CONN", "REQ", "SENT", "RECEIVED", "LAST SEEN"]

    public static func tableRows(_ edges: [Edge]) -> [[String]] {
        edges.map { edge in
            let key = edge.key
            return [
                shortName(key.sourceName), key.destinationWorkload, String(key.destinationPort), key.protocol, key.tls,
                key.method ?? "-", key.pathTemplate ?? "-",
                key.decision + (key.audit.map { " (dry-run: \($0))" } ?? ""),
                key.policy.map { policy in key.rule.map { "\(policy)[\($0)]" } ?? policy } ?? "-",
                String(edge.counts.connections), String(edge.counts.requests), String(edge.counts.bytesSent), String(edge.counts.bytesReceived),
                GraphTime.format(edge.counts.lastSeen),
            ]
        }
    }

    /// `spiffe://TD/ns/N/sa/S` as `N/S`: the trust domain is the same everywhere
    /// on a picture of one mesh.
    public static func shortName(_ source: String) -> String {
        guard source.hasPrefix("spiffe://") else { return source }
        let parts = source.dropFirst("spiffe://".count).split(separator: "/")
        guard parts.count == 5, parts[1] == "ns", parts[3] == "sa" else { return source }
        return "\(parts[2])/\(parts[4])"
    }

    /// The graph in Graphviz DOT: one node per caller and per workload; one
    /// arrow per caller, workload, port, TLS mode and decision. Solid arrows
    /// are mutual TLS, dashed ones plaintext; green allowed, red denied.
    public static func dot(_ edges: [Edge]) -> String {
        struct Arrow: Hashable {
            var source: String
            var destination: String
            var port: UInt16
            var tls: String
            var decision: String
        }
        var arrows: [Arrow: (connections: UInt64, requests: UInt64, protocols: Set<String>)] = [:]
        var sources = Set<String>()
        var destinations = Set<String>()
        for edge in edges {
            let arrow = Arrow(
                source: shortName(edge.key.sourceName), destination: edge.key.destinationWorkload, port: edge.key.destinationPort,
                tls: edge.key.tls, decision: edge.key.decision)
            sources.insert(arrow.source)
            destinations.insert(arrow.destination)
            var value = arrows[arrow] ?? (0, 0, [])
            value.connections = value.connections.addingSaturated(edge.counts.connections)
            value.requests = value.requests.addingSaturated(edge.counts.requests)
            value.protocols.insert(edge.key.protocol)
            arrows[arrow] = value
        }
        var lines = ["digraph mesh {", "  rankdir=LR;", "  node [shape=box, style=rounded, fontname=\"Helvetica\"];", "  edge [fontname=\"Helvetica\", fontsize=10];"]
        for name in destinations.sorted() {
            lines.append("  \(quoted(name)) [style=\"rounded,filled\", fillcolor=\"#e8f0fe\"];")
        }
        for name in sources.subtracting(destinations).sorted() {
            lines.append("  \(quoted(name))\(name.hasPrefix("plaintext from") ? " [color=\"#c62828\"]" : "");")
        }
        let ordered = arrows.sorted { a, b in
            [a.key.source, a.key.destination, String(a.key.port), a.key.tls, a.key.decision]
                .lexicographicallyPrecedes([b.key.source, b.key.destination, String(b.key.port), b.key.tls, b.key.decision])
        }
        for (arrow, value) in ordered {
            var label = "\(arrow.port)/\(value.protocols.sorted().joined(separator: ","))  \(value.connections) conn"
            if value.requests > 0 { label += ", \(value.requests) req" }
            if arrow.decision != "allow" { label += " (\(arrow.decision))" }
            let color = arrow.decision == "allow" ? "#2e7d32" : "#c62828"
            let style = arrow.tls == "mutual" ? "solid" : "dashed"
            lines.append("  \(quoted(arrow.source)) -> \(quoted(arrow.destination)) [label=\(quoted(label)), color=\"\(color)\", fontcolor=\"\(color)\", style=\(style)];")
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// A DOT string literal: quotes and backslashes escaped, control characters
    /// (which a plaintext peer's name cannot hold, but a path could) dropped.
    static func quoted(_ text: String) -> String {
        doubleQuoted(text) { _ in "" }
    }
}

/// `text` in double quotes with quotes and backslashes escaped, and each
/// control character replaced by what `control` makes of it: DOT and YAML
/// agree on the first two and differ on the rest.
func doubleQuoted(_ text: String, control: (Unicode.Scalar) -> String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || scalar.value == 0x7f: out += control(scalar)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
