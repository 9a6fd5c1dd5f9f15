import FuzzSupport
import TLS

/// PEM text as the agent reads it from files (the trust bundle, the CA's and
/// an SVID's certificates): `Certificate.chain(fromPEM:)` verified as a peer's
/// chain, and `TrustBundle(pem:)` (roots only, deduplicated, fingerprinted)
/// used to verify the fixture's node intermediate.
Fuzzing.run { bytes in
    let text = Fuzzing.text(bytes)
    if let chain = try? Certificate.chain(fromPEM: text) {
        chain.forEach(CertificateFixture.inspect)
        if case .failure(let error) = CertificateFixture.verifier.verify(peerChain: chain) { _ = error.description }
    }
    do {
        let bundle = try TrustBundle(pem: text)
        _ = (bundle.description, try? bundle.pemRepresentation())
        let verifier = SpiffeVerifier(bundle: bundle, acceptedTrustDomains: [CertificateFixture.trustDomain], clock: { CertificateFixture.now })
        _ = verifier.verify(peerChain: [CertificateFixture.intermediate])
    } catch {
        _ = "\(error)"
    }
}
