/// A SPIFFE ID, `spiffe://TRUST_DOMAIN/PATH`, parsed strictly as the SPIFFE
/// specification (SPIFFE-ID §2) defines it: lowercase scheme, a trust domain of
/// lowercase letters, digits, `.`, `-` and `_`, and a path of non-empty segments
/// of letters, digits, `.`, `-` and `_` with no `.` or `..` segments, no query,
/// fragment, port or user info.
public struct SpiffeID: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let trustDomain: String
    /// The path without its leading slash, e.g. `ns/shop/sa/orders`; empty for
    /// the trust domain's own ID.
    public let path: String

    public static let maximumLength = 2048

    public init(_ text: String) throws {
        guard text.utf8.count <= Self.maximumLength else {
            throw SpiffeIDError(text: text, problem: "longer than \(Self.maximumLength) bytes")
        }
        guard text.hasPrefix("spiffe://") else {
            throw SpiffeIDError(text: text, problem: "must start with spiffe://")
        }
        let rest = text.dropFirst("spiffe://".count)
        let slash = rest.firstIndex(of: "/")
        let domain = String(rest[..<(slash ?? rest.endIndex)])
        try Self.validateTrustDomain(domain, in: text)
        var path = ""
        if let slash {
            path = String(rest[rest.index(after: slash)...])
            guard !path.isEmpty else {
                throw SpiffeIDError(text: text, problem: "the path must not end with /")
            }
            for segment in path.split(separator: "/", omittingEmptySubsequences: false) {
                guard !segment.isEmpty else {
                    throw SpiffeIDError(text: text, problem: "the path has an empty segment")
                }
                guard segment != ".", segment != ".." else {
                    throw SpiffeIDError(text: text, problem: "the path has a '.' or '..' segment")
                }
                guard segment.utf8.allSatisfy(Self.isPathByte) else {
                    throw SpiffeIDError(text: text, problem: "the path may only hold letters, digits, '.', '-' and '_'")
                }
            }
        }
        self.trustDomain = domain
        self.path = path
    }

    /// The identity of a workload: `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    /// Istio's workload ID. Each part is one path segment: a namespace or
    /// service account holding `/` (from a label a container's author wrote,
    /// say) would otherwise forge another ID's shape.
    public init(trustDomain: String, namespace: String, serviceAccount: String) throws {
        for (what, value) in [("namespace", namespace), ("service account", serviceAccount)] where value.isEmpty || value.contains("/") {
            throw SpiffeIDError(text: value, problem: "a \(what) must be one non-empty path segment, without '/'")
        }
        try self.init("spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)")
    }

    public var description: String {
        path.isEmpty ? "spiffe://\(trustDomain)" : "spiffe://\(trustDomain)/\(path)"
    }

    /// The ID without its scheme, `TD/PATH`, as Istio's authorization policies
    /// write principals.
    public var principal: String {
        path.isEmpty ? trustDomain : "\(trustDomain)/\(path)"
    }

    /// The namespace and service account, when the path has Istio's `ns/X/sa/Y` shape.
    public var namespaceAndServiceAccount: (namespace: String, serviceAccount: String)? {
        let parts = path.split(separator: "/")
        guard parts.count == 4, parts[0] == "ns", parts[2] == "sa" else { return nil }
        return (String(parts[1]), String(parts[3]))
    }

    public static func < (lhs: SpiffeID, rhs: SpiffeID) -> Bool { lhs.description < rhs.description }

    public static func validateTrustDomain(_ domain: String, in text: String? = nil) throws {
        guard !domain.isEmpty else {
            throw SpiffeIDError(text: text ?? domain, problem: "the trust domain is empty")
        }
        guard domain.utf8.count <= 255 else {
            throw SpiffeIDError(text: text ?? domain, problem: "the trust domain is longer than 255 bytes")
        }
        guard domain.utf8.allSatisfy(isTrustDomainByte) else {
            throw SpiffeIDError(text: text ?? domain, problem: "the trust domain may only hold lowercase letters, digits, '.', '-' and '_' (no port, user info or uppercase)")
        }
    }

    private static func isTrustDomainByte(_ byte: UInt8) -> Bool {
        (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2e || byte == 0x2d || byte == 0x5f
    }

    private static func isPathByte(_ byte: UInt8) -> Bool {
        isTrustDomainByte(byte) || (byte >= 0x41 && byte <= 0x5a)
    }
}

public struct SpiffeIDError: Error, Equatable, CustomStringConvertible {
    public let text: String
    public let problem: String
    public var description: String { "\"\(text)\" is not a valid SPIFFE ID: \(problem)" }
}
