import Testing

@testable import Policy

@Suite struct HTTPPathTests {
    @Test(arguments: [
        // Unchanged.
        ("/", "/"),
        ("/admin", "/admin"),
        ("/ADMIN", "/ADMIN"),
        ("/Admin/Users", "/Admin/Users"),
        ("/admin/", "/admin/"),
        ("/a-b_c~d.e", "/a-b_c~d.e"),
        ("/a:b@c", "/a:b@c"),
        ("/!$&'()*+,;=", "/!$&'()*+,;="),
        ("/...", "/..."),
        ("/.hidden/..x", "/.hidden/..x"),
        ("/a;b=c/d", "/a;b=c/d"),
        // Dot segments.
        ("/public/../admin", "/admin"),
        ("/./admin", "/admin"),
        ("/admin/.", "/admin/"),
        ("/admin/./", "/admin/"),
        ("/admin/..", "/"),
        ("/admin/../", "/"),
        ("/a/b/../../admin", "/admin"),
        ("/a/b/c/./../../g", "/a/g"),
        ("/..", "/"),
        ("/.", "/"),
        ("/../../../admin", "/admin"),
        ("/a/../../b", "/b"),
        ("/a//../b", "/a/b"),
        ("/a/.//b", "/a/b"),
        // Dot segments hidden in escapes are resolved after decoding.
        ("/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/%2e/admin", "/admin"),
        // Slashes.
        ("//admin", "/admin"),
        ("///admin//users///", "/admin/users/"),
        ("/admin//", "/admin/"),
        // Escapes of unreserved characters are decoded; the rest are upper-cased.
        ("/%61dmin", "/admin"),
        ("/%41DMIN", "/ADMIN"),
        ("/%7e", "/~"),
        ("/%2D%2e%5F%7E%30", "/-._~0"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a%3bb", "/a%3Bb"),
        ("/a%3f", "/a%3F"),
        ("/a%23", "/a%23"),
        ("/100%25", "/100%25"),
        ("/a%25%32%66", "/a%252f"),
    ])
    func pathsAreNormalized(target: String, expected: String) throws {
        // Path parameters are kept here, to see what normalization alone does;
        // what the other `pathParameters` modes do is tested below.
        let normalized = try HTTPPath.normalize(target, rules: .init(parameters: .keep)).get()
        #expect(normalized.path == expected)
        #expect(normalized.form == .origin)
        #expect(normalized.query == nil)
        #expect(normalized.target == expected)
    }

    @Test(arguments: ["/a;b=c/d", "/admin;x/panel", "/!$&'()*+,;=", "/a/b;"])
    func pathParametersAreRefusedByDefault(target: String) {
        #expect(throws: HTTPPathError.pathParameters) { try HTTPPath.normalize(target).get() }
        #expect(HTTPPathError.pathParameters.description.contains("http.pathParameters"))
    }

    @Test(arguments: [
        ("/a;b=c/d", "/a/d"),
        ("/admin;x/panel", "/admin/panel"),
        ("/a;x/..;y/b", "/b"),
        ("/public/;/secret", "/public/secret"),
        ("/a;", "/a"),
    ])
    func strippedPathParametersLeaveThePathFrameworksRoute(target: String, expected: String) throws {
        #expect(try HTTPPath.normalize(target, rules: .init(parameters: .strip)).get().path == expected)
    }

    @Test func keptPathParametersAreMatchedAsTheyAre() throws {
        let kept = HTTPPath.Rules(parameters: .keep)
        #expect(try HTTPPath.normalize("/admin;x/panel", rules: kept).get().path == "/admin;x/panel")
        // A dot segment with parameters is refused whatever the mode but strip.
        #expect(throws: HTTPPathError.dotSegmentWithParameters) { try HTTPPath.normalize("/a/..;x/b", rules: kept).get() }
        #expect(throws: HTTPPathError.dotSegmentWithParameters) { try HTTPPath.normalize("/a/..;x/b").get() }
    }

    @Test func normalizationLevelsFollowIstio() throws {
        let base = HTTPPath.Rules(normalization: .BASE)
        #expect(try HTTPPath.normalize("//admin//x", rules: base).get().path == "//admin//x")
        #expect(try HTTPPath.normalize("/a/../b", rules: base).get().path == "/b")
        #expect(try HTTPPath.normalize("//admin//x").get().path == "/admin/x")
        let decode = HTTPPath.Rules(normalization: .DECODE_AND_MERGE_SLASHES)
        #expect(try HTTPPath.normalize("/admin%2Fpanel", rules: decode).get().path == "/admin/panel")
        #expect(try HTTPPath.normalize("/public%2F..%2Fadmin", rules: decode).get().path == "/admin")
        #expect(try HTTPPath.normalize("/a%5Cb", rules: decode).get().path == "/a/b")
        #expect(throws: HTTPPathError.ambiguousEscape(position: 6, decodedByte: 0x2F)) { try HTTPPath.normalize("/admin%2Fpanel").get() }
        #expect(throws: HTTPPathError.ambiguousEscape(position: 2, decodedByte: 0)) { try HTTPPath.normalize("/a%00", rules: decode).get() }
    }

    @Test func normalizingTwiceChangesNothing() throws {
        for target in ["/public/../admin", "/%61dmin//x/.", "/caf%c3%a9/%2e%2e/b", "/a/b?x=%2f"] {
            let once = try HTTPPath.normalize(target).get()
            #expect(try HTTPPath.normalize(once.target).get() == once)
        }
    }

    @Test(arguments: [
        ("/admin?x=1", "/admin", "x=1"),
        ("/public/../admin?a=%2f&b=..", "/admin", "a=%2f&b=.."),
        ("/a?", "/a", ""),
        ("/a?b?c/d", "/a", "b?c/d"),
        ("/a?%7e", "/a", "%7e"),
        ("/%61?q=/../x", "/a", "q=/../x"),
        ("/a?x=1;y=2&z=:@!$'()*+,", "/a", "x=1;y=2&z=:@!$'()*+,"),
    ])
    func theQueryIsKeptAsReceived(target: String, path: String, query: String) throws {
        let normalized = try HTTPPath.normalize(target).get()
        #expect(normalized.path == path)
        #expect(normalized.query == query)
        #expect(normalized.target == "\(path)?\(query)")
    }

    @Test func asteriskIsReportedAsItsOwnForm() throws {
        let normalized = try HTTPPath.normalize("*").get()
        #expect(normalized.form == .asterisk)
        #expect(normalized.path == "*")
        #expect(normalized.target == "*")
        #expect(throws: HTTPPathError.notOriginForm) { try HTTPPath.normalize("*x").get() }
        #expect(throws: HTTPPathError.notOriginForm) { try HTTPPath.normalize("**").get() }
    }

    @Test(arguments: [
        ("", HTTPPathError.empty),
        ("admin", .notOriginForm),
        ("h:80", .notOriginForm),
        ("h.example:80", .notOriginForm),
        ("http://h/admin", .absoluteForm),
        ("HTTPS://h/admin", .absoluteForm),
        ("ws+unix://x", .absoluteForm),
        ("urn:x", .notOriginForm),
        ("?x", .notOriginForm),
        ("#frag", .fragment(position: 0)),
        ("/admin#frag", .fragment(position: 6)),
        ("/admin?x#frag", .fragment(position: 8)),
        ("/admin%2fx", .ambiguousEscape(position: 6, decodedByte: 0x2F)),
        ("/admin%2Fx", .ambiguousEscape(position: 6, decodedByte: 0x2F)),
        ("/admin%5Cx", .ambiguousEscape(position: 6, decodedByte: 0x5C)),
        ("/admin%5cx", .ambiguousEscape(position: 6, decodedByte: 0x5C)),
        ("/admin%00", .ambiguousEscape(position: 6, decodedByte: 0)),
        ("/admin\\x", .invalidCharacter(position: 6, byte: 0x5C, inQuery: false)),
        ("/%zz", .malformedEscape(position: 1)),
        ("/a%", .malformedEscape(position: 2)),
        ("/a%4", .malformedEscape(position: 2)),
        ("/a%4g", .malformedEscape(position: 2)),
        ("/a%%41", .malformedEscape(position: 2)),
        ("/a?b=%", .malformedEscape(position: 5)),
        ("/a?b=%zz", .malformedEscape(position: 5)),
        ("/a b", .invalidCharacter(position: 2, byte: 0x20, inQuery: false)),
        ("/a\tb", .invalidCharacter(position: 2, byte: 0x09, inQuery: false)),
        ("/a\u{0}b", .invalidCharacter(position: 2, byte: 0x00, inQuery: false)),
        ("/a\u{7F}", .invalidCharacter(position: 2, byte: 0x7F, inQuery: false)),
        ("/café", .invalidCharacter(position: 4, byte: 0xC3, inQuery: false)),
        ("/a\"", .invalidCharacter(position: 2, byte: 0x22, inQuery: false)),
        ("/a<b>", .invalidCharacter(position: 2, byte: 0x3C, inQuery: false)),
        ("/a^", .invalidCharacter(position: 2, byte: 0x5E, inQuery: false)),
        ("/a`", .invalidCharacter(position: 2, byte: 0x60, inQuery: false)),
        ("/a{b}", .invalidCharacter(position: 2, byte: 0x7B, inQuery: false)),
        ("/a|b", .invalidCharacter(position: 2, byte: 0x7C, inQuery: false)),
        ("/a[0]", .invalidCharacter(position: 2, byte: 0x5B, inQuery: false)),
        ("/a?b c", .invalidCharacter(position: 4, byte: 0x20, inQuery: true)),
        ("/a?b\\c", .invalidCharacter(position: 4, byte: 0x5C, inQuery: true)),
        ("/a?q=é", .invalidCharacter(position: 5, byte: 0xC3, inQuery: true)),
        ("/public/..;/admin", .dotSegmentWithParameters),
        ("/public/.;x/admin", .dotSegmentWithParameters),
        ("/public/%2e%2e;/admin", .dotSegmentWithParameters),
    ])
    func ambiguousOrMalformedTargetsAreRefused(target: String, expected: HTTPPathError) {
        #expect(throws: expected) { try HTTPPath.normalize(target).get() }
    }

    @Test func theLengthIsLimited() throws {
        let longest = "/" + String(repeating: "a", count: HTTPPath.maximumTargetLength - 1)
        #expect(try HTTPPath.normalize(longest).get().path == longest)
        #expect(throws: HTTPPathError.tooLong(length: HTTPPath.maximumTargetLength + 1, limit: HTTPPath.maximumTargetLength)) {
            try HTTPPath.normalize(longest + "a").get()
        }
        #expect(throws: HTTPPathError.tooLong(length: 11, limit: 10)) { try HTTPPath.normalize("/0123456789", maximumLength: 10).get() }
    }

