import COpenSSL

/// Why a TLS connection failed. Fired down the pipeline with `fireErrorCaught`
/// (the channel is then closed) and used to fail pending write promises.
public enum TLSError: Error, Equatable, CustomStringConvertible {
    /// The handshake did not complete: protocol version, ALPN, alerts, bad bytes.
    case handshakeFailed(TLSFailure)
    /// The peer's certificate chain was refused by the `PeerCertificateVerifier`
    /// (or the peer sent none).
    case peerVerificationFailed(PeerVerificationError)
    /// The handshake did not finish within `TLSConfiguration.handshakeTimeout`.
    case handshakeTimeout
    /// TCP ended without the peer's close_notify: the data may have been truncated.
    case unexpectedEOF
    /// After the handshake: a damaged record, an alert from the peer, or any other
    /// violation of the protocol.
    case protocolError(TLSFailure)
    /// A write after `close(mode: .output)`: our close_notify has been sent.
    case outputClosed

    public var description: String {
        switch self {
        case .handshakeFailed(let failure): return "TLS handshake failed: \(failure)"
        case .peerVerificationFailed(let error): return "TLS handshake failed: \(error)"
        case .handshakeTimeout: return "TLS handshake timed out"
        case .unexpectedEOF: return "TLS connection closed without close_notify (possible truncation)"
        case .protocolError(let failure): return "TLS protocol error: \(failure)"
        case .outputClosed: return "TLS output already closed (close_notify sent)"
        }
    }

    /// A fixed, low-cardinality label for counters (e.g. handshake failures by reason).
    public var reasonLabel: String {
        switch self {
        case .handshakeFailed(let failure): return failure.reason.rawValue
        case .peerVerificationFailed(let error): return error.reason.rawValue
        case .handshakeTimeout: return "handshake_timeout"
        case .unexpectedEOF: return "unexpected_eof"
        case .protocolError(let failure): return "protocol_error_" + failure.reason.rawValue
        case .outputClosed: return "output_closed"
        }
    }
}

/// What OpenSSL said when a TLS operation failed: a reason from a fixed vocabulary,
/// and OpenSSL's error queue (`error:0A000102:SSL routines::unsupported protocol`).
public struct TLSFailure: Equatable, Sendable, CustomStringConvertible {
    public enum Reason: String, Sendable, CaseIterable {
        /// The peer offered or asked for a TLS version other than 1.3.
        case protocolVersion = "protocol_version"
        /// No application protocol (ALPN) in common, or none offered/selected.
        case noApplicationProtocol = "no_application_protocol"
        /// No cipher suite, group or signature algorithm in common.
        case noSharedParameters = "no_shared_parameters"
        /// The peer refused our certificate (alert bad_certificate, unknown_ca, …).
        case certificateRejectedByPeer = "certificate_rejected_by_peer"
        /// The peer sent some other fatal alert.
        case peerAlert = "peer_alert"
        /// Bytes that are not TLS, or a damaged record or message.
        case malformedInput = "malformed_input"
        /// Anything else (resource exhaustion, internal errors).
        case other = "other"
    }

    public let reason: Reason
    public let details: [String]

    public init(_ reason: Reason, details: [String]) {
        self.reason = reason
        self.details = details
    }

    public var description: String {
        details.isEmpty ? reason.rawValue : "\(reason.rawValue) (\(details.joined(separator: "; ")))"
    }
}

extension TLSFailure.Reason {
    /// Sorts an OpenSSL SSL-library reason code (`ERR_GET_REASON`).
    init(sslReason code: Int32) {
        switch code {
        case SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION, SSL_R_VERSION_TOO_LOW,
             SSL_R_VERSION_TOO_HIGH, SSL_R_UNSUPPORTED_SSL_VERSION, SSL_R_NO_PROTOCOLS_AVAILABLE,
             SSL_R_TLSV1_ALERT_INAPPROPRIATE_FALLBACK:
            self = .protocolVersion
        case SSL_R_NO_APPLICATION_PROTOCOL, SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL:
            self = .noApplicationProtocol
        case SSL_R_NO_SHARED_CIPHER, SSL_R_NO_SUITABLE_KEY_SHARE, SSL_R_NO_SHARED_GROUPS,
             SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM, SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS,
             SSL_R_NO_CIPHERS_AVAILABLE, SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY:
            self = .noSharedParameters
        case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE, SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE,
             SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED, SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED,
             SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN, SSL_R_TLSV1_ALERT_UNKNOWN_CA,
             SSL_R_TLSV1_ALERT_ACCESS_DENIED, SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
            self = .certificateRejectedByPeer
        case SSL_R_WRONG_VERSION_NUMBER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_RECORD_LENGTH_MISMATCH,
             SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, SSL_R_UNEXPECTED_MESSAGE, SSL_R_UNEXPECTED_RECORD,
             SSL_R_LENGTH_MISMATCH, SSL_R_LENGTH_TOO_SHORT, SSL_R_BAD_LENGTH, SSL_R_HTTP_REQUEST,
             SSL_R_HTTPS_PROXY_REQUEST, SSL_R_BAD_EXTENSION, SSL_R_BAD_PACKET, SSL_R_BAD_RECORD_TYPE,
             SSL_R_WRONG_CIPHER_RETURNED, SSL_R_EXCESSIVE_MESSAGE_SIZE, SSL_R_UNKNOWN_PROTOCOL,
             SSL_R_DATA_LENGTH_TOO_LONG, SSL_R_ENCRYPTED_LENGTH_TOO_LONG, SSL_R_BAD_KEY_SHARE,
             SSL_R_UNEXPECTED_EOF_WHILE_READING, SSL_R_TOO_MANY_WARN_ALERTS, SSL_R_UNKNOWN_ALERT_TYPE,
             SSL_R_MISSING_SUPPORTED_GROUPS_EXTENSION, SSL_R_PARSE_TLSEXT, SSL_R_BAD_DECOMPRESSION,
             SSL_R_INVALID_ALERT:
            self = .malformedInput
        default:
            // Reasons at or above SSL_AD_REASON_OFFSET are "the peer sent alert N".
            self = code >= SSL_AD_REASON_OFFSET ? .peerAlert : .other
        }
    }
}
