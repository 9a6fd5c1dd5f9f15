import COpenSSL

/// The key usage bits of a certificate (RFC 5280 §4.2.1.3).
public struct KeyUsage: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let digitalSignature = KeyUsage(rawValue: UInt32(KU_DIGITAL_SIGNATURE))
    public static let nonRepudiation = KeyUsage(rawValue: UInt32(KU_NON_REPUDIATION))
    public static let keyEncipherment = KeyUsage(rawValue: UInt32(KU_KEY_ENCIPHERMENT))
    public static let dataEncipherment = KeyUsage(rawValue: UInt32(KU_DATA_ENCIPHERMENT))
    public static let keyAgreement = KeyUsage(rawValue: UInt32(KU_KEY_AGREEMENT))
    public static let keyCertSign = KeyUsage(rawValue: UInt32(KU_KEY_CERT_SIGN))
    public static let cRLSign = KeyUsage(rawValue: UInt32(KU_CRL_SIGN))
    public static let encipherOnly = KeyUsage(rawValue: UInt32(KU_ENCIPHER_ONLY))
    public static let decipherOnly = KeyUsage(rawValue: UInt32(KU_DECIPHER_ONLY))

    private static let names: [(KeyUsage, String)] = [
        (.digitalSignature, "digitalSignature"), (.nonRepudiation, "nonRepudiation"),
        (.keyEncipherment, "keyEncipherment"), (.dataEncipherment, "dataEncipherment"),
        (.keyAgreement, "keyAgreement"), (.keyCertSign, "keyCertSign"), (.cRLSign, "cRLSign"),
        (.encipherOnly, "encipherOnly"), (.decipherOnly, "decipherOnly"),
    ]

    public var description: String {
        Self.names.filter { contains($0.0) }.map(\.1).joined(separator: ",")
    }
}

/// The extended key usages OpenSSL recognises (RFC 5280 §4.2.1.12).
public struct ExtendedKeyUsage: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let serverAuth = ExtendedKeyUsage(rawValue: UInt32(XKU_SSL_SERVER))
    public static let clientAuth = ExtendedKeyUsage(rawValue: UInt32(XKU_SSL_CLIENT))
    public static let emailProtection = ExtendedKeyUsage(rawValue: UInt32(XKU_SMIME))
    public static let codeSigning = ExtendedKeyUsage(rawValue: UInt32(XKU_CODE_SIGN))
    public static let ocspSigning = ExtendedKeyUsage(rawValue: UInt32(XKU_OCSP_SIGN))
    public static let timeStamping = ExtendedKeyUsage(rawValue: UInt32(XKU_TIMESTAMP))
    public static let any = ExtendedKeyUsage(rawValue: UInt32(XKU_ANYEKU))

    private static let names: [(ExtendedKeyUsage, String)] = [
        (.serverAuth, "serverAuth"), (.clientAuth, "clientAuth"), (.emailProtection, "emailProtection"),
        (.codeSigning, "codeSigning"), (.ocspSigning, "OCSPSigning"), (.timeStamping, "timeStamping"),
        (.any, "anyExtendedKeyUsage"),
    ]

    public var description: String {
        Self.names.filter { contains($0.0) }.map(\.1).joined(separator: ",")
    }
}

/// A certificate's name constraints (RFC 5280 §4.2.1.10), each subtree written the
/// way OpenSSL's configuration writes it: `URI:cluster.local`, `DNS:example.com`,
/// `email:…`, `IP:…`, `dirName:…`, `other`.
public struct NameConstraints: Sendable, Hashable {
    public var permitted: [String]
    public var excluded: [String]

    public init(permitted: [String], excluded: [String]) {
        self.permitted = permitted
        self.excluded = excluded
    }

