import Config
import Policy
import Logging
import NIOCore

/// The agent's control loop: one event at a time, in one task, so the state it
/// changes (the capture table, the config in force) needs no lock. The work
/// of a tick is in `PeriodicJobs.swift`, that of a reload in `Reload.swift`.
struct ControlLoop {
    /// How often cgroups are looked for and the live table checked against the desired one.
    static let tickInterval: Duration = .seconds(1)
    /// The live table is compared with the desired one every this many ticks:
    /// a deleted table, a flushed chain or a removed set element lets
    /// workload traffic escape capture, so it is repaired within seconds. The
    /// comparison is a few netlink round trips.
    static let driftCheckEvery = 3
    /// Pod sockets the agent before this one handed over wait this many ticks
    /// for their pod to be captured again: the sources (Kubernetes, Podman)
    /// list pods only after the agent is ready.
    static let podSocketsClaimTicks = 30

    let services: AgentServices
    /// The config in force: the one the agent started with, as reloads changed it.
    var config: AgentConfig
    var capture: Capture
    /// Workloads in network namespaces of their own, each captured in there.
    var namespaces: NamespaceCaptures
    /// The pods the CNI plugin enrolled.
    var cni: CNIEnrollments
    var ticks = 0
    /// The policy files and the JWKS files they name, as last read: a change
    /// to either reloads the policies.
    var policyFingerprint: [String] = []
    var agentMetrics = AgentMetrics()
    var logger: Logger { services.logger }

    init(services: AgentServices, capture: Capture, namespaces: NamespaceCaptures) {
        self.services = services
        self.config = services.config
        self.capture = capture
        self.namespaces = namespaces
        self.cni = services.cniEnrollments
        policyFingerprint = currentPolicyFingerprint()
        updateMetrics()
    }

    /// Handles events until SIGTERM or SIGINT. A reload still waiting when the
    /// loop ends is answered with an error, never left hanging.
    mutating func run(_ events: ControlEvents) async {
        for await event in events.stream {
            switch event {
            case .tick:
                await tick()
            case .reload(let promise):
                let outcome = reload()
                promise?.succeed(outcome)
            case .reopenLogs:
                reopenLogs()
            case .workloadsChanged:
                await syncWorkloads()
            case .cni(let request, let promise):
                promise.completeWith(await enroll(request))
            case .handoverRequested(let promise):
                await services.pauseForHandover()
                await namespaces.pauseAccepting()
                promise.succeed()
            case .handoverAbandoned:
                await namespaces.resumeAccepting()
                await services.resumeAfterAbandonedHandover()
            case .superseded(let pid):
                await namespaces.handOver()
                await services.handedOver(capture: &capture, to: pid)
                services.state.publish(capture)
            case .terminate(let signal):
                logger.info("received \(signal): draining")
                services.notify(["STOPPING=1", "STATUS=draining \(services.connections.count) connection(s)"])
                services.state.update { $0.ready = false }
                events.finish()
                for await late in events.stream {
                    switch late {
                    case .reload(let promise?): promise.fail(AgentError.shuttingDown)
                    case .handoverRequested(let promise): promise.fail(AgentError.shuttingDown)
                    case .cni(_, let promise): promise.fail(CNIEnrollmentError.shuttingDown)
                    default: break
                    }
                }
                return
            }
        }
    }

    /// SIGUSR1, after logrotate moved the access log away.
    private func reopenLogs() {
        do {
            try services.accessLog.reopen()
            logger.info("reopened the access log \(services.accessLog.path) (SIGUSR1)")
        } catch {
            logger.error("\(error); access log lines keep going to the file that was open")
        }
    }

    func currentPolicyFingerprint() -> [String] {
        PolicyLoader.fingerprint(directory: config.policyDir, extraFiles: services.state.current.policy.policies.requestAuthentication.jwksFiles)
    }

    mutating func updateMetrics() {
        agentMetrics.update(connections: services.connections.count, registry: services.registry, certificates: services.svids.statuses())
    }
}
