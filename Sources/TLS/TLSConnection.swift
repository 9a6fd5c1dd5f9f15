import COpenSSL
import NIOCore

/// One TLS session: an OpenSSL `SSL` that reads ciphertext from and writes
/// ciphertext to two in-memory BIOs of our own over NIO `ByteBuffer`s, never a
/// socket. Every non-blocking OpenSSL call becomes a small result enum; the
/// handler decides what to do with it. Used on one event loop only.
///
/// Copies: inbound ciphertext is handed to OpenSSL straight from the buffer the
/// channel read (no staging copy into a memory BIO), and plaintext is decrypted
/// straight into the buffer passed up the pipeline. Outbound records are appended
/// by OpenSSL straight into the one buffer that the next flush writes.
final class TLSConnection {
    enum HandshakeResult: Equatable {
        case complete
        case wantRead
        case failed(TLSError)
    }

    enum ReadResult: Equatable {
        /// Some plaintext was appended to the buffer.
        case bytes
        /// All ciphertext received so far has been used; more is needed.
        case wantRead
        /// The peer's close_notify: nothing more will come.
        case closeNotify
        case failed(TLSError)
    }

    enum WriteResult: Equatable {
        case complete
        case failed(TLSError)
    }

    /// Largest TLS record payload; plaintext is cut into records of this size.
    static let maximumRecordSize = 16_384
    /// Bytes a TLS 1.3 AEAD record adds: header 5, content type 1, tag 16.
    static let recordOverhead = 22
    /// Longest chain we hand to the verifier (leaf included).
    static let maximumPeerChainLength = 10

    let context: TLSContext
    private let ssl: OpaquePointer
    private let allocator: ByteBufferAllocator

    /// Ciphertext from the network that OpenSSL has not taken yet.
    private var inbound: ByteBuffer?
    /// Ciphertext OpenSSL wrote since the last `takeOutbound()`.
    private var outbound: ByteBuffer?
    /// Capacity for the next outbound buffer, when a large write is coming.
    private var outboundCapacityHint = 0
    /// Small writes gathered into one record; exists only while encrypting a flush.
    private var staging: ByteBuffer?

    /// Set by the verify callback once the verifier accepts the peer.
    private(set) var peerIdentity: SpiffeID?
    /// Set by a callback that refused the handshake, so the failure says why.
    private var refusal: TLSError?