    @Test func manySegmentsTakeLinearTime() throws {
        let slashes = String(repeating: "/", count: 8000)
        #expect(try HTTPPath.normalize(slashes).get().path == "/")
        let tenThousandSegments = String(repeating: "/a", count: 10_000)
        #expect(try HTTPPath.normalize(tenThousandSegments, maximumLength: 20_000).get().path == tenThousandSegments)
        let climbs = String(repeating: "/a", count: 1_500) + String(repeating: "/..", count: 1_500) + "/admin"
        #expect(try HTTPPath.normalize(climbs).get().path == "/admin")

        // A quadratic pass over a mebibyte would take minutes; a linear one, well under a second.
        let clock = ContinuousClock()
        let huge = String(repeating: "/a/./b/../%2e%2e//", count: 60_000)
        var result: Result<NormalizedTarget, HTTPPathError>?
        let elapsed = clock.measure {
            result = HTTPPath.normalize(huge, maximumLength: 2 << 20)
        }
        #expect(try result?.get().path == "/")
        #expect(elapsed < .seconds(5))
    }

    @Test func reasonsNeverQuoteTheTarget() {
        let secret = "/token=hunter2%zz"
        guard case .failure(let error) = HTTPPath.normalize(secret) else {
            Issue.record("accepted \(secret)")
            return
        }
        #expect(!error.description.contains("hunter2"))
        #expect(error.description == "request-target has a '%' at byte 14 not followed by two hex digits")
        #expect(HTTPPathError.invalidCharacter(position: 3, byte: 0x01, inQuery: false).description.contains("control byte 0x01"))
        #expect(HTTPPathError.invalidCharacter(position: 3, byte: 0xE9, inQuery: true).description.contains("non-ASCII byte 0xE9 at byte 3, not allowed in a query"))
    }
}
