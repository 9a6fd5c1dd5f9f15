import Foundation
import Testing

@testable import TLS

@Suite struct JSONWebKeyTests {
    /// Unpadded base64url, as JWK members and JWS segments are written.
    static func bytes(_ text: String) throws -> [UInt8] {
        var standard = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        standard += String(repeating: "=", count: (4 - standard.count % 4) % 4)
        return Array(try #require(Data(base64Encoded: standard), "\(text) is not base64url"))
    }

    /// `header.payload` and the decoded signature of a compact JWS.
    static func split(_ token: String) throws -> (signedBytes: [UInt8], signature: [UInt8]) {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        try #require(parts.count == 3)
        return (Array("\(parts[0]).\(parts[1])".utf8), try bytes(String(parts[2])))
    }

    // MARK: - Known answers

    /// RFC 7515 appendix A.2.
    @Test func rfc7515RS256Example() throws {
        let key = try JSONWebKey(
            rsaModulus: try Self.bytes(
                "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
            ),
            exponent: try Self.bytes("AQAB"))
        #expect(key.kind == .rsa(bits: 2048))
        let (signedBytes, signature) = try Self.split(
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
        )
        #expect(try key.verify(signature: signature, signedBytes: signedBytes, algorithm: .RS256))
        #expect(try !key.verify(signature: signature, signedBytes: signedBytes, algorithm: .RS384))
        #expect(try !key.verify(signature: signature, signedBytes: signedBytes + [0x20], algorithm: .RS256))
    }

    /// RFC 7515 appendix A.3.
    @Test func rfc7515ES256Example() throws {
        let key = try JSONWebKey(
            curve: .p256, x: try Self.bytes("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"),
            y: try Self.bytes("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"))
        #expect(key.kind == .ec(.p256))
        let (signedBytes, signature) = try Self.split(
            "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
        )
        #expect(try key.verify(signature: signature, signedBytes: signedBytes, algorithm: .ES256))
        var swapped = Array(signature[32...] + signature[..<32])
        #expect(try !key.verify(signature: swapped, signedBytes: signedBytes, algorithm: .ES256))
        swapped = [UInt8](repeating: 0, count: 64)
        #expect(try !key.verify(signature: swapped, signedBytes: signedBytes, algorithm: .ES256), "r = s = 0 is no signature")
    }

    /// RFC 8037 appendix A.4 (A.5 verifies it): a JWS over a sentence, not claims.
    @Test func rfc8037Ed25519Example() throws {
        let key = try JSONWebKey(ed25519: try Self.bytes("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"))
        #expect(key.kind == .ed25519)
        let (signedBytes, signature) = try Self.split(
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        )
        #expect(try key.verify(signature: signature, signedBytes: signedBytes, algorithm: .EdDSA))
        var flipped = signature
        flipped[10] ^= 0x01
        #expect(try !key.verify(signature: flipped, signedBytes: signedBytes, algorithm: .EdDSA))
    }

    // MARK: - Every algorithm

    /// Keys and signatures over `message` made with Tests/integration/tools/jwt.py.
    enum Generated {
        static let message = Array("eyJhbGciOiJSUzI1NiJ9.bWVzaC1hZ2VudA".utf8)
        static let rsaModulus =
            "2sIRByzLDDDML8HGtac-yBgXDkjtnXmP8WTeZKgi2YhwDk9ZVo6zcKWioWKESHA15tTbRASIfMeG6OdYJeHGEw49elycC1H_kXuTVJZ3HAQQgWcIHlQBxTR_rL8xUcquwdKgxoWsEA9iSigIxo_0US6o6AxTroNR0QerN8sg6lcFDFYnmD1DfxHaYVt_bcc0orJ8SjnyYoK89SeIq_2Y2SpgDrYBYKu267c4IrnH74Nk5q4ZXsq-K_nHnBcmyIRbwC5VBSuzgSAwGPVFRZxfHeHPYsLYcpORKenFFNlgX4uIUo9bfhWSFk1u1b_M21w_xE0wh1bv2C6LSj8A5Ngaow"
        static let p256 = ("jrQ-tjZ6cdzPL7iKvZi5d0bYDq5F4OOWSymCswHW25Y", "vu5dKky1b0vuLg44TyW4qvHsk6xWQqfuXQJZSAHpx-4")
        static let p384 = (
            "xrlBXXf3qu4Lf9UFDkc95YEX3x5PZj9waqS28rKMazd1U7XsGyOPr35GjGY7iGIb", "yvIs-OhfcOPsp0zuL7zAifrVY0ZqFa53-ZvTD5eDs_HRB5wNAXubNmhi86VP_3vI"
        )
        static let ed25519 = "e6uAe2CZp-JFfgbmYhtFrXtRxjM2uhjAKfpANQW_ZO0"
        static let smallRSAModulus =
            "u3scLesPPbj5aEoCv-CkaAmjiiEvj78zcZZ0L0OtBmosOXiV2GZurti9qE_aSPjyMsJa_QRfwUh-ONLMVAXKDRzcM0Tf3Q5VurwryVO-BOKYzx80CBDBnzqDkIhHt6DvXF5hAFtfm0hmnPfj8BVhn02luF2iYoRSRNr6o68iIcE"
        static let signatures: [JWSAlgorithm: String] = [
            .RS256:
                "VMz2J3UUjJOeH0ZMDI0f5YgY67yTu3AqadAUKUMKaQUb_zcUE6YpUereZ5-KugQLHV7xbRzV9dLMadlOkypqMVksdecK1piVBk9HwJC3pclZG6_6r18Pa7W-QYI46A6iTnvVtNCfYNhw68-rPNJ7yaAbp0TSd0DT0iRCJUoxguLhmosd2Gm19EwXvWhKYuh1ZGFrixz3Zu-ocDhZ9V_2LHSvUEVswO869enwBQ_dIlDP5y-rweQmOzKXVyMGMUSBY1jd5hBloGcZYTYu-FZX2D1Mfr2dQEL9wJgOCR3oRpMV0QvhY6VO-BGMz-pUIbTu_M0u535ET0puqHoImIY-Kg",
            .RS384:
                "xlVtDfHVvvAhSt1Xz7Z7uwl5HY462Hq39aZt9Tx9m5JBjNI-4XfP6sMUB2OgHgVbN4rmO2Rb3MY77Koxdi-fYnnoQsVUEwYvEXAx3UWG8MiCrYj-lFcfr4Mr7VcmyZhwdF36CoBC4z52T7wIPxjE_JhCWiRoZR9I512nDSojTgYkfU_dMf2y8fAcwtlO_SMA_A8Is-SoDpYmBMabMdVSGW0juAhUBKm_vAycqpkCeiRHnUPJ0-tQsYZuXLjjfgv73c0MhN_KGLWpEcXXQr_stWUqZ_eLD0Bz9jNl9vDfniCRdFM8AYSskmTvukDlmaBIkp1gi8FEzUIAspJI-7UNbg",
            .RS512:
                "xaDdHYrgpV8VSEMpLaVhO0W4QNBATTjaESSZQqRSolBzHq8ACqa7uZMCtoJezncQLdYUw7Ne_JdEr12-hjaNX2Eommk9Pyh74C5z5_6BwHJLtaWEjKZ0g1B3_EB8ag9V46Vv_cNGXGcvPwCnaWcoAlxDGo_3oDKq_a0mmi2GGl0dzarWBViS8aB8dfT3Nw7pkly3MYZ7B4WnNMs6ipX9HfyGvcPV_7sQFPQzj3L6_qU4gj5YmV1G3NfaZcTB3_3ATxHt-nSCSIZ3V7IZxnX4b7LCZUG3UPocz5B6pCdwK0aKDRz0K13_BuZrr5ovXs4PmJJ7U2vvRNxFdZT7fuSKMg",
            .ES256: "BaMx1kfnh3SPlSWtC4YozF1vGuDf7NXU4tmuEpV610MEPQ0GZIDHAlz5rJoxMdGIU4b4_Mcr-s8m3BeDw5jGEA",
            .ES384: "4yVB-OU1cOwiwLsxRpfSoDaVWg3QMskcNYWx--1wmt_JvcN3ZPLNjmWSY9xTxDABsurSlyByWD2ninb1bLwvFbHBmr-9UlVkvwKMrxrzBdIfIW049Y7mTCKefO6oyWWw",
            .EdDSA: "f9gjhUEBM3iguP4API9zUB-nEtefubGbbeo_W5tLzuw93-Jg8f-g4vGn58TB-OS4YixTW0GZUsH8zomBnpjqAA",
        ]

        static func key(for algorithm: JWSAlgorithm) throws -> JSONWebKey {
            switch algorithm {
            case .RS256, .RS384, .RS512: return try JSONWebKey(rsaModulus: try bytes(rsaModulus), exponent: [1, 0, 1])
            case .ES256: return try JSONWebKey(curve: .p256, x: try bytes(p256.0), y: try bytes(p256.1))
            case .ES384: return try JSONWebKey(curve: .p384, x: try bytes(p384.0), y: try bytes(p384.1))
            case .EdDSA: return try JSONWebKey(ed25519: try bytes(ed25519))
            }
        }
    }

    @Test(arguments: JWSAlgorithm.allCases)
    func everyAlgorithmVerifiesItsSignatureAndNothingElse(algorithm: JWSAlgorithm) throws {
        let key = try Generated.key(for: algorithm)
        let signature = try Self.bytes(try #require(Generated.signatures[algorithm]))
        #expect(try key.verify(signature: signature, signedBytes: Generated.message, algorithm: algorithm))
        #expect(try !key.verify(signature: signature, signedBytes: Generated.message.dropLast(), algorithm: algorithm))
        for bit in [0, 7, signature.count * 8 - 1] {
            var flipped = signature
            flipped[bit / 8] ^= 1 << UInt8(bit % 8)
            #expect(try !key.verify(signature: flipped, signedBytes: Generated.message, algorithm: algorithm), "bit \(bit) flipped")
        }
    }

    @Test func eachKeyVerifiesOnlyTheAlgorithmsOfItsType() throws {
        let rsa = try Generated.key(for: .RS256)
        let p256 = try Generated.key(for: .ES256)
        let p384 = try Generated.key(for: .ES384)
        let ed25519 = try Generated.key(for: .EdDSA)
        #expect(JWSAlgorithm.allCases.filter(rsa.canVerify) == [.RS256, .RS384, .RS512])
        #expect(JWSAlgorithm.allCases.filter(p256.canVerify) == [.ES256])
        #expect(JWSAlgorithm.allCases.filter(p384.canVerify) == [.ES384])
        #expect(JWSAlgorithm.allCases.filter(ed25519.canVerify) == [.EdDSA])

        let signature = try Self.bytes(try #require(Generated.signatures[.ES256]))
        #expect(throws: JSONWebKeyError.algorithmMismatch(algorithm: .ES256, key: .rsa(bits: 2048))) {
            try rsa.verify(signature: signature, signedBytes: Generated.message, algorithm: .ES256)
        }
        #expect(throws: JSONWebKeyError.algorithmMismatch(algorithm: .ES384, key: .ec(.p256))) {
            try p256.verify(signature: signature, signedBytes: Generated.message, algorithm: .ES384)
        }
        #expect(JSONWebKeyError.algorithmMismatch(algorithm: .ES384, key: .ec(.p256)).description == "an EC P-256 key cannot verify ES384 signatures")
    }

    @Test func signaturesOfTheWrongLengthAreRefusedNotJustFalse() throws {
        let p256 = try Generated.key(for: .ES256)
        let raw = try Self.bytes(try #require(Generated.signatures[.ES256]))
        #expect(throws: JSONWebKeyError.signatureLength(algorithm: .ES256, expected: 64, actual: 63)) {
            try p256.verify(signature: raw.dropLast(), signedBytes: Generated.message, algorithm: .ES256)
        }
        // The DER form other libraries produce is not JWS's r || s.
        let der = [0x30, 0x44, 0x02, 0x20] + raw[..<32] + [0x02, 0x20] + raw[32...]
        #expect(throws: JSONWebKeyError.signatureLength(algorithm: .ES256, expected: 64, actual: 70)) {
            try p256.verify(signature: der, signedBytes: Generated.message, algorithm: .ES256)
        }
        let rsa = try Generated.key(for: .RS256)
        #expect(throws: JSONWebKeyError.signatureLength(algorithm: .RS256, expected: 256, actual: 0)) {
            try rsa.verify(signature: [UInt8](), signedBytes: Generated.message, algorithm: .RS256)
        }
        let ed25519 = try Generated.key(for: .EdDSA)
        #expect(throws: JSONWebKeyError.signatureLength(algorithm: .EdDSA, expected: 64, actual: 65)) {
            try ed25519.verify(signature: [UInt8](repeating: 1, count: 65), signedBytes: Generated.message, algorithm: .EdDSA)
        }
    }

    // MARK: - Keys refused

    @Test func rsaKeysUnder2048BitsAreRefused() throws {
        #expect(throws: JSONWebKeyError.rsaModulusTooSmall(bits: 1024)) {
            try JSONWebKey(rsaModulus: try Self.bytes(Generated.smallRSAModulus), exponent: [1, 0, 1])
        }
        #expect(JSONWebKeyError.rsaModulusTooSmall(bits: 1024).description.contains("at least 2048"))
        // Leading zero bytes do not count.
        let modulus = try Self.bytes(Generated.rsaModulus)
        #expect(try JSONWebKey(rsaModulus: [0, 0] + modulus, exponent: [0, 1, 0, 1]).kind == .rsa(bits: 2048))
        #expect(throws: JSONWebKeyError.rsaModulusTooSmall(bits: 2047)) {
            try JSONWebKey(rsaModulus: [0x7F] + modulus.dropFirst(), exponent: [1, 0, 1])
        }
        #expect(throws: JSONWebKeyError.rsaModulusTooSmall(bits: 0)) { try JSONWebKey(rsaModulus: [], exponent: [1, 0, 1]) }
    }

    @Test func rsaKeysThatCannotBeRealAreRefused() throws {
        let modulus = try Self.bytes(Generated.rsaModulus)
        for exponent: [UInt8] in [[1], [0, 1], [], [1, 0, 0], [3, 0, 0, 0, 0, 0, 0, 0, 1]] {
            #expect(throws: JSONWebKeyError.self, "exponent \(exponent)") { try JSONWebKey(rsaModulus: modulus, exponent: exponent) }
        }
        #expect(try JSONWebKey(rsaModulus: modulus, exponent: [3]).kind == .rsa(bits: 2048))
        #expect(throws: JSONWebKeyError.invalidKey("the RSA modulus is even, so it is not a product of two primes")) {
            try JSONWebKey(rsaModulus: modulus.dropLast() + [modulus[modulus.count - 1] & 0xFE], exponent: [1, 0, 1])
        }
        #expect(throws: JSONWebKeyError.rsaModulusTooLarge(bits: 16392)) {
            try JSONWebKey(rsaModulus: [UInt8](repeating: 0xFF, count: 2049), exponent: [1, 0, 1])
        }
    }

    @Test func ecPointsOffTheCurveAreRefused() throws {
        let x = try Self.bytes(Generated.p256.0)
        let y = try Self.bytes(Generated.p256.1)
        var offCurve = y
        offCurve[31] ^= 0x01
        do {
            _ = try JSONWebKey(curve: .p256, x: x, y: offCurve)
            Issue.record("a point off the curve was accepted")
        } catch {
            guard case .invalidKey(let reason) = error else { throw error }
            #expect(reason.contains("P-256"), "\(reason)")
        }
        // The right point on the wrong curve is off that curve too.
        #expect(throws: JSONWebKeyError.self) { try JSONWebKey(curve: .p384, x: x + [UInt8](repeating: 0, count: 16), y: y + [UInt8](repeating: 0, count: 16)) }
        #expect(throws: JSONWebKeyError.self) { try JSONWebKey(curve: .p256, x: [UInt8](repeating: 0, count: 32), y: [UInt8](repeating: 0, count: 32)) }
    }

    @Test func coordinatesAndEd25519KeysMustHaveTheirExactLength() throws {
        let x = try Self.bytes(Generated.p256.0)
        let y = try Self.bytes(Generated.p256.1)
        #expect(throws: JSONWebKeyError.invalidKey("the P-256 coordinate x is 31 bytes; it must be exactly 32")) {
            try JSONWebKey(curve: .p256, x: Array(x.dropFirst()), y: y)
        }
        #expect(throws: JSONWebKeyError.invalidKey("the P-256 coordinate y is 33 bytes; it must be exactly 32")) {
            try JSONWebKey(curve: .p256, x: x, y: [0] + y)
        }
        #expect(throws: JSONWebKeyError.invalidKey("an Ed25519 public key is 32 bytes, got 31")) {
            try JSONWebKey(ed25519: Array(try Self.bytes(Generated.ed25519).dropLast()))
        }
    }

    // MARK: - Concurrency

    /// One key, many threads: each verification has its own digest context.
    @Test func oneKeyVerifiesFromManyThreadsAtOnce() async throws {
        let keys = try JWSAlgorithm.allCases.map { ($0, try Generated.key(for: $0), try Self.bytes(try #require(Generated.signatures[$0]))) }
        let outcomes = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var wrong = 0
                    for round in 0..<100 {
                        let (algorithm, key, signature) = keys[(worker + round) % keys.count]
                        let genuine = round % 3 != 0
                        let message = genuine ? Generated.message : Generated.message + [UInt8(round)]
                        let verified = (try? key.verify(signature: signature, signedBytes: message, algorithm: algorithm)) ?? !genuine
                        if verified != genuine { wrong += 1 }
                    }
                    return wrong
                }
            }
            return await group.reduce(0, +)
        }
        #expect(outcomes == 0)
    }
}
