import Agent
import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus

@main
struct MeshAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh-agent",
        abstract: "Node-level zero-trust proxy: captures workload TCP with nftables and knows each workload by its cgroup.",
        discussion: """
            Runs in the foreground; logs go to stderr. Exit codes: 0 stopped cleanly, \
            1 failed while running, 69 a kernel facility is missing, 77 not root, 78 the config is invalid.
            """
    )

    @Option(name: .long, help: "The agent's configuration file.")
    var config: String = "/etc/mesh-agent/agent.yaml"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \"\(logLevel)\"; use one of trace, debug, info, notice, warning, error, critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "mesh-agent")
        // Modules make their metrics through swift-metrics; the process
        // chooses the backend, once: Prometheus, shown on /metrics.
        let metrics = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))
        do {
            try await MeshAgent(configPath: config, metrics: metrics, logger: logger).run()
        } catch {
            logger.critical("\(error)")
            throw ExitCode(AgentExitCode.for(error))
        }
    }
}