    /// Whether a URI whose host is `host` (a SPIFFE ID's trust domain) falls inside
    /// these constraints, by the rule OpenSSL applies to URI subtrees: a constraint
    /// `.example.org` matches hosts below example.org, any other matches the host
    /// exactly (ignoring case). Non-URI subtrees do not constrain URIs.
    public func permitsURIHost(_ host: String) -> Bool {
        func matches(_ entry: String) -> Bool {
            guard entry.hasPrefix("URI:") else { return false }
            let constraint = entry.dropFirst(4).lowercased()
            let host = host.lowercased()
            if constraint.hasPrefix(".") { return host.hasSuffix(constraint) }
            return host == constraint
        }
        if excluded.contains(where: matches) { return false }
        let permittedURIs = permitted.filter { $0.hasPrefix("URI:") }
        return permittedURIs.isEmpty || permittedURIs.contains(where: matches)
    }
}

extension Certificate {
    /// Whether basicConstraints says `cA: true`.
    public var isCA: Bool {
        (X509_get_extension_flags(pointer) & UInt32(EXFLAG_CA)) != 0
    }

    /// basicConstraints' pathLenConstraint, when the certificate has one.
    public var pathLengthConstraint: Int? {
        let length = X509_get_pathlen(pointer)
        return length >= 0 ? Int(length) : nil
    }

    /// The key usage bits; nil when the certificate has no keyUsage extension.
    public var keyUsage: KeyUsage? {
        guard X509_get_ext_by_NID(pointer, NID_key_usage, -1) >= 0 else { return nil }
        return KeyUsage(rawValue: X509_get_key_usage(pointer))
    }

    /// The extended key usages; nil when the certificate has no extendedKeyUsage extension.
    public var extendedKeyUsage: ExtendedKeyUsage? {
        guard X509_get_ext_by_NID(pointer, NID_ext_key_usage, -1) >= 0 else { return nil }
        return ExtendedKeyUsage(rawValue: X509_get_extended_key_usage(pointer))
    }

    /// The name constraints; nil when the certificate has none.
    public var nameConstraints: NameConstraints? {
        guard let raw = X509_get_ext_d2i(pointer, NID_name_constraints, nil, nil) else { return nil }
        let constraints = raw.assumingMemoryBound(to: NAME_CONSTRAINTS.self)
        defer { NAME_CONSTRAINTS_free(constraints) }
        return NameConstraints(
            permitted: Self.describeSubtrees(constraints.pointee.permittedSubtrees),
            excluded: Self.describeSubtrees(constraints.pointee.excludedSubtrees)
        )
    }

    public var subjectKeyIdentifier: [UInt8]? {
        Self.bytes(of: X509_get0_subject_key_id(pointer))
    }

    /// The keyIdentifier of the authorityKeyIdentifier extension.
    public var authorityKeyIdentifier: [UInt8]? {
        Self.bytes(of: X509_get0_authority_key_id(pointer))
    }

    /// Every extension, by OpenSSL's short name (`basicConstraints`, `keyUsage`,
    /// `extendedKeyUsage`, `subjectAltName`, `subjectKeyIdentifier`,
    /// `authorityKeyIdentifier`, `nameConstraints`, …, or the dotted OID when
    /// OpenSSL has no name for it), mapped to whether it is marked critical.
    public var extensionCriticality: [String: Bool] {
        var result: [String: Bool] = [:]
        for index in 0..<max(0, X509_get_ext_count(pointer)) {
            guard let ext = X509_get_ext(pointer, index), let object = X509_EXTENSION_get_object(ext) else { continue }
            let nid = OBJ_obj2nid(object)
            var name = ""
            if nid != NID_undef, let short = OBJ_nid2sn(nid) {
                name = String(cString: short)
            } else {
                var buffer = [CChar](repeating: 0, count: 128)
                let length = OBJ_obj2txt(&buffer, Int32(buffer.count), object, 1)
                name = length > 0 ? String(decoding: buffer.prefix(Int(min(length, 127))).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
            }
            result[name] = X509_EXTENSION_get_critical(ext) != 0
        }
        return result
    }

    /// The X.509 version as written in certificates: 1, 2 or 3.
    public var version: Int { Int(X509_get_version(pointer)) + 1 }

    /// The signature algorithm's OpenSSL long name, e.g. `ecdsa-with-SHA256`.
    public var signatureAlgorithm: String {
        let nid = X509_get_signature_nid(pointer)
        guard nid != NID_undef, let name = OBJ_nid2ln(nid) else { return "unknown" }
        return String(cString: name)
    }

    /// The subject's first organization (`O=`) attribute; mesh-agent's CAs put the
    /// trust domain there.
    public var subjectOrganization: String? {
        guard let name = X509_get_subject_name(pointer) else { return nil }
        let index = X509_NAME_get_index_by_NID(name, NID_organizationName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry) else { return nil }
        var utf8: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&utf8, data)
        guard length >= 0, let utf8 else { return nil }
        defer { cssl_OPENSSL_free(utf8) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self)
    }

