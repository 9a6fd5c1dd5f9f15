import Testing
@testable import TLS

@Suite struct CertificateBuilderTests {
    let now: Int64 = 1_800_000_000

    @Test func rootHasExactlyTheRootProfile() throws {
        let key = try PrivateKey.generateP256()
        let root = try CertificateBuilder.makeRoot(trustDomain: "cluster.local", key: key, lifetime: .seconds(3650 * 86400), now: now)
        #expect(root.extensionCriticality == ["basicConstraints": true, "keyUsage": true, "subjectKeyIdentifier": false])
        #expect(root.isCA)
        #expect(root.pathLengthConstraint == nil)
        #expect(root.keyUsage == [.keyCertSign, .cRLSign])
        #expect(root.extendedKeyUsage == nil)
        #expect(root.nameConstraints == nil)
        #expect(root.subjectKeyIdentifier?.count == 20)
        #expect(root.authorityKeyIdentifier == nil)
        #expect(root.subject == "CN=mesh-agent root,O=cluster.local")
        #expect(root.subjectOrganization == "cluster.local")
        #expect(root.uriSANs.isEmpty)
        #expect(root.isSelfSigned)
        #expect(root.version == 3)
        #expect(root.signatureAlgorithm == "ecdsa-with-SHA256")
        #expect(root.notBefore == now - 60)
        #expect(root.notAfter == now + 3650 * 86400)
        #expect(root.serialIsPositive)
        #expect(root.publicKeyMatches(key))
    }

