import Testing
@testable import TLS

@Suite struct VerifierTrustBundleTests {
    let first: TestPKI
    let second: TestPKI

    init() throws {
        first = try TestPKI(now: 1_800_000_000)
        second = try TestPKI(now: 1_800_000_000)
    }

    @Test func readsSeveralRootsFromPEM() throws {
        let pem = try first.root.pemRepresentation() + second.root.pemRepresentation()
        let bundle = try TrustBundle(pem: pem)
        #expect(bundle.roots == [first.root, second.root])
        #expect(try bundle.pemRepresentation() == pem)
        #expect(try TrustBundle(pem: bundle.pemRepresentation()) == bundle)
    }

    @Test func skipsOtherPEMBlocks() throws {
        let pem = try first.rootKey.pemRepresentation() + first.root.pemRepresentation()
        #expect(try TrustBundle(pem: pem).roots == [first.root])
    }

    @Test func fingerprintIsStableAndTracksTheSetOfRoots() throws {
        let ab = try TrustBundle(roots: [first.root, second.root])
        let ba = try TrustBundle(roots: [second.root, first.root])
        let aab = try TrustBundle(roots: [first.root, first.root, second.root])
        let a = try TrustBundle(roots: [first.root])
        #expect(ab.fingerprint == ba.fingerprint)
        #expect(ab.fingerprint == aab.fingerprint)
        #expect(aab.roots.count == 2)
        #expect(a.fingerprint != ab.fingerprint)
        #expect(a.fingerprint.count == 64)
        #expect(a.fingerprint.allSatisfy { "0123456789abcdef".contains($0) })
        #expect(try TrustBundle(pem: first.root.pemRepresentation()).fingerprint == a.fingerprint)
        #expect(ab == ba)
        #expect(a != ab)
    }

    @Test func refusesAnEmptyBundle() throws {
        #expect(throws: TrustBundleError.empty) { try TrustBundle(pem: "") }
        #expect(throws: TrustBundleError.empty) { try TrustBundle(pem: "# nothing here\n") }
        #expect(throws: TrustBundleError.empty) { try TrustBundle(pem: try first.rootKey.pemRepresentation()) }
        #expect(throws: TrustBundleError.empty) { try TrustBundle(roots: []) }
    }

    @Test func refusesNonCACertificates() throws {
        let leaf = try first.goodChain()[0]
        let error = #expect(throws: TrustBundleError.self) {
            try TrustBundle(pem: try first.root.pemRepresentation() + leaf.pemRepresentation())
        }
        guard case .notCA(let index, let certificate) = error else {
            Issue.record("expected notCA, got \(String(describing: error))")
            return
        }
        #expect(index == 1)
        #expect(certificate.contains(leaf.serialNumberHex))
        #expect(error?.description.contains("is not a CA") == true)
    }

    @Test func refusesIntermediates() throws {
        let error = #expect(throws: TrustBundleError.self) { try TrustBundle(roots: [first.intermediate]) }
        guard case .notSelfSigned(0, _) = error else {
            Issue.record("expected notSelfSigned, got \(String(describing: error))")
            return
        }
    }

    @Test func refusesDamagedPEM() throws {
        let pem = try first.root.pemRepresentation()
        let truncated = String(pem.prefix(pem.count - 40))
        #expect(throws: TrustBundleError.self) { try TrustBundle(pem: truncated) }
        let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        let error = #expect(throws: TrustBundleError.self) { try TrustBundle(pem: garbage) }
        guard case .unreadable = error else {
            Issue.record("expected unreadable, got \(String(describing: error))")
            return
        }
    }
}
