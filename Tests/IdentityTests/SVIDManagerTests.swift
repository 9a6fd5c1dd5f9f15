import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import TLS
@testable import Identity

/// A clock the test moves by hand.
final class ManualClock: Sendable {
    private let now = NIOLockedValueBox<Int64>(Int64(time(nil)))
    var seconds: Int64 { now.withLockedValue { $0 } }
    func advance(_ seconds: Int64) { now.withLockedValue { $0 += seconds } }
}

/// An issuer that fails while told to, then defers to a real local CA.
final class FlakyIssuer: SVIDIssuer {
    let inner: LocalCA
    let failing = NIOLockedValueBox(false)
    let calls = NIOLockedValueBox(0)
    init(_ inner: LocalCA) { self.inner = inner }
    var trustDomain: String { inner.trustDomain }
    var signingCertificate: Certificate { inner.signingCertificate }
    func issue(identity: SpiffeID, key: PrivateKey, lifetime: Duration) throws -> [Certificate] {
        calls.withLockedValue { $0 += 1 }
        if failing.withLockedValue({ $0 }) { throw IssuerTestError.toldToFail }
        return try inner.issue(identity: identity, key: key, lifetime: lifetime)
    }
}

/// A root and a node CA under it, made in memory.
func makeTestPKI(trustDomain: String = "cluster.local") throws -> (ca: LocalCA, bundle: TrustBundle) {
    let rootKey = try PrivateKey.generateP256()
    let root = try CertificateBuilder.makeRoot(trustDomain: trustDomain, key: rootKey)
    let nodeKey = try PrivateKey.generateP256()
    let intermediate = try CertificateBuilder.makeIntermediate(
        nodeName: "test-node", trustDomain: trustDomain, key: nodeKey,
        issuer: try CertificateAuthority(certificate: root, key: rootKey)
    )
    let ca = try LocalCA(authority: try CertificateAuthority(certificate: intermediate, key: nodeKey), trustDomain: trustDomain)
    return (ca, try TrustBundle(roots: [root]))
}

func makeLocalCA(trustDomain: String = "cluster.local") throws -> LocalCA {
    try makeTestPKI(trustDomain: trustDomain).ca
}

@Suite struct SVIDManagerTests {
    let orders = try! SpiffeID("spiffe://cluster.local/ns/shop/sa/orders")
    let checkout = try! SpiffeID("spiffe://cluster.local/ns/shop/sa/checkout")

    func manager(issuer: any SVIDIssuer, clock: ManualClock, lifetime: Duration = .seconds(100)) -> SVIDManager {
        // Real certificates carry real times; the manager's own schedule follows the manual clock.
        SVIDManager(issuer: issuer, lifetime: lifetime, logger: Logger(label: "test"), clock: { clock.seconds }, jitter: { _ in 3 })
    }

    @Test func issuesOnePerIdentityAndDropsGoneOnes() throws {
        let clock = ManualClock()
        let svids = manager(issuer: try makeLocalCA(), clock: clock)
        svids.setIdentities([orders, checkout])
        #expect(svids.statuses().map(\.identity) == [checkout, orders])
        let svid = try #require(svids.svid(for: orders))
        #expect(svid.leaf.uriSANs == [orders.description])
        #expect(svid.chain.count == 2, "leaf and node intermediate")
        #expect(svid.renewAt == clock.seconds + 50 + 3, "half the lifetime plus jitter")

        svids.setIdentities([checkout])
        #expect(svids.svid(for: orders) == nil)
        #expect(svids.statuses().map(\.identity) == [checkout])
    }

    @Test func renewsAtHalfLifeAndNotBefore() throws {
        let clock = ManualClock()
        let svids = manager(issuer: try makeLocalCA(), clock: clock)
        svids.setIdentities([orders])
        let first = try #require(svids.svid(for: orders)).leaf.serialNumberHex
        clock.advance(52)
        svids.tick()
        #expect(svids.svid(for: orders)?.leaf.serialNumberHex == first, "not due before half-life plus jitter")
        clock.advance(1)
        svids.tick()
        let second = try #require(svids.svid(for: orders)).leaf.serialNumberHex
        #expect(second != first)
    }

    @Test func renewAllReissuesEverythingNow() throws {
        let clock = ManualClock()
        let svids = manager(issuer: try makeLocalCA(), clock: clock)
        svids.setIdentities([orders, checkout])
        let before = svids.statuses().compactMap(\.serial)
        svids.renewAll(because: "test")
        let after = svids.statuses().compactMap(\.serial)
        #expect(Set(before).isDisjoint(with: after))
    }

    @Test func aNewIssuerIsUsedAfterRenewAll() throws {
        let clock = ManualClock()
        let first = try makeLocalCA()
        let second = try makeLocalCA()
        let svids = manager(issuer: first, clock: clock)
        svids.setIdentities([orders])
        #expect(!svids.issuerCertificateChanged(to: first))
        #expect(svids.issuerCertificateChanged(to: second))
        svids.renewAll(issuer: second, because: "new intermediate")
        #expect(svids.svid(for: orders)?.chain[1] == second.signingCertificate)
    }

    @Test func failuresKeepTheOldCertificateAndBackOff() throws {
        let clock = ManualClock()
        let issuer = FlakyIssuer(try makeLocalCA())
        let svids = manager(issuer: issuer, clock: clock)
        svids.setIdentities([orders])
        let first = try #require(svids.svid(for: orders)).leaf.serialNumberHex

        issuer.failing.withLockedValue { $0 = true }
        clock.advance(53)
        svids.tick()
        #expect(svids.svid(for: orders)?.leaf.serialNumberHex == first, "the valid certificate stays in use")
        #expect(svids.statuses()[0].lastError?.contains("told to fail") == true)
        let calls = issuer.calls.withLockedValue { $0 }
        svids.tick()
        #expect(issuer.calls.withLockedValue { $0 } == calls, "no retry before the backoff")
        clock.advance(1)
        svids.tick()
        #expect(issuer.calls.withLockedValue { $0 } == calls + 1)

        issuer.failing.withLockedValue { $0 = false }
        clock.advance(2)
        svids.tick()
        #expect(svids.svid(for: orders)?.leaf.serialNumberHex != first)
        #expect(svids.statuses()[0].lastError == nil)
    }

    @Test func anIdentityThatNeverGotACertificateIsPending() throws {
        let clock = ManualClock()
        let issuer = FlakyIssuer(try makeLocalCA())
        issuer.failing.withLockedValue { $0 = true }
        let svids = manager(issuer: issuer, clock: clock)
        svids.setIdentities([orders])
        #expect(svids.statuses()[0].state == .pending)
        #expect(svids.svid(for: orders) == nil)
    }

    @Test func certificatePEMHasNoKey() throws {
        let svids = manager(issuer: try makeLocalCA(), clock: ManualClock())
        svids.setIdentities([orders])
        let pem = try #require(svids.certificatePEM(for: orders))
        #expect(pem.contains("BEGIN CERTIFICATE"))
        #expect(!pem.contains("PRIVATE KEY"))
    }
}

enum IssuerTestError: Error, CustomStringConvertible {
    case toldToFail
    var description: String { "told to fail" }
}
