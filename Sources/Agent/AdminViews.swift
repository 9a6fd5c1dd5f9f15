import Foundation
import Identity
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

    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }
}
