import Foundation
import Identity
import NIOConcurrencyHelpers
import Netfilter
import Policy
import Proxy
import TLS
import Workloads

/// What the admin API returns, as Codable values shared with `agentctl`.
/// Field names are snake_case and match the access log where they mean the same.
public enum AdminViews {
    public struct CertificateView: Codable, Equatable, Sendable {
        public var identity: String
        public var serial: String?
        public var notBefore: String?
        public var notAfter: String?
        public var renewAt: String?
        public var state: String
        public var lastError: String?
        /// The certificate chain (leaf first) as PEM; never a private key.
        public var chainPEM: String?

        enum CodingKeys: String, CodingKey {
            case identity, serial, state
            case notBefore = "not_before"
            case notAfter = "not_after"
            case renewAt = "renew_at"
            case lastError = "last_error"
            case chainPEM = "chain_pem"
        }
    }

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

    /// One connection being proxied; fields as in the access log.
    public struct ConnectionView: Codable, Equatable, Sendable {
        public var direction: String
        public var sourceAddress: String?
        public var sourceWorkload: String?
        public var sourceIdentity: String?
        public var destinationAddress: String?
        public var destinationWorkload: String?
        public var destinationIdentity: String?
        public var tls: String
        public var reason: String
        public var bytesSent: UInt64
        public var bytesReceived: UInt64
        public var durationMilliseconds: Double

        enum CodingKeys: String, CodingKey {
            case direction, tls, reason
            case sourceAddress = "src_addr"
            case sourceWorkload = "src_workload"
            case sourceIdentity = "src_identity"
            case destinationAddress = "dst_addr"
            case destinationWorkload = "dst_workload"
            case destinationIdentity = "dst_identity"
            case bytesSent = "bytes_sent"
            case bytesReceived = "bytes_received"
            case durationMilliseconds = "duration_ms"
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

    public struct WorkloadView: Codable, Equatable, Sendable {
        public var name: String
        public var namespace: String
        public var serviceAccount: String
        public var identity: String
        public var cgroup: String
        public var cgroupID: UInt64?
        public var present: Bool
        public var ports: [UInt16]
        /// The inbound mTLS mode of each port ("8080": "STRICT").
        public var mtls: [String: String]
        public var labels: [String: String]

        enum CodingKeys: String, CodingKey {
            case name, namespace, identity, cgroup, present, ports, mtls, labels
            case serviceAccount = "service_account"
            case cgroupID = "cgroup_id"
        }
    }

    public static func workloads(_ registry: WorkloadRegistry, modes: PeerAuthenticationSet) -> [WorkloadView] {
        registry.members.map { member in
            let workload = member.workload
            return WorkloadView(
                name: workload.name, namespace: workload.namespace, serviceAccount: workload.serviceAccount,
                identity: workload.identity.description, cgroup: member.cgroup.description,
                cgroupID: member.cgroupID?.rawValue, present: member.cgroupID != nil, ports: workload.ports,
                mtls: Dictionary(uniqueKeysWithValues: workload.ports.map {
                    (String($0), modes.mode(namespace: workload.namespace, labels: workload.labels, port: $0).rawValue)
                }),
                labels: workload.labels)
        }
    }

    public struct StatusView: Codable, Equatable, Sendable {
        public var version: String
        public var uptimeSeconds: Int
        public var node: String
        public var trustDomain: String
        public var captureMode: String
        public var table: String
        /// "in sync", "installed" (not checked yet), "missing" or "differs: …".
        public var rules: String
        public var ready: Bool
        public var workloads: Int
        public var workloadsPresent: Int
        public var connections: Int
        public var peerAuthentications: Int
        public var authorizationPolicies: Int
        public var policyGeneration: Int
        public var defaultMTLSMode: String
        public var certificates: Int
        public var earliestCertificateExpiry: String?

        enum CodingKeys: String, CodingKey {
            case version, node, table, rules, ready, workloads, connections, certificates
            case uptimeSeconds = "uptime_seconds"
            case trustDomain = "trust_domain"
            case captureMode = "capture_mode"
            case workloadsPresent = "workloads_present"
            case peerAuthentications = "peer_authentications"
            case authorizationPolicies = "authorization_policies"
            case policyGeneration = "policy_generation"
            case defaultMTLSMode = "default_mtls_mode"
            case earliestCertificateExpiry = "earliest_certificate_expiry"
        }
    }

    public struct RulesView: Codable, Equatable, Sendable {
        public var table: String
        public var inSync: Bool
        /// One line per difference between the live table and the desired one.
        public var drift: [String]
        /// The table as the kernel holds it now, in nft syntax; nil when missing.
        public var live: String?
        public var desired: String

        enum CodingKeys: String, CodingKey {
            case table, drift, live, desired
            case inSync = "in_sync"
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

    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(value)
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
