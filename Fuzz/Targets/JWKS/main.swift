import Foundation
import FuzzSupport
import Policy
import TestFixtures

/// A JWKS document as an identity provider publishes it (the RequestAuthentication
/// `jwks` field or a `jwksUri` file): `JSONWebKeySet(json:)`, which builds
/// OpenSSL keys from its RSA, EC and OKP members, then every fixture token
/// verified with whatever keys it accepted.
Fuzzing.run { bytes in
    guard let keys = try? JSONWebKeySet(json: Data(bytes)) else { return }
    _ = keys.warnings
    for key in keys.keys { _ = key.key.description }
    for token in JWKSTarget.tokens {
        _ = try? token.verify(keys: keys, issuer: JWTFixtures.issuer, audiences: ["shop"], now: JWTFixtures.now)
    }
}

private enum JWKSTarget {
    static let tokens = [
        JWTFixtures.Token.rs256, JWTFixtures.Token.rs384, JWTFixtures.Token.rs512, JWTFixtures.Token.es256, JWTFixtures.Token.es384,
        JWTFixtures.Token.eddsa, JWTFixtures.Token.rs256WithoutKid, JWTFixtures.Token.es256WithoutKid,
    ].map { text in
        do {
            return try JSONWebToken(compact: text)
        } catch {
            fatalError("a JWT fixture does not parse: \(error)")
        }
    }
}
