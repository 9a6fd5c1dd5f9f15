/// A JSON value kept whole, so that a chained plugin can hand on a previous
/// plugin's result with every field it does not know about.
///
/// Numbers keep the text they were written as: `2` stays `2`, and an integer
/// beyond 64 bits or a long fraction passes through unrounded.
public enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    /// The number's JSON text (checked against the grammar when parsed).
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public static func integer(_ value: Int64) -> JSONValue {
        .number(String(value))
    }

    /// The member `key` of an object; nil for a missing member or a non-object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members[key]
    }

    public var stringValue: String? {
        guard case .string(let value) = self else { return nil }
        return value
    }

    public var objectValue: [String: JSONValue]? {
        guard case .object(let members) = self else { return nil }
        return members
    }

    /// A number that is a whole number in 64 bits (`2`, also `2.0` and `2e0`).
    public var integerValue: Int64? {
        guard case .number(let text) = self else { return nil }
        if let value = Int64(text) { return value }
        guard let value = Double(text), value.rounded() == value, abs(value) < 9.2e18 else { return nil }
        return Int64(value)
    }

    public var numberValue: Double? {
        guard case .number(let text) = self else { return nil }
        return Double(text)
    }

    /// What kind of value this is, for messages that say what was found
    /// instead of what was expected.
    public var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Deeper nesting than any CNI config or result has; bounds the recursion
    /// of parsing whatever arrives on stdin or a socket.
    public static let maximumDepth = 64

    /// Parses one JSON text (RFC 8259, strictly: no trailing commas, no
    /// duplicate keys, valid UTF-8, nothing after the value). The error says
    /// what is wrong and at which byte.
    public static func parse(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        var parser = JSONParser(bytes)
        return try parser.document()
    }

    /// Compact JSON with sorted keys (equal values give equal bytes) and
    /// slashes unescaped (paths stay readable).
    public func encoded() -> [UInt8] {
        var output: [UInt8] = []
        encode(into: &output, indent: nil)
        return output
    }

    /// As `encoded()`, one member or element per line, indented by two
    /// spaces a level, with a final newline: for files people read and
    /// edit, such as the node's CNI config.
    public func indentedEncoded() -> [UInt8] {
        var output: [UInt8] = []
        encode(into: &output, indent: 0)
        output.append(0x0A)
        return output
    }

    /// `indent` is the current level when indenting, nil for compact output.
    private func encode(into output: inout [UInt8], indent: Int?) {
        // A new line at `level`, only when indenting.
        func newline(_ level: Int) {
            guard indent != nil else { return }
            output.append(0x0A)
            output += [UInt8](repeating: 0x20, count: 2 * level)
        }
        let inner = indent.map { $0 + 1 }
        switch self {
        case .null:
            output += Array("null".utf8)
        case .bool(let value):
            output += Array((value ? "true" : "false").utf8)
        case .number(let text):
            // Only parsed text or Swift's own formatting gets here; anything
            // else would break the document, so it is written as null.
            output += JSONParser.isNumber(Array(text.utf8)) ? Array(text.utf8) : Array("null".utf8)
        case .string(let text):
            Self.encode(string: text, into: &output)
        case .array(let elements):
            output.append(0x5B)
            for (index, element) in elements.enumerated() {
                if index > 0 { output.append(0x2C) }
                newline(inner ?? 0)
                element.encode(into: &output, indent: inner)
            }
            if !elements.isEmpty { newline(indent ?? 0) }
            output.append(0x5D)
        case .object(let members):
            output.append(0x7B)
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { output.append(0x2C) }
                newline(inner ?? 0)
                Self.encode(string: key, into: &output)
                output.append(0x3A)
                if indent != nil { output.append(0x20) }
                members[key]?.encode(into: &output, indent: inner)
            }
            if !members.isEmpty { newline(indent ?? 0) }
            output.append(0x7D)
        }
    }

    /// The bytes `scalar` takes in a JSON string as `encoded()` writes it.
    static func encodedWidth(of scalar: Unicode.Scalar) -> Int {
        switch scalar.value {
        case 0x22, 0x5C, 0x0A, 0x0D, 0x09, 0x08, 0x0C: return 2
        case 0x00..<0x20: return 6
        default: return UTF8.width(scalar)
        }
    }

    private static func encode(string: String, into output: inout [UInt8]) {
        output.append(0x22)
        for byte in string.utf8 {
            switch byte {
            case 0x22: output += [0x5C, 0x22]
            case 0x5C: output += [0x5C, 0x5C]
            case 0x0A: output += [0x5C, 0x6E]
            case 0x0D: output += [0x5C, 0x72]
            case 0x09: output += [0x5C, 0x74]
            case 0x08: output += [0x5C, 0x62]
            case 0x0C: output += [0x5C, 0x66]
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                output += [0x5C, 0x75, 0x30, 0x30, hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
            default: output.append(byte)
            }
        }
        output.append(0x22)
    }
}

