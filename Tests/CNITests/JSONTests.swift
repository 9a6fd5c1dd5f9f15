import CNI
import Testing

@Suite("strict JSON")
struct JSONTests {
    private func error(_ text: String) -> String? {
        do {
            _ = try JSONValue.parse(Array(text.utf8))
            return nil
        } catch {
            return error.reason
        }
    }

    @Test(arguments: [
        #"{}"#, #"[]"#, #"0"#, #"-0"#, #"1.5e-3"#, #"-12E+2"#, #""é\u00e9\ud83d\ude00\n\/""#, #" {"a" : [ true , false , null ] } "#,
        #"12345678901234567890123"#, #"{"a":{"b":{"c":[1,[2,[3]]]}}}"#,
    ])
    func valid(text: String) throws {
        let value = try JSONValue.parse(Array(text.utf8))
        #expect(try JSONValue.parse(value.encoded()) == value)
    }

    @Test func refusals() {
        #expect(error(#"{"a":1,}"#) == "unexpected '}' at byte 7 where a key (a string) should be in the object at byte 0")
        #expect(error(#"[1,]"#) == "unexpected ']' at byte 3 where a value should be")
        #expect(error(#"{"a":1,"a":2}"#) == #"the key "a" appears twice in the object at byte 0 (again at byte 7)"#)
        #expect(error(#"{"a":1} x"#) == "unexpected 'x' at byte 8 after the JSON value")
        #expect(error("") == "the JSON ends where a value should be")
        #expect(error(#"{"a":"#) == "the JSON ends where a value should be")
        #expect(error(#""abc"#) == "the string at byte 0 does not end")
        #expect(error("\"a\u{01}\"") == "the string at byte 0 has the control character 0x1 at byte 2; JSON writes it escaped")
        #expect(error(#""\x""#) == "the string at byte 0 has an invalid escape at byte 1")
        #expect(error(#""\ud800""#) == "the escape at byte 1 is half of a UTF-16 surrogate pair, without the other half")
        #expect(error(#""\udc00""#) == "the escape at byte 1 is half of a UTF-16 surrogate pair, without the other half")
        #expect(error(#""\u12""#) != nil)
        #expect(error("\u{FEFF}{}")?.hasPrefix("unexpected the byte 0xef at byte 0") == true)
        for number in ["01", "1.", ".5", "+1", "-", "1e", "1e+", "0x10", "NaN", "Infinity", "1e400", "--1"] {
            #expect(error(number) != nil, "\(number) was accepted")
        }
        #expect(error(String(repeating: "[", count: 65) + String(repeating: "]", count: 65)) == "nested deeper than 64 levels at byte 64")
        #expect(error(String(repeating: "[", count: 64) + String(repeating: "]", count: 64)) == nil)
        #expect(error("1" + String(repeating: "0", count: 600)) == "the number at byte 0 is longer than 512 characters")
    }

    /// Broke the CNI fuzz target's check that errors are short: a repeated
    /// key was shown whole, so a megabyte of stdin made a megabyte error.
    @Test func aRepeatedLongKeyIsShownCut() {
        let key = String(repeating: "k", count: 5000)
        let reason = error(#"{"\#(key)":1,"\#(key)":2}"#)
        #expect(reason?.hasPrefix(#"the key ""# + String(repeating: "k", count: 128) + #"…" appears twice in the object at byte 0"#) == true)
        #expect((reason?.utf8.count ?? 0) < 300)
    }

    @Test func invalidUTF8() {
        #expect(throws: JSONError(reason: "the string at byte 0 is not valid UTF-8")) { try JSONValue.parse([0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONError.self) { try JSONValue.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) }
    }

    @Test func encoding() {
        let value = JSONValue.object([
            "z": .string("a\"b\\c\n\u{01}/é"), "a": .array([.integer(-3), .number("1.50"), .null, .bool(false)]), "m": .object([:]),
        ])
        #expect(String(decoding: value.encoded(), as: UTF8.self) == #"{"a":[-3,1.50,null,false],"m":{},"z":"a\"b\\c\n\u0001/é"}"#)
        // A number made in code from anything but number text cannot break the document.
        #expect(JSONValue.number("1; drop").encoded() == Array("null".utf8))
    }

    @Test func indentedEncoding() throws {
        let value = JSONValue.object([
            "plugins": .array([.object(["type": .string("bridge"), "ipam": .object([:])]), .array([])]), "name": .string("n"),
        ])
        #expect(String(decoding: value.indentedEncoded(), as: UTF8.self) == """
            {
              "name": "n",
              "plugins": [
                {
                  "ipam": {},
                  "type": "bridge"
                },
                []
              ]
            }

            """)
        #expect(try JSONValue.parse(value.indentedEncoded()) == value)
        #expect(JSONValue.string("x").indentedEncoded() == Array("\"x\"\n".utf8))
    }

    @Test func numbers() {
        #expect(JSONValue.number("2").integerValue == 2)
        #expect(JSONValue.number("2.0").integerValue == 2)
        #expect(JSONValue.number("2e0").integerValue == 2)
        #expect(JSONValue.number("2.5").integerValue == nil)
        #expect(JSONValue.number("1e30").integerValue == nil)
        #expect(JSONValue.number("2.5").numberValue == 2.5)
        #expect(JSONValue.string("2").integerValue == nil)
    }
}
