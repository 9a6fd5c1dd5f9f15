import COpenSSL
import Glibc

/// Verifies a peer's X509-SVID chain (DESIGN.md §4, SPIFFE X509-SVID §5):
///
/// 1. OpenSSL path validation from the leaf through the intermediates the peer sent
///    to a root of the bundle, at the clock's time, in X.509 strict mode, for TLS
///    client/server use: signatures, validity windows, CA flags and path lengths,
///    key usage of the issuers, and name constraints (a node intermediate's
///    `permitted;URI:<td>` confines it to its trust domain).
/// 2. The leaf itself: not a CA; keyUsage, when present, includes digitalSignature
///    and not keyCertSign/cRLSign; extendedKeyUsage, when present, includes both
///    serverAuth and clientAuth.
/// 3. Exactly one URI SAN, a strictly valid SPIFFE ID with a path, in an accepted
///    trust domain, and equal to `expectedIdentity` when one is set.
///
/// Build one per trust-bundle change and share it: the OpenSSL trust store lives in
/// the bundle, and each call only makes a short-lived X509_STORE_CTX.
public struct SpiffeVerifier: PeerCertificateVerifier {
    /// Longest chain a peer may send (leaf included); more is refused unread.
    public static let maximumChainLength = 8

    public let bundle: TrustBundle
    public let acceptedTrustDomains: Set<String>
    public let expectedIdentity: SpiffeID?
    private let clock: @Sendable () -> Int64

    /// Seconds since the epoch, from the system clock.
    @Sendable public static func systemClock() -> Int64 { Int64(time(nil)) }

    public init(
        bundle: TrustBundle, acceptedTrustDomains: Set<String>, expectedIdentity: SpiffeID? = nil,
        clock: @escaping @Sendable () -> Int64 = SpiffeVerifier.systemClock
    ) {
        self.bundle = bundle
        self.acceptedTrustDomains = acceptedTrustDomains
        self.expectedIdentity = expectedIdentity
        self.clock = clock
    }

    /// The same verifier (same store, trust domains and clock), expecting `identity`.
    public func expecting(_ identity: SpiffeID?) -> SpiffeVerifier {
        SpiffeVerifier(bundle: bundle, acceptedTrustDomains: acceptedTrustDomains, expectedIdentity: identity, clock: clock)
    }

    public func verify(peerChain: [Certificate]) -> Result<SpiffeID, PeerVerificationError> {
        guard let leaf = peerChain.first else {
            return .failure(PeerVerificationError(.noCertificate, "the peer sent no certificate"))
        }
        guard peerChain.count <= Self.maximumChainLength else {
            return .failure(PeerVerificationError(.invalidChain, "the peer sent \(peerChain.count) certificates; at most \(Self.maximumChainLength) are accepted"))
        }
        if let failure = verifyPath(leaf: leaf, intermediates: peerChain.dropFirst()) {
            return .failure(failure)
        }
        return verifyLeaf(leaf)
    }

    // MARK: - Path validation

