import COpenSSL
import Foundation
import TLS

/// TLS to the API server over the project's own TLS layer, which speaks TLS
/// 1.3 with mutual authentication and asks a `PeerCertificateVerifier` about
/// the peer. Two things differ from a mesh peer, and are made to fit here:
///
/// - The API server has no SPIFFE ID. `APIServerVerifier` checks the chain to
///   the cluster CA and the name in the URL, as any HTTPS client does, and
///   answers with a fixed placeholder identity that nothing authorizes against.
/// - The layer always presents a client certificate. The agent authenticates
///   with its bearer token; it presents a throwaway self-signed one, which the
///   API server's client-certificate authenticator does not accept, and which
///   the server then passes over for the token (the API server asks for client
///   certificates without requiring them, and any one authenticator that
///   succeeds is enough).
enum APIServerTLS {
    /// The identity the layer is told the API server has.
    static let placeholderIdentity = try? SpiffeID("spiffe://kubernetes-api-server.invalid/api-server")

    /// The throwaway client certificate, made once per process.
    private static let clientIdentity: Result<(Certificate, PrivateKey), any Error> = Result {
        let rootKey = try PrivateKey.generateP256()
        let root = try CertificateBuilder.makeRoot(trustDomain: "mesh-agent-kubernetes-client.invalid", key: rootKey, lifetime: .seconds(10 * 365 * 86400))
        let key = try PrivateKey.generateP256()
        let leaf = try CertificateBuilder.issueSVID(
            identity: try SpiffeID("spiffe://mesh-agent-kubernetes-client.invalid/agent"), publicKeyOf: key,
            issuer: try CertificateAuthority(certificate: root, key: rootKey), lifetime: .seconds(10 * 365 * 86400))
        return (leaf, key)
    }

    /// A client context trusting the roots in `caPEM` for the server `host`.
    static func context(caPEM: String, caFile: String, host: String) throws -> TLSContext {
        let store = try CertificateStore(pem: caPEM, file: caFile)
        let (certificate, key) = try clientIdentity.get()
        let configuration = TLSConfiguration(
            role: .client, certificateChain: [certificate], privateKey: key,
            verifier: APIServerVerifier(store: store, host: host), handshakeTimeout: .seconds(10))
        return try TLSContext(configuration: configuration)
    }
}

/// The CA certificates of one CA file, in an OpenSSL trust store.
final class CertificateStore: @unchecked Sendable {
    // Safety: filled in init and only read after, which OpenSSL allows from
    // several threads.
    let pointer: OpaquePointer

    init(pem: String, file: String) throws {
        let certificates: [Certificate]
        do {
            certificates = try Certificate.chain(fromPEM: pem)
        } catch {
            throw KubernetesSourceError.caFile(path: file, reason: "no readable PEM certificate in it (\(error))")
        }
        guard let store = X509_STORE_new() else {
            throw KubernetesSourceError.caFile(path: file, reason: "out of memory making a trust store")
        }
        pointer = store
        for certificate in certificates {
            let x509 = try Self.x509(certificate)
            defer { X509_free(x509) }
            // A CA file may name the same certificate twice; that is no error.
            ERR_set_mark()
            _ = X509_STORE_add_cert(store, x509)
            ERR_pop_to_mark()
        }
    }

    deinit {
        X509_STORE_free(pointer)
    }

    /// An OpenSSL copy of `certificate` (the TLS layer keeps its own private),
    /// owned by the caller.
    static func x509(_ certificate: Certificate) throws -> OpaquePointer {
        let der = try certificate.derRepresentation()
        let x509: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var start = buffer.baseAddress
            return d2i_X509(nil, &start, buffer.count)
        }
        guard let x509 else { throw KubernetesSourceError.caFile(path: "", reason: "a certificate did not read back") }
        return x509
    }
}

/// Accepts the API server's chain if it leads to a root of the CA file and
/// the leaf is for `host` (a DNS name, or an IP address in an IP SAN), for TLS
/// server use, valid now.
struct APIServerVerifier: PeerCertificateVerifier {
    static let maximumChainLength = 8

    let store: CertificateStore
    let host: String

    func verify(peerChain: [Certificate]) -> Result<SpiffeID, PeerVerificationError> {
        guard !peerChain.isEmpty else {
            return .failure(PeerVerificationError(.noCertificate, "the API server sent no certificate"))
        }
        guard peerChain.count <= Self.maximumChainLength else {
            return .failure(PeerVerificationError(.invalidChain, "the API server sent \(peerChain.count) certificates; at most \(Self.maximumChainLength) are accepted"))
        }
        guard let identity = APIServerTLS.placeholderIdentity else {
            return .failure(PeerVerificationError(.invalidChain, "no placeholder identity"))
        }
        ERR_set_mark()
        defer { ERR_pop_to_mark() }
        var owned: [OpaquePointer] = []
        defer { owned.forEach { X509_free($0) } }
        do {
            for certificate in peerChain { owned.append(try CertificateStore.x509(certificate)) }
        } catch {
            return .failure(PeerVerificationError(.invalidChain, "the API server's certificate could not be read"))
        }
        guard let context = X509_STORE_CTX_new(), let untrusted = cssl_sk_X509_new_null() else {
            return .failure(PeerVerificationError(.invalidChain, "out of memory setting up chain verification"))
        }
        defer {
            cssl_sk_X509_free(untrusted)
            X509_STORE_CTX_free(context)
        }
        for x509 in owned.dropFirst() {
            guard cssl_sk_X509_push(untrusted, x509) > 0 else {
                return .failure(PeerVerificationError(.invalidChain, "out of memory setting up chain verification"))
            }
        }
        guard X509_STORE_CTX_init(context, store.pointer, owned[0], untrusted) == 1 else {
            return .failure(PeerVerificationError(.invalidChain, "could not set up chain verification"))
        }
        _ = X509_STORE_CTX_set_purpose(context, X509_PURPOSE_SSL_SERVER)
        let parameters = X509_STORE_CTX_get0_param(context)
        let named = isIPAddress(host)
            ? X509_VERIFY_PARAM_set1_ip_asc(parameters, host)
            : X509_VERIFY_PARAM_set1_host(parameters, host, 0)
        guard named == 1 else {
            return .failure(PeerVerificationError(.invalidChain, "cannot check the certificate for \(host)"))
        }
        if X509_verify_cert(context) == 1 { return .success(identity) }
        let code = X509_STORE_CTX_get_error(context)
        let message = X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)"
        let reason: PeerVerificationError.Reason = switch code {
        case X509_V_ERR_CERT_HAS_EXPIRED: .expired
        case X509_V_ERR_CERT_NOT_YET_VALID: .notYetValid
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
            X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: .unknownIssuer
        default: .invalidChain
        }
        let subject = peerChain[0].subject
        return .failure(PeerVerificationError(reason, "the API server's certificate (\(loggable(subject, limit: 120))) is refused for \(host): \(message)"))
    }

    private func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
