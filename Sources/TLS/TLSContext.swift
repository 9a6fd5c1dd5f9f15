import COpenSSL
import NIOCore

/// How one identity speaks TLS: its certificate and key, how peers are verified,
/// which application protocols it speaks, and which side it plays.
public struct TLSConfiguration: Sendable {
    public enum Role: Sendable, Hashable {
        case client
        case server
    }

    public var role: Role
    /// Our leaf first, then the intermediates the peer needs to reach its root.
    public var certificateChain: [Certificate]
    public var privateKey: PrivateKey
    /// Decides every peer chain during the handshake; OpenSSL's own chain
    /// verification is not used.
    public var verifier: any PeerCertificateVerifier
    /// ALPN, in order of preference (e.g. `["h2"]`). When not empty, the handshake
    /// fails unless both sides agree on one of them: there is no fallback.
    public var applicationProtocols: [String]
    /// From channelActive until the handshake completes; then the channel is closed
    /// with `TLSError.handshakeTimeout`.
    public var handshakeTimeout: TimeAmount

    public init(
        role: Role, certificateChain: [Certificate], privateKey: PrivateKey,
        verifier: any PeerCertificateVerifier, applicationProtocols: [String] = [],
        handshakeTimeout: TimeAmount = .seconds(10)
    ) {
        self.role = role
        self.certificateChain = certificateChain
        self.privateKey = privateKey
        self.verifier = verifier
        self.applicationProtocols = applicationProtocols
        self.handshakeTimeout = handshakeTimeout
    }
}

public enum TLSConfigurationError: Error, Equatable, CustomStringConvertible {
    case emptyCertificateChain
    case invalidApplicationProtocol(String)
    case keyDoesNotMatchCertificate(OpenSSLError)
    case openSSL(OpenSSLError)

    public var description: String {
        switch self {
        case .emptyCertificateChain: return "the TLS configuration has no certificate"
        case .invalidApplicationProtocol(let name): return "ALPN protocol name \"\(name)\" must be 1 to 255 bytes"
        case .keyDoesNotMatchCertificate(let error): return "the private key does not match the leaf certificate: \(error)"
        case .openSSL(let error): return "setting up TLS: \(error)"
        }
    }
}

/// One OpenSSL `SSL_CTX` per identity: made once (certificates and key loaded,
/// algorithms fetched, policy set) and shared by every connection of that identity
/// on any thread. Immutable once made.
///
/// Policy, fixed: TLS 1.3 only; AES-GCM suites only; P-256 and X25519 key
/// exchange; mutual authentication always (a server requires a client
/// certificate); every peer chain is decided by `configuration.verifier` alone;
/// no session tickets or resumption, so every handshake verifies its peer.
public final class TLSContext: @unchecked Sendable {
    // Safety: the SSL_CTX is fully configured in init and never changed after;
    // OpenSSL allows SSL_new from several threads on one such context.
    let pointer: OpaquePointer
    public let configuration: TLSConfiguration
    /// ALPN list in wire format (length-prefixed names), for clients to offer.
    let alpnWireFormat: [UInt8]

    public static let cipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
    public static let groups = "P-256:X25519"

    public convenience init(configuration: TLSConfiguration) throws {
        try self.init(configuration: configuration, libraryContext: nil)
    }

    /// `libraryContext`: an `OSSL_LIB_CTX` to fetch algorithms from instead of the
    /// process-wide default (only used to measure whether that matters; it does not
    /// measurably: see the measurement tests).
    init(configuration: TLSConfiguration, libraryContext: OpaquePointer?) throws {
        guard let leaf = configuration.certificateChain.first else {
            throw TLSConfigurationError.emptyCertificateChain
        }
        var wire: [UInt8] = []
        for name in configuration.applicationProtocols {
            let bytes = Array(name.utf8)
            guard (1...255).contains(bytes.count) else {
                throw TLSConfigurationError.invalidApplicationProtocol(name)
            }
            wire.append(UInt8(bytes.count))
            wire.append(contentsOf: bytes)
        }
        self.alpnWireFormat = wire
        self.configuration = configuration

        OpenSSLError.clearQueue()
        guard let context = SSL_CTX_new_ex(libraryContext, nil, TLS_method()) else {
            throw TLSConfigurationError.openSSL(.drain("making an SSL_CTX"))
        }
        self.pointer = context
        // From here on deinit frees the context if a step below throws.
        try Self.configure(context, configuration: configuration, leaf: leaf, alpn: !wire.isEmpty)
    }

    deinit {
        SSL_CTX_free(pointer)
    }

    public var role: TLSConfiguration.Role { configuration.role }

