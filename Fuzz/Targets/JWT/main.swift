import FuzzSupport
import Policy
import TestFixtures

/// A bearer token as a client sends it: `JSONWebToken(compact:)` and
/// `verify` against the JWT fixtures' key set (RSA, EC P-256 and P-384,
/// Ed25519) at the fixtures' time, and the workload's `RequestAuthenticator`
/// finding it in an Authorization header and in a query. A token that
/// verifies must stop verifying when its signature's last character changes:
/// base64url is read strictly, so no two texts carry one signature.
Fuzzing.run { bytes in
    let text = Fuzzing.text(bytes)
    do {
        let token = try JSONWebToken(compact: text)
        _ = try token.verify(keys: JWTTarget.keys, issuer: JWTFixtures.issuer, audiences: ["shop"], now: JWTFixtures.now)
        requireAnotherSignatureFails(text)
    } catch {
        Fuzzing.requireLoggable("\(error)", "the reason a token was refused")
    }
    let authenticator = MeshFixture.workloadPolicy.authenticator
    for result in [
        authenticator.authenticate(headers: [HTTPField(name: "authorization", value: text)], query: nil, now: JWTFixtures.now),
        authenticator.authenticate(headers: [], query: Substring(text), now: JWTFixtures.now),
    ] {
        guard case .rejected(let reason) = result else { continue }
        Fuzzing.requireLoggable(reason, "the reason a token was rejected")
    }
}

private enum JWTTarget {
    static let keys: JSONWebKeySet = {
        do {
            return try JSONWebKeySet(json: JWTFixtures.jwks)
        } catch {
            fatalError("the JWT fixtures' key set does not load: \(error)")
        }
    }()
}

private func requireAnotherSignatureFails(_ text: String) {
    guard let last = text.last else { return }
    let other: Character = last == "A" ? "B" : "A"
    let changed = String(text.dropLast()) + String(other)
    let verified = try? JSONWebToken(compact: changed).verify(keys: JWTTarget.keys, issuer: JWTFixtures.issuer, audiences: ["shop"], now: JWTFixtures.now)
    Fuzzing.require(verified == nil, "the token still verifies with its signature's last character changed to \(other)")
}
