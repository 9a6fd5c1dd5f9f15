/// How a reload went, as `agentctl reload` reports it.
public struct ReloadOutcome: Codable, Equatable, Sendable {
    /// "applied", or "refused" when the config file did not validate (the
    /// running config stays).
    public var config: String
    /// Why the config or the policies were refused, `file:line: reason` each.
    public var errors: [String]
    /// Settings that changed in the file but take effect only on restart.
    public var restartRequired: [String]
    public var workloads: Int
    public var policyGeneration: Int

    enum CodingKeys: String, CodingKey {
        case config, errors, workloads
        case restartRequired = "restart_required"
        case policyGeneration = "policy_generation"
    }

    public init(config: String, errors: [String], restartRequired: [String], workloads: Int, policyGeneration: Int) {
        self.config = config
        self.errors = errors
        self.restartRequired = restartRequired
        self.workloads = workloads
        self.policyGeneration = policyGeneration
    }
}
