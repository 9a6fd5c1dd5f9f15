import COpenSSL

/// The JWS signature algorithms the agent verifies (RFC 7518 §3, RFC 8037 §3.1).
/// Only asymmetric ones: with HMAC the verifier holds the signing secret, and a
/// key set published for verification would let anyone mint tokens.
public enum JWSAlgorithm: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case RS256, RS384, RS512, ES256, ES384, EdDSA

    public var description: String { rawValue }

    /// The digest the signature covers; EdDSA hashes internally.
    var digest: MessageDigest? {
        switch self {
        case .RS256, .ES256: return .sha256
        case .RS384, .ES384: return .sha384
        case .RS512: return .sha512
        case .EdDSA: return nil
        }
    }
}

/// A public key for verifying JWS signatures, made from the members of a JWK
/// (RFC 7517/7518/8037). Immutable once made; one value can verify from many
/// threads at once.
///
/// Keys that make verification meaningless are refused when made, not when used:
/// RSA moduli under 2048 bits, RSA exponents that are even or 1, EC points that
/// are not on their curve.
public struct JSONWebKey: Sendable, CustomStringConvertible {
    public enum Curve: String, Hashable, Sendable, CaseIterable {
        case p256 = "P-256"
        case p384 = "P-384"

        /// Bytes of one coordinate, and of r and s in a JWS signature.
        public var coordinateLength: Int {
            switch self {
            case .p256: return 32
            case .p384: return 48
            }
        }
    }

    public enum Kind: Hashable, Sendable, CustomStringConvertible {
        case rsa(bits: Int)
        case ec(Curve)
        case ed25519

        public var description: String {
            switch self {
            case .rsa(let bits): return "RSA \(bits)-bit"
            case .ec(let curve): return "EC \(curve.rawValue)"
            case .ed25519: return "OKP Ed25519"
            }
        }
    }

    public static let minimumRSABits = 2048
    /// OpenSSL's own ceiling; a larger modulus could not verify anything.
    public static let maximumRSABits = 16384
    /// OpenSSL refuses larger public exponents for big moduli; real keys use 65537.
    static let maximumRSAExponentBytes = 8

    public let kind: Kind
    private let key: VerificationKey

    public var description: String { kind.description }

    /// An RSA key from the JWK members `n` and `e` (big-endian, already decoded
    /// from base64url).
    public init(rsaModulus modulus: [UInt8], exponent: [UInt8]) throws(JSONWebKeyError) {
        let modulus = Array(modulus.drop(while: { $0 == 0 }))
        let exponent = Array(exponent.drop(while: { $0 == 0 }))
        let bits = Self.bitCount(modulus)
        guard bits >= Self.minimumRSABits else { throw .rsaModulusTooSmall(bits: bits) }
        guard bits <= Self.maximumRSABits else { throw .rsaModulusTooLarge(bits: bits) }
        guard modulus.last.map({ $0 & 1 == 1 }) == true else { throw .invalidKey("the RSA modulus is even, so it is not a product of two primes") }
        // e = 1 makes every message its own signature; an even e has no inverse.
        guard exponent.count <= Self.maximumRSAExponentBytes, exponent.last.map({ $0 & 1 == 1 }) == true, exponent != [1] else {
            throw .invalidKey("the RSA exponent must be odd, greater than 1 and at most 64 bits (65537 is usual)")
        }
        let rsaEncryption: [UInt8] = [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01, 0x05, 0x00]
        let publicKey = DER.sequence(DER.integer(modulus) + DER.integer(exponent))
        let info = DER.sequence(DER.sequence(rsaEncryption) + DER.bitString(publicKey))
        self.kind = .rsa(bits: bits)
        self.key = try VerificationKey(subjectPublicKeyInfo: info, kind: kind)
    }

