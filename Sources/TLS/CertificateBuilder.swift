import COpenSSL
import Glibc

/// A certificate authority that can sign: its certificate, its private key, and
/// the certificates (if any) between it and a root that peers need to build a
/// chain. The root itself is never part of `chain`.
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    public let key: PrivateKey
    public let chain: [Certificate]

    /// Checks that `certificate` is a CA allowed to sign certificates and that
    /// `key` is its private key.
    public init(certificate: Certificate, key: PrivateKey, chain: [Certificate] = []) throws {
        guard certificate.isCA else {
            throw CertificateBuilderError.issuerNotCA(certificate.identification)
        }
        if let usage = certificate.keyUsage, !usage.contains(.keyCertSign) {
            throw CertificateBuilderError.issuerNotCA("\(certificate.identification) (its key usage lacks keyCertSign)")
        }
        guard certificate.publicKeyMatches(key) else {
            throw CertificateBuilderError.keyMismatch(certificate.identification)
        }
        self.certificate = certificate
        self.key = key
        self.chain = chain
    }
}

public enum CertificateBuilderError: Error, Equatable, CustomStringConvertible {
    case invalidNodeName(String)
    case invalidLifetime(Duration)
    case issuerNotCA(String)
    case keyMismatch(String)
    /// The issuer's validity has ended (or ends within the first second of the new certificate).
    case issuerExpired(issuer: String, notAfter: Int64)
    case outsideNameConstraints(identity: String, issuer: String)
    case identityWithoutPath(String)

    public var description: String {
        switch self {
        case .invalidNodeName(let name):
            return "\"\(name)\" is not a valid node name: use 1 to 64 letters, digits, '.', '-' or '_'"
        case .invalidLifetime(let lifetime):
            return "a certificate lifetime must be at least one second, not \(lifetime)"
        case .issuerNotCA(let issuer):
            return "the issuer (\(issuer)) is not a certificate authority"
        case .keyMismatch(let issuer):
            return "the private key does not belong to the certificate (\(issuer))"
        case .issuerExpired(let issuer, let notAfter):
            return "the issuer (\(issuer)) expires at \(Certificate.formatTime(notAfter)); issue a new one"
        case .outsideNameConstraints(let identity, let issuer):
            return "the issuer (\(issuer)) may not sign \(identity): its name constraints exclude that trust domain"
        case .identityWithoutPath(let identity):
            return "\(identity) has no path; a workload certificate needs an ID like spiffe://TD/ns/NS/sa/SA"
        }
    }
}

/// Makes the certificates of mesh-agent's PKI: the offline root, the per-node
/// intermediates, and workload SVIDs (SPIFFE X509-SVID profile). Every certificate
/// is X.509 v3, signed with SHA-256, with a 128-bit random positive serial from
/// OpenSSL's CSPRNG and a `notBefore` set `backdate` before now to allow for clock
/// skew between nodes.
public enum CertificateBuilder {
    public static let defaultBackdate: Duration = .seconds(60)
    public static let defaultRootLifetime: Duration = .seconds(10 * 365 * 86400)
    public static let defaultIntermediateLifetime: Duration = .seconds(365 * 86400)

    /// Seconds since the epoch, now.
    public static func currentTime() -> Int64 { Int64(time(nil)) }

    /// A self-signed root: subject `O=<trustDomain>, CN=mesh-agent root`;
    /// basicConstraints `critical, CA:true`; keyUsage `critical, keyCertSign,
    /// cRLSign`; subjectKeyIdentifier.
    public static func makeRoot(
        trustDomain: String, key: PrivateKey, lifetime: Duration = defaultRootLifetime,
        backdate: Duration = defaultBackdate, now: Int64 = currentTime()
    ) throws -> Certificate {
        try SpiffeID.validateTrustDomain(trustDomain)
        let seconds = try lifetimeSeconds(lifetime)
        let template = CertificateTemplate(
            subject: [("O", trustDomain), ("CN", "mesh-agent root")],
            notBefore: now - backdate.components.seconds,
            notAfter: now + seconds,
            extensions: [
                (NID_basic_constraints, "critical,CA:TRUE"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_subject_key_identifier, "hash"),
            ]
        )
        return try template.sign(subjectKey: key, issuer: nil, issuerKey: key)
    }

