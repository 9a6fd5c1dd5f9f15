import COpenSSL
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import Kubernetes
@testable import TLS

/// A cluster CA and an API server certificate signed by it, as kubeadm makes
/// them: the service IP and DNS names in the SAN, serverAuth.
struct ClusterPKI {
    let caKey: PrivateKey
    let ca: Certificate
    let now = CertificateBuilder.currentTime()

    /// `name`: CAs of different clusters have different names (a CA of the
    /// same name is found as the issuer, and the signature then fails).
    init(name: String = "kubernetes") throws {
        caKey = try PrivateKey.generateP256()
        ca = try CertificateBuilder.makeRoot(trustDomain: name, key: caKey)
    }

    var caPEM: String {
        get throws { try ca.pemRepresentation() }
    }

    func serverCertificate(names: String, notAfter: Int64? = nil) throws -> (Certificate, PrivateKey) {
        let key = try PrivateKey.generateP256()
        let template = CertificateTemplate(
            subject: [("CN", "kube-apiserver")], notBefore: now - 60, notAfter: notAfter ?? now + 3600,
            extensions: [
                (NID_basic_constraints, "critical,CA:FALSE"),
                (NID_key_usage, "critical,digitalSignature,keyEncipherment"),
                (NID_ext_key_usage, "serverAuth"),
                (NID_subject_alt_name, names),
            ])
        return (try template.sign(subjectKey: key, issuer: ca, issuerKey: caKey), key)
    }

    func serverContext(names: String = "DNS:kubernetes,DNS:kubernetes.default.svc,IP:10.96.0.1,IP:127.0.0.1") throws -> TLSContext {
        let (certificate, key) = try serverCertificate(names: names)
        return try TLSContext(configuration: TLSConfiguration(role: .server, certificateChain: [certificate], privateKey: key, verifier: AnyClientCertificate()))
    }
}

/// The API server asks for a client certificate but does not require one
/// that verifies: the stand-in takes any.
struct AnyClientCertificate: PeerCertificateVerifier {
    func verify(peerChain: [Certificate]) -> Result<SpiffeID, PeerVerificationError> {
        guard let identity = try? SpiffeID("spiffe://test/client") else { return .failure(PeerVerificationError(.invalidChain, "")) }
        return .success(identity)
    }
}

@Suite struct APIServerVerifierTests {
    static func verify(_ chain: [Certificate], host: String, pki: ClusterPKI) throws -> Result<SpiffeID, PeerVerificationError> {
        let store = try CertificateStore(pem: try pki.caPEM, file: "ca.crt")
        return APIServerVerifier(store: store, host: host).verify(peerChain: chain)
    }

    @Test func theClusterCAAndTheNameInTheURL() throws {
        let pki = try ClusterPKI()
        let (certificate, _) = try pki.serverCertificate(names: "DNS:kubernetes.default.svc,IP:10.96.0.1,IP:fd00:10:96::1")
        for host in ["10.96.0.1", "kubernetes.default.svc", "fd00:10:96::1"] {
            #expect(try Self.verify([certificate], host: host, pki: pki).get() == APIServerTLS.placeholderIdentity)
        }
        for host in ["10.96.0.2", "kubernetes", "evil.example"] {
            guard case .failure(let error) = try Self.verify([certificate], host: host, pki: pki) else {
                Issue.record("accepted for \(host)")
                continue
            }
            #expect(error.detail.contains("is refused for \(host)"), "\(error)")
        }
    }

    @Test func anotherCAIsRefused() throws {
        let pki = try ClusterPKI()
        let other = try ClusterPKI(name: "other-cluster")
        let (certificate, _) = try other.serverCertificate(names: "IP:10.96.0.1")
        guard case .failure(let error) = try Self.verify([certificate], host: "10.96.0.1", pki: pki) else {
            Issue.record("a certificate of another CA was accepted")
            return
        }
        #expect(error.reason == .unknownIssuer)
    }

    @Test func anExpiredCertificateIsRefused() throws {
        let pki = try ClusterPKI()
        let (certificate, _) = try pki.serverCertificate(names: "IP:10.96.0.1", notAfter: pki.now - 10)
        guard case .failure(let error) = try Self.verify([certificate], host: "10.96.0.1", pki: pki) else {
            Issue.record("an expired certificate was accepted")
            return
        }
        #expect(error.reason == .expired)
    }

