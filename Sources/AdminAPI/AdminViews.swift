import Foundation

/// What the admin API returns, as Codable values shared with `agentctl`.
/// Field names are snake_case and match the access log where they mean the same.
/// The agent builds them from its parts (in `Agent`); here they are only data,
/// so that `agentctl` decodes them without linking the daemon.
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

        public init(
            identity: String, serial: String?, notBefore: String?, notAfter: String?, renewAt: String?, state: String, lastError: String?,
            chainPEM: String?
        ) {
            self.identity = identity
            self.serial = serial
            self.notBefore = notBefore
            self.notAfter = notAfter
            self.renewAt = renewAt
            self.state = state
            self.lastError = lastError
            self.chainPEM = chainPEM
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

        public init(
            direction: String, sourceAddress: String?, sourceWorkload: String?, sourceIdentity: String?, destinationAddress: String?,
            destinationWorkload: String?, destinationIdentity: String?, tls: String, reason: String, bytesSent: UInt64, bytesReceived: UInt64,
            durationMilliseconds: Double
        ) {
            self.direction = direction
            self.sourceAddress = sourceAddress
            self.sourceWorkload = sourceWorkload
            self.sourceIdentity = sourceIdentity
            self.destinationAddress = destinationAddress
            self.destinationWorkload = destinationWorkload
            self.destinationIdentity = destinationIdentity
            self.tls = tls
            self.reason = reason
            self.bytesSent = bytesSent
            self.bytesReceived = bytesReceived
            self.durationMilliseconds = durationMilliseconds
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
        /// Which source declared it (`config`, `podman`, `kubernetes`, `cni`).
        public var source: String?
        /// `host`, or `netns` for a workload captured in its own network namespace.
        public var captureMode: String?
        /// For `netns`: the namespace, its addresses, whether it is captured and since when.
        public var netns: String?
        public var addresses: [String]?
        public var state: String?
        public var since: String?

        enum CodingKeys: String, CodingKey {
            case name, namespace, identity, cgroup, present, ports, mtls, labels, source, netns, addresses, state, since
            case serviceAccount = "service_account"
            case cgroupID = "cgroup_id"
            case captureMode = "capture_mode"
        }

        public init(
            name: String, namespace: String, serviceAccount: String, identity: String, cgroup: String, cgroupID: UInt64?, present: Bool,
            ports: [UInt16], mtls: [String: String], labels: [String: String], source: String? = nil, captureMode: String? = nil,
            netns: String? = nil, addresses: [String]? = nil, state: String? = nil, since: String? = nil
        ) {
            self.source = source
            self.captureMode = captureMode
            self.netns = netns
            self.addresses = addresses
            self.state = state
            self.since = since
            self.name = name
            self.namespace = namespace
            self.serviceAccount = serviceAccount
            self.identity = identity
            self.cgroup = cgroup
            self.cgroupID = cgroupID
            self.present = present
            self.ports = ports
            self.mtls = mtls
            self.labels = labels
        }
    }

    /// One workload source besides the config file, as `agentctl status` shows it.
    public struct SourceView: Codable, Equatable, Sendable {
        public var name: String
        /// The socket or API server it reads.
        public var endpoint: String
        /// Following its source now. While false, the workloads it reported last stay as they were.
        public var connected: Bool
        public var workloads: Int
        public var enrolled: Int
        /// Enrolled, but not made a workload (and why, per pod) or refused by the registry.
        public var failed: Int
        public var restarts: Int
        public var lastError: String?

        enum CodingKeys: String, CodingKey {
            case name, endpoint, connected, workloads, enrolled, failed, restarts
            case lastError = "last_error"
        }

        public init(
            name: String, endpoint: String, connected: Bool, workloads: Int, enrolled: Int, failed: Int, restarts: Int, lastError: String?
        ) {
            self.name = name
            self.endpoint = endpoint
            self.connected = connected
            self.workloads = workloads
            self.enrolled = enrolled
            self.failed = failed
            self.restarts = restarts
            self.lastError = lastError
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
        /// The workload sources besides the config file.
        public var sources: [SourceView]?

        enum CodingKeys: String, CodingKey {
            case version, node, table, rules, ready, workloads, connections, certificates, sources
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

        public init(
            version: String, uptimeSeconds: Int, node: String, trustDomain: String, captureMode: String, table: String, rules: String,
            ready: Bool, workloads: Int, workloadsPresent: Int, connections: Int, peerAuthentications: Int, authorizationPolicies: Int,
            policyGeneration: Int, defaultMTLSMode: String, certificates: Int, earliestCertificateExpiry: String?, sources: [SourceView]? = nil
        ) {
            self.sources = sources
            self.version = version
            self.uptimeSeconds = uptimeSeconds
            self.node = node
            self.trustDomain = trustDomain
            self.captureMode = captureMode
            self.table = table
            self.rules = rules
            self.ready = ready
            self.workloads = workloads
            self.workloadsPresent = workloadsPresent
            self.connections = connections
            self.peerAuthentications = peerAuthentications
            self.authorizationPolicies = authorizationPolicies
            self.policyGeneration = policyGeneration
            self.defaultMTLSMode = defaultMTLSMode
            self.certificates = certificates
            self.earliestCertificateExpiry = earliestCertificateExpiry
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

        public init(table: String, inSync: Bool, drift: [String], live: String?, desired: String) {
            self.table = table
            self.inSync = inSync
            self.drift = drift
            self.live = live
            self.desired = desired
        }
    }

    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }
}