    private func verifyPath(leaf: Certificate, intermediates: ArraySlice<Certificate>) -> PeerVerificationError? {
        // Leave the thread's OpenSSL error queue exactly as we found it: this may run
        // inside a handshake whose own errors must survive.
        ERR_set_mark()
        defer { ERR_pop_to_mark() }

        guard let context = X509_STORE_CTX_new() else {
            return PeerVerificationError(.invalidChain, "out of memory setting up chain verification")
        }
        defer { X509_STORE_CTX_free(context) }
        guard let untrusted = cssl_sk_X509_new_null() else {
            return PeerVerificationError(.invalidChain, "out of memory setting up chain verification")
        }
        // The stack borrows the certificates; the array keeps them alive.
        defer { cssl_sk_X509_free(untrusted) }
        for certificate in intermediates {
            guard cssl_sk_X509_push(untrusted, certificate.pointer) > 0 else {
                return PeerVerificationError(.invalidChain, "out of memory setting up chain verification")
            }
        }
        return withExtendedLifetime(intermediates) { () -> PeerVerificationError? in
            guard X509_STORE_CTX_init(context, bundle.store.pointer, leaf.pointer, untrusted) == 1 else {
                return PeerVerificationError(.invalidChain, "could not set up chain verification")
            }
            _ = X509_STORE_CTX_set_purpose(context, X509_PURPOSE_SSL_CLIENT)
            X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(context), time_t(clock()))
            if X509_verify_cert(context) == 1 { return nil }

            let code = X509_STORE_CTX_get_error(context)
            let depth = Int(X509_STORE_CTX_get_error_depth(context))
            var reason = Self.reason(forVerifyError: code, depth: depth)
            if depth == 0, reason == .badKeyUsage || reason == .invalidChain, leaf.isCA {
                // A CA certificate offered as a leaf trips OpenSSL's purpose or strict
                // checks before ours; name the real problem.
                reason = .leafIsCA
            }
            let message = X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)"
            var culprit: Certificate?
            if let current = X509_STORE_CTX_get_current_cert(context) {
                culprit = Certificate(borrowing: current)
            } else if depth == 0 {
                culprit = leaf
            }
            let which = depth == 0 ? "the leaf" : "the certificate at depth \(depth)"
            var detail = "\(message) (X509_V_ERR \(code)) at \(which)"
            if let culprit { detail += " (\(culprit.identification))" }
            if culprit != leaf { detail += "; leaf: \(leaf.identification)" }
            return PeerVerificationError(reason, detail)
        }
    }

    /// Maps OpenSSL's verification error to our fixed vocabulary.
    static func reason(forVerifyError code: Int32, depth: Int) -> PeerVerificationError.Reason {
        switch code {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
             X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
             X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, X509_V_ERR_CERT_UNTRUSTED, X509_V_ERR_CERT_REJECTED:
            return .unknownIssuer
        case X509_V_ERR_CERT_HAS_EXPIRED:
            return .expired
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return .notYetValid
        case X509_V_ERR_PERMITTED_VIOLATION, X509_V_ERR_EXCLUDED_VIOLATION, X509_V_ERR_SUBTREE_MINMAX,
             X509_V_ERR_UNSUPPORTED_CONSTRAINT_TYPE, X509_V_ERR_UNSUPPORTED_CONSTRAINT_SYNTAX,
             X509_V_ERR_UNSUPPORTED_NAME_SYNTAX:
            return .nameConstraintViolation
        case X509_V_ERR_INVALID_PURPOSE, X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE,
             X509_V_ERR_KU_KEY_CERT_SIGN_INVALID_FOR_NON_CA:
            // About the leaf's own usage; the same codes higher up mean a broken CA.
            return depth == 0 ? .badKeyUsage : .invalidChain
        default:
            // Bad signatures, invalid CAs, path length, strict-mode violations,
            // malformed times, chains too long, loops, …
            return .invalidChain
        }
    }

    // MARK: - Leaf checks

    private func verifyLeaf(_ leaf: Certificate) -> Result<SpiffeID, PeerVerificationError> {
        // Only worked out on failure: accepting a peer should cost no printing.
        var who: String { leaf.identification }
        if leaf.isCA {
            return .failure(PeerVerificationError(.leafIsCA, "the leaf is a CA certificate (basicConstraints CA:true) (\(who))"))
        }
        if let usage = leaf.keyUsage {
            if !usage.contains(.digitalSignature) {
                return .failure(PeerVerificationError(.badKeyUsage, "the leaf's key usage (\(usage)) lacks digitalSignature (\(who))"))
            }
            if !usage.isDisjoint(with: [.keyCertSign, .cRLSign]) {
                return .failure(PeerVerificationError(.badKeyUsage, "the leaf's key usage (\(usage)) includes keyCertSign or cRLSign (\(who))"))
            }
        }
        if let extended = leaf.extendedKeyUsage, !extended.contains(.any),
           !extended.isSuperset(of: [.serverAuth, .clientAuth]) {
            return .failure(PeerVerificationError(.badKeyUsage, "the leaf's extended key usage (\(extended)) lacks serverAuth or clientAuth (\(who))"))
        }

        let uris = leaf.uriSANs
        guard !uris.isEmpty else {
            return .failure(PeerVerificationError(.missingURISAN, "the leaf has no URI SAN (\(who))"))
        }
        guard uris.count == 1 else {
            return .failure(PeerVerificationError(.multipleURISANs, "the leaf has \(uris.count) URI SANs; an SVID has exactly one (\(who))"))
        }
        let identity: SpiffeID
        do {
            identity = try SpiffeID(uris[0])
        } catch {
            return .failure(PeerVerificationError(.notSpiffeID, "\(error) (\(who))"))
        }
        guard !identity.path.isEmpty else {
            return .failure(PeerVerificationError(.notSpiffeID, "\(identity) has no path; a workload SVID's ID must have one (\(who))"))
        }
        guard acceptedTrustDomains.contains(identity.trustDomain) else {
            let accepted = acceptedTrustDomains.sorted().joined(separator: ", ")
            return .failure(PeerVerificationError(.trustDomainNotAccepted, "trust domain \(identity.trustDomain) of \(identity) is not accepted (accepted: \(accepted.isEmpty ? "none" : accepted)) (\(who))"))
        }
        if let expectedIdentity, identity != expectedIdentity {
            return .failure(PeerVerificationError(.unexpectedIdentity, "the peer is \(identity), expected \(expectedIdentity) (\(who))"))
        }
        return .success(identity)
    }
}
