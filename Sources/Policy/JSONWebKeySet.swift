import Foundation
import TLS

/// An issuer's public keys, read from a JWKS (`{"keys": [...]}`, RFC 7517 §5).
///
/// What a key set may hold and what becomes of it:
/// - keys for another purpose (`use` other than `sig`, `key_ops` without
///   `verify`) are left out: identity providers publish encryption keys in the
///   same set;
/// - keys the agent cannot verify with (`oct`, other `kty`, curves other than
///   P-256, P-384 and Ed25519, an `alg` other than ``JWSAlgorithm``'s) are left
///   out with a warning;
/// - a key that is broken (a member missing, of the wrong type or not strict
///   base64url; RSA under 2048 bits; an EC point off its curve; an `alg` its key
///   cannot do) fails the whole set: it is a mistake in what was configured;
/// - no usable key at all fails the set.
public struct JSONWebKeySet: Sendable {
    public struct Key: Sendable {
        /// The JWK's `kid`.
        public var id: String?
        /// The JWK's `alg`: when set, the key verifies that algorithm only.
        public var algorithm: JWSAlgorithm?
        public var key: JSONWebKey

        public init(id: String? = nil, algorithm: JWSAlgorithm? = nil, key: JSONWebKey) {
            self.id = id
            self.algorithm = algorithm
            self.key = key
        }

        public func canVerify(_ algorithm: JWSAlgorithm) -> Bool {
            (self.algorithm == nil || self.algorithm == algorithm) && key.canVerify(algorithm)
        }
    }

    /// Real key sets are a few kilobytes; these bound the work a hostile or
    /// mistaken file can cause.
    public static let maximumSize = 1 << 20
    public static let maximumKeys = 100

    public let keys: [Key]
    /// Keys left out because the agent does not support them, one line each.
    public let warnings: [String]

    public init(keys: [Key]) {
        self.keys = keys
        self.warnings = []
    }

    public init(json text: String) throws(JSONWebKeySetError) {
        try self.init(json: Data(text.utf8))
    }

    public init(json data: Data) throws(JSONWebKeySetError) {
        guard data.count <= Self.maximumSize else {
            throw JSONWebKeySetError("the key set is \(data.count) bytes; at most \(Self.maximumSize) are accepted")
        }
        let document: JSONValue
        do {
            document = try JSONValue.parse(data)
        } catch {
            throw JSONWebKeySetError("not a JWKS: \(error.reason)")
        }
        guard case .object(let top) = document else { throw JSONWebKeySetError("not a JWKS: expected a JSON object with a \"keys\" list") }
        guard case .array(let entries)? = top["keys"] else { throw JSONWebKeySetError("not a JWKS: expected a \"keys\" list") }
        guard entries.count <= Self.maximumKeys else {
            throw JSONWebKeySetError("the key set has \(entries.count) keys; at most \(Self.maximumKeys) are accepted")
        }
        var keys: [Key] = []
        var warnings: [String] = []
        var leftOut: [String] = []
        for (index, entry) in entries.enumerated() {
            switch try Self.key(entry, index: index) {
            case .usable(let key, let warning):
                keys.append(key)
                if let warning { warnings.append(warning) }
            case .otherPurpose(let reason):
                leftOut.append(reason)
            case .unsupported(let reason):
                leftOut.append(reason)
                warnings.append(reason)
            }
        }
        guard !keys.isEmpty else {
            let detail = leftOut.isEmpty ? "the \"keys\" list is empty" : leftOut.joined(separator: "; ")
            throw JSONWebKeySetError("no key usable for verifying signatures (\(detail))")
        }
        self.keys = keys
        self.warnings = warnings
    }

    private enum Outcome {
        case usable(Key, warning: String?)
        case otherPurpose(String)
        case unsupported(String)
    }

