import COpenSSL
import TestFixtures
import Testing
@testable import TLS

/// One test per reason a peer is refused, each through the real OpenSSL path
/// validation with certificates that are good SVIDs except for the one fault.
@Suite struct VerifierTests {
    let pki: TestPKI
    let orders: SpiffeID

    init() throws {
        pki = try TestPKI(now: 1_800_000_000)
        orders = try SpiffeID("spiffe://cluster.local/ns/shop/sa/orders")
    }

    /// Verifies `chain` and returns the refusal, recording an issue if it was accepted.
    func refusal(_ chain: [Certificate], verifier: SpiffeVerifier? = nil) throws -> PeerVerificationError? {
        let verifier = try verifier ?? pki.verifier()
        switch verifier.verify(peerChain: chain) {
        case .success(let identity):
            Issue.record("accepted as \(identity)")
            return nil
        case .failure(let error):
            #expect(!error.detail.isEmpty)
            return error
        }
    }

    @Test func acceptsAGoodChain() throws {
        let chain = try pki.goodChain()
        #expect(try pki.verifier().verify(peerChain: chain) == .success(orders))
        #expect(try pki.verifier(expecting: orders).verify(peerChain: chain) == .success(orders))
        // Unrelated extra certificates from the peer are ignored.
        let stranger = try TestPKI(trustDomain: "other.test", now: pki.now)
        #expect(try pki.verifier().verify(peerChain: chain + [stranger.intermediate, stranger.root]) == .success(orders))
        // Sending the root along is fine too.
        #expect(try pki.verifier().verify(peerChain: chain + [pki.root]) == .success(orders))
    }

    @Test func acceptsAtTheEdgesOfTheValidityWindow() throws {
        let leaf = try pki.leaf(notBefore: pki.now - 60, notAfter: pki.now + 3600)
        #expect(try pki.verifier(at: pki.now - 60).verify(peerChain: [leaf, pki.intermediate]) == .success(orders))
        #expect(try pki.verifier(at: pki.now + 3599).verify(peerChain: [leaf, pki.intermediate]) == .success(orders))
        // OpenSSL counts notAfter itself as expired.
        #expect(try pki.verifier(at: pki.now + 3600).verify(peerChain: [leaf, pki.intermediate]).failureReason == .expired)
        #expect(try pki.verifier(at: pki.now - 61).verify(peerChain: [leaf, pki.intermediate]).failureReason == .notYetValid)
    }

    @Test func emptyChainIsNoCertificate() throws {
        let error = try refusal([])
        #expect(error?.reason == .noCertificate)
    }

    @Test func unknownRoot() throws {
        let foreign = try TestPKI(now: pki.now)  // same trust domain, different root
        let error = try refusal(try foreign.goodChain())
        #expect(error?.reason == .unknownIssuer)
        #expect(error?.detail.contains("spiffe://cluster.local/ns/shop/sa/orders") == true)
    }

    @Test func missingIntermediate() throws {
        let leaf = try pki.goodChain()[0]
        let error = try refusal([leaf])
        #expect(error?.reason == .unknownIssuer)
        #expect(error?.detail.contains(leaf.serialNumberHex) == true)
    }

    @Test func selfSignedLeafIsUnknownIssuer() throws {
        let key = try PrivateKey.generateP256()
        let template = CertificateTemplate(
            notBefore: pki.now - 60, notAfter: pki.now + 3600,
            extensions: TestPKI.svidExtensions.filter { $0.nid != NID_authority_key_identifier },
            subjectAltNames: [.uri(orders.description)], subjectAltNameCritical: true)
        let leaf = try template.sign(subjectKey: key, issuer: nil, issuerKey: key)
        #expect(try refusal([leaf])?.reason == .unknownIssuer)
    }

    @Test func expiredLeaf() throws {
        let leaf = try pki.leaf(notBefore: pki.now - 7200, notAfter: pki.now - 1)
        let error = try refusal([leaf, pki.intermediate])
        #expect(error?.reason == .expired)
        #expect(error?.detail.contains("the leaf") == true)
        #expect(error?.detail.contains(leaf.serialNumberHex) == true)
    }

    @Test func leafExpiresByTheVerifiersClock() throws {
        let chain = try pki.goodChain(lifetime: .seconds(600))
        #expect(try pki.verifier(at: pki.now + 300).verify(peerChain: chain) == .success(orders))
        #expect(try refusal(chain, verifier: pki.verifier(at: pki.now + 601))?.reason == .expired)
    }

    @Test func expiredIntermediate() throws {
        let error = try refusal(try pki.goodChain(), verifier: pki.verifier(at: pki.intermediate.notAfter + 1))
        #expect(error?.reason == .expired)
    }