    init(context: TLSContext, serverName: String?, allocator: ByteBufferAllocator) throws {
        self.context = context
        self.allocator = allocator
        OpenSSLError.clearQueue()
        guard let ssl = SSL_new(context.pointer) else {
            throw TLSError.handshakeFailed(TLSFailure(.other, details: OpenSSLError.drain("making an SSL").details))
        }
        self.ssl = ssl
        // From here on, deinit frees the SSL (and with it the BIOs it owns).
        let readBIO = BIO_new(byteBufferBIOMethod.pointer)
        let writeBIO = BIO_new(byteBufferBIOMethod.pointer)
        guard let readBIO, let writeBIO else {
            BIO_free(readBIO)
            BIO_free(writeBIO)
            throw TLSError.handshakeFailed(TLSFailure(.other, details: OpenSSLError.drain("making BIOs").details))
        }
        let unretained = Unmanaged.passUnretained(self).toOpaque()
        BIO_set_data(readBIO, unretained)
        BIO_set_data(writeBIO, unretained)
        SSL_set_bio(ssl, readBIO, writeBIO)  // the SSL now owns both
        SSL_set_ex_data(ssl, tlsConnectionExDataIndex, unretained)

        switch context.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client:
            SSL_set_connect_state(ssl)
            if let serverName, cssl_SSL_set_tlsext_host_name(ssl, serverName) != 1 {
                throw TLSError.handshakeFailed(TLSFailure(.other, details: OpenSSLError.drain("setting the server name \(serverName)").details))
            }
            if !context.alpnWireFormat.isEmpty {
                // Returns 0 on success, unlike most of OpenSSL.
                let failed = context.alpnWireFormat.withUnsafeBufferPointer {
                    SSL_set_alpn_protos(ssl, $0.baseAddress, UInt32($0.count))
                }
                if failed != 0 {
                    throw TLSError.handshakeFailed(TLSFailure(.other, details: OpenSSLError.drain("offering ALPN").details))
                }
            }
        }
    }

    deinit {
        // Callbacks can no longer run: clear the unretained references first.
        SSL_set_ex_data(ssl, tlsConnectionExDataIndex, nil)
        if let bio = SSL_get_rbio(ssl) { BIO_set_data(bio, nil) }
        if let bio = SSL_get_wbio(ssl) { BIO_set_data(bio, nil) }
        SSL_free(ssl)
    }

    static func from(ssl: OpaquePointer) -> TLSConnection? {
        guard let raw = SSL_get_ex_data(ssl, tlsConnectionExDataIndex) else { return nil }
        return Unmanaged<TLSConnection>.fromOpaque(raw).takeUnretainedValue()
    }

    // MARK: - Ciphertext in and out

    /// Gives OpenSSL ciphertext from the network. Usually the buffer is kept as is
    /// (no copy); only when OpenSSL has not used the previous one up is it appended.
    func receive(_ buffer: ByteBuffer) {
        if inbound == nil || inbound!.readableBytes == 0 {
            inbound = buffer
        } else {
            var incoming = buffer
            inbound!.writeBuffer(&incoming)
        }
    }

    var inboundBytes: Int { inbound?.readableBytes ?? 0 }

    /// Ciphertext not yet decrypted, ours or inside OpenSSL (which reads ahead).
    var hasBufferedInput: Bool { inboundBytes > 0 || SSL_has_pending(ssl) == 1 }

    /// Drops ciphertext that will never be read (after close_notify or an error).
    func discardInbound() {
        inbound = nil
    }

    /// Everything OpenSSL has written since the last call, as one buffer.
    func takeOutbound() -> ByteBuffer? {
        defer { outbound = nil }
        return outbound
    }

    /// Sizes the next outbound buffer for `plaintextBytes` of application data, so
    /// OpenSSL's records land in it without reallocation.
    func reserveOutbound(plaintextBytes: Int) {
        let records = plaintextBytes / Self.maximumRecordSize + 1
        outboundCapacityHint = plaintextBytes + records * Self.recordOverhead + 64
    }

    // Called by the BIOs, from inside SSL_* calls.

    fileprivate func bioRead(into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard inbound != nil else { return 0 }
        let count = inbound!.readWithUnsafeReadableBytes { source in
            let count = min(source.count, destination.count)
            destination.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: count)
            return count
        }
        // Let the channel's read buffer go as soon as OpenSSL has all of it.
        if inbound!.readableBytes == 0 { inbound = nil }
        return count
    }

    fileprivate func bioWrite(_ source: UnsafeRawBufferPointer) {
        if outbound == nil {
            outbound = allocator.buffer(capacity: max(source.count, outboundCapacityHint, 1024))
            outboundCapacityHint = 0
        }
        outbound!.writeBytes(source)
    }

    // MARK: - Handshake

    func doHandshake() -> HandshakeResult {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            return .complete
        }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantRead
        default:
            return .failed(failure(duringHandshake: true))
        }
    }

    /// The ALPN protocol both sides agreed on.
    var negotiatedProtocol: String? {
        var name: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &name, &length)
        guard let name, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: name, count: Int(length)), as: UTF8.self)
    }

    /// Checks what OpenSSL cannot: that the peer was verified by our verifier, and
    /// that ALPN agreed on a protocol when we asked for one.
    func checkCompletedHandshake() -> TLSError? {
        guard peerIdentity != nil else {
            return .peerVerificationFailed(PeerVerificationError(.noCertificate, "the handshake completed without a verified peer certificate"))
        }
        let wanted = context.configuration.applicationProtocols
        if !wanted.isEmpty {
            guard let chosen = negotiatedProtocol, wanted.contains(chosen) else {
                let said = negotiatedProtocol.map { "\"\($0)\"" } ?? "none"
                return .handshakeFailed(TLSFailure(.noApplicationProtocol, details: ["the server selected \(said); we require one of \(wanted.joined(separator: ", "))"]))
            }
        }
        return nil
    }

    // MARK: - Application data

    /// Decrypts into the writable space of `buffer` (at least one byte must be
    /// free). Call until it returns something other than `.bytes`.
    func read(into buffer: inout ByteBuffer) -> ReadResult {
        ERR_clear_error()
        var rc: Int32 = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1) { space in
            rc = SSL_read(ssl, space.baseAddress, Int32(clamping: space.count))
            return rc > 0 ? Int(rc) : 0
        }
        if rc > 0 { return .bytes }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantRead
        case SSL_ERROR_ZERO_RETURN:
            return .closeNotify
        default:
            // In TLS 1.3 a client's handshake is complete before the server has
            // judged its certificate; the server's verdict arrives here, as an alert.
            let error = failure(duringHandshake: false)
            if case .protocolError(let failure) = error, failure.reason == .certificateRejectedByPeer {
                return .failed(.handshakeFailed(failure))
            }
            return .failed(error)
        }
    }

    /// Encrypts `buffer` into records of up to 16 KiB. With `gather`, writes below
    /// `gatherLimit` are collected and encrypted together (HTTP/2 writes a 9-byte
    /// frame header and its payload separately), and once something is collected
    /// the writes after it join it, up to `stagingLimit`: a frame header then
    /// shares full records with the payloads around it instead of taking a
    /// record, and a `SSL_write`, of its own (measured: about 3% less CPU per GB
    /// through the tunnel). A large write with nothing collected before it goes
    /// straight from the caller's buffer, OpenSSL cutting it into records. Call
    /// `finishEncrypting()` once the flush's writes are all in.
    func encrypt(_ buffer: ByteBuffer, gather: Bool) -> WriteResult {
        let count = buffer.readableBytes
        guard count > 0 else { return .complete }
        let staged = staging?.readableBytes ?? 0
        if gather && (count < Self.gatherLimit || (staged > 0 && staged + count <= Self.stagingLimit)) {
            if staged + count > Self.stagingLimit, case .failed(let error) = finishEncrypting() {
                return .failed(error)
            }
            if staging == nil { staging = allocator.buffer(capacity: Self.maximumRecordSize) }
            var copy = buffer
            staging!.writeBuffer(&copy)
            return .complete
        }
        if case .failed(let error) = finishEncrypting() { return .failed(error) }
        return buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let chunk = min(bytes.count - offset, 1 << 30)
                if case .failed(let error) = sslWrite(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + chunk)])) {
                    return .failed(error)
                }
                offset += chunk
            }
            return .complete
        }
    }

    /// Writes smaller than this are gathered into shared records.
    static let gatherLimit = 2048
    /// Collected writes are encrypted once they reach this much.
    static let stagingLimit = 64 * 1024

    /// Encrypts what `encrypt` staged as the last, possibly short, record.
    func finishEncrypting() -> WriteResult {
        guard let staged = staging?.readableBytes, staged > 0 else { return .complete }
        let result = staging!.withUnsafeReadableBytes { sslWrite($0) }
        staging!.clear()
        return result
    }

    /// Drops the staging buffer between flushes (idle connections hold no memory).
    func releaseStaging() {
        staging = nil
    }

    private func sslWrite(_ bytes: UnsafeRawBufferPointer) -> WriteResult {
        guard !bytes.isEmpty else { return .complete }
        ERR_clear_error()
        // Without SSL_MODE_ENABLE_PARTIAL_WRITE, and with a BIO that takes every
        // write, SSL_write either writes everything or fails.
        let rc = SSL_write(ssl, bytes.baseAddress, Int32(bytes.count))
        if rc > 0 { return .complete }
        return .failed(failure(duringHandshake: false))
    }

    // MARK: - Closing

    /// Writes our close_notify into the outbound buffer. Reading goes on: OpenSSL
    /// still decrypts what the peer sends until its own close_notify.
    func sendCloseNotify() -> WriteResult {
        ERR_clear_error()
        let rc = SSL_shutdown(ssl)
        if rc >= 0 { return .complete }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .complete
        default:
            return .failed(failure(duringHandshake: false))
        }
    }

    // MARK: - Verification (from the verify callback)

    func verifyPeer(_ storeContext: OpaquePointer) -> Bool {
        guard let leaf = X509_STORE_CTX_get0_cert(storeContext) else {
            return refuse(storeContext, PeerVerificationError(.noCertificate, "the peer sent no certificate"))
        }
        var chain = [Certificate(borrowing: leaf)]
        if let untrusted = X509_STORE_CTX_get0_untrusted(storeContext) {
            let count = Int(cssl_sk_X509_num(untrusted))
            guard count <= Self.maximumPeerChainLength else {
                return refuse(storeContext, PeerVerificationError(.invalidChain, "the peer sent \(count) certificates; at most \(Self.maximumPeerChainLength) are read"))
            }
            for index in 0..<Int32(count) {
                if let certificate = cssl_sk_X509_value(untrusted, index), certificate != leaf {
                    chain.append(Certificate(borrowing: certificate))
                }
            }
        }
        switch context.configuration.verifier.verify(peerChain: chain) {
        case .success(let identity):
            peerIdentity = identity
            return true
        case .failure(let error):
            return refuse(storeContext, error)
        }
    }

    private func refuse(_ storeContext: OpaquePointer, _ error: PeerVerificationError) -> Bool {
        refusal = .peerVerificationFailed(error)
        // The X509 error picks the alert the peer gets (unknown_ca, certificate_expired, …).
        X509_STORE_CTX_set_error(storeContext, error.reason.x509Error)
        return false
    }

    func recordRefusal(_ error: TLSError) {
        refusal = error
    }

    /// Server side of ALPN: the byte range, within the client's list, of the first
    /// of our protocols that the client offered.
    func selectApplicationProtocol(offered: UnsafeBufferPointer<UInt8>) -> Range<Int>? {
        var names: [Range<Int>] = []
        var index = 0
        while index < offered.count {
            let length = Int(offered[index])
            let start = index + 1
            guard length > 0, start + length <= offered.count else { break }
            names.append(start..<(start + length))
            index = start + length
        }
        for wanted in context.configuration.applicationProtocols {
            let bytes = Array(wanted.utf8)
            if let match = names.first(where: { offered[$0].elementsEqual(bytes) }) {
                return match
            }
        }
        let offeredNames = names.map { String(decoding: offered[$0], as: UTF8.self) }
        refusal = .handshakeFailed(TLSFailure(.noApplicationProtocol, details: [
            "the client offered \(offeredNames.joined(separator: ", ")); we accept \(context.configuration.applicationProtocols.joined(separator: ", "))",
        ]))
        return nil
    }

    // MARK: - Errors

    /// Turns OpenSSL's error queue (and what our callbacks recorded) into a TLSError.
    private func failure(duringHandshake: Bool) -> TLSError {
        var codes: [UInt] = []
        var details: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            codes.append(code)
            var text = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &text, text.count)
            details.append(String(decoding: text.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        if let refusal {
            return refusal
        }
        let sslCode = codes.first(where: { ERR_GET_LIB($0) == ERR_LIB_SSL })
        let reasonCode = sslCode.map { ERR_GET_REASON($0) } ?? 0
        if reasonCode == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE {
            return .peerVerificationFailed(PeerVerificationError(.noCertificate, "the peer sent no certificate"))
        }
        if reasonCode == SSL_R_CERTIFICATE_VERIFY_FAILED {
            return .peerVerificationFailed(PeerVerificationError(.invalidChain, details.joined(separator: "; ")))
        }
        if details.isEmpty {
            details.append("OpenSSL reported no error (SSL_get_error \(SSL_get_error(ssl, -1)))")
        }
        let failure = TLSFailure(sslCode.map { TLSFailure.Reason(sslReason: ERR_GET_REASON($0)) } ?? .other, details: details)
        return duringHandshake ? .handshakeFailed(failure) : .protocolError(failure)
    }
}

