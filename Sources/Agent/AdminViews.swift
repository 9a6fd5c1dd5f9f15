import Foundation
import Identity
import Proxy
import TLS

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
                sourceAddress: entry.sourceAddress.map(AccessLogEntry.format),
                sourceWorkload: entry.sourceWorkload,
                sourceIdentity: entry.sourceIdentity,
                destinationAddress: entry.destinationAddress.map(AccessLogEntry.format),
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

    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }
}
