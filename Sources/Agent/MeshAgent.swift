import LinuxNet
import Logging
import Prometheus

/// The agent: builds its parts, starts them in order, runs the control loop
/// until SIGTERM or SIGINT, and drains in reverse order.
public final class MeshAgent: Sendable {
    private let configPath: String
    private let metrics: PrometheusCollectorRegistry
    private let logger: Logger

    /// - Parameter metrics: the registry the process bootstrapped swift-metrics
    ///   with; `/metrics` shows it.
    public init(configPath: String, metrics: PrometheusCollectorRegistry, logger: Logger) {
        self.configPath = configPath
        self.metrics = metrics
        self.logger = logger
    }

    /// Runs until SIGTERM or SIGINT, then drains and returns.
    public func run() async throws {
        guard Privileges.isRoot else { throw AgentError.notRoot }
        DescriptorLimit.raiseToHard()
        let events = ControlEvents(tickEvery: ControlLoop.tickInterval)
        let services = try AgentServices.build(configPath: configPath, events: events, metrics: metrics, logger: logger)
        if let interval = services.systemd.watchdogInterval, interval < ControlLoop.tickInterval * 2 {
            logger.warning("WatchdogSec is shorter than \(ControlLoop.tickInterval * 2): the agent pings once per \(ControlLoop.tickInterval) and may be restarted while healthy; use WatchdogSec=10s or more")
        }
        let (capture, namespaces) = try await services.start()
        var loop = ControlLoop(services: services, capture: capture, namespaces: namespaces)
        await loop.run(events)
        await services.drain(capture: &loop.capture, namespaces: &loop.namespaces, config: loop.config)
    }
}

public enum AgentError: Error, CustomStringConvertible {
    case notRoot
    case accessLog(path: String, reason: String)
    case adminSocket(path: String, reason: String)
    case shuttingDown

    public var description: String {
        switch self {
        case .notRoot:
            return "mesh-agent must run as root (it programs nftables, reads socket cgroups over sock_diag and marks its sockets); run it with sudo or as the systemd service"
        case .accessLog(let path, let reason):
            return "cannot open the access log \(path): \(reason); check the directory exists and is writable, or set accessLog: \"-\" for stdout"
        case .adminSocket(let path, let reason):
            return "cannot serve the admin API on \(path): \(reason)"
        case .shuttingDown:
            return "the agent is shutting down; the request was not carried out"
        }
    }
}
