import COpenSSL

/// A private key held in memory (never written anywhere by this type unless asked
/// for its PEM). Immutable once made; shared between contexts freely.
public final class PrivateKey: @unchecked Sendable {
    /// Owned reference, freed in deinit. OpenSSL's EVP_PKEY is safe to share for
    /// concurrent reads (signing), which is all we do after construction.
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        EVP_PKEY_free(pointer)
    }

    /// A new ECDSA P-256 key from OpenSSL's CSPRNG.
    public static func generateP256() throws -> PrivateKey {
        OpenSSLError.clearQueue()
        guard let key = cssl_EVP_EC_gen("P-256") else {
            throw OpenSSLError.drain("generating a P-256 key")
        }
        return PrivateKey(taking: key)
    }

    /// Reads a PEM private key (PKCS#8 or traditional EC). An encrypted key fails
    /// (OpenSSL is given an empty passphrase, so it never prompts on a terminal).
    public convenience init(pem: String) throws {
        OpenSSLError.clearQueue()
        let key: OpaquePointer? = pem.withCString { text in
            guard let bio = BIO_new_mem_buf(text, -1) else { return nil }
            defer { BIO_free(bio) }
            return "".withCString { passphrase in
                PEM_read_bio_PrivateKey(bio, nil, nil, UnsafeMutableRawPointer(mutating: passphrase))
            }
        }
        guard let key else {
            throw OpenSSLError.drain("reading a PEM private key")
        }
        self.init(taking: key)
    }

    /// PKCS#8 PEM.
    public func pemRepresentation() throws -> String {
        try withMemoryBIO(operation: "writing a private key as PEM") { bio in
            PEM_write_bio_PrivateKey(bio, pointer, nil, nil, 0, nil, nil) == 1
        }
    }
}

/// Runs `write` against a memory BIO and returns what it wrote, as text.
func withMemoryBIO(operation: String, _ write: (OpaquePointer) -> Bool) throws -> String {
    OpenSSLError.clearQueue()
    guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError.drain(operation) }
    defer { BIO_free(bio) }
    guard write(bio) else { throw OpenSSLError.drain(operation) }
    var data: UnsafeMutablePointer<CChar>?
    let length = cssl_BIO_get_mem_data(bio, &data)
    guard let data, length > 0 else { return "" }
    return String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
}
