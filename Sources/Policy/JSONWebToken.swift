import Foundation
import TLS

/// A signed JWT in JWS compact serialization (`header.payload.signature`,
/// RFC 7515 §7.1, RFC 7519), read strictly and verified against one issuer's
/// keys.
///
/// Reading refuses, before any key is looked at: more than
/// ``maximumLength`` bytes, anything but three segments, base64url with padding
/// or other characters, a header or payload that is not a JSON object, `crit`
/// (no extension is understood, so none may be required), and every `alg` but
/// ``JWSAlgorithm``'s — `none` and HMAC above all. Keys named in the header
/// (`jwk`, `jku`, `x5c`, `x5u`) are ignored: only the configured key set counts.
public struct JSONWebToken: Sendable {
    /// Larger than any token an identity provider issues, small enough that
    /// parsing it costs nothing.
    public static let maximumLength = 16 * 1024
    /// How far `exp` and `nbf` may be off the agent's clock, in seconds (Envoy's
    /// default, which Istio uses).
    public static let clockSkew: Double = 60

    public let algorithm: JWSAlgorithm
    /// The header's `kid`.
    public let keyID: String?
    /// The header's `typ`; not checked, as Istio does not.
    public let type: String?
    public let header: JSONValue
    /// The payload: a JSON object, not verified until ``verify(keys:issuer:audiences:now:)`` says so.
    public let claims: JSONValue
    private let signingInput: [UInt8]
    private let signature: [UInt8]

    /// The `iss` claim before verification: only for choosing which issuer's
    /// configuration verifies the token, never as a fact.
    public var unverifiedIssuer: String? { claims["iss"]?.stringValue }

    public init(compact token: some StringProtocol) throws(JSONWebTokenError) {
        guard token.utf8.count <= Self.maximumLength else { throw .tooLarge(bytes: token.utf8.count) }
        let text = Array(token.utf8)
        let segments = text.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard segments.count == 3 else {
            throw .malformed(
                segments.count == 5
                    ? "5 segments: an encrypted token (JWE), which is not supported; send a signed JWT"
                    : "\(segments.count) segment\(segments.count == 1 ? "" : "s") separated by '.'; a signed JWT has 3")
        }
        let header = try Self.object(segments[0], part: "header")
        guard case .object(let members) = header else { throw .malformed("the header is not a JSON object") }
        guard let algorithmValue = members["alg"] else { throw .malformed("the header has no alg") }
        guard case .string(let algorithmName) = algorithmValue else { throw .malformed("the header's alg is not a string") }
        self.algorithm = try Self.algorithm(named: algorithmName)
        guard members["crit"] == nil else { throw .criticalHeader }
        self.keyID = try Self.optionalString(members["kid"], "the header's kid")
        self.type = try Self.optionalString(members["typ"], "the header's typ")
        self.header = header

        let claims = try Self.object(segments[1], part: "payload")
        guard case .object = claims else { throw .malformed("the payload is not a JSON object of claims") }
        self.claims = claims

        guard let signature = Base64URL.decode(segments[2]) else {
            throw .malformed("the signature is not unpadded base64url (only A-Z a-z 0-9 - _)")
        }
        guard !signature.isEmpty else { throw .malformed("the signature is empty") }
        self.signature = signature
        self.signingInput = Array(text[..<segments[1].endIndex])
    }

