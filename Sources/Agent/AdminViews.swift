import AdminAPI
import Identity
import NIOConcurrencyHelpers
import Netfilter
import Policy
import Proxy
import TLS
import Workloads

/// The views are built here rather than in AdminAPI because building them
/// reads the daemon's parts; agentctl only decodes them.
extension AdminViews {
    public static func certificates(_ manager: SVIDManager) -> [CertificateView] {
        manager.statuses().map { status in
            CertificateView(
                identity: status.identity.description,
                serial: status.serial,
                notBefore: status.notBefore.map(Certificate.formatTime),
                notAfter: status.notAfter.map(Certificate.formatTime),
                renewAt: status.renewAt.map(Certificate.formatTime),
                state: status.state.rawValue,
                lastError: status.lastError,
                chainPEM: manager.certificatePEM(for: status.identity)
            )
        }
    }

    public static func connections(_ tracker: ConnectionTracker) -> [ConnectionView] {
        tracker.snapshot().map { entry in
            ConnectionView(
                direction: entry.direction.rawValue,
                sourceAddress: entry.sourceAddress.map(\.authority),
                sourceWorkload: entry.sourceWorkload,
                sourceIdentity: entry.sourceIdentity,
                destinationAddress: entry.destinationAddress.map(\.authority),
                destinationWorkload: entry.destinationWorkload,
                destinationIdentity: entry.destinationIdentity,
                tls: entry.tls.rawValue,
                reason: entry.reason,
                bytesSent: entry.bytesSent,
                bytesReceived: entry.bytesReceived,
                durationMilliseconds: (entry.durationMilliseconds * 1000).rounded() / 1000
            )
        }
    }

    static func workloads(_ registry: WorkloadRegistry, modes: PeerAuthenticationSet, namespaces: [String: NamespaceCaptures.Status]) -> [WorkloadView] {
        registry.members.map { member in
            let workload = member.workload
            let captured = namespaces[workload.qualifiedName]
            let state: String
            if member.spec.network.isHost {
                state = member.isPresent ? "captured" : "waiting: its cgroup does not exist yet"
            } else {
                state = captured?.state ?? (member.isPresent ? "waiting: not captured yet" : "waiting: its cgroup does not exist yet")
            }
            return WorkloadView(
                name: workload.name, namespace: workload.namespace, serviceAccount: workload.serviceAccount,
                identity: workload.identity.description, cgroup: member.cgroup.description,
                cgroupID: member.cgroupID?.rawValue, present: member.cgroupID != nil, ports: workload.ports,
                mtls: Dictionary(uniqueKeysWithValues: workload.ports.map {
                    (String($0), modes.mode(namespace: workload.namespace, labels: workload.labels, port: $0).rawValue)
                }),
                labels: workload.labels, source: member.source.name, captureMode: member.spec.network.isHost ? "host" : "netns",
                netns: captured?.netns, addresses: captured?.addresses, state: state,
                since: captured?.since.map { Certificate.formatTime(Int64($0.timeIntervalSince1970)) })
        }
    }

    /// Reads the table back from the kernel (a few netlink round trips).
    public static func rules(desired: NFT.Table, netfilter: NetfilterClient) throws -> RulesView {
        let live = try netfilter.liveTable(named: desired.name, family: desired.family)
        let drift: Drift = live.map { Drift.between(desired: desired, live: $0) } ?? .missing
        let lines: [String]
        switch drift {
        case .inSync: lines = []
        case .missing: lines = ["table \(desired.family) \(desired.name) is missing from the kernel"]
        case .differs(let differences): lines = differences
        }
        return RulesView(
            table: "\(desired.family) \(desired.name)", inSync: drift == .inSync, drift: lines,
            live: live?.description, desired: desired.description)
    }
}

/// What the control loop knows and the admin API shows: written by the loop,
/// read by admin requests on event loops.
final class AgentState: Sendable {
    struct Snapshot {
        var ready = false
        var rules = "not installed"
        var policy: PolicyStatus
        /// What the table the agent wants is built from; the table itself is
        /// built only when someone asks (`agentctl rules`), not on every tick.
        var captureParameters: CaptureParameters?
        /// Workloads in namespaces of their own, by qualified name.
        var namespaces: [String: NamespaceCaptures.Status] = [:]

        /// The mTLS modes in force: those of the policies in force.
        var peerAuthentication: PeerAuthenticationSet { policy.policies.peerAuthentication }
    }

    /// Publishes what the control loop's capture holds now.
    func publish(_ capture: Capture) {
        update {
            $0.rules = capture.rulesStatus
            $0.captureParameters = capture.parameters
        }
    }

    /// Publishes the namespace workloads' capture states.
    func publish(_ namespaces: NamespaceCaptures) {
        let statuses = namespaces.statuses
        update { $0.namespaces = statuses }
    }

    let started = ContinuousClock.now
    private let snapshot: NIOLockedValueBox<Snapshot>

    init(policy: PolicyStatus) {
        snapshot = NIOLockedValueBox(Snapshot(policy: policy))
    }

    var current: Snapshot { snapshot.withLockedValue { $0 } }

    func update(_ change: (inout Snapshot) -> Void) {
        snapshot.withLockedValue { change(&$0) }
    }
}

/// The agent's version, as `agentctl status` reports it.
public enum MeshAgentVersion {
    public static let current = "0.4.0"
}