    @Test func notYetValidLeaf() throws {
        let leaf = try pki.leaf(notBefore: pki.now + 3600, notAfter: pki.now + 7200)
        let error = try refusal([leaf, pki.intermediate])
        #expect(error?.reason == .notYetValid)
    }

    @Test func leafWithoutURISAN() throws {
        // Strict X.509 wants a subject when no SAN is critical; give it one and a DNS name.
        let leaf = try pki.leaf(uris: [], dns: ["orders.shop.svc"], subject: [("CN", "orders")], sanCritical: false)
        let error = try refusal([leaf, pki.intermediate])
        #expect(error?.reason == .missingURISAN)
    }

    @Test func leafWithNoSubjectAltNameAtAll() throws {
        let template = CertificateTemplate(
            subject: [("CN", "orders")], notBefore: pki.now - 60, notAfter: pki.now + 3600, extensions: TestPKI.svidExtensions)
        let leaf = try template.sign(subjectKey: try PrivateKey.generateP256(), issuer: pki.intermediate, issuerKey: pki.intermediateKey)
        #expect(try refusal([leaf, pki.intermediate])?.reason == .missingURISAN)
    }

    @Test func leafWithTwoURISANs() throws {
        let leaf = try pki.leaf(uris: ["spiffe://cluster.local/ns/shop/sa/orders", "spiffe://cluster.local/ns/shop/sa/admin"])
        let error = try refusal([leaf, pki.intermediate])
        #expect(error?.reason == .multipleURISANs)
        #expect(error?.detail.contains("spiffe://cluster.local/ns/shop/sa/admin") == true)
    }

    @Test func leafWithANonSpiffeURI() throws {
        // The host matches the name constraint, so only the SPIFFE check can refuse it.
        let leaf = try pki.leaf(uris: ["https://cluster.local/ns/shop/sa/orders"])
        let error = try refusal([leaf, pki.intermediate])
        #expect(error?.reason == .notSpiffeID)
        #expect(error?.detail.contains("https://cluster.local/ns/shop/sa/orders") == true)
        // And from a CA without name constraints, any host.
        let unconstrained = try pki.unconstrainedIntermediate()
        let other = try pki.leaf(uris: ["https://example.com/orders"], issuer: unconstrained)
        #expect(try refusal([other, unconstrained.certificate])?.reason == .notSpiffeID)
    }

    @Test func leafWithAnInvalidSpiffeID() throws {
        for uri in ["spiffe://cluster.local/ns/../sa/x", "SPIFFE://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns//sa/b", "spiffe://cluster.local"] {
            let leaf = try pki.leaf(uris: [uri])
            #expect(try refusal([leaf, pki.intermediate])?.reason == .notSpiffeID, "\(uri)")
        }
    }

    @Test func wrongTrustDomain() throws {
        // Signed by a CA with no name constraints, so the chain itself is fine.
        let unconstrained = try pki.unconstrainedIntermediate()
        let leaf = try pki.leaf(uris: ["spiffe://other.test/ns/shop/sa/orders"], issuer: unconstrained)
        let error = try refusal([leaf, unconstrained.certificate])
        #expect(error?.reason == .trustDomainNotAccepted)
        #expect(error?.detail.contains("other.test") == true)
        // Accepting that domain lets it through.
        let accepting = try pki.verifier(accepting: ["cluster.local", "other.test"])
        #expect(accepting.verify(peerChain: [leaf, unconstrained.certificate]) == .success(try SpiffeID("spiffe://other.test/ns/shop/sa/orders")))
    }

