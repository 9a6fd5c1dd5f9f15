import TLS

/// Signs workload SVIDs on this node with the node's intermediate CA (DESIGN.md §4,
/// "local" CA mode). The intermediate certificate and its key are read once, at
/// construction; to pick up a re-issued intermediate, make a new `LocalCA`.
public final class LocalCA: SVIDIssuer {
    public let trustDomain: String
    public let authority: CertificateAuthority

    /// The intermediate that signs.
    public var signingCertificate: Certificate { authority.certificate }

    /// Loads the intermediate from `certificatePath` (PEM: the intermediate first,
    /// then any further intermediates up to — not including — the root) and its key
    /// from `keyPath` (a regular file of mode 0600 or stricter, owned by root or the
    /// running user). Refuses, with an error naming the file, a missing, damaged or
    /// mismatched certificate or key, a certificate that is not a CA or whose name
    /// constraints exclude `trustDomain`, and one that has expired.
    public convenience init(certificatePath: String, keyPath: String, trustDomain: String, now: Int64 = CertificateBuilder.currentTime()) throws {
        let certificates = try CAFiles.readCertificates(path: certificatePath)
        let key = try CAFiles.readPrivateKey(path: keyPath)
        guard certificates[0].publicKeyMatches(key) else {
            throw CAFileError(path: keyPath, problem: "is not the private key of the certificate in \(certificatePath) (\(certificates[0]))")
        }
        do {
            try self.init(
                authority: CertificateAuthority(certificate: certificates[0], key: key, chain: Array(certificates.dropFirst())),
                trustDomain: trustDomain, now: now)
        } catch let error as CAFileError {
            throw error
        } catch {
            throw CAFileError(path: certificatePath, problem: "\(error)")
        }
    }

    /// Uses an intermediate already in memory.
    public init(authority: CertificateAuthority, trustDomain: String, now: Int64 = CertificateBuilder.currentTime()) throws {
        try SpiffeID.validateTrustDomain(trustDomain)
        let certificate = authority.certificate
        if let constraints = certificate.nameConstraints, !constraints.permitsURIHost(trustDomain) {
            throw LocalCAError.trustDomainNotPermitted(trustDomain: trustDomain, certificate: "\(certificate)", constraints: constraints.permitted)
        }
        guard certificate.notAfter > now else {
            throw LocalCAError.expired(certificate: "\(certificate)", notAfter: certificate.notAfter)
        }
        self.trustDomain = trustDomain
        self.authority = authority
    }

    /// A fresh SVID for `identity` over `key`'s public key, valid from a minute ago
    /// (clock skew) for `lifetime`, never beyond the intermediate's own expiry.
    /// Returns `[leaf, intermediate, further intermediates…]`.
    public func issue(identity: SpiffeID, key: PrivateKey, lifetime: Duration) throws -> [Certificate] {
        guard identity.trustDomain == trustDomain else {
            throw LocalCAError.wrongTrustDomain(identity: identity.description, trustDomain: trustDomain)
        }
        let leaf = try CertificateBuilder.issueSVID(identity: identity, publicKeyOf: key, issuer: authority, lifetime: lifetime)
        return [leaf, authority.certificate] + authority.chain
    }
}

public enum LocalCAError: Error, Equatable, CustomStringConvertible {
    case trustDomainNotPermitted(trustDomain: String, certificate: String, constraints: [String])
    case expired(certificate: String, notAfter: Int64)
    case wrongTrustDomain(identity: String, trustDomain: String)

    public var description: String {
        switch self {
        case .trustDomainNotPermitted(let trustDomain, let certificate, let constraints):
            return "the intermediate CA \(certificate) may not sign for trust domain \(trustDomain) (its name constraints permit \(constraints.joined(separator: ", ")))"
        case .expired(let certificate, let notAfter):
            return "the intermediate CA \(certificate) expired at \(Certificate.formatTime(notAfter)); issue a new one with agentctl ca issue-intermediate"
        case .wrongTrustDomain(let identity, let trustDomain):
            return "cannot issue \(identity): this CA signs for trust domain \(trustDomain) only"
        }
    }
}
