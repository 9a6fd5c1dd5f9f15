/// One HTTP request head as the request decision sees it: an HTTP/1.x request
/// as received, an HTTP/2 stream's header block in HTTP/1.1 form (`:authority`
/// as Host), or a request described to `agentctl policy explain`.
public struct RequestHead: Hashable, Sendable {
    public struct Version: Hashable, Sendable {
        public var major: Int
        public var minor: Int

        public init(major: Int, minor: Int) {
            self.major = major
            self.minor = minor
        }

        public static let http1_0 = Version(major: 1, minor: 0)
        public static let http1_1 = Version(major: 1, minor: 1)
    }

    public var method: String
    /// The request-target as sent, before normalization.
    public var target: String
    public var version: Version
    /// Every header field in the order received, names lowercased; repeated
    /// names stay repeated.
    public var fields: [HTTPField]

    public init(method: String, target: String, version: Version = .http1_1, fields: [HTTPField]) {
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
    }

    /// The values of every field named `name` (lowercase), in order.
    public func values(of name: String) -> [String] {
        fields.compactMap { $0.name == name ? $0.value : nil }
    }

    func has(_ name: String) -> Bool {
        fields.contains { $0.name == name }
    }
}