    /// A node intermediate: subject `O=<trustDomain>, CN=mesh-agent node <nodeName>`;
    /// basicConstraints `critical, CA:true, pathlen:0`; keyUsage `critical,
    /// keyCertSign, cRLSign`; nameConstraints `critical, permitted;URI:<trustDomain>`
    /// (OpenSSL then refuses any leaf below it whose URI SAN has another host);
    /// subjectKeyIdentifier and authorityKeyIdentifier.
    ///
    /// `notAfter` is clamped to the issuer's `notAfter`: a CA cannot vouch beyond its
    /// own validity, so a long `lifetime` near the end of the root's life yields a
    /// shorter-lived intermediate rather than one that fails verification later.
    public static func makeIntermediate(
        nodeName: String, trustDomain: String, key: PrivateKey, issuer: CertificateAuthority,
        lifetime: Duration = defaultIntermediateLifetime, backdate: Duration = defaultBackdate,
        now: Int64 = currentTime()
    ) throws -> Certificate {
        try SpiffeID.validateTrustDomain(trustDomain)
        try validateNodeName(nodeName)
        if let constraints = issuer.certificate.nameConstraints, !constraints.permitsURIHost(trustDomain) {
            throw CertificateBuilderError.outsideNameConstraints(identity: "spiffe://\(trustDomain)", issuer: issuer.certificate.identification)
        }
        let notAfter = try clampedNotAfter(now: now, lifetime: lifetime, issuer: issuer.certificate)
        let template = CertificateTemplate(
            subject: [("O", trustDomain), ("CN", "mesh-agent node \(nodeName)")],
            notBefore: now - backdate.components.seconds,
            notAfter: notAfter,
            extensions: [
                (NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_name_constraints, "critical,permitted;URI:\(trustDomain)"),
                (NID_subject_key_identifier, "hash"),
                (NID_authority_key_identifier, "keyid:always"),
            ]
        )
        return try template.sign(subjectKey: key, issuer: issuer.certificate, issuerKey: issuer.key)
    }

    /// A workload certificate (X509-SVID) for `identity` over the public half of
    /// `key`: empty subject, so — as RFC 5280 §4.1.2.6 and the X509-SVID spec §3.1
    /// require — the subjectAltName holding exactly one URI (the SPIFFE ID) is
    /// critical; keyUsage `critical, digitalSignature`; extendedKeyUsage
    /// `serverAuth, clientAuth`; basicConstraints `critical, CA:false`;
    /// authorityKeyIdentifier.
    ///
    /// Valid from `now - backdate`. `notAfter` is `now + lifetime`, clamped to the
    /// issuer's `notAfter` (never beyond it: the chain would stop verifying at that
    /// moment anyway, and the caller re-issues at half-life of what it got). Throws
    /// `issuerExpired` when the issuer has no validity left.
    public static func issueSVID(
        identity: SpiffeID, publicKeyOf key: PrivateKey, issuer: CertificateAuthority,
        lifetime: Duration, backdate: Duration = defaultBackdate, now: Int64 = currentTime()
    ) throws -> Certificate {
        guard !identity.path.isEmpty else {
            throw CertificateBuilderError.identityWithoutPath(identity.description)
        }
        if let constraints = issuer.certificate.nameConstraints, !constraints.permitsURIHost(identity.trustDomain) {
            throw CertificateBuilderError.outsideNameConstraints(identity: identity.description, issuer: issuer.certificate.identification)
        }
        let notAfter = try clampedNotAfter(now: now, lifetime: lifetime, issuer: issuer.certificate)
        let template = CertificateTemplate(
            notBefore: now - backdate.components.seconds,
            notAfter: notAfter,
            extensions: [
                (NID_basic_constraints, "critical,CA:FALSE"),
                (NID_key_usage, "critical,digitalSignature"),
                (NID_ext_key_usage, "serverAuth,clientAuth"),
                (NID_authority_key_identifier, "keyid:always"),
            ],
            subjectAltNames: [.uri(identity.description)],
            subjectAltNameCritical: true
        )
        return try template.sign(subjectKey: key, issuer: issuer.certificate, issuerKey: issuer.key)
    }

