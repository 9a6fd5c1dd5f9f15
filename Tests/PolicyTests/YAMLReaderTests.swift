import Testing

@testable import Policy

@Suite("Reading YAML values")
struct YAMLReaderTests {
    private func value(of key: String, in text: String) throws -> YAMLNode {
        guard var map = try YAMLNode.parse(text, file: "test.yaml")?.mapping(), let node = map.take(key) else {
            throw YAMLError(file: "test.yaml", line: nil, keyPath: key, reason: "missing in the test's own document")
        }
        return node
    }

    @Test(arguments: ["a:", "a: ~", "a: null", "a: Null", "a: NULL"])
    func plainNullsAreNull(text: String) throws {
        #expect(try value(of: "a", in: text).isNull)
    }

    /// Quoted, they are strings; and a mapping or a list is never null.
    @Test(arguments: ["a: \"null\"", "a: '~'", "a: nullable", "a: {}", "a: []", "a: 0"])
    func everythingElseIsAValue(text: String) throws {
        #expect(try !value(of: "a", in: text).isNull)
    }

    /// Scalars are read by the accessors, whatever YAML would have tagged them.
    @Test func scalarsKeepTheirTextForTheAccessors() throws {
        let text = "port: 0x539\nflag: yes\nname: 012\nwhen: 2026-12-07\n"
        #expect(try value(of: "port", in: text).unsigned(UInt32.self) == 0x539)
        #expect(try value(of: "flag", in: text).bool())
        #expect(try value(of: "name", in: text).string() == "012")
        #expect(try value(of: "when", in: text).string() == "2026-12-07")
    }

    @Test func multiDocumentStreamsKeepEmptyDocumentsAsNull() throws {
        let documents = try YAMLNode.documents("a: 1\n---\n---\nb: 2\n", file: "test.yaml")
        #expect(documents.map(\.isNull) == [false, true, false])
    }
}