    /// Whether the subject has no attributes at all.
    public var hasEmptySubject: Bool {
        guard let name = X509_get_subject_name(pointer) else { return true }
        return X509_NAME_entry_count(name) == 0
    }

    /// Whether subject and issuer match and the certificate verifies with its own key.
    public var isSelfSigned: Bool {
        OpenSSLError.clearQueue()
        defer { OpenSSLError.clearQueue() }
        return X509_self_signed(pointer, 1) == 1
    }

    /// Whether `key` is the private half of this certificate's public key.
    public func publicKeyMatches(_ key: PrivateKey) -> Bool {
        guard let publicKey = X509_get0_pubkey(pointer) else { return false }
        OpenSSLError.clearQueue()
        defer { OpenSSLError.clearQueue() }
        return EVP_PKEY_eq(publicKey, key.pointer) == 1
    }

    /// SHA-256 over the DER encoding: the certificate's usual fingerprint.
    public var sha256Fingerprint: [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(pointer, EVP_sha256(), &digest, &length) == 1 else { return [] }
        return Array(digest.prefix(Int(length)))
    }

    /// What a log line or error should name a certificate by: its subject (when it
    /// has one), serial number and URI SANs.
    var identification: String {
        var parts: [String] = []
        let subject = self.subject
        parts.append(subject.isEmpty ? "empty subject" : "subject \"\(subject)\"")
        parts.append("serial \(serialNumberHex)")
        let uris = uriSANs
        if uris.count == 1 {
            parts.append("URI SAN \(uris[0])")
        } else if !uris.isEmpty {
            parts.append("URI SANs \(uris.joined(separator: ", "))")
        }
        return parts.joined(separator: ", ")
    }

    private static func bytes(of string: UnsafePointer<ASN1_OCTET_STRING>?) -> [UInt8]? {
        guard let string, let data = ASN1_STRING_get0_data(string) else { return nil }
        return Array(UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(string))))
    }

    private static func describeSubtrees(_ subtrees: OpaquePointer?) -> [String] {
        guard let subtrees else { return [] }
        var result: [String] = []
        for index in 0..<cssl_sk_GENERAL_SUBTREE_num(subtrees) {
            guard let subtree = cssl_sk_GENERAL_SUBTREE_value(subtrees, index), let base = subtree.pointee.base else { continue }
            result.append(describe(base))
        }
        return result
    }

    static func describe(_ name: UnsafeMutablePointer<GENERAL_NAME>) -> String {
        func text(_ string: UnsafeMutablePointer<ASN1_STRING>?) -> String {
            guard let string, let data = ASN1_STRING_get0_data(string) else { return "" }
            return String(decoding: UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(string))), as: UTF8.self)
        }
        switch name.pointee.type {
        case GEN_URI: return "URI:" + text(name.pointee.d.uniformResourceIdentifier)
        case GEN_DNS: return "DNS:" + text(name.pointee.d.dNSName)
        case GEN_EMAIL: return "email:" + text(name.pointee.d.rfc822Name)
        case GEN_IPADD:
            guard let string = name.pointee.d.iPAddress, let data = ASN1_STRING_get0_data(string) else { return "IP:" }
            let bytes = UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(string)))
            return "IP:" + bytes.map { String($0) }.joined(separator: ".")
        case GEN_DIRNAME: return "dirName"
        default: return "other"
        }
    }
}