    /// An EC key from the JWK members `crv`, `x` and `y`. Each coordinate must be
    /// the curve's full length, as RFC 7518 §6.2.1.2 requires.
    public init(curve: Curve, x: [UInt8], y: [UInt8]) throws(JSONWebKeyError) {
        for (name, coordinate) in [("x", x), ("y", y)] where coordinate.count != curve.coordinateLength {
            throw .invalidKey("the \(curve.rawValue) coordinate \(name) is \(coordinate.count) bytes; it must be exactly \(curve.coordinateLength)")
        }
        let ecPublicKey: [UInt8] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]
        let curveIdentifier: [UInt8]
        switch curve {
        case .p256: curveIdentifier = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]
        case .p384: curveIdentifier = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22]
        }
        let info = DER.sequence(DER.sequence(ecPublicKey + curveIdentifier) + DER.bitString([0x04] + x + y))
        self.kind = .ec(curve)
        self.key = try VerificationKey(subjectPublicKeyInfo: info, kind: kind)
        try key.checkPublicKey(kind: kind)
    }

    /// An Ed25519 key from the JWK member `x` (`kty: OKP`, `crv: Ed25519`).
    public init(ed25519 x: [UInt8]) throws(JSONWebKeyError) {
        guard x.count == 32 else { throw .invalidKey("an Ed25519 public key is 32 bytes, got \(x.count)") }
        let ed25519: [UInt8] = [0x06, 0x03, 0x2B, 0x65, 0x70]
        let info = DER.sequence(DER.sequence(ed25519) + DER.bitString(x))
        self.kind = .ed25519
        self.key = try VerificationKey(subjectPublicKeyInfo: info, kind: kind)
    }

    /// Whether this key is of the type `algorithm` needs: RS* an RSA key, ES256
    /// P-256, ES384 P-384, EdDSA Ed25519.
    public func canVerify(_ algorithm: JWSAlgorithm) -> Bool {
        switch (algorithm, kind) {
        case (.RS256, .rsa), (.RS384, .rsa), (.RS512, .rsa): return true
        case (.ES256, .ec(.p256)), (.ES384, .ec(.p384)): return true
        case (.EdDSA, .ed25519): return true
        default: return false
        }
    }

    /// Whether `signature` is this key's `algorithm` signature over `signedBytes`
    /// (for a JWS, the ASCII of `header.payload`). ES signatures are JWS's raw
    /// `r || s`. Throws, rather than answering false, when the question cannot be
    /// asked: an algorithm this key cannot verify, a signature of the wrong length.
    public func verify(signature: some Collection<UInt8>, signedBytes: some Collection<UInt8>, algorithm: JWSAlgorithm) throws(JSONWebKeyError) -> Bool {
        guard canVerify(algorithm) else { throw .algorithmMismatch(algorithm: algorithm, key: kind) }
        var signature = Array(signature)
        switch kind {
        case .rsa(let bits):
            let expected = (bits + 7) / 8
            guard signature.count == expected else { throw .signatureLength(algorithm: algorithm, expected: expected, actual: signature.count) }
        case .ec(let curve):
            let expected = 2 * curve.coordinateLength
            guard signature.count == expected else { throw .signatureLength(algorithm: algorithm, expected: expected, actual: signature.count) }
            signature = DER.sequence(DER.integer(Array(signature[..<curve.coordinateLength])) + DER.integer(Array(signature[curve.coordinateLength...])))
        case .ed25519:
            guard signature.count == 64 else { throw .signatureLength(algorithm: algorithm, expected: 64, actual: signature.count) }
        }
        let digest: OpaquePointer?
        if let messageDigest = algorithm.digest {
            guard let pointer = messageDigest.pointer else { throw .openSSL(OpenSSLError(operation: "fetching \(messageDigest.name)", details: [])) }
            digest = pointer
        } else {
            digest = nil
        }
        let message = signedBytes.withContiguousStorageIfAvailable { Array($0) } ?? Array(signedBytes)
        return try key.verify(signature: signature, message: message, digest: digest)
    }

    /// Bits of a big-endian unsigned number without leading zero bytes.
    static func bitCount(_ bytes: [UInt8]) -> Int {
        guard let first = bytes.first else { return 0 }
        return (bytes.count - 1) * 8 + (8 - first.leadingZeroBitCount)
    }
}

/// Why a key could not be made, or a signature could not be checked.
public enum JSONWebKeyError: Error, Equatable, CustomStringConvertible {
    case rsaModulusTooSmall(bits: Int)
    case rsaModulusTooLarge(bits: Int)
    /// The members do not describe a usable public key (the reason says which).
    case invalidKey(String)
    case algorithmMismatch(algorithm: JWSAlgorithm, key: JSONWebKey.Kind)
    case signatureLength(algorithm: JWSAlgorithm, expected: Int, actual: Int)
    case openSSL(OpenSSLError)

    public var description: String {
        switch self {
        case .rsaModulusTooSmall(let bits):
            return "the RSA modulus is \(bits) bits; at least \(JSONWebKey.minimumRSABits) are required (ask the issuer for a stronger key)"
        case .rsaModulusTooLarge(let bits):
            return "the RSA modulus is \(bits) bits; at most \(JSONWebKey.maximumRSABits) are supported"
        case .invalidKey(let reason):
            return reason
        case .algorithmMismatch(let algorithm, let key):
            return "an \(key) key cannot verify \(algorithm) signatures"
        case .signatureLength(let algorithm, let expected, let actual):
            return "the \(algorithm) signature is \(actual) bytes; this key's signatures are \(expected)"
        case .openSSL(let error):
            return error.description
        }
    }
}