extension PeerVerificationError.Reason {
    /// The X509_V_ERR code reported to OpenSSL, which picks the alert sent.
    var x509Error: Int32 {
        switch self {
        case .noCertificate, .unknownIssuer: return X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY  // unknown_ca
        case .expired: return X509_V_ERR_CERT_HAS_EXPIRED  // certificate_expired
        case .notYetValid: return X509_V_ERR_CERT_NOT_YET_VALID  // bad_certificate
        case .badKeyUsage, .leafIsCA: return X509_V_ERR_INVALID_PURPOSE  // unsupported_certificate
        case .nameConstraintViolation: return X509_V_ERR_PERMITTED_VIOLATION
        case .invalidChain, .missingURISAN, .multipleURISANs, .notSpiffeID, .trustDomainNotAccepted, .unexpectedIdentity:
            return X509_V_ERR_CERT_REJECTED  // bad_certificate
        }
    }
}

// MARK: - The ex_data slot and the BIO method, made once per process

/// Where each SSL keeps an unretained reference to its TLSConnection.
let tlsConnectionExDataIndex: Int32 = cssl_SSL_get_ex_new_index()

/// A BIO type over our ByteBuffers: reads take from `TLSConnection.inbound`,
/// writes append to `TLSConnection.outbound`.
final class ByteBufferBIOMethod: @unchecked Sendable {
    // Safety: made once, never changed, only read by OpenSSL afterwards.
    let pointer: OpaquePointer