    @Test func caLeaf() throws {
        let extensions: [(nid: Int32, value: String)] = [
            (NID_basic_constraints, "critical,CA:TRUE"),
            (NID_key_usage, "critical,digitalSignature,keyCertSign"),
            (NID_ext_key_usage, "serverAuth,clientAuth"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
        ]
        // OpenSSL's chain checks pass this one; the verifier's own leaf check refuses it.
        let named = try pki.leaf(subject: [("O", "cluster.local"), ("CN", "orders")], sanCritical: false, extensions: extensions)
        let error = try refusal([named, pki.intermediate])
        #expect(error?.reason == .leafIsCA, "\(String(describing: error))")
        #expect(error?.detail.contains("CA:true") == true)
        // With an empty subject, strict X.509 refuses it first; still reported as a CA leaf.
        let unnamed = try pki.leaf(extensions: extensions)
        let strict = try refusal([unnamed, pki.intermediate])
        #expect(strict?.reason == .leafIsCA, "\(String(describing: strict))")
    }

    @Test func intermediateSigningOutsideItsNameConstraint() throws {
        for uri in ["spiffe://evil.test/ns/shop/sa/orders", "spiffe://sub.cluster.local/ns/shop/sa/orders"] {
            let leaf = try pki.leaf(uris: [uri])
            let error = try refusal([leaf, pki.intermediate])
            #expect(error?.reason == .nameConstraintViolation, "\(uri)")
            #expect(error?.detail.contains(uri) == true)
        }
        // Even when the verifier would accept that trust domain.
        let leaf = try pki.leaf(uris: ["spiffe://evil.test/ns/shop/sa/orders"])
        let lenient = try pki.verifier(accepting: ["cluster.local", "evil.test"])
        #expect(try refusal([leaf, pki.intermediate], verifier: lenient)?.reason == .nameConstraintViolation)
    }

    @Test func unexpectedIdentity() throws {
        let chain = try pki.goodChain(path: "ns/shop/sa/payments")
        let error = try refusal(chain, verifier: pki.verifier(expecting: orders))
        #expect(error?.reason == .unexpectedIdentity)
        #expect(error?.detail.contains("spiffe://cluster.local/ns/shop/sa/payments") == true)
        #expect(error?.detail.contains("spiffe://cluster.local/ns/shop/sa/orders") == true)
        // expecting(_:) derives the same verifier with another expectation.
        let derived = try pki.verifier(expecting: orders).expecting(try SpiffeID("spiffe://cluster.local/ns/shop/sa/payments"))
        #expect(derived.verify(peerChain: chain) == .success(try SpiffeID("spiffe://cluster.local/ns/shop/sa/payments")))
    }

    @Test func leafWithoutDigitalSignature() throws {
        let leaf = try pki.leaf(extensions: [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,keyEncipherment"),
            (NID_ext_key_usage, "serverAuth,clientAuth"),
            (NID_authority_key_identifier, "keyid:always"),
        ])
        #expect(try refusal([leaf, pki.intermediate])?.reason == .badKeyUsage)
    }

    @Test func nonCALeafWithKeyCertSign() throws {
        let leaf = try pki.leaf(extensions: [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature,keyCertSign"),
            (NID_ext_key_usage, "serverAuth,clientAuth"),
            (NID_authority_key_identifier, "keyid:always"),
        ])
        #expect(try refusal([leaf, pki.intermediate])?.reason == .badKeyUsage)
    }

    @Test func leafForServersOnly() throws {
        let leaf = try pki.leaf(extensions: [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, "serverAuth"),
            (NID_authority_key_identifier, "keyid:always"),
        ])
        #expect(try refusal([leaf, pki.intermediate])?.reason == .badKeyUsage)
    }