/// Owns the EVP_PKEY. OpenSSL 3 allows one key to be used by concurrent
/// verifications as long as each has its own EVP_MD_CTX, which `verify` makes.
private final class VerificationKey: @unchecked Sendable {
    let pointer: OpaquePointer

    init(subjectPublicKeyInfo der: [UInt8], kind: JSONWebKey.Kind) throws(JSONWebKeyError) {
        OpenSSLError.clearQueue()
        let decoded: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            guard let key = d2i_PUBKEY(nil, &cursor, buffer.count) else { return nil }
            // Trailing bytes would mean our own encoding went wrong.
            guard let cursor, let base = buffer.baseAddress, cursor - base == buffer.count else {
                EVP_PKEY_free(key)
                return nil
            }
            return key
        }
        guard let decoded else {
            let error = OpenSSLError.drain("reading an \(kind) public key")
            if case .ec(let curve) = kind {
                throw .invalidKey("the point (x, y) is not on the \(curve.rawValue) curve (\(error))")
            }
            throw .openSSL(error)
        }
        self.pointer = decoded
    }

    deinit {
        EVP_PKEY_free(pointer)
    }

    /// OpenSSL's full public-key check (for EC: on the curve, not the point at
    /// infinity, of the right order). Decoding alone checks less on some paths.
    func checkPublicKey(kind: JSONWebKey.Kind) throws(JSONWebKeyError) {
        OpenSSLError.clearQueue()
        guard let context = EVP_PKEY_CTX_new_from_pkey(nil, pointer, nil) else {
            throw .openSSL(OpenSSLError.drain("checking an \(kind) public key"))
        }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_public_check(context) == 1 else {
            let error = OpenSSLError.drain("checking an \(kind) public key")
            if case .ec(let curve) = kind {
                throw .invalidKey("the point (x, y) is not a valid \(curve.rawValue) public key (\(error))")
            }
            throw .openSSL(error)
        }
    }

    /// `signature` is never empty here (lengths were checked), so its buffer has
    /// an address; an empty message is passed as a one-byte buffer of length 0.
    func verify(signature: [UInt8], message: [UInt8], digest: OpaquePointer?) throws(JSONWebKeyError) -> Bool {
        OpenSSLError.clearQueue()
        guard let context = EVP_MD_CTX_new() else { throw .openSSL(OpenSSLError.drain("allocating a digest context")) }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, digest, nil, pointer) == 1 else {
            throw .openSSL(OpenSSLError.drain("starting a signature verification"))
        }
        let result = signature.withUnsafeBufferPointer { signatureBuffer in
            (message.isEmpty ? [0] : message).withUnsafeBufferPointer { messageBuffer in
                EVP_DigestVerify(context, signatureBuffer.baseAddress, signatureBuffer.count, messageBuffer.baseAddress, message.count)
            }
        }
        // A mismatch leaves reasons on this thread's queue; they are not errors of ours.
        OpenSSLError.clearQueue()
        return result == 1
    }
}

/// A digest implementation fetched from OpenSSL's default provider once for the
/// process: an implicit fetch on every verification would take provider locks.
final class MessageDigest: @unchecked Sendable {
    let name: String
    /// nil if the provider lacks it (then every verification that needs it fails).
    let pointer: OpaquePointer?

    private init(_ name: String) {
        self.name = name
        self.pointer = EVP_MD_fetch(nil, name, nil)
    }

    static let sha256 = MessageDigest("SHA256")
    static let sha384 = MessageDigest("SHA384")
    static let sha512 = MessageDigest("SHA512")
}

/// Just enough DER to write a SubjectPublicKeyInfo and an ECDSA-Sig-Value.
private enum DER {
    static func length(_ count: Int) -> [UInt8] {
        guard count >= 0x80 else { return [UInt8(count)] }
        var bytes: [UInt8] = []
        var remaining = count
        while remaining > 0 {
            bytes.insert(UInt8(remaining & 0xFF), at: 0)
            remaining >>= 8
        }
        return [0x80 | UInt8(bytes.count)] + bytes
    }

    static func sequence(_ content: [UInt8]) -> [UInt8] {
        [0x30] + length(content.count) + content
    }

    /// A non-negative INTEGER from big-endian magnitude bytes.
    static func integer(_ magnitude: [UInt8]) -> [UInt8] {
        var content = Array(magnitude.drop(while: { $0 == 0 }))
        if content.isEmpty || content[0] & 0x80 != 0 { content.insert(0, at: 0) }
        return [0x02] + length(content.count) + content
    }

    static func bitString(_ content: [UInt8]) -> [UInt8] {
        [0x03] + length(content.count + 1) + [0x00] + content
    }
}