    /// A node name as it may appear in an intermediate's subject: 1 to 64 letters,
    /// digits, '.', '-' or '_'.
    public static func validateNodeName(_ name: String) throws {
        let valid = (1...64).contains(name.utf8.count) && name.utf8.allSatisfy { byte in
            (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x30 && byte <= 0x39)
                || byte == 0x2e || byte == 0x2d || byte == 0x5f
        }
        guard valid else { throw CertificateBuilderError.invalidNodeName(name) }
    }

    /// Whole seconds of `lifetime`; throws `invalidLifetime` below one second.
    public static func lifetimeSeconds(_ lifetime: Duration) throws -> Int64 {
        let seconds = lifetime.components.seconds
        guard seconds >= 1 else { throw CertificateBuilderError.invalidLifetime(lifetime) }
        return seconds
    }

    static func clampedNotAfter(now: Int64, lifetime: Duration, issuer: Certificate) throws -> Int64 {
        let seconds = try lifetimeSeconds(lifetime)
        let (wanted, overflow) = now.addingReportingOverflow(seconds)
        let notAfter = min(overflow ? Int64.max : wanted, issuer.notAfter)
        guard notAfter > now else {
            throw CertificateBuilderError.issuerExpired(issuer: issuer.identification, notAfter: issuer.notAfter)
        }
        return notAfter
    }
}

/// A subjectAltName entry.
enum SubjectAltName: Equatable {
    case uri(String)
    case dns(String)
}

/// Everything that goes into a certificate, as data; `sign` turns it into one.
/// The public builder only makes the profiles above; tests use this directly to
/// make deliberately bad certificates.
struct CertificateTemplate {
    var version = 3
    var subject: [(field: String, value: String)] = []
    /// Big-endian magnitude; nil means 128 fresh random bits.
    var serial: [UInt8]?
    var notBefore: Int64
    var notAfter: Int64
    /// OpenSSL extension configuration strings (`critical,CA:TRUE`), applied in order.
    var extensions: [(nid: Int32, value: String)] = []
    var subjectAltNames: [SubjectAltName] = []
    var subjectAltNameCritical = false

    /// Signs with `issuerKey`; `issuer` nil means self-signed (issuer name = subject).
    func sign(subjectKey: PrivateKey, issuer: Certificate?, issuerKey: PrivateKey) throws -> Certificate {
        OpenSSLError.clearQueue()
        guard let x509 = X509_new() else { throw OpenSSLError.drain("making a certificate") }
        let certificate = Certificate(taking: x509)

        guard X509_set_version(x509, Int(version - 1)) == 1 else { throw OpenSSLError.drain("setting the certificate version") }
        try setSerial(x509, serial ?? Self.randomSerial())

        guard let name = X509_NAME_new() else { throw OpenSSLError.drain("making a certificate subject") }
        defer { X509_NAME_free(name) }
        for (field, value) in subject {
            guard X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, value, -1, -1, 0) == 1 else {
                throw OpenSSLError.drain("adding \(field)=\(value) to a certificate subject")
            }
        }
        guard X509_set_subject_name(x509, name) == 1 else { throw OpenSSLError.drain("setting the certificate subject") }
        let issuerName = issuer.map { X509_get_subject_name($0.pointer) } ?? X509_get_subject_name(x509)
        guard X509_set_issuer_name(x509, issuerName) == 1 else { throw OpenSSLError.drain("setting the certificate issuer") }

