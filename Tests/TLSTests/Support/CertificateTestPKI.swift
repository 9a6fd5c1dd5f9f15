import COpenSSL
@testable import TLS

/// A root, a node intermediate and helpers to sign leaves (good and bad) below
/// them, all in memory. Bad certificates go through `CertificateTemplate`, the
/// builder's internal engine, so they differ from good ones only where a test says.
struct TestPKI {
    let trustDomain: String
    let now: Int64
    let rootKey: PrivateKey
    let root: Certificate
    let intermediateKey: PrivateKey
    let intermediate: Certificate
    let rootCA: CertificateAuthority
    let intermediateCA: CertificateAuthority

    var bundle: TrustBundle { get throws { try TrustBundle(roots: [root]) } }

    init(trustDomain: String = "cluster.local", now: Int64 = CertificateBuilder.currentTime()) throws {
        self.trustDomain = trustDomain
        self.now = now
        rootKey = try PrivateKey.generateP256()
        root = try CertificateBuilder.makeRoot(trustDomain: trustDomain, key: rootKey, lifetime: .seconds(10 * 86400), now: now)
        rootCA = try CertificateAuthority(certificate: root, key: rootKey)
        intermediateKey = try PrivateKey.generateP256()
        intermediate = try CertificateBuilder.makeIntermediate(
            nodeName: "node-a", trustDomain: trustDomain, key: intermediateKey, issuer: rootCA,
            lifetime: .seconds(5 * 86400), now: now)
        intermediateCA = try CertificateAuthority(certificate: intermediate, key: intermediateKey)
    }

    func verifier(accepting domains: Set<String>? = nil, expecting identity: SpiffeID? = nil, at time: Int64? = nil) throws -> SpiffeVerifier {
        let clockTime = time ?? now
        return SpiffeVerifier(
            bundle: try bundle, acceptedTrustDomains: domains ?? [trustDomain], expectedIdentity: identity,
            clock: { clockTime })
    }

    /// A good SVID chain `[leaf, intermediate]` for `path` in this trust domain.
    func goodChain(path: String = "ns/shop/sa/orders", lifetime: Duration = .seconds(3600)) throws -> [Certificate] {
        let identity = try SpiffeID("spiffe://\(trustDomain)/\(path)")
        let leaf = try CertificateBuilder.issueSVID(
            identity: identity, publicKeyOf: try PrivateKey.generateP256(), issuer: intermediateCA, lifetime: lifetime, now: now)
        return [leaf, intermediate]
    }

    /// An intermediate like the node one but with no name constraints.
    func unconstrainedIntermediate() throws -> CertificateAuthority {
        let key = try PrivateKey.generateP256()
        let template = CertificateTemplate(
            subject: [("O", trustDomain), ("CN", "unconstrained intermediate")],
            notBefore: now - 60, notAfter: now + 86400,
            extensions: [
                (NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_subject_key_identifier, "hash"),
                (NID_authority_key_identifier, "keyid:always"),
            ])
        let certificate = try template.sign(subjectKey: key, issuer: root, issuerKey: rootKey)
        return try CertificateAuthority(certificate: certificate, key: key)
    }

    /// A leaf below `issuer` (default: the node intermediate) that is an SVID in
    /// every respect except those passed.
    func leaf(
        uris: [String]? = nil, dns: [String] = [], subject: [(field: String, value: String)] = [],
        sanCritical: Bool? = nil, extensions: [(nid: Int32, value: String)] = TestPKI.svidExtensions,
        notBefore: Int64? = nil, notAfter: Int64? = nil, issuer: CertificateAuthority? = nil,
        signingKey: PrivateKey? = nil
    ) throws -> Certificate {
        let issuer = issuer ?? intermediateCA
        var names: [SubjectAltName] = (uris ?? ["spiffe://\(trustDomain)/ns/shop/sa/orders"]).map { .uri($0) }
        names += dns.map { .dns($0) }
        let template = CertificateTemplate(
            subject: subject,
            notBefore: notBefore ?? now - 60,
            notAfter: notAfter ?? now + 3600,
            extensions: extensions,
            subjectAltNames: names,
            subjectAltNameCritical: sanCritical ?? subject.isEmpty)
        return try template.sign(
            subjectKey: try PrivateKey.generateP256(), issuer: issuer.certificate, issuerKey: signingKey ?? issuer.key)
    }

    static let svidExtensions: [(nid: Int32, value: String)] = [
        (NID_basic_constraints, "critical,CA:FALSE"),
        (NID_key_usage, "critical,digitalSignature"),
        (NID_ext_key_usage, "serverAuth,clientAuth"),
        (NID_authority_key_identifier, "keyid:always"),
    ]
}

extension Certificate {
    /// Whether the DER serial is a positive INTEGER (not negative, not zero).
    var serialIsPositive: Bool {
        guard let serial = X509_get0_serialNumber(pointer) else { return false }
        guard ASN1_STRING_type(serial) == V_ASN1_INTEGER else { return false }
        guard let bn = ASN1_INTEGER_to_BN(serial, nil) else { return false }
        defer { BN_free(bn) }
        return !BN_is_zero(bn).boolValue && BN_is_negative(bn) == 0
    }

    var serialBits: Int {
        guard let serial = X509_get0_serialNumber(pointer), let bn = ASN1_INTEGER_to_BN(serial, nil) else { return 0 }
        defer { BN_free(bn) }
        return Int(BN_num_bits(bn))
    }
}

private extension Int32 {
    var boolValue: Bool { self != 0 }
}