    @Test func intermediateHasExactlyTheIntermediateProfile() throws {
        let pki = try TestPKI(now: now)
        let intermediate = pki.intermediate
        #expect(intermediate.extensionCriticality == [
            "basicConstraints": true, "keyUsage": true, "nameConstraints": true,
            "subjectKeyIdentifier": false, "authorityKeyIdentifier": false,
        ])
        #expect(intermediate.isCA)
        #expect(intermediate.pathLengthConstraint == 0)
        #expect(intermediate.keyUsage == [.keyCertSign, .cRLSign])
        #expect(intermediate.nameConstraints == NameConstraints(permitted: ["URI:cluster.local"], excluded: []))
        #expect(intermediate.subjectKeyIdentifier != nil)
        #expect(intermediate.subjectKeyIdentifier != pki.root.subjectKeyIdentifier)
        #expect(intermediate.authorityKeyIdentifier == pki.root.subjectKeyIdentifier)
        #expect(intermediate.subject == "CN=mesh-agent node node-a,O=cluster.local")
        #expect(!intermediate.isSelfSigned)
        #expect(intermediate.version == 3)
        #expect(intermediate.signatureAlgorithm == "ecdsa-with-SHA256")
        #expect(intermediate.notBefore == now - 60)
        #expect(intermediate.notAfter == now + 5 * 86400)
        #expect(intermediate.publicKeyMatches(pki.intermediateKey))
        #expect(!intermediate.publicKeyMatches(pki.rootKey))
    }

    @Test func svidHasExactlyTheSVIDProfile() throws {
        let pki = try TestPKI(now: now)
        let key = try PrivateKey.generateP256()
        let identity = try SpiffeID("spiffe://cluster.local/ns/shop/sa/orders")
        let leaf = try CertificateBuilder.issueSVID(identity: identity, publicKeyOf: key, issuer: pki.intermediateCA, lifetime: .seconds(86400), now: now)
        #expect(leaf.extensionCriticality == [
            "basicConstraints": true, "keyUsage": true, "extendedKeyUsage": false,
            "authorityKeyIdentifier": false, "subjectAltName": true,
        ])
        #expect(!leaf.isCA)
        #expect(leaf.pathLengthConstraint == nil)
        #expect(leaf.keyUsage == [.digitalSignature])
        #expect(leaf.extendedKeyUsage == [.serverAuth, .clientAuth])
        #expect(leaf.uriSANs == ["spiffe://cluster.local/ns/shop/sa/orders"])
        #expect(leaf.hasEmptySubject)
        #expect(leaf.subject == "")
        #expect(leaf.subjectKeyIdentifier == nil)
        #expect(leaf.authorityKeyIdentifier == pki.intermediate.subjectKeyIdentifier)
        #expect(leaf.version == 3)
        #expect(leaf.signatureAlgorithm == "ecdsa-with-SHA256")
        #expect(leaf.notBefore == now - 60)
        #expect(leaf.notAfter == now + 86400)
        #expect(leaf.publicKeyMatches(key))
        #expect(!leaf.publicKeyMatches(pki.intermediateKey))
        #expect(leaf.serialIsPositive)
    }

    @Test func backdateIsConfigurable() throws {
        let pki = try TestPKI(now: now)
        let leaf = try CertificateBuilder.issueSVID(
            identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), publicKeyOf: try PrivateKey.generateP256(),
            issuer: pki.intermediateCA, lifetime: .seconds(600), backdate: .seconds(300), now: now)
        #expect(leaf.notBefore == now - 300)
        #expect(leaf.notAfter == now + 600)
    }

    @Test func serialsAreRandomPositiveAndAtMost128Bits() throws {
        let pki = try TestPKI(now: now)
        var serials: Set<String> = []
        var widest = 0
        for index in 0..<64 {
            let leaf = try CertificateBuilder.issueSVID(
                identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/s\(index)"), publicKeyOf: pki.intermediateKey,
                issuer: pki.intermediateCA, lifetime: .seconds(60), now: now)
            #expect(leaf.serialIsPositive)
            #expect(leaf.serialBits <= 128)
            widest = max(widest, leaf.serialBits)
            serials.insert(leaf.serialNumberHex)
        }
        #expect(serials.count == 64)
        // 64 draws of 128 random bits: the widest is 125+ bits with overwhelming odds.
        #expect(widest >= 120)
        #expect(pki.root.serialNumberHex != pki.intermediate.serialNumberHex)
    }

    @Test func svidLifetimeIsClampedToTheIssuer() throws {
        let pki = try TestPKI(now: now)
        // The intermediate lives 5 days; ask for 30.
        let leaf = try CertificateBuilder.issueSVID(
            identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), publicKeyOf: try PrivateKey.generateP256(),
            issuer: pki.intermediateCA, lifetime: .seconds(30 * 86400), now: now)
        #expect(leaf.notAfter == pki.intermediate.notAfter)
        // An hour before the intermediate expires, a 24h SVID gets that hour.
        let late = pki.intermediate.notAfter - 3600
        let short = try CertificateBuilder.issueSVID(
            identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), publicKeyOf: try PrivateKey.generateP256(),
            issuer: pki.intermediateCA, lifetime: .seconds(86400), now: late)
        #expect(short.notAfter == pki.intermediate.notAfter)
        #expect(short.notBefore == late - 60)
    }

    @Test func intermediateLifetimeIsClampedToTheRoot() throws {
        let pki = try TestPKI(now: now)
        let intermediate = try CertificateBuilder.makeIntermediate(
            nodeName: "node-b", trustDomain: "cluster.local", key: try PrivateKey.generateP256(), issuer: pki.rootCA,
            lifetime: .seconds(365 * 86400), now: now)
        #expect(intermediate.notAfter == pki.root.notAfter)
    }

    @Test func anExpiredIssuerSignsNothing() throws {
        let pki = try TestPKI(now: now)
        let error = #expect(throws: CertificateBuilderError.self) {
            try CertificateBuilder.issueSVID(
                identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), publicKeyOf: try PrivateKey.generateP256(),
                issuer: pki.intermediateCA, lifetime: .seconds(3600), now: pki.intermediate.notAfter)
        }
        guard case .issuerExpired(_, let notAfter) = error else {
            Issue.record("expected issuerExpired, got \(String(describing: error))")
            return
        }
        #expect(notAfter == pki.intermediate.notAfter)
    }

    @Test func refusesBadInputs() throws {
        let pki = try TestPKI(now: now)
        let key = try PrivateKey.generateP256()
        #expect(throws: SpiffeIDError.self) { try CertificateBuilder.makeRoot(trustDomain: "Cluster.Local", key: key, lifetime: .seconds(60)) }
        #expect(throws: SpiffeIDError.self) { try CertificateBuilder.makeRoot(trustDomain: "", key: key, lifetime: .seconds(60)) }
        #expect(throws: CertificateBuilderError.invalidLifetime(.zero)) {
            try CertificateBuilder.makeRoot(trustDomain: "cluster.local", key: key, lifetime: .zero)
        }
        #expect(throws: CertificateBuilderError.invalidNodeName("node a")) {
            try CertificateBuilder.makeIntermediate(nodeName: "node a", trustDomain: "cluster.local", key: key, issuer: pki.rootCA, now: now)
        }
        #expect(throws: CertificateBuilderError.invalidNodeName("")) {
            try CertificateBuilder.makeIntermediate(nodeName: "", trustDomain: "cluster.local", key: key, issuer: pki.rootCA, now: now)
        }
        // A node CA cannot make a certificate its own name constraint would refuse.
        #expect(throws: CertificateBuilderError.self) {
            try CertificateBuilder.issueSVID(
                identity: try SpiffeID("spiffe://evil.test/ns/a/sa/b"), publicKeyOf: key, issuer: pki.intermediateCA,
                lifetime: .seconds(60), now: now)
        }
        #expect(throws: CertificateBuilderError.identityWithoutPath("spiffe://cluster.local")) {
            try CertificateBuilder.issueSVID(
                identity: try SpiffeID("spiffe://cluster.local"), publicKeyOf: key, issuer: pki.intermediateCA,
                lifetime: .seconds(60), now: now)
        }
    }

    @Test func certificateAuthorityChecksItsParts() throws {
        let pki = try TestPKI(now: now)
        let leaf = try pki.goodChain()[0]
        #expect(throws: CertificateBuilderError.self) { try CertificateAuthority(certificate: leaf, key: pki.intermediateKey) }
        let error = #expect(throws: CertificateBuilderError.self) {
            try CertificateAuthority(certificate: pki.intermediate, key: pki.rootKey)
        }
        guard case .keyMismatch = error else {
            Issue.record("expected keyMismatch, got \(String(describing: error))")
            return
        }
    }

    @Test func certificatePEMAndDERRoundTrip() throws {
        let pki = try TestPKI(now: now)
        for certificate in [pki.root, pki.intermediate, try pki.goodChain()[0]] {
            let pem = try certificate.pemRepresentation()
            #expect(pem.hasPrefix("-----BEGIN CERTIFICATE-----\n"))
            let fromPEM = try Certificate(pem: pem)
            #expect(fromPEM == certificate)
            #expect(try fromPEM.derRepresentation() == certificate.derRepresentation())
            let fromDER = try Certificate(der: try certificate.derRepresentation())
            #expect(fromDER == certificate)
            #expect(fromDER.uriSANs == certificate.uriSANs)
            #expect(fromDER.extensionCriticality == certificate.extensionCriticality)
            #expect(fromDER.sha256Fingerprint == certificate.sha256Fingerprint)
            #expect(fromDER.sha256Fingerprint.count == 32)
        }
        let chainPEM = try pki.intermediate.pemRepresentation() + pki.root.pemRepresentation()
        #expect(try Certificate.chain(fromPEM: chainPEM) == [pki.intermediate, pki.root])
    }

    @Test func keyPEMRoundTrip() throws {
        let pki = try TestPKI(now: now)
        let pem = try pki.intermediateKey.pemRepresentation()
        #expect(pem.hasPrefix("-----BEGIN PRIVATE KEY-----\n"))
        let key = try PrivateKey(pem: pem)
        #expect(pki.intermediate.publicKeyMatches(key))
        #expect(try key.pemRepresentation() == pem)
        // The reloaded key signs certificates the original's certificate vouches for.
        let ca = try CertificateAuthority(certificate: pki.intermediate, key: key)
        let leaf = try CertificateBuilder.issueSVID(
            identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), publicKeyOf: try PrivateKey.generateP256(),
            issuer: ca, lifetime: .seconds(60), now: now)
        #expect(try pki.verifier().verify(peerChain: [leaf, pki.intermediate]) == .success(try SpiffeID("spiffe://cluster.local/ns/a/sa/b")))
    }

    @Test func encryptedOrDamagedKeysFailWithoutPrompting() {
        #expect(throws: OpenSSLError.self) { try PrivateKey(pem: Self.encryptedKey) }
        #expect(throws: OpenSSLError.self) { try PrivateKey(pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n") }
        #expect(throws: OpenSSLError.self) { try PrivateKey(pem: "") }
    }

    @Test func damagedCertificatesFailCleanly() throws {
        let pki = try TestPKI(now: now)
        let pem = try pki.root.pemRepresentation()
        #expect(throws: OpenSSLError.self) { try Certificate(pem: String(pem.prefix(pem.count / 2))) }
        #expect(throws: OpenSSLError.self) { try Certificate(pem: "not a certificate") }
        #expect(throws: OpenSSLError.self) { try Certificate(der: [0x30, 0x82, 0x01]) }
        #expect(throws: OpenSSLError.self) { try Certificate(der: []) }
        var der = try pki.root.derRepresentation()
        der.removeLast(10)
        #expect(throws: OpenSSLError.self) { try Certificate(der: der) }
    }

    @Test func nameConstraintMatchingFollowsOpenSSL() {
        let constraints = NameConstraints(permitted: ["URI:cluster.local"], excluded: [])
        #expect(constraints.permitsURIHost("cluster.local"))
        #expect(!constraints.permitsURIHost("sub.cluster.local"))
        #expect(!constraints.permitsURIHost("evil.test"))
        let subtree = NameConstraints(permitted: ["URI:.cluster.local"], excluded: [])
        #expect(subtree.permitsURIHost("a.cluster.local"))
        #expect(!subtree.permitsURIHost("cluster.local"))
        let dnsOnly = NameConstraints(permitted: ["DNS:example.com"], excluded: [])
        #expect(dnsOnly.permitsURIHost("anything.test"))
        let excluded = NameConstraints(permitted: [], excluded: ["URI:evil.test"])
        #expect(!excluded.permitsURIHost("evil.test"))
        #expect(excluded.permitsURIHost("cluster.local"))
    }

    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes256 -pass pass:secret`
    static let encryptedKey = """
        -----BEGIN ENCRYPTED PRIVATE KEY-----
        MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAj/s/11/Eb/ZwICCAAw
        DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEEuaS4RWdzOA2PiUsW+6NXoEgZCD
        +WewRvQ+QcgzNm6JfyFfd3VKiYHTd8CL567yRa+BNlL5we29r3RNc4lWfxNYh/vd
        izNtfowi+ObivUR1iDnFHFySbJPd8R381XqqcLrLArqL+NlF+pBeWUMa/AYS4W2X
        D4+dY6Agb0TtPlvMoabF8NN/0trshcOVM5Dg/WOM6tETzSUyP8AFC0FD92iht5o=
        -----END ENCRYPTED PRIVATE KEY-----
        """
}