        guard ASN1_TIME_set(X509_getm_notBefore(x509), time_t(notBefore)) != nil,
              ASN1_TIME_set(X509_getm_notAfter(x509), time_t(notAfter)) != nil else {
            throw OpenSSLError.drain("setting the certificate validity")
        }
        guard X509_set_pubkey(x509, subjectKey.pointer) == 1 else { throw OpenSSLError.drain("setting the certificate public key") }

        var context = X509V3_CTX()
        X509V3_set_ctx(&context, issuer?.pointer ?? x509, x509, nil, nil, 0)
        _ = X509V3_set_issuer_pkey(&context, issuerKey.pointer)
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_nconf_nid(nil, &context, nid, value) else {
                throw OpenSSLError.drain("making certificate extension \(String(cString: OBJ_nid2sn(nid))) = \(value)")
            }
            defer { X509_EXTENSION_free(ext) }
            guard X509_add_ext(x509, ext, -1) == 1 else { throw OpenSSLError.drain("adding a certificate extension") }
        }
        if !subjectAltNames.isEmpty {
            try addSubjectAltNames(x509)
        }

        guard X509_sign(x509, issuerKey.pointer, EVP_sha256()) > 0 else {
            throw OpenSSLError.drain("signing a certificate")
        }
        return certificate
    }

    private func addSubjectAltNames(_ x509: OpaquePointer) throws {
        guard let names = cssl_sk_GENERAL_NAME_new_null() else { throw OpenSSLError.drain("making subjectAltName") }
        defer { cssl_GENERAL_NAMES_free(names) }
        for entry in subjectAltNames {
            let (type, text): (Int32, String) = switch entry {
            case .uri(let uri): (GEN_URI, uri)
            case .dns(let dns): (GEN_DNS, dns)
            }
            guard let string = ASN1_IA5STRING_new() else { throw OpenSSLError.drain("making subjectAltName") }
            let bytes = Array(text.utf8)
            guard ASN1_STRING_set(string, bytes, Int32(bytes.count)) == 1, let name = GENERAL_NAME_new() else {
                ASN1_IA5STRING_free(string)
                throw OpenSSLError.drain("making subjectAltName")
            }
            GENERAL_NAME_set0_value(name, type, UnsafeMutableRawPointer(string))
            guard cssl_sk_GENERAL_NAME_push(names, name) > 0 else {
                GENERAL_NAME_free(name)
                throw OpenSSLError.drain("making subjectAltName")
            }
        }
        guard X509_add1_ext_i2d(x509, NID_subject_alt_name, UnsafeMutableRawPointer(names), subjectAltNameCritical ? 1 : 0, UInt(X509V3_ADD_DEFAULT)) == 1 else {
            throw OpenSSLError.drain("adding subjectAltName")
        }
    }

    private func setSerial(_ x509: OpaquePointer, _ bytes: [UInt8]) throws {
        guard let bn = BN_bin2bn(bytes, Int32(bytes.count), nil) else { throw OpenSSLError.drain("making a serial number") }
        defer { BN_free(bn) }
        guard let integer = BN_to_ASN1_INTEGER(bn, nil) else { throw OpenSSLError.drain("making a serial number") }
        defer { ASN1_INTEGER_free(integer) }
        guard X509_set_serialNumber(x509, integer) == 1 else { throw OpenSSLError.drain("setting the serial number") }
    }

    /// 128 bits from the CSPRNG, read as an unsigned (so positive) integer; never zero.
    static func randomSerial() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        repeat {
            guard RAND_bytes(&bytes, Int32(bytes.count)) == 1 else { throw OpenSSLError.drain("drawing a random serial number") }
        } while bytes.allSatisfy { $0 == 0 }
        return bytes
    }
}

extension Certificate {
    /// A time as `2026-05-01T12:00:00Z` (UTC).
    public static func formatTime(_ epochSeconds: Int64) -> String {
        var time = time_t(epochSeconds)
        var parts = tm()
        guard gmtime_r(&time, &parts) != nil else { return "\(epochSeconds)" }
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
