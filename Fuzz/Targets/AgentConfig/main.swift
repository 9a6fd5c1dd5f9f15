import Config
import FuzzSupport

/// The agent's config file as `mesh-agent` and `agentctl config check` read
/// it: `AgentConfig.parse` (Yams, then every section's checks).
Fuzzing.run { bytes in
    do {
        _ = try AgentConfig.parse(Fuzzing.text(bytes), file: "agent.yaml", defaultNode: "node-a")
    } catch {
        _ = "\(error)"
    }
}