    private static func configure(
        _ context: OpaquePointer, configuration: TLSConfiguration, leaf: Certificate, alpn: Bool
    ) throws {
        func check(_ ok: Bool, _ operation: String) throws {
            if !ok { throw TLSConfigurationError.openSSL(.drain(operation)) }
        }
        try check(cssl_SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION) == 1
                  && cssl_SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) == 1, "limiting TLS to 1.3")
        try check(SSL_CTX_set_ciphersuites(context, cipherSuites) == 1, "setting the TLS 1.3 cipher suites")
        try check(cssl_SSL_CTX_set1_groups_list(context, groups) == 1, "setting the key exchange groups")

        // No tickets and no session cache: resumption would skip the verifier.
        _ = cssl_SSL_CTX_set_options_u64(
            context,
            cssl_SSL_OP_NO_TICKET() | cssl_SSL_OP_NO_COMPRESSION() | cssl_SSL_OP_NO_RENEGOTIATION()
                | cssl_SSL_OP_CIPHER_SERVER_PREFERENCE())
        try check(SSL_CTX_set_num_tickets(context, 0) == 1, "disabling session tickets")
        _ = cssl_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_OFF))

        // Our BIO takes every write whole, so writes never need a retry; buffers are
        // released while a connection is idle; the chain we send is exactly the one
        // configured (no lookups in a store on every handshake).
        _ = cssl_SSL_CTX_set_mode(
            context,
            Int(SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_NO_AUTO_CHAIN
                | SSL_MODE_AUTO_RETRY))
        // Take whole chunks from the BIO instead of header, then body.
        _ = cssl_SSL_CTX_set_read_ahead(context, 1)

        // Our identity.
        try check(SSL_CTX_use_certificate(context, leaf.pointer) == 1, "loading the leaf certificate")
        if configuration.certificateChain.count > 1 {
            guard let stack = cssl_sk_X509_new_null() else { throw TLSConfigurationError.openSSL(.drain("building the chain")) }
            defer { cssl_sk_X509_free(stack) }
            for certificate in configuration.certificateChain.dropFirst() {
                try check(cssl_sk_X509_push(stack, certificate.pointer) > 0, "building the chain")
            }
            // set1: OpenSSL takes its own references.
            try check(cssl_SSL_CTX_set1_chain(context, stack) == 1, "setting the certificate chain")
        }
        try check(SSL_CTX_use_PrivateKey(context, configuration.privateKey.pointer) == 1, "loading the private key")
        guard SSL_CTX_check_private_key(context) == 1 else {
            throw TLSConfigurationError.keyDoesNotMatchCertificate(.drain("checking the private key"))
        }

        // Mutual authentication, decided by our verifier alone.
        switch configuration.role {
        case .server:
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            if alpn {
                SSL_CTX_set_alpn_select_cb(context, alpnSelectCallback, nil)
                SSL_CTX_set_client_hello_cb(context, clientHelloCallback, nil)
            }
        case .client:
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        }
        SSL_CTX_set_cert_verify_callback(context, certificateVerifyCallback, nil)
        OpenSSLError.clearQueue()
    }
}

// MARK: - Callbacks from OpenSSL
//
// Each finds its connection through the SSL's ex_data (an unretained reference set
// by TLSConnection), lets it decide, and records why it refused so the handshake
// error can say so precisely.

/// Replaces OpenSSL's chain verification (X509_verify_cert) for every handshake.
private let certificateVerifyCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { storeContext, _ in
    guard let storeContext,
          let ssl = X509_STORE_CTX_get_ex_data(storeContext, SSL_get_ex_data_X509_STORE_CTX_idx()),
          let connection = TLSConnection.from(ssl: OpaquePointer(ssl))
    else { return 0 }
    return connection.verifyPeer(storeContext) ? 1 : 0
}

/// Server: the first of our protocols that the client offered; no overlap refuses
/// the handshake with a no_application_protocol alert.
private let alpnSelectCallback: @convention(c) (
    OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
    UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?
) -> Int32 = { ssl, out, outLength, offered, offeredLength, _ in
    guard let ssl, let out, let outLength, let offered, let connection = TLSConnection.from(ssl: ssl) else {
        return SSL_TLSEXT_ERR_ALERT_FATAL
    }
    let client = UnsafeBufferPointer(start: offered, count: Int(offeredLength))
    guard let range = connection.selectApplicationProtocol(offered: client) else {
        return SSL_TLSEXT_ERR_ALERT_FATAL
    }
    // Points into the client's list, which OpenSSL copies once we return.
    out.pointee = offered + range.lowerBound
    outLength.pointee = UInt8(range.count)
    return SSL_TLSEXT_ERR_OK
}

/// Server with ALPN configured: a ClientHello without the ALPN extension is refused
/// (OpenSSL would otherwise complete the handshake without calling the selector).
private let clientHelloCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>?, UnsafeMutableRawPointer?) -> Int32 = { ssl, alert, _ in
    guard let ssl else { return SSL_CLIENT_HELLO_ERROR }
    var data: UnsafePointer<UInt8>?
    var length = 0
    if SSL_client_hello_get0_ext(ssl, UInt32(TLSEXT_TYPE_application_layer_protocol_negotiation), &data, &length) == 1 {
        return SSL_CLIENT_HELLO_SUCCESS
    }
    TLSConnection.from(ssl: ssl)?.recordRefusal(
        .handshakeFailed(TLSFailure(.noApplicationProtocol, details: ["the client offered no application protocol (ALPN)"])))
    alert?.pointee = SSL_AD_NO_APPLICATION_PROTOCOL
    return SSL_CLIENT_HELLO_ERROR
}
