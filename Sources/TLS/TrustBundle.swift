import COpenSSL

public enum TrustBundleError: Error, Equatable, CustomStringConvertible {
    case empty
    case unreadable(OpenSSLError)
    /// The certificate at `index` (0-based, in file order) is not a CA.
    case notCA(index: Int, certificate: String)
    /// The certificate at `index` is a CA but not a root (not self-signed), so no
    /// chain could end at it.
    case notSelfSigned(index: Int, certificate: String)

    public var description: String {
        switch self {
        case .empty:
            return "the trust bundle holds no certificates"
        case .unreadable(let error):
            return "the trust bundle is not readable PEM: \(error)"
        case .notCA(let index, let certificate):
            return "trust bundle certificate #\(index + 1) (\(certificate)) is not a CA (basicConstraints CA:true); a bundle holds root CAs only"
        case .notSelfSigned(let index, let certificate):
            return "trust bundle certificate #\(index + 1) (\(certificate)) is not self-signed; a bundle holds root CAs only"
        }
    }
}

/// The roots a peer's chain must end at. Several roots may be present at once, so
/// a root can be rotated without downtime (old and new side by side). Parsed and
/// loaded into an OpenSSL trust store once; cheap to copy and share.
public struct TrustBundle: Sendable, Equatable, CustomStringConvertible {
    /// In the order given, duplicates removed.
    public let roots: [Certificate]
    /// Lowercase hex SHA-256 over the sorted SHA-256 fingerprints of the roots: the
    /// same set of roots gives the same value whatever their order in the file, so
    /// the SVID manager can tell a real change from a rewrite.
    public let fingerprint: String
    let store: TrustStore

    /// Reads every CERTIFICATE block of a PEM text (other blocks are skipped).
    public init(pem: String) throws {
        let certificates: [Certificate]
        do {
            certificates = try Certificate.chain(fromPEM: pem)
        } catch let error as OpenSSLError {
            if error.details == ["no CERTIFICATE block found"] { throw TrustBundleError.empty }
            throw TrustBundleError.unreadable(error)
        }
        try self.init(roots: certificates)
    }

    public init(roots: [Certificate]) throws {
        guard !roots.isEmpty else { throw TrustBundleError.empty }
        var unique: [Certificate] = []
        for (index, root) in roots.enumerated() {
            guard root.isCA else { throw TrustBundleError.notCA(index: index, certificate: root.identification) }
            guard root.isSelfSigned else { throw TrustBundleError.notSelfSigned(index: index, certificate: root.identification) }
            if !unique.contains(root) { unique.append(root) }
        }
        self.roots = unique
        self.fingerprint = Self.fingerprint(of: unique)
        self.store = try TrustStore(roots: unique)
    }

    /// The roots as one PEM text, in order.
    public func pemRepresentation() throws -> String {
        try roots.map { try $0.pemRepresentation() }.joined()
    }

    public var description: String {
        "TrustBundle(\(roots.count) root(s), fingerprint \(fingerprint.prefix(16))…)"
    }

    public static func == (lhs: TrustBundle, rhs: TrustBundle) -> Bool {
        lhs.fingerprint == rhs.fingerprint
    }

    private static func fingerprint(of roots: [Certificate]) -> String {
        let digests = roots.map(\.sha256Fingerprint).sorted { $0.lexicographicallyPrecedes($1) }
        let joined = digests.flatMap { $0 }
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_Digest(joined, joined.count, &digest, &length, EVP_sha256(), nil) == 1 else {
            OpenSSLError.clearQueue()
            // Never equal to a real digest, so a failure reads as "changed".
            return "unavailable-\(joined.count)"
        }
        return digest.prefix(Int(length)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}

/// An OpenSSL X509_STORE holding a bundle's roots, set up once and then only read:
/// OpenSSL locks the store internally during lookups, so any number of
/// X509_STORE_CTX verifications may use it at once.
final class TrustStore: @unchecked Sendable {
    let pointer: OpaquePointer

    /// Deepest chain accepted: leaf, up to 6 intermediates, root.
    static let maximumDepth: Int32 = 7

    init(roots: [Certificate]) throws {
        OpenSSLError.clearQueue()
        guard let store = X509_STORE_new() else { throw OpenSSLError.drain("making a trust store") }
        pointer = store
        for root in roots {
            guard X509_STORE_add_cert(store, root.pointer) == 1 else {
                throw OpenSSLError.drain("adding \(root.identification) to a trust store")
            }
        }
        guard X509_STORE_set_flags(store, UInt(X509_V_FLAG_X509_STRICT)) == 1,
              X509_STORE_set_depth(store, Self.maximumDepth) == 1 else {
            throw OpenSSLError.drain("configuring a trust store")
        }
    }

    deinit {
        X509_STORE_free(pointer)
    }
}
