import Foundation
import Policy

/// `{"edges": [...]}`: what `agentctl graph -o json` prints, what the admin
/// API serves and what `agentctl graph merge` reads. Times are RFC 3339 UTC,
/// as the access log writes them.
public struct GraphDocument: Codable, Sendable, Equatable {
    public var edges: [Edge]

    public init(edges: [Edge]) {
        self.edges = edges
    }

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    /// Decodes a document; the error names `source` and what is wrong.
    public static func decode(_ data: Data, source: String) throws -> GraphDocument {
        do {
            return try JSONDecoder().decode(GraphDocument.self, from: data)
        } catch let error as DecodingError {
            throw GraphError.invalidDocument(source: source, reason: error.summary)
        }
    }
}

public enum GraphError: Error, CustomStringConvertible, Equatable {
    case invalidDocument(source: String, reason: String)

    public var description: String {
        switch self {
        case .invalidDocument(let source, let reason):
            return "\(source): not a graph document ({\"edges\": [...]} as agentctl graph -o json prints it): \(reason)"
        }
    }
}

extension DecodingError {
    var summary: String {
        func path(_ context: Context) -> String {
            context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        }
        switch self {
        case .keyNotFound(let key, let context): return "\(path(context)).\(key.stringValue) is missing"
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            return "\(path(context)): \(context.debugDescription)"
        @unknown default: return "\(self)"
        }
    }
}

extension Edge: Codable {
    enum CodingKeys: String, CodingKey {
        case sourceIdentity = "src_identity", sourceAddress = "src_addr", destinationWorkload = "dst_workload"
        case destinationIdentity = "dst_identity", destinationPort = "dst_port", `protocol`, tls, method
        case pathTemplate = "path_template", decision, policy, rule, audit, auditPolicy = "audit_policy", auditRule = "audit_rule"
        case connections, requests, bytesSent = "bytes_sent", bytesReceived = "bytes_received"
        case firstSeen = "first_seen", lastSeen = "last_seen"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = EdgeKey(
            sourceIdentity: try c.decodeIfPresent(String.self, forKey: .sourceIdentity),
            sourceAddress: try c.decodeIfPresent(String.self, forKey: .sourceAddress),
            destinationWorkload: try c.decode(String.self, forKey: .destinationWorkload),
            destinationIdentity: try c.decodeIfPresent(String.self, forKey: .destinationIdentity),
            destinationPort: try c.decode(UInt16.self, forKey: .destinationPort),
            protocol: try c.decode(String.self, forKey: .protocol),
            tls: try c.decode(String.self, forKey: .tls),
            method: try c.decodeIfPresent(String.self, forKey: .method),
            pathTemplate: try c.decodeIfPresent(String.self, forKey: .pathTemplate),
            decision: try c.decode(String.self, forKey: .decision),
            policy: try c.decodeIfPresent(String.self, forKey: .policy),
            rule: try c.decodeIfPresent(Int.self, forKey: .rule),
            audit: try c.decodeIfPresent(String.self, forKey: .audit),
            auditPolicy: try c.decodeIfPresent(String.self, forKey: .auditPolicy),
            auditRule: try c.decodeIfPresent(Int.self, forKey: .auditRule))
        counts = EdgeCounts(
            connections: try c.decode(UInt64.self, forKey: .connections),
            requests: try c.decode(UInt64.self, forKey: .requests),
            bytesSent: try c.decode(UInt64.self, forKey: .bytesSent),
            bytesReceived: try c.decode(UInt64.self, forKey: .bytesReceived),
            firstSeen: try Self.decodeTime(c, .firstSeen),
            lastSeen: try Self.decodeTime(c, .lastSeen))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        // Absent fields are written as null, as the access log writes them:
        // every edge has every key.
        try c.encode(key.sourceIdentity, forKey: .sourceIdentity)
        try c.encode(key.sourceAddress, forKey: .sourceAddress)
        try c.encode(key.destinationWorkload, forKey: .destinationWorkload)
        try c.encode(key.destinationIdentity, forKey: .destinationIdentity)
        try c.encode(key.destinationPort, forKey: .destinationPort)
        try c.encode(key.protocol, forKey: .protocol)
        try c.encode(key.tls, forKey: .tls)
        try c.encode(key.method, forKey: .method)
        try c.encode(key.pathTemplate, forKey: .pathTemplate)
        try c.encode(key.decision, forKey: .decision)
        try c.encode(key.policy, forKey: .policy)
        try c.encode(key.rule, forKey: .rule)
        try c.encode(key.audit, forKey: .audit)
        try c.encode(key.auditPolicy, forKey: .auditPolicy)
        try c.encode(key.auditRule, forKey: .auditRule)
        try c.encode(counts.connections, forKey: .connections)
        try c.encode(counts.requests, forKey: .requests)
        try c.encode(counts.bytesSent, forKey: .bytesSent)
        try c.encode(counts.bytesReceived, forKey: .bytesReceived)
        try c.encode(GraphTime.format(counts.firstSeen), forKey: .firstSeen)
        try c.encode(GraphTime.format(counts.lastSeen), forKey: .lastSeen)
    }

    private static func decodeTime(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> Double {
        let text = try c.decode(String.self, forKey: key)
        guard let time = GraphTime.parse(text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "\"\(text)\" is not an RFC 3339 time")
        }
        return time
    }
}

/// RFC 3339 UTC with milliseconds, as the access log writes times.
public enum GraphTime {
    public static func format(_ secondsSinceEpoch: Double) -> String {
        RFC3339.format(secondsSinceEpoch, milliseconds: true)
    }

    public static func parse(_ text: String) -> Double? {
        RFC3339.parse(text)
    }
}
