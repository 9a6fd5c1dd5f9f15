/// A failure as a CNI plugin reports it: an error result on stdout
/// (`{"cniVersion", "code", "msg", "details"}`) and a non-zero exit.
///
/// `msg` says what failed, `details` on which input and what to do; runtimes
/// show `msg` in events (`kubectl describe pod`) and log both.
public struct CNIError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: Code
    public var msg: String
    public var details: String?

    public init(_ code: Code, _ msg: String, details: String? = nil) {
        self.code = code
        self.msg = msg
        self.details = details
    }

    /// The spec's well-known codes (0–99) and this plugin's own (100+).
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }

        public static let incompatibleVersion = Code(rawValue: 1)
        public static let unsupportedField = Code(rawValue: 2)
        public static let invalidEnvironment = Code(rawValue: 4)
        public static let ioFailure = Code(rawValue: 5)
        public static let decodingFailure = Code(rawValue: 6)
        public static let invalidNetworkConfig = Code(rawValue: 7)
        /// A transient condition: the runtime should retry (the agent is not
        /// running yet, or did not answer in time).
        public static let tryAgainLater = Code(rawValue: 11)
        /// STATUS: the plugin cannot serve ADD now.
        public static let notAvailable = Code(rawValue: 50)
        /// The agent answered, and refused or failed the request.
        public static let agentFailed = Code(rawValue: 100)

        public var description: String { String(rawValue) }
    }

    public var description: String {
        details.map { "\(msg): \($0)" } ?? msg
    }

    /// The error result, in `cniVersion` (the config's, as the spec asks).
    public func result(cniVersion: String) -> [UInt8] {
        var members: [String: JSONValue] = [
            "cniVersion": .string(cniVersion),
            "code": .integer(Int64(code.rawValue)),
            "msg": .string(msg),
        ]
        if let details { members["details"] = .string(details) }
        return JSONValue.object(members).encoded()
    }
}
