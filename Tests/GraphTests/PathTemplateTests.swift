import Testing
@testable import Graph

@Suite struct PathTemplateTests {
    static let templates: [(path: String, template: String)] = [
        ("/", "/"),
        ("", "/"),
        ("/healthz", "/healthz"),
        ("/api/v1/orders", "/api/v1/orders"),
        ("/orders/42", "/orders/{id}"),
        ("/orders/42/items/7", "/orders/{id}/items/{id}"),
        ("/orders/42?expand=items#top", "/orders/{id}"),
        ("/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/users/{id}"),
        ("/blobs/9f86d081884c7d65", "/blobs/{id}"),
        ("/sessions/dGhpcyBpcyBhIHRva2VuMTIzNDU2", "/sessions/{id}"),
        ("/orders/", "/orders/"),
        // Words stay words, even hex-looking or long ones.
        ("/cafe/facade", "/cafe/facade"),
        ("/deadbeef", "/deadbeef"),
        ("/reports/quarterly-summary-overview", "/reports/quarterly-summary-overview"),
        ("/v2/users/me", "/v2/users/me"),
        ("/static/app.4f3a.js", "/static/app.4f3a.js"),
        ("/date/2024-01-31", "/date/2024-01-31"),
        // `*` is a wildcard to policy: never kept in a template.
        ("/a*b", "/{…}"),
        ("/api/x*/items", "/api/{…}/items"),
        ("*", "{…}"),
    ]

    @Test(arguments: templates)
    func generalizesOnlyIdentifiers(_ example: (path: String, template: String)) {
        #expect(PathTemplate.generalize(example.path) == example.template)
    }

    @Test func aVeryLongPathIsCutSoOneClientCannotGrowAKey() {
        let path = String(repeating: "/a", count: 100)
        let template = PathTemplate.generalize(path)
        #expect(template.hasSuffix("/{…}"))
        #expect(template.split(separator: "/").count == PathTemplate.maximumSegments)
        #expect(PathTemplate.generalize("/" + String(repeating: "x", count: 500)) == "/{…}")
        let words = PathTemplate.generalize(String(repeating: "/abcdefghijklmnopqrst", count: 20))
        #expect(words.hasSuffix("/{…}") && words.utf8.count <= PathTemplate.maximumLength + PathTemplate.elided.utf8.count)
    }

    static let suggestions: [(observed: [String], allowed: [String])] = [
        // Exact where nothing varies.
        (["/healthz", "/orders"], ["/healthz", "/orders"]),
        // A variable segment: a prefix up to it.
        (["/orders/{id}", "/orders/{id}/items/{id}"], ["/orders/*"]),
        (["/orders", "/orders/{id}"], ["/orders", "/orders/*"]),
        // Must not generalize: /admin beside /api/* stays /admin, never /*.
        (["/admin", "/api/{id}"], ["/admin", "/api/*"]),
        (["/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i"], ["/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i"]),
        // Fewer than eight siblings stay exact.
        (["/static/a.js", "/static/b.js", "/static/c.css"], ["/static/a.js", "/static/b.js", "/static/c.css"]),
        // Eight or more under one parent other than /: the parent is a collection.
        (["a", "b", "c", "d", "e", "f", "g", "h"].map { "/static/\($0).js" }, ["/static/*"]),
        // An exact path inside an allowed prefix is not written twice.
        (["/orders/{id}", "/orders/summary"], ["/orders/*"]),
        // Only every path would allow these: left out (see below).
        (["/{id}", "/admin"], ["/admin"]),
        (["/{…}/x", "{…}"], []),
    ]

    @Test(arguments: suggestions)
    func policyPathsWidenOnlyWhereObservationsSayTo(_ example: (observed: [String], allowed: [String])) {
        #expect(PolicyPaths.paths(for: example.observed).paths == example.allowed)
    }

    @Test func whatOnlyEveryPathWouldAllowIsNamed() {
        #expect(PolicyPaths.paths(for: ["/{id}", "/{id}/items", "{…}", "/admin", "/api/{id}"]).unexpressed == ["/{id}", "/{id}/items", "{…}"])
    }
}