    @Test func leafWithoutKeyUsageExtensionsIsAccepted() throws {
        // RFC 5280: absent key usage means no restriction.
        let leaf = try pki.leaf(extensions: [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_authority_key_identifier, "keyid:always"),
        ])
        #expect(try pki.verifier().verify(peerChain: [leaf, pki.intermediate]) == .success(orders))
    }

    @Test func forgedSignatureIsAnInvalidChain() throws {
        // Names the real intermediate as issuer (name and key id) but is signed by another key.
        let leaf = try pki.leaf(signingKey: try PrivateKey.generateP256())
        let error = try refusal([leaf, pki.intermediate])
        #expect(error?.reason == .invalidChain)
        #expect(error?.detail.contains("signature") == true)
    }

    @Test func strictModeRefusesAnEmptySubjectWithANonCriticalSAN() throws {
        let leaf = try pki.leaf(sanCritical: false)
        #expect(try refusal([leaf, pki.intermediate])?.reason == .invalidChain)
    }

    @Test func leafSignedByALeafIsAnInvalidChain() throws {
        let chain = try pki.goodChain()
        let leafKeyHolder = try PrivateKey.generateP256()
        let middle = try CertificateBuilder.issueSVID(
            identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/middle"), publicKeyOf: leafKeyHolder,
            issuer: pki.intermediateCA, lifetime: .seconds(3600), now: pki.now)
        // CertificateAuthority refuses a non-CA, so sign through the template directly.
        let template = CertificateTemplate(
            notBefore: pki.now - 60, notAfter: pki.now + 600,
            extensions: TestPKI.svidExtensions.filter { $0.nid != NID_authority_key_identifier },
            subjectAltNames: [.uri(orders.description)], subjectAltNameCritical: true)
        let below = try template.sign(subjectKey: try PrivateKey.generateP256(), issuer: middle, issuerKey: leafKeyHolder)
        let error = try refusal([below, middle, chain[1]])
        #expect(error?.reason == .invalidChain || error?.reason == .unknownIssuer)
    }

    @Test func bundleWithTwoRootsAcceptsLeavesUnderEither() throws {
        let other = try TestPKI(now: pki.now)
        let bundle = try TrustBundle(roots: [pki.root, other.root])
        let verifier = SpiffeVerifier(bundle: bundle, acceptedTrustDomains: ["cluster.local"], clock: { 1_800_000_000 })
        #expect(verifier.verify(peerChain: try pki.goodChain()) == .success(orders))
        #expect(verifier.verify(peerChain: try other.goodChain()) == .success(orders))
        let third = try TestPKI(now: pki.now)
        #expect(verifier.verify(peerChain: try third.goodChain()).failureReason == .unknownIssuer)
    }

    @Test func garbageChainsNeverCrash() throws {
        let verifier = try pki.verifier()
        let good = try pki.goodChain()
        // A CA presented as the leaf (root alone, intermediate alone, reversed order).
        #expect(verifier.verify(peerChain: [pki.root]).failureReason == .leafIsCA)
        #expect(verifier.verify(peerChain: [pki.intermediate]).failureReason == .leafIsCA)
        #expect(verifier.verify(peerChain: [pki.intermediate, good[0]]).failureReason == .leafIsCA)
        // Too many certificates.
        let long = Array(repeating: good[1], count: SpiffeVerifier.maximumChainLength) + [good[0]]
        #expect(verifier.verify(peerChain: [good[0]] + long).failureReason == .invalidChain)
        // The same leaf repeated.
        #expect(verifier.verify(peerChain: [good[0], good[0], good[0]]).failureReason == .unknownIssuer)
        // Foreign certificates only.
        let foreign = try TestPKI(trustDomain: "other.test", now: pki.now)
        #expect(verifier.verify(peerChain: [foreign.root, foreign.intermediate]).failureReason == .unknownIssuer)
        // Random bytes never become certificates.
        let seed = SeededRandom.seed(default: 0xDE4)
        var generator = SeededRandom(seed: seed)
        for length in [0, 1, 2, 16, 300, 4096] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(throws: (any Error).self, "\(length) random bytes (TEST_SEED=\(seed))") { try Certificate(der: bytes) }
        }
        // Bit flips in a DER leaf: either unparseable or refused, never accepted.
        let der = try good[0].derRepresentation()
        for index in stride(from: 0, to: der.count, by: 7) {
            var damaged = der
            damaged[index] ^= 0x55
            guard let certificate = try? Certificate(der: damaged) else { continue }
            if case .success = verifier.verify(peerChain: [certificate, good[1]]) {
                // Only bytes outside the signed part may change without breaking the
                // signature; what remains must still be exactly the same identity.
                #expect(certificate.uriSANs == good[0].uriSANs)
            }
        }
    }

    @Test func verifyDoesNotLeaveOpenSSLErrors() throws {
        ERR_clear_error()
        _ = try pki.verifier().verify(peerChain: [try pki.goodChain()[0]])
        _ = try pki.verifier().verify(peerChain: try TestPKI(now: pki.now).goodChain())
        #expect(ERR_peek_error() == 0)
    }

    @Test func concurrentVerificationsShareOneStore() async throws {
        let verifier = try pki.verifier()
        let good = try pki.goodChain()
        let bad = try TestPKI(now: pki.now).goodChain()
        let expected = orders
        let results = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<200 {
                group.addTask {
                    let chain = index.isMultiple(of: 2) ? good : bad
                    let result = verifier.verify(peerChain: chain)
                    return index.isMultiple(of: 2) ? result == .success(expected) : result.failureReason == .unknownIssuer
                }
            }
            var all: [Bool] = []
            for await result in group { all.append(result) }
            return all
        }
        #expect(results.count == 200)
        #expect(results.allSatisfy { $0 })
    }

    @Test func openSSLErrorsMapToReasons() {
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, depth: 0) == .unknownIssuer)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, depth: 1) == .unknownIssuer)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_CERT_HAS_EXPIRED, depth: 1) == .expired)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_CERT_NOT_YET_VALID, depth: 0) == .notYetValid)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_PERMITTED_VIOLATION, depth: 0) == .nameConstraintViolation)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_EXCLUDED_VIOLATION, depth: 0) == .nameConstraintViolation)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_INVALID_CA, depth: 1) == .invalidChain)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_PATH_LENGTH_EXCEEDED, depth: 2) == .invalidChain)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_INVALID_PURPOSE, depth: 0) == .badKeyUsage)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_INVALID_PURPOSE, depth: 1) == .invalidChain)
        #expect(SpiffeVerifier.reason(forVerifyError: X509_V_ERR_CERT_SIGNATURE_FAILURE, depth: 0) == .invalidChain)
    }
}

extension Result where Failure == PeerVerificationError {
    var failureReason: PeerVerificationError.Reason? {
        if case .failure(let error) = self { return error.reason }
        return nil
    }
}
