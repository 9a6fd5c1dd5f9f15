import NIOCore

/// What the agent knows about an inbound connection when it decides L4 policy.
public struct ConnectionAttributes: Hashable, Sendable {
    /// The peer's SPIFFE ID without the `spiffe://` scheme, as Istio policies
    /// write principals (`cluster.local/ns/shop/sa/checkout`); nil for plaintext.
    public var sourcePrincipal: String? {
        didSet { sourceNamespace = Self.namespace(of: sourcePrincipal) }
    }
    /// The namespace in the principal (`TD/ns/NAMESPACE/sa/SA`), which is what
    /// Istio's `source.namespace` means: a namespace is only known from an
    /// authenticated identity.
    public private(set) var sourceNamespace: String?
    public var sourceAddress: SocketAddress?
    public var destinationAddress: SocketAddress?
    public var destinationPort: UInt16

    public init(sourcePrincipal: String?, sourceAddress: SocketAddress?, destinationAddress: SocketAddress?, destinationPort: UInt16) {
        self.sourcePrincipal = sourcePrincipal
        self.sourceNamespace = Self.namespace(of: sourcePrincipal)
        self.sourceAddress = sourceAddress
        self.destinationAddress = destinationAddress
        self.destinationPort = destinationPort
    }

    private static func namespace(of principal: String?) -> String? {
        guard let principal else { return nil }
        let segments = principal.split(separator: "/", omittingEmptySubsequences: false)
        guard segments.count == 5, segments[1] == "ns", segments[3] == "sa" else { return nil }
        return String(segments[2])
    }
}

/// The end user a request speaks for, from a JWT that RequestAuthentication
/// verified.
public struct RequestIdentity: Hashable, Sendable {
    /// `iss/sub`, as Istio's `requestPrincipals` and `request.auth.principal`.
    public var principal: String
    public var issuer: String
    public var subject: String
    /// The token's `aud` (a single string becomes one element).
    public var audiences: [String]
    /// The token's `azp`, Istio's `request.auth.presenter`.
    public var presenter: String?
    /// Every claim of the token, an object.
    public var claims: JSONValue

    public init(issuer: String, subject: String, audiences: [String] = [], presenter: String? = nil, claims: JSONValue = .object([:])) {
        self.principal = "\(issuer)/\(subject)"
        self.issuer = issuer
        self.subject = subject
        self.audiences = audiences
        self.presenter = presenter
        self.claims = claims
    }
}

/// One HTTP request as L7 policy sees it.
public struct HTTPRequestAttributes: Hashable, Sendable {
    public var method: String
    /// The normalized path, without the query (``HTTPPath``).
    public var path: String
    /// `Host` or `:authority`, as sent.
    public var host: String
    /// Header names lowercased, in the order received; repeated names stay repeated.
    public var headers: [HTTPField]
    /// The verified token's identity; nil when the request carried no token.
    public var identity: RequestIdentity?

    public init(method: String, path: String, host: String, headers: [HTTPField] = [], identity: RequestIdentity? = nil) {
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
        self.identity = identity
    }

    /// The values of a header, joined by "," as HTTP allows repeated fields to be
    /// combined; nil when the header is absent.
    public func header(_ name: String) -> String? {
        let lowered = name.lowercased()
        var joined: String?
        for field in headers where field.name == lowered {
            joined = joined.map { "\($0),\(field.value)" } ?? field.value
        }
        return joined
    }
}

/// One header field, its name lowercased.
public struct HTTPField: Hashable, Sendable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name.lowercased()
        self.value = value
    }
}
