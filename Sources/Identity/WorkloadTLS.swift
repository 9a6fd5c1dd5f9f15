import NIOConcurrencyHelpers
import NIOCore
import TLS

/// The TLS contexts the agent speaks with on behalf of each workload: one per
/// identity and role, built from the identity's current SVID and the current
/// trust bundle, and reused by every connection until either changes (an
/// `SSL_CTX` is expensive to make; sharing it is what keeps handshakes cheap).
/// Connections already established keep the context they started with, so a
/// rotation never disturbs them.
public final class WorkloadTLS: Sendable {
    private struct Key: Hashable {
        var identity: SpiffeID
        var role: TLSConfiguration.Role
        var expectedPeer: SpiffeID?
    }

    private struct Cached {
        var serial: String
        var bundleFingerprint: String
        var context: TLSContext
    }

    private let svids: SVIDManager
    private let bundle: @Sendable () -> TrustBundle
    private let acceptedTrustDomains: Set<String>
    private let applicationProtocols: [String]
    private let handshakeTimeout: TimeAmount
    private let verifierWrapper: @Sendable (any PeerCertificateVerifier) -> any PeerCertificateVerifier
    private let cache = NIOLockedValueBox<[Key: Cached]>([:])

    /// - Parameter verifierWrapper: lets tests observe verification; the identity by default.
    public init(
        svids: SVIDManager, bundle: @escaping @Sendable () -> TrustBundle, acceptedTrustDomains: Set<String>,
        applicationProtocols: [String] = ["h2"], handshakeTimeout: TimeAmount = .seconds(10),
        verifierWrapper: @escaping @Sendable (any PeerCertificateVerifier) -> any PeerCertificateVerifier = { $0 }
    ) {
        self.svids = svids
        self.bundle = bundle
        self.acceptedTrustDomains = acceptedTrustDomains
        self.applicationProtocols = applicationProtocols
        self.handshakeTimeout = handshakeTimeout
        self.verifierWrapper = verifierWrapper
    }

    /// The context to open (client) or accept (server) a connection as
    /// `identity`; with `expectedPeer`, a peer with any other SPIFFE ID fails
    /// the handshake.
    public func context(for identity: SpiffeID, role: TLSConfiguration.Role, expectedPeer: SpiffeID? = nil) throws -> TLSContext {
        guard let svid = svids.svid(for: identity) else {
            throw WorkloadTLSError.noCertificate(identity)
        }
        let currentBundle = bundle()
        let key = Key(identity: identity, role: role, expectedPeer: expectedPeer)
        let serial = svid.leaf.serialNumberHex
        if let cached = cache.withLockedValue({ $0[key] }), cached.serial == serial, cached.bundleFingerprint == currentBundle.fingerprint {
            return cached.context
        }
        let verifier = verifierWrapper(SpiffeVerifier(bundle: currentBundle, acceptedTrustDomains: acceptedTrustDomains).expecting(expectedPeer))
        let context = try TLSContext(configuration: TLSConfiguration(
            role: role, certificateChain: svid.chain, privateKey: svid.key, verifier: verifier,
            applicationProtocols: applicationProtocols, handshakeTimeout: handshakeTimeout
        ))
        cache.withLockedValue { cache in
            cache[key] = Cached(serial: serial, bundleFingerprint: currentBundle.fingerprint, context: context)
            // Contexts of identities that no longer hold a certificate go too.
            cache = cache.filter { svids.svid(for: $0.key.identity) != nil }
        }
        return context
    }
}

public enum WorkloadTLSError: Error, CustomStringConvertible {
    case noCertificate(SpiffeID)

    public var description: String {
        switch self {
        case .noCertificate(let identity):
            return "no valid certificate for \(identity) (its workload is not present, or issuing failed: see agentctl certs)"
        }
    }
}
