import TLS

/// A trust bundle and node intermediate like the agent's (made once with
/// Python's `cryptography` and pasted here, valid 2024 to 2044), so that the
/// certificate targets' seeds (SVIDs it issued, in Fuzz/Corpus) verify and
/// the fuzzer starts from chains that reach the SPIFFE checks.
public enum CertificateFixture {
    public static let trustDomain = "cluster.local"
    /// 2030-01-01, inside every fixture's validity.
    public static let now: Int64 = 1_893_456_000

    public static let rootPEM = """
        -----BEGIN CERTIFICATE-----
        MIIBnjCCAUSgAwIBAgIBATAKBggqhkjOPQQDAjA1MRYwFAYDVQQKDA1jbHVzdGVy
        LmxvY2FsMRswGQYDVQQDDBJtZXNoLWFnZW50IHJvb3QgQ0EwHhcNMjQwMTAxMDAw
        MDAwWhcNNDQwMTAxMDAwMDAwWjA1MRYwFAYDVQQKDA1jbHVzdGVyLmxvY2FsMRsw
        GQYDVQQDDBJtZXNoLWFnZW50IHJvb3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMB
        BwNCAAR5wDwiDifYdSL/Emegkvnb6dr11jKRgQQuY6FlVQviwVlN7IzkfImeJ9iF
        pxvHfL3ejzDaCkhX160fZO6Y6Y/4o0UwQzASBgNVHRMBAf8ECDAGAQH/AgEBMA4G
        A1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUeOVhXaetrb7U20gOMf4+DDyRyWMwCgYI
        KoZIzj0EAwIDSAAwRQIgBa68c1NO5x1oSGD2WWf+QtthzeUtT5eERjRu2iiQIswC
        IQCEJdTLM0+g2VWDp6z7zHbPZlsvurtZiyLOvxt3rGR0gQ==
        -----END CERTIFICATE-----
        """

    public static let intermediatePEM = """
        -----BEGIN CERTIFICATE-----
        MIIB4DCCAYegAwIBAgIBAjAKBggqhkjOPQQDAjA1MRYwFAYDVQQKDA1jbHVzdGVy
        LmxvY2FsMRswGQYDVQQDDBJtZXNoLWFnZW50IHJvb3QgQ0EwHhcNMjQwMTAxMDAw
        MDAwWhcNNDQwMTAxMDAwMDAwWjA0MRYwFAYDVQQKDA1jbHVzdGVyLmxvY2FsMRow
        GAYDVQQDDBFtZXNoLWFnZW50IG5vZGUtYTBZMBMGByqGSM49AgEGCCqGSM49AwEH
        A0IABObMItBj2pBemtX+AM5hdRfjxsUa6u8s3jtEsWt3PV+jO37RO7Eo338l/xSF
        UzchzgUNDHuzpxEgsIn3z+9iy3OjgYgwgYUwEgYDVR0TAQH/BAgwBgEB/wIBADAO
        BgNVHQ8BAf8EBAMCAQYwHwYDVR0eAQH/BBUwE6ARMA+GDWNsdXN0ZXIubG9jYWww
        HQYDVR0OBBYEFIjOMyFKTrk4wx9nibJVHzda8qIlMB8GA1UdIwQYMBaAFHjlYV2n
        ra2+1NtIDjH+Pgw8kcljMAoGCCqGSM49BAMCA0cAMEQCIACDDEqMEnRzcZV51BrM
        x5fVvjObZii9Hhph/L6ZJorCAiBCW04Sl83+RoSt1izA31F+n+TXXjb836HlphbV
        b6//PQ==
        -----END CERTIFICATE-----
        """

    public static let bundle: TrustBundle = {
        do {
            return try TrustBundle(pem: rootPEM)
        } catch {
            fatalError("the fuzz fixture's trust bundle does not load: \(error)")
        }
    }()

    public static let intermediate: Certificate = {
        do {
            return try Certificate(pem: intermediatePEM)
        } catch {
            fatalError("the fuzz fixture's intermediate does not load: \(error)")
        }
    }()

    public static let verifier = SpiffeVerifier(bundle: bundle, acceptedTrustDomains: [trustDomain], clock: { now })

    /// Reads everything the agent and agentctl read of a certificate, as a
    /// peer's or a file's certificate is read.
    public static func inspect(_ certificate: Certificate) {
        _ = (certificate.notBefore, certificate.notAfter, certificate.serialNumberHex, certificate.uriSANs, certificate.description)
        _ = (certificate.isCA, certificate.pathLengthConstraint, certificate.keyUsage?.description, certificate.extendedKeyUsage?.description)
        _ = (certificate.nameConstraints?.permitted, certificate.subjectKeyIdentifier, certificate.authorityKeyIdentifier)
        _ = (certificate.extensionCriticality, certificate.version, certificate.signatureAlgorithm, certificate.subjectOrganization)
        _ = (certificate.hasEmptySubject, certificate.isSelfSigned, certificate.sha256Fingerprint)
        if let constraints = certificate.nameConstraints {
            _ = constraints.permitsURIHost(trustDomain)
        }
    }
}