    @Test func noChainAndLongChains() throws {
        let pki = try ClusterPKI()
        #expect(throws: PeerVerificationError.self) { try Self.verify([], host: "10.96.0.1", pki: pki).get() }
        let (certificate, _) = try pki.serverCertificate(names: "IP:10.96.0.1")
        #expect(throws: PeerVerificationError.self) { try Self.verify(Array(repeating: certificate, count: 9), host: "10.96.0.1", pki: pki).get() }
    }

    @Test func aCAFileWithoutCertificates() {
        #expect(throws: KubernetesSourceError.self) { try CertificateStore(pem: "not a certificate", file: "/x/ca.crt") }
        do {
            _ = try CertificateStore(pem: "", file: "/x/ca.crt")
        } catch {
            #expect("\(error)".contains("/x/ca.crt") && "\(error)".contains("set caFile"), "\(error)")
        }
    }
}

/// HTTPS end to end: the source lists and watches through the project's TLS
/// layer against a stand-in server with a certificate from the cluster CA.
@Suite(.serialized) struct HTTPSSourceTests {
    static func run(serverNames: String, trusting pki: ClusterPKI, serverPKI: ClusterPKI, _ body: (KubernetesSource) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-ca-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let caFile = directory.appendingPathComponent("ca.crt")
        try pki.caPEM.write(to: caFile, atomically: true, encoding: .utf8)
        let tokenFile = directory.appendingPathComponent("token")
        try "secret-token".write(to: tokenFile, atomically: true, encoding: .utf8)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = StandInAPIServer(group: group, tls: try serverPKI.serverContext(names: serverNames))
        server.requiredToken = "secret-token"
        server.setNamespace("shop", labels: KubernetesSourceTests.ambient)
        server.addPod(KubernetesSourceTests.pod(1))
        try await server.start()
        var configuration = KubernetesSourceConfiguration(
            node: KubernetesSourceTests.node, apiServer: server.url, tokenFile: tokenFile.path, caFile: caFile.path, cgroupLayout: .cgroupfs)
        configuration.backoff = Backoff(initial: .milliseconds(20), maximum: .milliseconds(200))
        let source = try KubernetesSource(configuration: configuration, environment: [:], group: group, logger: Logger(label: "test"))
        let task = Task { await source.run() }
        do {
            try await body(source)
        } catch {
            task.cancel()
            await task.value
            try? await server.stop()
            try await group.shutdownGracefully()
            throw error
        }
        task.cancel()
        await task.value
        try await server.stop()
        try await group.shutdownGracefully()
    }

    @Test func listsAndWatchesOverTLS() async throws {
        let pki = try ClusterPKI()
        try await Self.run(serverNames: "DNS:kubernetes,IP:127.0.0.1", trusting: pki, serverPKI: pki) { source in
            let pods = try await KubernetesSourceTests.eventually(source, "pod-1 over TLS") { $0.count == 1 }
            #expect(pods.first?.cgroup?.string == "/kubepods/burstable/pod6b0b6d58-7a8e-4c3f-9f7e-000000000001")
            try await KubernetesSourceTests.waitFor("both watches over TLS") { source.status.connected }
        }
    }

    @Test func aServerFromAnotherCAIsRefused() async throws {
        try await Self.run(serverNames: "IP:127.0.0.1", trusting: try ClusterPKI(), serverPKI: try ClusterPKI(name: "other-cluster")) { source in
            try await KubernetesSourceTests.waitFor("the refusal") { source.status.lastError != nil }
            let error = source.status.lastError ?? ""
            #expect(error.contains("unknown_issuer") || error.contains("certificate"), "\(error)")
            #expect(source.currentPods == nil)
            #expect(!source.status.synced)
        }
    }

    @Test func aServerWithoutTheAddressInItsCertificateIsRefused() async throws {
        let pki = try ClusterPKI()
        try await Self.run(serverNames: "DNS:kubernetes,IP:10.96.0.1", trusting: pki, serverPKI: pki) { source in
            try await KubernetesSourceTests.waitFor("the refusal") { source.status.lastError != nil }
            #expect(source.status.lastError?.contains("is refused for 127.0.0.1") == true, "\(source.status.lastError ?? "")")
            #expect(source.currentPods == nil)
        }
    }
}
