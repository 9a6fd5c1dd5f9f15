import TLS

/// Signs workload certificates (X.509 SVIDs). The local CA signs with the node's
/// intermediate; an external CA would send a CSR upstream.
public protocol SVIDIssuer: Sendable {
    /// The trust domain this issuer may sign for.
    var trustDomain: String { get }

    /// The certificate it signs with (the node intermediate for the local CA).
    var signingCertificate: Certificate { get }

    /// Signs a certificate for `identity` over `key`'s public key, valid for
    /// `lifetime` seconds from now (with a small allowance for clock skew before
    /// now). Returns the leaf followed by the intermediates a peer needs to reach
    /// a bundle root.
    func issue(identity: SpiffeID, key: PrivateKey, lifetime: Duration) throws -> [Certificate]
}