    /// Checks the signature with `keys`, then the claims, and returns who the
    /// token speaks for.
    ///
    /// Keys: with a `kid`, the keys of that id (and, as in Envoy, keys without an
    /// id) — a `kid` that names nothing is refused; without one, every key that can
    /// verify the algorithm is tried. A JWK's own `alg` limits it to that algorithm.
    ///
    /// Claims: `iss` must be `issuer`; `exp` and `nbf`, when present, must hold at
    /// `now` (seconds since the epoch) give or take ``clockSkew``; with
    /// `audiences`, one of the token's `aud` must be among them, compared as
    /// Envoy does (an `http://` or `https://` prefix and one trailing `/` ignored).
    /// A token without `exp` does not expire, as in Istio.
    ///
    /// The identity's principal is `iss/sub`. Without `sub`, Istio sets no request
    /// principal: the identity then has an empty `subject` and an empty
    /// `principal`, which no `requestPrincipals` pattern (not even `*`) matches.
    public func verify(keys: JSONWebKeySet, issuer: String, audiences: [String] = [], now: Double) throws(JSONWebTokenError) -> RequestIdentity {
        try verifySignature(keys)

        guard case .object(let members) = claims else { throw .malformed("the payload is not a JSON object of claims") }
        guard let issuerValue = members["iss"] else { throw .invalidClaim("the token has no iss claim") }
        guard case .string(let tokenIssuer) = issuerValue else { throw .invalidClaim("iss is not a string") }
        let subject = try Self.optionalString(members["sub"], "sub", error: JSONWebTokenError.invalidClaim)
        let presenter = try Self.optionalString(members["azp"], "azp", error: JSONWebTokenError.invalidClaim)
        let tokenAudiences = try Self.audiences(members["aud"])
        let expiry = try Self.time(members["exp"], "exp")
        let notBefore = try Self.time(members["nbf"], "nbf")
        _ = try Self.time(members["iat"], "iat")

        guard tokenIssuer == issuer else { throw .wrongIssuer }
        if let expiry, now >= expiry + Self.clockSkew { throw .expired(expiry: expiry, now: now) }
        if let notBefore, now < notBefore - Self.clockSkew { throw .notYetValid(notBefore: notBefore, now: now) }
        if !audiences.isEmpty {
            let allowed = Set(audiences.map(Self.normalizedAudience))
            guard tokenAudiences.contains(where: { allowed.contains(Self.normalizedAudience($0)) }) else {
                throw .audienceNotAllowed
            }
        }

        var identity = RequestIdentity(issuer: tokenIssuer, subject: subject ?? "", audiences: tokenAudiences, presenter: presenter, claims: claims)
        if subject == nil { identity.principal = "" }
        return identity
    }

    private func verifySignature(_ keys: JSONWebKeySet) throws(JSONWebTokenError) {
        var candidates = keys.keys
        if let keyID {
            candidates = candidates.filter { $0.id == keyID || $0.id == nil }
            guard !candidates.isEmpty else { throw .unknownKeyID }
        }
        candidates = candidates.filter { $0.canVerify(algorithm) }
        guard !candidates.isEmpty else { throw .noKeyForAlgorithm(algorithm, keyIDGiven: keyID != nil) }
        var unusable: JSONWebKeyError?
        var answered = false
        for candidate in candidates {
            do {
                if try candidate.key.verify(signature: signature, signedBytes: signingInput, algorithm: algorithm) { return }
                answered = true
            } catch {
                unusable = unusable ?? error
            }
        }
        if !answered, let unusable { throw .malformed("the signature cannot be checked: \(unusable)") }
        throw .badSignature
    }

    // MARK: - Reading

    private static func object(_ segment: ArraySlice<UInt8>, part: String) throws(JSONWebTokenError) -> JSONValue {
        guard let bytes = Base64URL.decode(segment) else {
            throw .malformed("the \(part) is not unpadded base64url (only A-Z a-z 0-9 - _)")
        }
        guard !bytes.isEmpty else { throw .malformed("the \(part) is empty") }
        do {
            return try JSONValue.parse(Data(bytes))
        } catch {
            throw .malformed("the \(part) is not a JSON object: \(error.reason)")
        }
    }

    private static func algorithm(named name: String) throws(JSONWebTokenError) -> JWSAlgorithm {
        if let algorithm = JWSAlgorithm(rawValue: name) { return algorithm }
        let supported = JWSAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")
        if name.lowercased() == "none" {
            throw .algorithmRefused("alg \"none\": an unsigned token is never accepted")
        }
        if name.hasPrefix("HS") {
            throw .algorithmRefused("alg \(loggable(name)): HMAC tokens are not accepted, only \(supported)")
        }
        throw .algorithmRefused("alg \(loggable(name)) is not supported; only \(supported)")
    }

    private static func optionalString(
        _ value: JSONValue?, _ what: String, error: (String) -> JSONWebTokenError = JSONWebTokenError.malformed
    ) throws(JSONWebTokenError) -> String? {
        guard let value else { return nil }
        guard case .string(let text) = value else { throw error("\(what) is not a string") }
        return text
    }

    private static func audiences(_ value: JSONValue?) throws(JSONWebTokenError) -> [String] {
        switch value {
        case nil: return []
        case .string(let audience): return [audience]
        case .array(let values):
            var audiences: [String] = []
            for value in values {
                guard case .string(let audience) = value else { throw .invalidClaim("aud is not a string or a list of strings") }
                audiences.append(audience)
            }
            return audiences
        default: throw .invalidClaim("aud is not a string or a list of strings")
        }
    }