    init() {
        let type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK
        guard let method = BIO_meth_new(type, "mesh-agent ByteBuffer") else {
            fatalError("BIO_meth_new failed: out of memory at startup")
        }
        BIO_meth_set_create(method, { bio in
            BIO_set_init(bio, 1)
            return 1
        })
        BIO_meth_set_destroy(method, { bio in
            BIO_set_data(bio, nil)
            return 1
        })
        BIO_meth_set_read(method, { bio, data, length in
            guard let bio else { return -1 }
            cssl_BIO_clear_retry_flags(bio)
            guard let data, length > 0, let raw = BIO_get_data(bio) else { return 0 }
            let connection = Unmanaged<TLSConnection>.fromOpaque(raw).takeUnretainedValue()
            let count = connection.bioRead(into: UnsafeMutableRawBufferPointer(start: data, count: Int(length)))
            if count == 0 {
                cssl_BIO_set_retry_read(bio)
                return -1
            }
            return Int32(count)
        })
        BIO_meth_set_write(method, { bio, data, length in
            guard let bio else { return -1 }
            cssl_BIO_clear_retry_flags(bio)
            guard let data, length > 0, let raw = BIO_get_data(bio) else { return 0 }
            let connection = Unmanaged<TLSConnection>.fromOpaque(raw).takeUnretainedValue()
            connection.bioWrite(UnsafeRawBufferPointer(start: data, count: Int(length)))
            return length
        })
        BIO_meth_set_ctrl(method, { _, command, _, _ in
            switch command {
            case BIO_CTRL_FLUSH:
                return 1  // the handler sends what was written
            default:
                return 0
            }
        })
        pointer = method
    }
}

let byteBufferBIOMethod = ByteBufferBIOMethod()
