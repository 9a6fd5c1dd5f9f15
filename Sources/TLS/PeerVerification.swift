/// Decides whether a peer's certificate chain identifies a workload we accept.
/// The TLS handshake calls it with what the peer sent; the handshake fails unless
/// it answers with a SPIFFE ID.
public protocol PeerCertificateVerifier: Sendable {
    /// `peerChain[0]` is the peer's leaf, the rest the intermediates it sent.
    func verify(peerChain: [Certificate]) -> Result<SpiffeID, PeerVerificationError>
}

/// Why a peer was refused. `reason` is a fixed vocabulary (for counters and
/// tests); `detail` says what exactly was wrong with which certificate.
public struct PeerVerificationError: Error, Equatable, CustomStringConvertible {
    public enum Reason: String, Sendable, CaseIterable {
        case noCertificate = "no_certificate"
        case unknownIssuer = "unknown_issuer"
        case expired = "expired"
        case notYetValid = "not_yet_valid"
        case leafIsCA = "leaf_is_ca"
        case badKeyUsage = "bad_key_usage"
        case nameConstraintViolation = "name_constraint_violation"
        case missingURISAN = "missing_uri_san"
        case multipleURISANs = "multiple_uri_sans"
        case notSpiffeID = "not_spiffe_id"
        case trustDomainNotAccepted = "trust_domain_not_accepted"
        case unexpectedIdentity = "unexpected_identity"
        case invalidChain = "invalid_chain"
    }

    public let reason: Reason
    public let detail: String

    public init(_ reason: Reason, _ detail: String) {
        self.reason = reason
        self.detail = detail
    }

    public var description: String { "peer certificate refused (\(reason.rawValue)): \(detail)" }
}