public struct JSONError: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String

    public init(reason: String) {
        self.reason = reason
    }

    public var description: String { reason }
}

/// A strict recursive-descent parser over bytes. Recursion is bounded by
/// `JSONValue.maximumDepth`, numbers and strings by the input's length.
struct JSONParser {
    private let bytes: [UInt8]
    private var index = 0

    /// Beyond any real number; bounds the text a number keeps.
    static let maximumNumberLength = 512

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func document() throws(JSONError) -> JSONValue {
        skipWhitespace()
        let value = try value(depth: 0)
        skipWhitespace()
        guard index == bytes.count else { throw unexpected("after the JSON value") }
        return value
    }

    private mutating func value(depth: Int) throws(JSONError) -> JSONValue {
        guard index < bytes.count else { throw JSONError(reason: "the JSON ends where a value should be") }
        if bytes[index] == 0x7B || bytes[index] == 0x5B, depth >= JSONValue.maximumDepth {
            throw JSONError(reason: "nested deeper than \(JSONValue.maximumDepth) levels at byte \(index)")
        }
        switch bytes[index] {
        case 0x7B: return try object(depth: depth)
        case 0x5B: return try array(depth: depth)
        case 0x22: return .string(try string())
        case 0x74: return try literal("true", .bool(true))
        case 0x66: return try literal("false", .bool(false))
        case 0x6E: return try literal("null", .null)
        case 0x2D, 0x30...0x39: return try number()
        default: throw unexpected("where a value should be")
        }
    }

    private mutating func object(depth: Int) throws(JSONError) -> JSONValue {
        let start = index
        index += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if peek == 0x7D {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard peek == 0x22 else { throw unexpected("where a key (a string) should be in the object at byte \(start)") }
            let keyStart = index
            let key = try string()
            skipWhitespace()
            guard peek == 0x3A else { throw unexpected("where ':' should follow a key") }
            index += 1
            skipWhitespace()
            let value = try value(depth: depth + 1)
            // Two values for one key mean different things to different
            // parsers; no CNI document has them. The key is shown cut: it may
            // be most of a megabyte of stdin.
            guard members.updateValue(value, forKey: key) == nil else {
                throw JSONError(reason: "the key \(CNIEnvironment.quoted(key)) appears twice in the object at byte \(start) (again at byte \(keyStart))")
            }
            skipWhitespace()
            switch peek {
            case 0x2C: index += 1
            case 0x7D:
                index += 1
                return .object(members)
            default: throw unexpected("where ',' or '}' should be in the object at byte \(start)")
            }
        }
    }

