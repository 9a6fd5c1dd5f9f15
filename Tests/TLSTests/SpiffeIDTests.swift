import Testing
@testable import TLS

@Suite struct SpiffeIDTests {
    @Test(arguments: [
        ("spiffe://cluster.local/ns/shop/sa/orders", "cluster.local", "ns/shop/sa/orders"),
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://td_1-a.b/Path/With.Dots-and_underscores", "td_1-a.b", "Path/With.Dots-and_underscores"),
    ])
    func validIDsParse(text: String, trustDomain: String, path: String) throws {
        let id = try SpiffeID(text)
        #expect(id.trustDomain == trustDomain)
        #expect(id.path == path)
        #expect(id.description == text)
    }

    @Test(arguments: [
        "", "spiffe:/td/x", "SPIFFE://td/x", "https://td/x", "spiffe://", "spiffe:///path",
        "spiffe://TD/x", "spiffe://td:8080/x", "spiffe://user@td/x", "spiffe://td/", "spiffe://td//x",
        "spiffe://td/x/", "spiffe://td/./x", "spiffe://td/x/..", "spiffe://td/x?query", "spiffe://td/x#frag",
        "spiffe://td/x%20y", "spiffe://td/ü", "spiffe://td/x y",
    ])
    func invalidIDsAreRefused(text: String) {
        #expect(throws: SpiffeIDError.self) { try SpiffeID(text) }
    }

    /// A namespace or service account from a label must not add path segments.
    @Test(arguments: [("x/sa/admin", "y"), ("shop", "orders/ns/a"), ("", "orders"), ("shop", "")])
    func workloadPartsAreOneSegmentEach(namespace: String, serviceAccount: String) {
        #expect(throws: SpiffeIDError.self) { try SpiffeID(trustDomain: "td", namespace: namespace, serviceAccount: serviceAccount) }
    }

    @Test func tooLongIsRefused() {
        let text = "spiffe://td/" + String(repeating: "a", count: SpiffeID.maximumLength)
        #expect(throws: SpiffeIDError.self) { try SpiffeID(text) }
    }

    @Test func workloadIdentityShape() throws {
        let id = try SpiffeID(trustDomain: "cluster.local", namespace: "shop", serviceAccount: "orders")
        #expect(id.description == "spiffe://cluster.local/ns/shop/sa/orders")
        #expect(id.namespaceAndServiceAccount?.namespace == "shop")
        #expect(id.namespaceAndServiceAccount?.serviceAccount == "orders")
        #expect(try SpiffeID("spiffe://td/other/path").namespaceAndServiceAccount == nil)
    }
}