    private static func key(_ entry: JSONValue, index: Int) throws(JSONWebKeySetError) -> Outcome {
        guard case .object(let members) = entry else { throw JSONWebKeySetError("keys[\(index)] is not a JSON object") }
        var label = "keys[\(index)]"
        let id = try string(members, "kid", label)
        if let id { label += " (kid \(loggable(id)))" }
        func fail(_ reason: String) -> JSONWebKeySetError { JSONWebKeySetError("\(label): \(reason)") }

        guard let keyType = try string(members, "kty", label) else { throw fail("has no kty") }
        if let use = try string(members, "use", label), use != "sig" {
            return .otherPurpose("\(label) left out: its use is \(loggable(use)), not \"sig\"")
        }
        if let operations = members["key_ops"] {
            guard case .array(let values) = operations, values.allSatisfy({ $0.stringValue != nil }) else {
                throw fail("key_ops is not a list of strings")
            }
            guard values.contains(.string("verify")) else {
                return .otherPurpose("\(label) left out: its key_ops do not include \"verify\"")
            }
        }
        var algorithm: JWSAlgorithm?
        if let name = try string(members, "alg", label) {
            guard let named = JWSAlgorithm(rawValue: name) else {
                return .unsupported("\(label) left out: its alg \(loggable(name)) is not supported (only \(JWSAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            algorithm = named
        }

        let key: JSONWebKey
        do {
            switch keyType {
            case "RSA":
                key = try JSONWebKey(rsaModulus: try bytes(members, "n", label), exponent: try bytes(members, "e", label))
            case "EC":
                guard let curveName = try string(members, "crv", label) else { throw fail("has no crv") }
                guard let curve = JSONWebKey.Curve(rawValue: curveName) else {
                    return .unsupported("\(label) left out: EC curve \(loggable(curveName)) is not supported (only P-256 and P-384)")
                }
                key = try JSONWebKey(curve: curve, x: try bytes(members, "x", label), y: try bytes(members, "y", label))
            case "OKP":
                guard let curveName = try string(members, "crv", label) else { throw fail("has no crv") }
                guard curveName == "Ed25519" else {
                    return .unsupported("\(label) left out: OKP curve \(loggable(curveName)) is not supported (only Ed25519)")
                }
                key = try JSONWebKey(ed25519: try bytes(members, "x", label))
            case "oct":
                return .unsupported("\(label) left out: symmetric (oct) keys are not supported; only RSA, EC and OKP public keys")
            default:
                return .unsupported("\(label) left out: kty \(loggable(keyType)) is not supported (only RSA, EC and OKP)")
            }
        } catch let error as JSONWebKeySetError {
            throw error
        } catch let error as JSONWebKeyError {
            throw fail(error.description)
        } catch {
            throw fail("\(error)")
        }
        if let algorithm, !key.canVerify(algorithm) {
            throw fail("its alg is \(algorithm), which an \(key.kind) key cannot do")
        }
        let warning = members["d"] == nil
            ? nil : "\(label) contains a private key (member \"d\"); only its public part is used — keep private keys out of policy files"
        return .usable(Key(id: id, algorithm: algorithm, key: key), warning: warning)
    }

    private static func string(_ members: [String: JSONValue], _ name: String, _ label: String) throws(JSONWebKeySetError) -> String? {
        guard let value = members[name] else { return nil }
        guard case .string(let text) = value else { throw JSONWebKeySetError("\(label): \(name) is not a string") }
        return text
    }

    private static func bytes(_ members: [String: JSONValue], _ name: String, _ label: String) throws(JSONWebKeySetError) -> [UInt8] {
        guard let text = try string(members, name, label) else { throw JSONWebKeySetError("\(label): has no \(name)") }
        guard !text.isEmpty, let bytes = Base64URL.decode(text) else {
            throw JSONWebKeySetError("\(label): \(name) is not unpadded base64url (only A-Z a-z 0-9 - _)")
        }
        return bytes
    }
}

/// A key set that cannot be used, and why.
public struct JSONWebKeySetError: Error, Equatable, CustomStringConvertible {
    public let reason: String

    public init(_ reason: String) {
        self.reason = reason
    }

    public var description: String { reason }
}