    private mutating func array(depth: Int) throws(JSONError) -> JSONValue {
        let start = index
        index += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if peek == 0x5D {
            index += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try value(depth: depth + 1))
            skipWhitespace()
            switch peek {
            case 0x2C: index += 1
            case 0x5D:
                index += 1
                return .array(elements)
            default: throw unexpected("where ',' or ']' should be in the array at byte \(start)")
            }
        }
    }

    private mutating func string() throws(JSONError) -> String {
        let start = index
        index += 1
        var scalars = String.UnicodeScalarView()
        var raw: [UInt8] = []
        func flush() throws(JSONError) {
            guard !raw.isEmpty else { return }
            guard let text = String(validating: raw, as: UTF8.self) else {
                throw JSONError(reason: "the string at byte \(start) is not valid UTF-8")
            }
            scalars.append(contentsOf: text.unicodeScalars)
            raw.removeAll(keepingCapacity: true)
        }
        while true {
            guard index < bytes.count else { throw JSONError(reason: "the string at byte \(start) does not end") }
            let byte = bytes[index]
            switch byte {
            case 0x22:
                index += 1
                try flush()
                return String(scalars)
            case 0x5C:
                try flush()
                scalars.append(try escape(in: start))
            case 0x00..<0x20:
                throw JSONError(reason: "the string at byte \(start) has the control character 0x\(String(byte, radix: 16)) at byte \(index); JSON writes it escaped")
            default:
                raw.append(byte)
                index += 1
            }
        }
    }

    /// One escape sequence, at `index` (the backslash); a UTF-16 surrogate
    /// pair counts as one.
    private mutating func escape(in string: Int) throws(JSONError) -> Unicode.Scalar {
        let at = index
        guard index + 1 < bytes.count else { throw JSONError(reason: "the string at byte \(string) does not end") }
        let letter = bytes[index + 1]
        index += 2
        switch letter {
        case 0x22: return "\""
        case 0x5C: return "\\"
        case 0x2F: return "/"
        case 0x62: return "\u{08}"
        case 0x66: return "\u{0C}"
        case 0x6E: return "\n"
        case 0x72: return "\r"
        case 0x74: return "\t"
        case 0x75:
            let unit = try hex4(at: at)
            if (0xD800..<0xDC00).contains(unit) {
                guard index + 1 < bytes.count, bytes[index] == 0x5C, bytes[index + 1] == 0x75 else {
                    throw JSONError(reason: "the escape at byte \(at) is half of a UTF-16 surrogate pair, without the other half")
                }
                index += 2
                let low = try hex4(at: at)
                guard (0xDC00..<0xE000).contains(low) else {
                    throw JSONError(reason: "the escape at byte \(at) is half of a UTF-16 surrogate pair, without the other half")
                }
                let value = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                guard let scalar = Unicode.Scalar(value) else { throw JSONError(reason: "the escape at byte \(at) is not a character") }
                return scalar
            }
            guard let scalar = Unicode.Scalar(unit) else {
                throw JSONError(reason: "the escape at byte \(at) is half of a UTF-16 surrogate pair, without the other half")
            }
            return scalar
        default:
            throw JSONError(reason: "the string at byte \(string) has an invalid escape at byte \(at)")
        }
    }

    private mutating func hex4(at escape: Int) throws(JSONError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw JSONError(reason: "the escape at byte \(escape) is cut short") }
        var value: UInt32 = 0
        for byte in bytes[index..<(index + 4)] {
            let digit: UInt8
            switch byte {
            case 0x30...0x39: digit = byte - 0x30
            case 0x41...0x46: digit = byte - 0x41 + 10
            case 0x61...0x66: digit = byte - 0x61 + 10
            default: throw JSONError(reason: "the escape at byte \(escape) has a character that is not a hex digit")
            }
            value = value << 4 | UInt32(digit)
        }
        index += 4
        return value
    }

    private mutating func number() throws(JSONError) -> JSONValue {
        let start = index
        while index < bytes.count, Self.isNumberByte(bytes[index]) { index += 1 }
        let text = Array(bytes[start..<index])
        guard text.count <= Self.maximumNumberLength else {
            throw JSONError(reason: "the number at byte \(start) is longer than \(Self.maximumNumberLength) characters")
        }
        guard Self.isNumber(text) else { throw JSONError(reason: "the number at byte \(start) is malformed") }
        let string = String(decoding: text, as: UTF8.self)
        guard let value = Double(string), value.isFinite else {
            throw JSONError(reason: "the number at byte \(start) is too large")
        }
        return .number(string)
    }

    private mutating func literal(_ word: String, _ value: JSONValue) throws(JSONError) -> JSONValue {
        let expected = Array(word.utf8)
        guard bytes.count - index >= expected.count, Array(bytes[index..<(index + expected.count)]) == expected else {
            throw unexpected("where a value should be")
        }
        index += expected.count
        return value
    }

    private var peek: UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            let byte = bytes[index]
            guard byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D else { return }
            index += 1
        }
    }

    private func unexpected(_ context: String) -> JSONError {
        guard index < bytes.count else { return JSONError(reason: "the JSON ends \(context)") }
        let byte = bytes[index]
        let shown = (0x21...0x7E).contains(byte) ? "'\(Character(Unicode.Scalar(byte)))'" : "the byte 0x\(String(byte, radix: 16))"
        return JSONError(reason: "unexpected \(shown) at byte \(index) \(context)")
    }

    private static func isNumberByte(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || byte == 0x2D || byte == 0x2B || byte == 0x2E || byte == 0x65 || byte == 0x45
    }

    /// RFC 8259's number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    static func isNumber(_ text: [UInt8]) -> Bool {
        var index = 0
        func digits() -> Int {
            let start = index
            while index < text.count, (0x30...0x39).contains(text[index]) { index += 1 }
            return index - start
        }
        if index < text.count, text[index] == 0x2D { index += 1 }
        guard index < text.count else { return false }
        if text[index] == 0x30 {
            index += 1
        } else if digits() == 0 {
            return false
        }
        if index < text.count, text[index] == 0x2E {
            index += 1
            guard digits() > 0 else { return false }
        }
        if index < text.count, text[index] == 0x65 || text[index] == 0x45 {
            index += 1
            if index < text.count, text[index] == 0x2B || text[index] == 0x2D { index += 1 }
            guard digits() > 0 else { return false }
        }
        return index == text.count
    }
}
