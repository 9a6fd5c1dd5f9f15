import Foundation
import TLS
import TestFixtures
import Testing

@testable import Policy

/// Unpadded base64url, to build tokens by hand.
func base64URL(_ bytes: some Sequence<UInt8>) -> String {
    Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

func base64URL(_ text: String) -> String { base64URL(Array(text.utf8)) }

/// A compact token from JSON texts; the signature is whatever is given.
func compactToken(header: String, payload: String, signature: [UInt8] = Array(repeating: 7, count: 256)) -> String {
    "\(base64URL(header)).\(base64URL(payload)).\(base64URL(signature))"
}

/// The token with one bit of its signature flipped.
func flippingSignatureBit(_ token: String, bit: Int = 0) throws -> String {
    let parts = token.split(separator: ".", omittingEmptySubsequences: false)
    var signature = try #require(Base64URL.decode(String(parts[2])))
    signature[bit / 8] ^= 1 << UInt8(bit % 8)
    return "\(parts[0]).\(parts[1]).\(base64URL(signature))"
}

@Suite struct JSONWebTokenTests {
    typealias Token = JWTFixtures.Token
    let keys: JSONWebKeySet

    init() throws {
        keys = try JSONWebKeySet(json: JWTFixtures.jwks)
    }

    func verify(
        _ text: String, issuer: String = JWTFixtures.issuer, audiences: [String] = [], now: Double = JWTFixtures.now, keys: JSONWebKeySet? = nil
    ) throws(JSONWebTokenError) -> RequestIdentity {
        try JSONWebToken(compact: text).verify(keys: keys ?? self.keys, issuer: issuer, audiences: audiences, now: now)
    }

    /// The error a token gets, or nil if it is accepted.
    func refusal(
        _ text: String, issuer: String = JWTFixtures.issuer, audiences: [String] = [], now: Double = JWTFixtures.now, keys: JSONWebKeySet? = nil
    ) -> JSONWebTokenError? {
        do throws(JSONWebTokenError) {
            _ = try verify(text, issuer: issuer, audiences: audiences, now: now, keys: keys)
            return nil
        } catch {
            return error
        }
    }

    // MARK: - Accepted

    static let genuine: [(String, JWSAlgorithm, String)] = [
        (Token.rs256, .RS256, "rsa-1"), (Token.rs384, .RS384, "rsa-1"), (Token.rs512, .RS512, "rsa-1"),
        (Token.es256, .ES256, "ec-256"), (Token.es384, .ES384, "ec-384"), (Token.eddsa, .EdDSA, "ed-1"),
    ]

    @Test(arguments: 0..<genuine.count)
    func aGenuineTokenOfEveryAlgorithmIsAccepted(index: Int) throws {
        let (text, algorithm, keyID) = Self.genuine[index]
        let token = try JSONWebToken(compact: text)
        #expect(token.algorithm == algorithm)
        #expect(token.keyID == keyID)
        #expect(token.type == "JWT")
        #expect(token.unverifiedIssuer == JWTFixtures.issuer)
        let identity = try verify(text, audiences: ["shop"])
        #expect(identity.principal == "https://issuer.example/alice")
        #expect(identity.issuer == JWTFixtures.issuer)
        #expect(identity.subject == "alice")
        #expect(identity.audiences == ["shop"])
        #expect(identity.presenter == nil)
        #expect(identity.claims["exp"] == .number(JWTFixtures.expiry))
    }

    @Test func withoutKidEveryKeyThatCanVerifyTheAlgorithmIsTried() throws {
        #expect(try verify(Token.rs256WithoutKid).subject == "alice")
        #expect(try verify(Token.es256WithoutKid).subject == "alice")
    }

    @Test func aKeyWithoutKidMayVerifyATokenWithOneAsInEnvoy() throws {
        let anonymous = try JSONWebKeySet(json: #"{"keys":[\#(JWTFixtures.ec256JWK.replacingOccurrences(of: #","kid":"ec-256""#, with: ""))]}"#)
        #expect(anonymous.keys.first?.id == nil)
        #expect(try verify(Token.es256, keys: anonymous).subject == "alice")
        #expect(refusal(Token.unknownKid, keys: anonymous) == .noKeyForAlgorithm(.RS256, keyIDGiven: true))
    }

    @Test func claimsArePassedOnWhole() throws {
        let identity = try verify(Token.nested)
        #expect(identity.presenter == "web-app")
        #expect(identity.claims["realm"]?["roles"] == .array([.string("admin"), .string("viewer")]))
        #expect(identity.claims["groups"] == .array([.string("ops")]))
    }

    @Test func withoutSubTheTokenIsValidButThereIsNoPrincipal() throws {
        let identity = try verify(Token.withoutSubject)
        #expect(identity.subject == "")
        #expect(identity.principal == "", "Istio sets request.auth.principal only when the token has iss and sub")
        #expect(identity.issuer == JWTFixtures.issuer)
    }

    // MARK: - Time

    @Test func expiryAndNotBeforeAllowSixtySecondsOfSkew() throws {
        #expect(JSONWebToken.clockSkew == 60)
        #expect(refusal(Token.rs256, now: JWTFixtures.expiry - 1) == nil)
        #expect(refusal(Token.rs256, now: JWTFixtures.expiry + 59) == nil, "inside the skew")
        #expect(refusal(Token.rs256, now: JWTFixtures.expiry + 60) == .expired(expiry: JWTFixtures.expiry, now: JWTFixtures.expiry + 60))
        #expect(refusal(Token.rs256, now: JWTFixtures.expiry + 86400) != nil)
        #expect(refusal(Token.rs256, now: JWTFixtures.notBefore - 60) == nil, "inside the skew")
        #expect(refusal(Token.rs256, now: JWTFixtures.notBefore - 61) == .notYetValid(notBefore: JWTFixtures.notBefore, now: JWTFixtures.notBefore - 61))
        #expect(
            JSONWebTokenError.expired(expiry: JWTFixtures.expiry, now: JWTFixtures.expiry + 120).description
                == "the token expired 120 s ago (exp 1700003600, 60 s of clock skew allowed)")
        #expect(
            JSONWebTokenError.notYetValid(notBefore: JWTFixtures.notBefore, now: JWTFixtures.notBefore - 300).description
                == "the token is not valid for another 300 s (nbf 1699999940, 60 s of clock skew allowed)")
    }

    @Test func aTokenWithoutExpDoesNotExpireAsInIstio() {
        #expect(refusal(Token.withoutExpiry, now: JWTFixtures.now + 10 * 365 * 86400) == nil)
    }

    // MARK: - Issuer and audience

    @Test func theIssuerMustBeTheConfiguredOne() {
        #expect(refusal(Token.rs256, issuer: "https://other.example") == .wrongIssuer)
        #expect(refusal(Token.rs256, issuer: "https://issuer.example/") == .wrongIssuer, "compared exactly")
        #expect(refusal(Token.otherIssuer) == .wrongIssuer)
    }

    @Test func configuredAudiencesMustMeetTheTokensAudience() {
        #expect(refusal(Token.rs256, audiences: ["billing"]) == .audienceNotAllowed)
        #expect(refusal(Token.rs256, audiences: ["billing", "shop"]) == nil)
        #expect(refusal(Token.rs256, audiences: []) == nil, "no audiences configured: any")
        // aud ["billing", "https://shop/"]
        #expect(refusal(Token.audienceList, audiences: ["shop"]) == nil, "scheme and trailing slash ignored, as in Envoy")
        #expect(refusal(Token.audienceList, audiences: ["http://billing"]) == nil)
        #expect(refusal(Token.audienceList, audiences: ["orders"]) == .audienceNotAllowed)
        #expect(refusal(Token.audienceList, audiences: ["shop/x"]) == .audienceNotAllowed)
        #expect(refusal(Token.withoutAudience, audiences: ["shop"]) == .audienceNotAllowed, "no aud meets no configured audience")
        #expect(refusal(Token.withoutAudience) == nil)
        #expect(refusal(Token.audienceNotStrings, audiences: ["shop"]) == .invalidClaim("aud is not a string or a list of strings"))
    }

    @Test func audienceNormalization() {
        #expect(JSONWebToken.normalizedAudience("https://shop.example/") == "shop.example")
        #expect(JSONWebToken.normalizedAudience("http://shop") == "shop")
        #expect(JSONWebToken.normalizedAudience("shop//") == "shop/")
        #expect(JSONWebToken.normalizedAudience("spiffe://td/ns/a") == "spiffe://td/ns/a")
    }

    @Test func claimsOfTheWrongTypeAreRefused() {
        #expect(refusal(Token.expiryNotANumber) == .invalidClaim("exp is not a number of seconds"))
    }

    // MARK: - Signatures and keys

    @Test func aFlippedSignatureBitIsABadSignature() throws {
        for (text, _, _) in Self.genuine {
            for bit in [0, 9, 100] {
                #expect(refusal(try flippingSignatureBit(text, bit: bit)) == .badSignature)
            }
        }
        #expect(refusal(Token.signedByAnotherKey) == .badSignature)
    }

    @Test func anotherPayloadUnderAGenuineSignatureIsABadSignature() throws {
        let genuine = Token.rs256.split(separator: ".")
        let bob = Token.bob.split(separator: ".")
        #expect(refusal("\(genuine[0]).\(bob[1]).\(genuine[2])") == .badSignature)
        let escalated = base64URL(#"{"iss":"https://issuer.example","sub":"admin","aud":"shop","exp":1700003600}"#)
        #expect(refusal("\(genuine[0]).\(escalated).\(genuine[2])") == .badSignature)
    }

    @Test func aKidTheKeySetDoesNotHaveIsRefused() {
        #expect(refusal(Token.unknownKid) == .unknownKeyID)
        #expect(JSONWebTokenError.unknownKeyID.description == "the token's kid names no key of the issuer's key set")
    }

    @Test func aKidNamingAKeyOfTheWrongTypeIsRefused() {
        #expect(refusal(Token.es256NamingRSAKey) == .noKeyForAlgorithm(.ES256, keyIDGiven: true))
        let rsaOnly = JSONWebKeySet(keys: keys.keys.filter { $0.id == "rsa-1" })
        #expect(refusal(Token.es256WithoutKid, keys: rsaOnly) == .noKeyForAlgorithm(.ES256, keyIDGiven: false))
    }

    @Test func aKeysAlgLimitsItToThatAlgorithm() throws {
        let pinned = try JSONWebKeySet(json: #"{"keys":[\#(JWTFixtures.rsaJWK.replacingOccurrences(of: #""use":"sig""#, with: #""alg":"RS256""#))]}"#)
        #expect(pinned.keys.first?.algorithm == .RS256)
        #expect(refusal(Token.rs256, keys: pinned) == nil)
        #expect(refusal(Token.rs384, keys: pinned) == .noKeyForAlgorithm(.RS384, keyIDGiven: true))
    }

    // MARK: - Algorithms refused

    @Test func algNoneIsRefusedInAnySpelling() {
        for name in ["none", "None", "NONE", "nOnE"] {
            let unsigned = "\(base64URL(#"{"alg":"\#(name)"}"#)).\(base64URL(#"{"iss":"https://issuer.example","sub":"admin"}"#))."
            #expect(refusal(unsigned) == .algorithmRefused("alg \"none\": an unsigned token is never accepted"))
            let signed = compactToken(header: #"{"alg":"\#(name)"}"#, payload: #"{"iss":"https://issuer.example"}"#)
            #expect(refusal(signed) == .algorithmRefused("alg \"none\": an unsigned token is never accepted"))
        }
    }

    /// The classic confusion: HMAC keyed with the RSA public key's bytes, which
    /// anyone can read from the JWKS.
    @Test func hs256SignedWithThePublicKeyIsRefused() {
        #expect(
            refusal(Token.hs256WithModulus)
                == .algorithmRefused("alg \"HS256\": HMAC tokens are not accepted, only RS256, RS384, RS512, ES256, ES384, EdDSA"))
        for name in ["HS384", "HS512"] {
            #expect(refusal(compactToken(header: #"{"alg":"\#(name)","kid":"rsa-1"}"#, payload: "{}")) != nil)
        }
    }

    @Test func unknownAlgorithmsAreRefusedAndQuotedSafely() throws {
        for name in ["PS256", "ES512", "RS1", "rs256", "EdDSA ", "Ed25519", ""] {
            let error = refusal(compactToken(header: #"{"alg":"\#(name)"}"#, payload: "{}"))
            guard case .algorithmRefused(let reason)? = error else {
                Issue.record("alg \(name): \(String(describing: error))")
                continue
            }
            #expect(reason.hasSuffix("is not supported; only RS256, RS384, RS512, ES256, ES384, EdDSA"))
        }
        let hostile = compactToken(header: #"{"alg":"X\nlevel=error msg=\"forged\"\#(String(repeating: "A", count: 500))"}"#, payload: "{}")
        let description = try #require(refusal(hostile)).description
        #expect(!description.contains("\n"))
        #expect(description.contains(#"X\u{a}level=error msg=\"forged\""#))
        #expect(description.count < 200)
    }

    // MARK: - Malformed

    @Test func segmentCountsOtherThanThreeAreRefused() {
        let header = base64URL(#"{"alg":"RS256"}"#)
        let payload = base64URL("{}")
        #expect(refusal(header) == .malformed("1 segment separated by '.'; a signed JWT has 3"))
        #expect(refusal("\(header).\(payload)") == .malformed("2 segments separated by '.'; a signed JWT has 3"))
        #expect(refusal("\(header).\(payload).AAAA.AAAA") == .malformed("4 segments separated by '.'; a signed JWT has 3"))
        #expect(
            refusal("\(header).\(payload).AAAA.AAAA.AAAA")
                == .malformed("5 segments: an encrypted token (JWE), which is not supported; send a signed JWT"))
        #expect(refusal("") == .malformed("1 segment separated by '.'; a signed JWT has 3"))
        #expect(refusal("..") == .malformed("the header is empty"))
    }

    @Test func base64urlIsStrict() throws {
        let parts = Token.rs256.split(separator: ".").map(String.init)
        let variants = [
            "\(parts[0])=.\(parts[1]).\(parts[2])",  // padding
            "\(parts[0]).\(parts[1]).\(parts[2])==",
            "\(parts[0].replacingOccurrences(of: "J", with: "+")).\(parts[1]).\(parts[2])",  // standard alphabet
            "\(parts[0]).\(parts[1]).\(parts[2].replacingOccurrences(of: "_", with: "/"))",
            " \(Token.rs256)",  // whitespace
            "\(parts[0]).\(parts[1]) .\(parts[2])",
            "\(parts[0]).\(parts[1].dropLast())é.\(parts[2])",  // not ASCII
            "\(parts[0]).\(parts[1]).\(parts[2])A",  // a length base64 cannot have
        ]
        for variant in variants {
            guard case .malformed? = refusal(variant) else {
                Issue.record("\(variant.prefix(40))… was not refused as malformed: \(String(describing: refusal(variant)))")
                continue
            }
        }
        // The last character's unused bits must be zero: one encoding per byte string.
        #expect(Base64URL.decode("QQ") == [0x41])
        #expect(Base64URL.decode("QR") == nil)
        #expect(Base64URL.decode("QUI") == [0x41, 0x42])
        #expect(Base64URL.decode("QUJ") == nil)
        #expect(Base64URL.decode("") == [])
        #expect(Base64URL.decode("Q") == nil)
        #expect(Base64URL.decode("-_-_") == [0xFB, 0xFF, 0xBF])
    }

    @Test func oversizedTokensAreRefusedBeforeAnythingElse() {
        let limit = JSONWebToken.maximumLength
        #expect(limit == 16 * 1024)
        #expect(refusal(String(repeating: "A", count: limit + 1)) == .tooLarge(bytes: limit + 1))
        // Exactly at the limit is read (and then fails on its signature).
        let prefix = compactToken(header: #"{"alg":"RS256","kid":"rsa-1"}"#, payload: #"{"iss":"https://issuer.example","pad":""}"#)
        let padding = String(repeating: "x", count: (limit - prefix.count) / 4 * 3)
        let large = compactToken(header: #"{"alg":"RS256","kid":"rsa-1"}"#, payload: #"{"iss":"https://issuer.example","pad":"\#(padding)"}"#)
        #expect(large.utf8.count <= limit)
        #expect(large.utf8.count > limit - 8)
        #expect(refusal(large) == .badSignature)
    }

    @Test func aCriticalHeaderIsRefused() {
        #expect(refusal(Token.criticalHeader) == .criticalHeader)
        #expect(refusal(compactToken(header: #"{"alg":"ES256","crit":[]}"#, payload: "{}")) == .criticalHeader)
    }

    @Test func headerAndPayloadMustBeJSONObjects() {
        #expect(refusal(Token.payloadArray) == .malformed("the payload is not a JSON object of claims"))
        #expect(refusal(compactToken(header: #"{"alg":"RS256"}"#, payload: #""claims""#)) == .malformed("the payload is not a JSON object: not valid JSON"))
        #expect(refusal(compactToken(header: #"{"alg":"RS256"}"#, payload: "{")) == .malformed("the payload is not a JSON object: not valid JSON"))
        #expect(refusal(compactToken(header: #"["alg","RS256"]"#, payload: "{}")) == .malformed("the header is not a JSON object"))
        #expect(refusal(compactToken(header: #"{"typ":"JWT"}"#, payload: "{}")) == .malformed("the header has no alg"))
        #expect(refusal(compactToken(header: #"{"alg":["RS256"]}"#, payload: "{}")) == .malformed("the header's alg is not a string"))
        #expect(refusal(compactToken(header: #"{"alg":"RS256","kid":7}"#, payload: "{}")) == .malformed("the header's kid is not a string"))
        #expect(refusal("\(base64URL(#"{"alg":"RS256"}"#)).\(base64URL("{}")).") == .malformed("the signature is empty"))
    }

    @Test func deeplyNestedPayloadsAreRefusedWithoutHarm() {
        for depth in [40, 5000] {
            let payload = #"{"iss":"https://issuer.example","a":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}"
            guard case .malformed(let reason)? = refusal(compactToken(header: #"{"alg":"RS256"}"#, payload: payload)) else {
                Issue.record("depth \(depth) was not refused as malformed")
                continue
            }
            #expect(reason.hasPrefix("the payload is not a JSON object"), "\(reason)")
        }
    }

    @Test func refusalsNeverRepeatTheToken() throws {
        let tokens = [
            Token.hs256WithModulus, Token.unknownKid, Token.criticalHeader, Token.payloadArray, try flippingSignatureBit(Token.rs256),
            Token.otherIssuer, Token.expiryNotANumber,
        ]
        for token in tokens {
            let description = try #require(refusal(token, now: JWTFixtures.expiry + 1000)).description
            for segment in token.split(separator: ".") where segment.count > 8 {
                #expect(!description.contains(segment.prefix(8)), "\(description)")
            }
        }
    }
}

@Suite struct JSONWebKeySetTests {
    func keySet(_ keys: String...) throws(JSONWebKeySetError) -> JSONWebKeySet {
        try JSONWebKeySet(json: #"{"keys":[\#(keys.joined(separator: ","))]}"#)
    }

    func reason(_ keys: String...) -> String? {
        do throws(JSONWebKeySetError) {
            _ = try JSONWebKeySet(json: #"{"keys":[\#(keys.joined(separator: ","))]}"#)
            return nil
        } catch {
            return error.reason
        }
    }

    @Test func theFixtureSetHasItsFourKeys() throws {
        let set = try JSONWebKeySet(json: JWTFixtures.jwks)
        #expect(set.keys.map(\.id) == ["rsa-1", "ec-256", "ec-384", "ed-1"])
        #expect(set.keys.map(\.key.kind) == [.rsa(bits: 2048), .ec(.p256), .ec(.p384), .ed25519])
        #expect(set.keys.allSatisfy { $0.algorithm == nil })
        #expect(set.warnings.isEmpty)
    }

    @Test func keysForOtherUsesAreLeftOutQuietly() throws {
        let encryption = JWTFixtures.rsaJWK.replacingOccurrences(of: #""use":"sig""#, with: #""use":"enc""#)
        let wrapOnly = JWTFixtures.ec384JWK.replacingOccurrences(of: #""use":"sig""#, with: #""key_ops":["wrapKey"]"#)
        let verifyOnly = JWTFixtures.ed25519JWK.replacingOccurrences(of: #""use":"sig""#, with: #""key_ops":["verify"]"#)
        let set = try keySet(encryption, JWTFixtures.ec256JWK, wrapOnly, verifyOnly)
        #expect(set.keys.map(\.id) == ["ec-256", "ed-1"])
        #expect(set.warnings.isEmpty)
    }

    @Test func unsupportedKeysAreLeftOutWithAWarning() throws {
        let set = try keySet(
            #"{"kty":"oct","k":"c2VjcmV0","kid":"shared"}"#,
            #"{"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"big"}"#,
            #"{"kty":"OKP","crv":"X25519","x":"AA"}"#,
            JWTFixtures.rsaJWK.replacingOccurrences(of: #""use":"sig""#, with: #""alg":"PS256""#),
            #"{"kty":"AKP","kid":"pq"}"#,
            JWTFixtures.ec256JWK)
        #expect(set.keys.map(\.id) == ["ec-256"])
        #expect(
            set.warnings == [
                #"keys[0] (kid "shared") left out: symmetric (oct) keys are not supported; only RSA, EC and OKP public keys"#,
                #"keys[1] (kid "big") left out: EC curve "P-521" is not supported (only P-256 and P-384)"#,
                #"keys[2] left out: OKP curve "X25519" is not supported (only Ed25519)"#,
                #"keys[3] (kid "rsa-1") left out: its alg "PS256" is not supported (only RS256, RS384, RS512, ES256, ES384, EdDSA)"#,
                #"keys[4] (kid "pq") left out: kty "AKP" is not supported (only RSA, EC and OKP)"#,
            ])
    }

    @Test func aSetWithoutAUsableKeyIsAnError() {
        #expect(
            reason(#"{"kty":"oct","k":"c2VjcmV0"}"#, JWTFixtures.rsaJWK.replacingOccurrences(of: #""use":"sig""#, with: #""use":"enc""#))
                == #"no key usable for verifying signatures (keys[0] left out: symmetric (oct) keys are not supported; only RSA, EC and OKP public keys; keys[1] (kid "rsa-1") left out: its use is "enc", not "sig")"#
        )
        #expect(reason() == #"no key usable for verifying signatures (the "keys" list is empty)"#)
    }

    @Test func brokenKeysFailTheSet() {
        #expect(reason(JWTFixtures.smallRSAJWK) == #"keys[0] (kid "rsa-small"): the RSA modulus is 1024 bits; at least 2048 are required (ask the issuer for a stronger key)"#)
        let offCurve = JWTFixtures.ec256JWK.replacingOccurrences(of: JWTFixtures.ec256Y, with: JWTFixtures.offCurveY)
        #expect(offCurve != JWTFixtures.ec256JWK)
        #expect(reason(offCurve, JWTFixtures.rsaJWK)?.hasPrefix(#"keys[0] (kid "ec-256"): the point (x, y) is not"#) == true)
        #expect(reason(JWTFixtures.ed25519JWK.replacingOccurrences(of: #"","kid":"ed-1""#, with: #"=","kid":"ed-1""#)) == #"keys[0] (kid "ed-1"): x is not unpadded base64url (only A-Z a-z 0-9 - _)"#)
        #expect(reason(JWTFixtures.rsaJWK.replacingOccurrences(of: #""e":"AQAB""#, with: #""e":"AQAB==""#)) == #"keys[0] (kid "rsa-1"): e is not unpadded base64url (only A-Z a-z 0-9 - _)"#)
        #expect(reason(JWTFixtures.rsaJWK.replacingOccurrences(of: #""e":"AQAB","#, with: "")) == #"keys[0] (kid "rsa-1"): has no e"#)
        #expect(reason(#"{"n":"AQAB"}"#) == "keys[0]: has no kty")
        #expect(reason(#"{"kty":"RSA","kid":1}"#) == "keys[0]: kid is not a string")
        #expect(reason(#"{"kty":"EC","x":"AA","y":"AA"}"#) == "keys[0]: has no crv")
        #expect(reason(#""key""#) == "keys[0] is not a JSON object")
        #expect(reason(JWTFixtures.ec256JWK.replacingOccurrences(of: #""use":"sig""#, with: #""alg":"ES384""#)) == #"keys[0] (kid "ec-256"): its alg is ES384, which an EC P-256 key cannot do"#)
        #expect(reason(JWTFixtures.ec256JWK.replacingOccurrences(of: #""use":"sig""#, with: #""key_ops":"verify""#)) == #"keys[0] (kid "ec-256"): key_ops is not a list of strings"#)
    }

    @Test func aPrivateKeyInTheSetIsUsedForItsPublicPartWithAWarning() throws {
        let set = try keySet(JWTFixtures.ed25519JWK.replacingOccurrences(of: #""use":"sig""#, with: #""d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A""#))
        #expect(set.keys.count == 1)
        #expect(set.warnings == [#"keys[0] (kid "ed-1") contains a private key (member "d"); only its public part is used — keep private keys out of policy files"#])
    }

    @Test func notAKeySet() {
        for (text, expected) in [
            ("", "not a JWKS: not valid JSON"), ("[]", #"not a JWKS: expected a JSON object with a "keys" list"#),
            (#"{"keys":{}}"#, #"not a JWKS: expected a "keys" list"#), (#"{"key":[]}"#, #"not a JWKS: expected a "keys" list"#),
            (JWTFixtures.rsaJWK, #"not a JWKS: expected a "keys" list"#),
        ] {
            #expect(throws: JSONWebKeySetError(expected), "\(text.prefix(20))") { try JSONWebKeySet(json: text) }
        }
    }

    @Test func sizeAndKeyCountAreLimited() throws {
        let oversized = #"{"keys":[]}"# + String(repeating: " ", count: JSONWebKeySet.maximumSize)
        #expect(throws: JSONWebKeySetError("the key set is \(JSONWebKeySet.maximumSize + 11) bytes; at most 1048576 are accepted")) {
            try JSONWebKeySet(json: oversized)
        }
        let many = Array(repeating: JWTFixtures.ec256JWK, count: JSONWebKeySet.maximumKeys)
        #expect(try JSONWebKeySet(json: #"{"keys":[\#(many.joined(separator: ","))]}"#).keys.count == 100)
        #expect(throws: JSONWebKeySetError("the key set has 101 keys; at most 100 are accepted")) {
            try JSONWebKeySet(json: #"{"keys":[\#((many + [JWTFixtures.ec256JWK]).joined(separator: ","))]}"#)
        }
    }
}
