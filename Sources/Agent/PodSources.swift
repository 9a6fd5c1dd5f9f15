import AdminAPI
import Config
import EngineAPI
import Foundation
import Kubernetes
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Workloads

/// The workload sources besides the config file (`workloadSources:`): each
/// reports its whole current set of pods, and the enrolled ones become that
/// source's workloads in the registry, captured in their own namespaces.
///
/// A source that loses its engine or API server reports nothing until it is
/// back, so the workloads it gave last stay as they are (and `agentctl
/// status` says the source is not connected).
final class PodSources: Sendable {
    /// One source's reporting, as the agent saw it.
    private struct Tally: Sendable {
        var workloads = 0
        var enrolled = 0
        var failed = 0
        /// Why each pod that is enrolled is not a workload, by pod; logged once.
        var unusable: [String: String] = [:]
    }

    private let kubernetes: KubernetesSource?
    private let engines: [EngineWorkloadSource]
    private let trustDomain: String
    private let registry: WorkloadRegistry
    private let changed: @Sendable () -> Void
    private let logger: Logger
    private let tasks = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let tallies = NIOLockedValueBox<[String: Tally]>([:])

    /// Makes the configured sources; nothing runs until `start`.
    /// - Parameter changed: called after a source changed the registry, so
    ///   that the control loop captures new workloads at once.
    init(config: AgentConfig, group: EventLoopGroup, registry: WorkloadRegistry, logger: Logger, changed: @escaping @Sendable () -> Void) throws {
        let sources = config.workloadSources
        if let settings = sources.kubernetes {
            let configuration = KubernetesSourceConfiguration(
                node: settings.node, apiServer: settings.apiServer.flatMap(URL.init(string:)), tokenFile: settings.tokenFile,
                caFile: settings.caFile)
            kubernetes = try KubernetesSource(configuration: configuration, group: group, logger: logger)
        } else {
            kubernetes = nil
        }
        engines = [(EngineFlavor.podman, sources.podman), (.docker, sources.docker)].compactMap { flavor, settings in
            settings.map { EngineWorkloadSource(flavor: flavor, socketPath: $0.socket, group: group, logger: logger) }
        }
        self.trustDomain = config.trustDomain
        self.registry = registry
        self.changed = changed
        self.logger = logger
    }

    func start() {
        var started: [Task<Void, Never>] = []
        if let kubernetes {
            started.append(Task { await kubernetes.run() })
            started.append(Task {
                for await pods in kubernetes.updates {
                    self.apply(pods, from: WorkloadSource("kubernetes"))
                }
            })
        }
        for engine in engines {
            started.append(Task { await engine.run { pods in self.apply(pods, from: engine.flavor.source) } })
        }
        tasks.withLockedValue { $0 += started }
    }

    func stop() async {
        let running = tasks.withLockedValue { tasks in defer { tasks = [] }; return tasks }
        for task in running { task.cancel() }
        for task in running { await task.value }
    }

    /// `source` now has exactly these pods: its enrolled ones become its
    /// workloads; those that cannot be (no cgroup yet, no valid identity) are
    /// logged once with the reason and counted.
    func apply(_ pods: [DiscoveredPod], from source: WorkloadSource) {
        var specs: [WorkloadSpec] = []
        var tally = Tally(workloads: pods.count)
        let before = tallies.withLockedValue { $0[source.name]?.unusable ?? [:] }
        for pod in pods where pod.enrollment.isEnrolled {
            tally.enrolled += 1
            do {
                specs.append(try pod.spec(trustDomain: trustDomain))
            } catch {
                let key = "\(pod.namespace)/\(pod.name)"
                tally.unusable[key] = error.description
                if before[key] != error.description {
                    logger.warning("\(source) pod \(key) is enrolled but not captured: \(error)")
                }
            }
        }
        let rejections = registry.update(specs, from: source)
        tally.failed = tally.unusable.count + rejections.count
        tallies.withLockedValue { $0[source.name] = tally }
        Self.gauges(source.name).enrolled.record(tally.enrolled - tally.failed)
        Self.gauges(source.name).failed.record(tally.failed)
        logger.info("\(source): \(pods.count) pod(s), \(specs.count - rejections.count) captured as workloads")
        changed()
    }

    /// What the Kubernetes source last said about a pod of this node.
    func kubernetesPod(namespace: String, name: String) -> DiscoveredPod? {
        kubernetes?.currentPods?.first { $0.namespace == namespace && $0.name == name }
    }

    /// Why an enrolled pod is not a workload, if it is not.
    func unusableReason(namespace: String, name: String) -> String? {
        tallies.withLockedValue { $0.values.lazy.compactMap { $0.unusable["\(namespace)/\(name)"] }.first }
    }

    /// What `agentctl status` shows of each source.
    var views: [AdminViews.SourceView] {
        let tallies = self.tallies.withLockedValue { $0 }
        var views: [AdminViews.SourceView] = []
        if let kubernetes {
            let status = kubernetes.status
            let tally = tallies["kubernetes"] ?? Tally()
            Self.gauges("kubernetes").restarts.record(status.watchRestarts + status.relists)
            views.append(
                AdminViews.SourceView(
                    name: "kubernetes", endpoint: "\(status.apiServer) (node \(status.node))", connected: status.connected,
                    workloads: status.pods, enrolled: status.enrolledPods, failed: tally.failed, restarts: status.watchRestarts + status.relists,
                    lastError: status.lastError))
        }
        for engine in engines {
            let status = engine.status
            let tally = tallies[engine.flavor.source.name] ?? Tally()
            Self.gauges(engine.flavor.source.name).restarts.record(status.reconnects)
            views.append(
                AdminViews.SourceView(
                    name: engine.flavor.source.name, endpoint: status.socketPath, connected: status.connected, workloads: status.workloads,
                    enrolled: status.enrolled, failed: tally.failed, restarts: status.reconnects, lastError: status.lastError))
        }
        return views
    }

    private struct Gauges {
        let enrolled: Gauge
        let failed: Gauge
        let restarts: Gauge
    }

    private static func gauges(_ source: String) -> Gauges {
        Gauges(
            enrolled: Gauge(label: "mesh_agent_source_workloads", dimensions: [("source", source), ("state", "enrolled")]),
            failed: Gauge(label: "mesh_agent_source_workloads", dimensions: [("source", source), ("state", "failed")]),
            restarts: Gauge(label: "mesh_agent_source_restarts", dimensions: [("source", source)]))
    }
}
