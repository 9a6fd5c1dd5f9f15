import COpenSSL

/// An X.509 certificate, parsed once and shared. Immutable.
public final class Certificate: @unchecked Sendable, Hashable, CustomStringConvertible {
    /// Owned reference (one X509_up_ref'd count), freed in deinit. Only read after
    /// construction, which OpenSSL allows from several threads at once.
    let pointer: OpaquePointer

    /// Takes ownership of one reference count of `pointer`.
    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    /// Shares `pointer`, adding a reference count.
    init(borrowing pointer: OpaquePointer) {
        X509_up_ref(pointer)
        self.pointer = pointer
    }

    deinit {
        X509_free(pointer)
    }

    /// Every certificate in a PEM text, in order. Throws if there is none, or if
    /// any block fails to parse.
    public static func chain(fromPEM pem: String) throws -> [Certificate] {
        OpenSSLError.clearQueue()
        var result: [Certificate] = []
        try pem.withCString { text in
            guard let bio = BIO_new_mem_buf(text, -1) else { throw OpenSSLError.drain("reading PEM certificates") }
            defer { BIO_free(bio) }
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                result.append(Certificate(taking: x509))
            }
            // Reading stops with "no start line" at the end of the input, which is
            // expected; any other error means a damaged certificate.
            let last = ERR_peek_last_error()
            if last != 0, ERR_GET_REASON(last) != PEM_R_NO_START_LINE {
                throw OpenSSLError.drain("reading PEM certificates")
            }
            ERR_clear_error()
        }
        guard !result.isEmpty else {
            throw OpenSSLError(operation: "reading PEM certificates", details: ["no CERTIFICATE block found"])
        }
        return result
    }

    public convenience init(pem: String) throws {
        let first = try Certificate.chain(fromPEM: pem)[0]
        // `first` must outlive the up-ref in init(borrowing:): the optimiser may
        // otherwise free it (and its X509) before the new reference is taken.
        self.init(borrowing: first.pointer)
        withExtendedLifetime(first) {}
    }

    public convenience init(der: [UInt8]) throws {
        OpenSSLError.clearQueue()
        let x509: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var start = buffer.baseAddress
            return d2i_X509(nil, &start, buffer.count)
        }
        guard let x509 else { throw OpenSSLError.drain("reading a DER certificate") }
        self.init(taking: x509)
    }

    public func pemRepresentation() throws -> String {
        try withMemoryBIO(operation: "writing a certificate as PEM") { bio in
            PEM_write_bio_X509(bio, pointer) == 1
        }
    }

    public func derRepresentation() throws -> [UInt8] {
        OpenSSLError.clearQueue()
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509(pointer, &out)
        guard length > 0, let out else { throw OpenSSLError.drain("writing a certificate as DER") }
        defer { cssl_OPENSSL_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    /// Seconds since the epoch.
    public var notBefore: Int64 { Self.epochSeconds(X509_get0_notBefore(pointer)) }
    public var notAfter: Int64 { Self.epochSeconds(X509_get0_notAfter(pointer)) }

    /// The serial number in uppercase hex.
    public var serialNumberHex: String {
        guard let serial = X509_get0_serialNumber(pointer), let bn = ASN1_INTEGER_to_BN(serial, nil) else { return "" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "" }
        defer { cssl_OPENSSL_free(hex) }
        return String(cString: hex)
    }

    /// The URI subject alternative names, in order.
    public var uriSANs: [String] {
        guard let raw = X509_get_ext_d2i(pointer, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { cssl_GENERAL_NAMES_free(names) }
        var result: [String] = []
        for index in 0..<cssl_sk_GENERAL_NAME_num(names) {
            guard let name = cssl_sk_GENERAL_NAME_value(names, index), name.pointee.type == GEN_URI,
                  let uri = name.pointee.d.uniformResourceIdentifier,
                  let bytes = ASN1_STRING_get0_data(uri) else { continue }
            result.append(String(decoding: UnsafeBufferPointer(start: bytes, count: Int(ASN1_STRING_length(uri))), as: UTF8.self))
        }
        return result
    }

    /// The subject as one line, e.g. `O=mesh-agent, CN=node-a`.
    public var subject: String {
        guard let name = X509_get_subject_name(pointer) else { return "" }
        return (try? withMemoryBIO(operation: "printing a subject") { bio in
            X509_NAME_print_ex(bio, name, 0, cssl_XN_FLAG_RFC2253()) >= 0
        }) ?? ""
    }

    public var description: String { "Certificate(\(subject), serial \(serialNumberHex))" }

    public static func == (lhs: Certificate, rhs: Certificate) -> Bool {
        X509_cmp(lhs.pointer, rhs.pointer) == 0
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(serialNumberHex)
    }

    private static func epochSeconds(_ time: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let time else { return 0 }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return 0 }
        return Int64(timegm(&parts))
    }
}
