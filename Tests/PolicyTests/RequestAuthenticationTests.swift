import Foundation
import TestFixtures
import Testing

@testable import Policy

@Suite struct RequestAuthenticationParsingTests {
    func parse(_ text: String, file: String = "p.yaml") throws -> [RequestAuthentication] {
        try YAMLNode.documents(text, file: file).filter { !$0.isNull }.map(RequestAuthentication.parse)
    }

    func error(_ text: String) -> String? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func theDocumentedExampleParses() throws {
        let policies = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: shop-users, namespace: shop}
            spec:
              selector: {matchLabels: {app: orders}}
              jwtRules:
              - issuer: https://login.example.com
                audiences: [orders]
                jwksUri: /etc/mesh-agent/jwks/login.json
                fromHeaders: [{name: X-JWT, prefix: "Bearer "}]
                fromParams: [access_token]
                forwardOriginalToken: true
              - issuer: https://partner.example
                jwks: '{"keys":[]}'
            """)
        #expect(policies.count == 1)
        let policy = try #require(policies.first)
        #expect(policy.reference == "shop/shop-users")
        #expect(policy.source == "p.yaml:1")
        #expect(policy.matchLabels == ["app": "orders"])
        #expect(
            policy.jwtRules == [
                RequestAuthentication.JWTRule(
                    issuer: "https://login.example.com", audiences: ["orders"], keys: .file("/etc/mesh-agent/jwks/login.json"),
                    fromHeaders: [TokenLocation.Header(name: "x-jwt", prefix: "Bearer ")], fromParams: ["access_token"], forwardOriginalToken: true,
                    keyPath: "spec.jwtRules[0]", line: 9),
                RequestAuthentication.JWTRule(issuer: "https://partner.example", keys: .inline(#"{"keys":[]}"#), keyPath: "spec.jwtRules[1]", line: 14),
            ])
        #expect(policy.jwtRules[0].tokenLocations == [.header(TokenLocation.Header(name: "x-jwt", prefix: "Bearer ")), .queryParameter("access_token")])
        #expect(policy.jwtRules[1].tokenLocations == TokenLocation.defaults)
        #expect(policy.jwtRules[1].keysKeyPath == "spec.jwtRules[1].jwks")
    }

    @Test func v1beta1AndTheShortForms() throws {
        let policies = try parse(
            """
            apiVersion: security.istio.io/v1beta1
            kind: RequestAuthentication
            metadata: {name: none, namespace: shop}
            ---
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: empty, namespace: shop}
            spec:
              selector: {}
              jwtRules: []
            ---
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: urls, namespace: istio-system}
            spec:
              jwtRules:
              - issuer: a
                jwksUri: file:///etc/jwks/a.json
                audiences:
                fromHeaders:
                - name: x-token
              - issuer: b
                jwksUri: file://localhost/etc/jwks/with%20space.json
                forwardOriginalToken: false
            """)
        #expect(policies.map(\.name) == ["none", "empty", "urls"])
        #expect(policies.map(\.line) == [1, 5, 12])
        #expect(policies[0].jwtRules.isEmpty && policies[0].isNamespaceWide)
        #expect(policies[1].jwtRules.isEmpty && policies[1].matchLabels == nil)
        let rules = policies[2].jwtRules
        #expect(rules.map(\.keys) == [.file("/etc/jwks/a.json"), .file("/etc/jwks/with space.json")])
        #expect(rules[0].audiences.isEmpty)
        #expect(rules[0].tokenLocations == [.header(TokenLocation.Header(name: "x-token"))])
        #expect(rules.map(\.forwardOriginalToken) == [false, false])
    }

    static let header = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a, namespace: shop}\n"
    static let rule = header + "spec:\n  jwtRules:\n  - issuer: https://issuer.example\n"

    /// Every bad document fails with its file, line and key path.
    static let badDocuments: [(String, String)] = [
        (
            "apiVersion: security.istio.io/v1alpha1\nkind: RequestAuthentication\nmetadata: {name: a, namespace: shop}\n",
            "p.yaml:1: apiVersion: RequestAuthentication is security.istio.io/v1 or security.istio.io/v1beta1, got \"security.istio.io/v1alpha1\""
        ),
        (header + "status: {}\n", "p.yaml:4: status: unknown key; expected one of: apiVersion, kind, metadata, spec"),
        (header + "spec:\n  jwtrules: []\n", "p.yaml:5: spec.jwtrules: unknown key; expected one of: jwtRules, selector"),
        (header + "spec:\n  targetRef: {kind: Gateway, name: g}\n", "p.yaml:5: spec.targetRef: not supported: use spec.selector"),
        (header + "spec:\n  targetRefs:\n  - {kind: Service, name: s}\n", "p.yaml:5: spec.targetRefs: not supported: use spec.selector"),
        (header + "spec:\n  selector: {app: orders}\n", "p.yaml:5: spec.selector.app: unknown key; expected one of: matchLabels"),
        (header + "spec:\n  jwtRules: {issuer: x}\n", "p.yaml:5: spec.jwtRules: expected a list"),
        (header + "spec:\n  jwtRules:\n  - jwks: '{}'\n", "p.yaml:6: spec.jwtRules[0].issuer: is required"),
        (header + "spec:\n  jwtRules:\n  - issuer: ''\n    jwks: x\n", "p.yaml:6: spec.jwtRules[0].issuer: must not be empty"),
        (
            rule + "    jwks: '{}'\n    issuers: [x]\n",
            "p.yaml:8: spec.jwtRules[0].issuers: unknown key; expected one of: audiences, forwardOriginalToken, fromHeaders, fromParams, issuer, jwks, jwksUri"
        ),
        (
            rule + "    jwksUri: https://issuer.example/.well-known/jwks.json\n",
            "p.yaml:7: spec.jwtRules[0].jwksUri: \"https://issuer.example/.well-known/jwks.json\": mesh-agent does not fetch keys over the network; download the JWKS to a file"
        ),
        (rule + "    jwksUri: HTTP://issuer.example/jwks\n", "p.yaml:7: spec.jwtRules[0].jwksUri: \"HTTP://issuer.example/jwks\": mesh-agent does not fetch keys"),
        (
            rule + "    jwks: '{\"keys\":[]}'\n    jwksUri: /etc/jwks.json\n",
            "p.yaml:8: spec.jwtRules[0].jwksUri: set either jwks (the key set itself) or jwksUri (a file holding it), not both"
        ),
        (
            rule + "    audiences: [shop]\n",
            "p.yaml:6: spec.jwtRules[0]: needs jwks (the key set itself) or jwksUri (a local file holding it): mesh-agent does not discover an issuer's keys over the network"
        ),
        (rule + "    jwksUri: jwks/issuer.json\n", "p.yaml:7: spec.jwtRules[0].jwksUri: \"jwks/issuer.json\" is not an absolute file path or a file:// URL"),
        (rule + "    jwksUri: file://host/etc/jwks.json\n", "p.yaml:7: spec.jwtRules[0].jwksUri: \"file://host/etc/jwks.json\": a file URL must name no host other than localhost"),
        (rule + "    jwksUri: file:jwks.json\n", "p.yaml:7: spec.jwtRules[0].jwksUri: \"file:jwks.json\": a file URL needs an absolute path"),
        (rule + "    jwksUri: file:///etc/jwks.json?v=1\n", "p.yaml:7: spec.jwtRules[0].jwksUri: \"file:///etc/jwks.json?v=1\": a file URL for jwksUri takes no query or fragment"),
        (rule + "    jwksUri: file:///etc/%zz.json\n", "p.yaml:7: spec.jwtRules[0].jwksUri: \"file:///etc/%zz.json\": the file URL has an invalid percent-escape"),
        (rule + "    jwksUri: ''\n", "p.yaml:7: spec.jwtRules[0].jwksUri: must not be empty"),
        (rule + "    jwks: '{}'\n    outputPayloadToHeader: x-payload\n", "p.yaml:8: spec.jwtRules[0].outputPayloadToHeader: not supported by mesh-agent"),
        (
            rule + "    jwks: '{}'\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n",
            "p.yaml:8: spec.jwtRules[0].outputClaimToHeaders: not supported by mesh-agent"
        ),
        (rule + "    jwks: '{}'\n    fromCookies: [session]\n", "p.yaml:8: spec.jwtRules[0].fromCookies: not supported by mesh-agent: send the token in a header or a query parameter"),
        (rule + "    jwks: '{}'\n    timeout: 5s\n", "p.yaml:8: spec.jwtRules[0].timeout: not supported by mesh-agent: the agent never fetches keys"),
        (rule + "    jwks: '{}'\n    audiences: [shop, '']\n", "p.yaml:8: spec.jwtRules[0].audiences[1]: must not be empty"),
        (rule + "    jwks: '{}'\n    audiences: shop\n", "p.yaml:8: spec.jwtRules[0].audiences: expected a list"),
        (rule + "    jwks: '{}'\n    fromHeaders: [{prefix: 'Bearer '}]\n", "p.yaml:8: spec.jwtRules[0].fromHeaders[0].name: is required"),
        (rule + "    jwks: '{}'\n    fromHeaders: [{name: 'x token'}]\n", "p.yaml:8: spec.jwtRules[0].fromHeaders[0].name: \"x token\" is not an HTTP header name"),
        (rule + "    jwks: '{}'\n    fromHeaders: [{name: x, value: y}]\n", "p.yaml:8: spec.jwtRules[0].fromHeaders[0].value: unknown key; expected one of: name, prefix"),
        (rule + "    jwks: '{}'\n    fromParams: ['']\n", "p.yaml:8: spec.jwtRules[0].fromParams[0]: must not be empty"),
        (rule + "    jwks: '{}'\n    forwardOriginalToken: maybe\n", "p.yaml:8: spec.jwtRules[0].forwardOriginalToken: expected true or false"),
    ]

    @Test(arguments: 0..<badDocuments.count)
    func badDocumentsAreRefusedWithFileLineAndKeyPath(index: Int) {
        let (text, expected) = Self.badDocuments[index]
        let found = error(text)
        #expect(found?.hasPrefix(expected) == true, "\(found ?? "no error") should start with \(expected)")
    }
}

@Suite struct RequestAuthenticationSetTests {
    typealias Token = JWTFixtures.Token
    static let root = "istio-system"

    func rule(_ issuer: String = JWTFixtures.issuer, keys: RequestAuthentication.JWTRule.KeySource = .inline(JWTFixtures.jwks)) -> RequestAuthentication.JWTRule {
        RequestAuthentication.JWTRule(issuer: issuer, keys: keys, keyPath: "spec.jwtRules[0]", line: 9)
    }

    func policy(_ reference: String, _ labels: [String: String]? = nil, rules: [RequestAuthentication.JWTRule]) -> RequestAuthentication {
        let parts = reference.split(separator: "/").map(String.init)
        return RequestAuthentication(name: parts[1], namespace: parts[0], matchLabels: labels, jwtRules: rules, file: "\(parts[1]).yaml", line: 1)
    }

    func errors(_ policies: [RequestAuthentication], files: [String: String] = [:]) -> [String] {
        do throws(PolicyLoadError) {
            _ = try RequestAuthenticationSet(policies, rootNamespace: Self.root, readFile: { path in try Self.read(files, path) })
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    static func read(_ files: [String: String], _ path: String) throws -> Data {
        guard let text = files[path] else { throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path]) }
        return Data(text.utf8)
    }

    // MARK: - Key sets

    @Test func keySetsAreReadInlineAndFromFilesOnce() throws {
        var reads: [String] = []
        let set = try RequestAuthenticationSet(
            [
                policy("shop/a", rules: [rule(keys: .file("/etc/jwks/issuer.json")), rule("https://second.example", keys: .inline(JWTFixtures.jwks))]),
                policy("billing/b", rules: [rule(keys: .file("/etc/jwks/issuer.json"))]),
                policy("billing/c", rules: [rule(keys: .file("/etc/jwks/another.json"))]),
            ], rootNamespace: Self.root,
            readFile: { path in
                reads.append(path)
                return Data(JWTFixtures.jwks.utf8)
            })
        #expect(set.jwksFiles == ["/etc/jwks/another.json", "/etc/jwks/issuer.json"])
        #expect(reads.sorted() == ["/etc/jwks/another.json", "/etc/jwks/issuer.json"])
        #expect(set.policies.map(\.reference) == ["billing/b", "billing/c", "shop/a"])
        #expect(set.warnings.isEmpty)
        #expect(set.authenticator(namespace: "shop", labels: [:]).rules.map(\.issuer) == [JWTFixtures.issuer, "https://second.example"])
    }

    @Test func unusableKeySetsAreErrorsAtTheirRule() {
        let found = errors(
            [
                policy("shop/inline", rules: [rule(keys: .inline("{"))]),
                policy("shop/empty", rules: [rule(keys: .inline(#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#))]),
                policy("shop/weak", rules: [rule(keys: .file("/etc/jwks/weak.json"))]),
                policy("shop/missing", rules: [rule(keys: .file("/etc/jwks/missing.json"))]),
                policy("shop/good", rules: [rule()]),
            ], files: ["/etc/jwks/weak.json": #"{"keys":[\#(JWTFixtures.smallRSAJWK)]}"#])
        #expect(
            found == [
                "empty.yaml:9: spec.jwtRules[0].jwks: unusable key set: no key usable for verifying signatures (keys[0] left out: symmetric (oct) keys are not supported; only RSA, EC and OKP public keys)",
                "inline.yaml:9: spec.jwtRules[0].jwks: unusable key set: not a JWKS: not valid JSON",
                "missing.yaml:9: spec.jwtRules[0].jwksUri: cannot read the JWKS file /etc/jwks/missing.json: \(CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: "/etc/jwks/missing.json"]).localizedDescription)",
                #"weak.yaml:9: spec.jwtRules[0].jwksUri: /etc/jwks/weak.json: unusable key set: keys[0] (kid "rsa-small"): the RSA modulus is 1024 bits; at least 2048 are required (ask the issuer for a stronger key)"#,
            ])
    }

    @Test func aPolicyDefinedTwiceIsAnError() {
        var second = policy("shop/a", rules: [rule()])
        second.file = "other.yaml"
        second.line = 7
        #expect(errors([policy("shop/a", rules: [rule()]), second]) == ["other.yaml:7: RequestAuthentication shop/a is already defined at a.yaml:1"])
    }

    @Test func warningsNameThePolicyAndTheRule() throws {
        let set = try RequestAuthenticationSet(
            [
                policy("shop/mixed", rules: [rule(keys: .inline(#"{"keys":[{"kty":"oct","k":"c2VjcmV0"},\#(JWTFixtures.ec256JWK)]}"#))]),
                policy("shop/idle", rules: []),
            ], rootNamespace: Self.root)
        #expect(
            set.warnings == [
                "RequestAuthentication shop/idle (idle.yaml:1) has no jwtRules and does nothing",
                "RequestAuthentication shop/mixed (mixed.yaml:1) spec.jwtRules[0].jwks: keys[0] left out: symmetric (oct) keys are not supported; only RSA, EC and OKP public keys",
            ])
    }

    @Test func readingARealFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jwks-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("issuer.json").path
        try Data(JWTFixtures.jwks.utf8).write(to: URL(fileURLWithPath: path))
        #expect(try RequestAuthenticationSet.readKeySetFile(path) == Data(JWTFixtures.jwks.utf8))
        let set = try RequestAuthenticationSet([policy("shop/a", rules: [rule(keys: .file(path))])], rootNamespace: Self.root)
        #expect(set.jwksFiles == [path])

        let large = directory.appendingPathComponent("large.json").path
        try Data(count: JSONWebKeySet.maximumSize + 1).write(to: URL(fileURLWithPath: large))
        #expect(throws: JSONWebKeySetError("the file is larger than 1048576 bytes, more than any key set")) {
            try RequestAuthenticationSet.readKeySetFile(large)
        }
        #expect(throws: JSONWebKeySetError.self) { try RequestAuthenticationSet.readKeySetFile(directory.appendingPathComponent("absent.json").path) }
    }

    // MARK: - Which policies apply

    @Test func applicabilityFollowsIstio() throws {
        let set = try RequestAuthenticationSet(
            [
                policy("istio-system/mesh", rules: [rule("mesh")]),
                policy("istio-system/orders-everywhere", ["app": "orders"], rules: [rule("root-orders")]),
                policy("shop/namespace", rules: [rule("shop")]),
                policy("shop/orders", ["app": "orders"], rules: [rule("shop-orders")]),
                policy("shop/orders-v2", ["app": "orders", "version": "v2"], rules: [rule("shop-orders-v2")]),
                policy("shop/cart", ["app": "cart"], rules: [rule("shop-cart")]),
                policy("billing/namespace", rules: [rule("billing")]),
            ], rootNamespace: Self.root)
        func issuers(_ namespace: String, _ labels: [String: String]) -> [String] {
            set.authenticator(namespace: namespace, labels: labels).rules.map(\.issuer)
        }
        #expect(issuers("shop", ["app": "orders"]) == ["shop", "shop-orders", "mesh", "root-orders"])
        #expect(issuers("shop", ["app": "orders", "version": "v2", "team": "a"]) == ["shop", "shop-orders", "shop-orders-v2", "mesh", "root-orders"])
        #expect(issuers("shop", ["app": "cart"]) == ["shop-cart", "shop", "mesh"], "the namespace's policies by name, then the root's")
        // A root-namespace policy with a selector picks its workloads in every namespace.
        #expect(issuers("billing", ["app": "orders"]) == ["billing", "mesh", "root-orders"])
        #expect(issuers("istio-system", ["app": "orders"]) == ["mesh", "root-orders"])
        #expect(issuers("other", [:]) == ["mesh"])
        #expect(RequestAuthenticationSet(rootNamespace: Self.root).authenticator(namespace: "shop", labels: [:]).isEmpty)
    }
}

@Suite struct RequestAuthenticatorTests {
    typealias Token = JWTFixtures.Token
    let keys: JSONWebKeySet

    init() throws {
        keys = try JSONWebKeySet(json: JWTFixtures.jwks)
    }

    func authenticator(_ rules: RequestAuthenticator.Rule...) -> RequestAuthenticator {
        RequestAuthenticator(rules: rules.isEmpty ? [RequestAuthenticator.Rule(issuer: JWTFixtures.issuer, keys: keys)] : rules)
    }

    func rule(
        _ issuer: String = JWTFixtures.issuer, audiences: [String] = [], locations: [TokenLocation] = TokenLocation.defaults, forward: Bool = false,
        keys: JSONWebKeySet? = nil
    ) -> RequestAuthenticator.Rule {
        RequestAuthenticator.Rule(issuer: issuer, audiences: audiences, keys: keys ?? self.keys, locations: locations, forwardOriginalToken: forward)
    }

    static let alice = RequestIdentity(
        issuer: JWTFixtures.issuer, subject: "alice", audiences: ["shop"],
        claims: .object([
            "iss": .string(JWTFixtures.issuer), "sub": .string("alice"), "aud": .string("shop"), "iat": .number(JWTFixtures.now),
            "nbf": .number(JWTFixtures.notBefore), "exp": .number(JWTFixtures.expiry),
        ]))

    func bearer(_ token: String) -> HTTPField { HTTPField(name: "Authorization", value: "Bearer \(token)") }

    @Test func theDefaultLocationsAreTheBearerHeaderAndAccessTokenParameter() {
        let authenticator = authenticator()
        #expect(authenticator.authenticate(headers: [bearer(Token.rs256)], query: nil, now: JWTFixtures.now) == .authenticated(Self.alice))
        #expect(authenticator.authenticate(headers: [], query: "page=2&access_token=\(Token.rs256)", now: JWTFixtures.now) == .authenticated(Self.alice))
        let escaped = Token.rs256.replacingOccurrences(of: ".", with: "%2E")
        #expect(authenticator.authenticate(headers: [], query: "access_token=\(escaped)&x", now: JWTFixtures.now) == .authenticated(Self.alice))
        #expect(authenticator.authenticate(headers: [HTTPField(name: "authorization", value: "Bearer   \(Token.rs256)  ")], query: nil, now: JWTFixtures.now) == .authenticated(Self.alice))
    }

    @Test func noTokenWhereTheRulesLookIsNoToken() {
        let authenticator = authenticator()
        #expect(authenticator.authenticate(headers: [], query: nil, now: JWTFixtures.now) == .noToken)
        #expect(authenticator.authenticate(headers: [HTTPField(name: "authorization", value: "Basic YWxpY2U6c2VjcmV0")], query: "", now: JWTFixtures.now) == .noToken)
        // The prefix is compared exactly, as Envoy does.
        #expect(authenticator.authenticate(headers: [HTTPField(name: "authorization", value: "bearer \(Token.rs256)")], query: nil, now: JWTFixtures.now) == .noToken)
        #expect(authenticator.authenticate(headers: [HTTPField(name: "x-token", value: Token.rs256)], query: "token=\(Token.rs256)", now: JWTFixtures.now) == .noToken)
        // With no rule, nothing is looked at.
        #expect(RequestAuthenticator().isEmpty)
        #expect(RequestAuthenticator().authenticate(headers: [bearer("garbage")], query: nil, now: JWTFixtures.now) == .noToken)
    }

    @Test func configuredLocationsReplaceTheDefaults() {
        let authenticator = authenticator(
            rule(locations: [.header(TokenLocation.Header(name: "X-JWT-Assertion", prefix: "Token ")), .header(TokenLocation.Header(name: "x-raw")), .queryParameter("jwt")]))
        let now = JWTFixtures.now
        #expect(authenticator.authenticate(headers: [HTTPField(name: "x-jwt-assertion", value: "Token \(Token.rs256)")], query: nil, now: now) == .authenticated(Self.alice))
        #expect(authenticator.authenticate(headers: [HTTPField(name: "x-raw", value: Token.rs256)], query: nil, now: now) == .authenticated(Self.alice))
        #expect(authenticator.authenticate(headers: [], query: "jwt=\(Token.rs256)", now: now) == .authenticated(Self.alice))
        #expect(authenticator.authenticate(headers: [HTTPField(name: "x-jwt-assertion", value: Token.rs256)], query: nil, now: now) == .noToken)
        #expect(authenticator.authenticate(headers: [bearer(Token.rs256)], query: "access_token=\(Token.rs256)", now: now) == .noToken)
    }

    @Test func moreThanOneDistinctTokenIsRejected() {
        let authenticator = authenticator()
        let now = JWTFixtures.now
        let rejection = RequestAuthenticationResult.rejected(reason: "the request carries more than one token; send exactly one")
        #expect(authenticator.authenticate(headers: [bearer(Token.rs256)], query: "access_token=\(Token.es256)", now: now) == rejection)
        #expect(authenticator.authenticate(headers: [bearer(Token.rs256), bearer(Token.bob)], query: nil, now: now) == rejection)
        #expect(authenticator.authenticate(headers: [bearer(Token.rs256), bearer("not-a-token")], query: nil, now: now) == rejection)
        // The same token twice is one token.
        #expect(authenticator.authenticate(headers: [bearer(Token.rs256), bearer(Token.rs256)], query: "access_token=\(Token.rs256)", now: now) == .authenticated(Self.alice))
    }

    @Test func invalidTokensAreRejectedWithAReason() throws {
        let authenticator = authenticator()
        func result(_ token: String, now: Double = JWTFixtures.now) -> RequestAuthenticationResult {
            authenticator.authenticate(headers: [bearer(token)], query: nil, now: now)
        }
        #expect(result(Token.rs256, now: JWTFixtures.expiry + 3600) == .rejected(reason: JSONWebTokenError.expired(expiry: JWTFixtures.expiry, now: JWTFixtures.expiry + 3600).description))
        #expect(result(try flippingSignatureBit(Token.es256)) == .rejected(reason: "the token's signature does not verify"))
        #expect(result(Token.hs256WithModulus) == .rejected(reason: "token refused: alg \"HS256\": HMAC tokens are not accepted, only RS256, RS384, RS512, ES256, ES384, EdDSA"))
        #expect(result("abc") == .rejected(reason: "malformed token: 1 segment separated by '.'; a signed JWT has 3"))
        #expect(result("") == .rejected(reason: "malformed token: 1 segment separated by '.'; a signed JWT has 3"))
        #expect(result(Token.otherIssuer) == .rejected(reason: "issuer \"https://other.example\" is not configured"))
        let withoutIssuer = compactToken(header: #"{"alg":"RS256"}"#, payload: #"{"sub":"alice"}"#)
        #expect(result(withoutIssuer) == .rejected(reason: "the token has no iss claim (or it is not a string)"))
    }

    @Test func theIssuersRulesMustReadWhereTheTokenWas() {
        let authenticator = authenticator(
            rule(locations: [.header(TokenLocation.Header(name: "x-issuer-token"))]), rule("https://second.example"))
        let now = JWTFixtures.now
        #expect(authenticator.authenticate(headers: [HTTPField(name: "x-issuer-token", value: Token.rs256)], query: nil, now: now) == .authenticated(Self.alice))
        #expect(
            authenticator.authenticate(headers: [bearer(Token.rs256)], query: nil, now: now)
                == .rejected(reason: "the token came in the header authorization (\"Bearer \" prefix), which no rule for issuer \"https://issuer.example\" reads"))
        guard case .authenticated(let carol) = authenticator.authenticate(headers: [bearer(Token.secondIssuer)], query: nil, now: now) else {
            Issue.record("the second issuer's token was not accepted")
            return
        }
        #expect(carol.principal == "https://second.example/carol")
    }

    @Test func rulesOfOneIssuerAreTriedInTurn() throws {
        let ed25519Only = JSONWebKeySet(keys: keys.keys.filter { $0.id == "ed-1" })
        let now = JWTFixtures.now
        let either = authenticator(rule(audiences: ["billing"]), rule(audiences: ["shop"]))
        #expect(either.authenticate(headers: [bearer(Token.rs256)], query: nil, now: now) == .authenticated(Self.alice))
        // When every rule refuses, the reason of one whose keys verified the signature is given.
        let neither = authenticator(rule(keys: ed25519Only), rule(audiences: ["billing"]), rule(audiences: ["orders"]))
        #expect(neither.authenticate(headers: [bearer(Token.rs256)], query: nil, now: now) == .rejected(reason: "the token's aud names none of the configured audiences"))
        let noKey = authenticator(rule(keys: ed25519Only))
        #expect(noKey.authenticate(headers: [bearer(Token.rs256WithoutKid)], query: nil, now: now) == .rejected(reason: "the issuer's key set has no key that can verify RS256 signatures"))
    }

    @Test func rejectionsNeverRepeatTheToken() throws {
        let authenticator = authenticator()
        for token in [Token.unknownKid, Token.otherIssuer, try flippingSignatureBit(Token.rs256), Token.criticalHeader] {
            guard case .rejected(let reason) = authenticator.authenticate(headers: [bearer(token)], query: nil, now: JWTFixtures.now) else {
                Issue.record("not rejected")
                continue
            }
            #expect(!reason.contains(token.prefix(20)))
        }
    }

    @Test func tokenHeadersAreRemovedUnlessTheRuleForwardsThem() {
        let headers = [bearer(Token.rs256), HTTPField(name: "x-request-id", value: "1")]
        #expect(authenticator().tokenHeadersToRemove(from: headers, issuer: JWTFixtures.issuer) == ["authorization"])
        #expect(authenticator().tokenHeadersToRemove(from: headers, issuer: "https://second.example") == [])
        #expect(authenticator(rule(forward: true)).tokenHeadersToRemove(from: headers, issuer: JWTFixtures.issuer) == [])
        // A token from the query leaves an Authorization header of another scheme alone.
        let basic = [HTTPField(name: "authorization", value: "Basic YWxpY2U6c2VjcmV0")]
        #expect(authenticator().tokenHeadersToRemove(from: basic, issuer: JWTFixtures.issuer) == [])
        // When rules of one issuer disagree, removing wins.
        let custom = rule(locations: [.header(TokenLocation.Header(name: "x-jwt"))])
        let mixed = authenticator(rule(forward: true), custom)
        #expect(mixed.tokenHeadersToRemove(from: headers + [HTTPField(name: "x-jwt", value: Token.rs256)], issuer: JWTFixtures.issuer) == ["x-jwt"])
        #expect(authenticator(rule(forward: true), rule()).tokenHeadersToRemove(from: headers, issuer: JWTFixtures.issuer) == ["authorization"])
    }

    @Test func queryParameters() {
        let parameters = RequestAuthenticator.parameters("a=1&&b&c=%41%zz&d=x=y&%61ccess_token=t")
        #expect(parameters.map(\.name) == ["a", "b", "c", "d", "access_token"])
        #expect(parameters.map(\.value) == ["1", "", "%41%zz", "x=y", "t"])
    }

    @Test func oneAuthenticatorFromManyTasks() async {
        let authenticator = authenticator()
        let tokens = [Token.rs256, Token.es256, Token.es384, Token.eddsa, Token.rs512]
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var wrong = 0
                    for round in 0..<50 {
                        let token = tokens[(worker + round) % tokens.count]
                        guard case .authenticated(let identity) = authenticator.authenticate(headers: [bearer(token)], query: nil, now: JWTFixtures.now),
                            identity.subject == "alice"
                        else {
                            wrong += 1
                            continue
                        }
                    }
                    return wrong
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
    }
}
