import FuzzSupport
import TLS

/// A DER certificate as a TLS peer sends one: `Certificate(der:)` (OpenSSL's
/// d2i_X509), every property the agent reads, and `SpiffeVerifier` on it as a
/// leaf alone and below the fixture's node intermediate. What OpenSSL encodes
/// again must read back as the same certificate.
Fuzzing.run { bytes in
    guard let certificate = try? Certificate(der: bytes) else { return }
    CertificateFixture.inspect(certificate)
    for chain in [[certificate], [certificate, CertificateFixture.intermediate]] {
        if case .failure(let error) = CertificateFixture.verifier.verify(peerChain: chain) { _ = error.description }
    }
    guard let der = try? certificate.derRepresentation() else { return }
    let again = try? Certificate(der: der)
    Fuzzing.require(again == certificate, "\(certificate) does not read back from its own DER")
}