    private static func time(_ value: JSONValue?, _ name: String) throws(JSONWebTokenError) -> Double? {
        guard let value else { return nil }
        guard case .number(let seconds) = value, seconds.isFinite else { throw .invalidClaim("\(name) is not a number of seconds") }
        return seconds
    }

    /// Envoy forgives a scheme and a trailing slash in audiences, which users get
    /// wrong easily; doing the same keeps policies that work in Istio working here.
    static func normalizedAudience(_ audience: String) -> Substring {
        var text = audience[...]
        for scheme in ["http://", "https://"] where text.hasPrefix(scheme) {
            text = text.dropFirst(scheme.count)
            break
        }
        if text.hasSuffix("/") { text = text.dropLast() }
        return text
    }
}

/// Why a token was refused. Descriptions never repeat the token, and quote what
/// it contains only shortened and escaped (``loggable(_:)``), so they are safe to
/// log and to return to the client.
public enum JSONWebTokenError: Error, Equatable, CustomStringConvertible {
    case tooLarge(bytes: Int)
    case malformed(String)
    /// `none`, HMAC, or an algorithm the agent does not verify.
    case algorithmRefused(String)
    case criticalHeader
    case unknownKeyID
    case noKeyForAlgorithm(JWSAlgorithm, keyIDGiven: Bool)
    case badSignature
    /// A claim of the wrong type, or a missing `iss`.
    case invalidClaim(String)
    case wrongIssuer
    case expired(expiry: Double, now: Double)
    case notYetValid(notBefore: Double, now: Double)
    case audienceNotAllowed

    public var description: String {
        switch self {
        case .tooLarge(let bytes):
            return "the token is \(bytes) bytes; at most \(JSONWebToken.maximumLength) are accepted"
        case .malformed(let reason):
            return "malformed token: \(reason)"
        case .algorithmRefused(let reason):
            return "token refused: \(reason)"
        case .criticalHeader:
            return "token refused: its header lists critical extensions (crit), which are not supported"
        case .unknownKeyID:
            return "the token's kid names no key of the issuer's key set"
        case .noKeyForAlgorithm(let algorithm, let keyIDGiven):
            return keyIDGiven
                ? "the key the token's kid names cannot verify \(algorithm) signatures"
                : "the issuer's key set has no key that can verify \(algorithm) signatures"
        case .badSignature:
            return "the token's signature does not verify"
        case .invalidClaim(let reason):
            return "invalid claims: \(reason)"
        case .wrongIssuer:
            return "the token's iss is not the configured issuer"
        case .expired(let expiry, let now):
            return "the token expired \(Int(now - expiry)) s ago (exp \(Int(expiry)), \(Int(JSONWebToken.clockSkew)) s of clock skew allowed)"
        case .notYetValid(let notBefore, let now):
            return "the token is not valid for another \(Int(notBefore - now)) s (nbf \(Int(notBefore)), \(Int(JSONWebToken.clockSkew)) s of clock skew allowed)"
        case .audienceNotAllowed:
            return "the token's aud names none of the configured audiences"
        }
    }
}

/// Text from a request, quoted for a log line: at most `limit` characters,
/// anything but printable ASCII escaped, so a hostile value can neither forge
/// log lines nor flood them.
func loggable(_ text: String, limit: Int = 64) -> String {
    var result = "\""
    var count = 0
    for scalar in text.unicodeScalars {
        guard count < limit else {
            result += "…"
            break
        }
        count += 1
        switch scalar {
        case "\"": result += "\\\""
        case "\\": result += "\\\\"
        case " "..."~": result.unicodeScalars.append(scalar)
        default: result += "\\u{\(String(scalar.value, radix: 16))}"
        }
    }
    return result + "\""
}

/// Base64url without padding (RFC 7515 §2), strictly: only A-Z a-z 0-9 - _, no
/// `=`, no whitespace, and the unused low bits of the last character zero — so
/// that each byte string has exactly one encoding.
enum Base64URL {
    static func decode(_ text: some Collection<UInt8>) -> [UInt8]? {
        guard text.count % 4 != 1 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(text.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for character in text {
            let value: UInt8
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = character - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = character - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0") + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return nil
            }
            accumulator = (accumulator << 6) | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        guard accumulator & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return output
    }

    static func decode(_ text: String) -> [UInt8]? {
        decode(Array(text.utf8))
    }
}
