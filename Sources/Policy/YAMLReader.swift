import Yams

/// A problem in a YAML document, located by file, line and key path so that the
/// operator can go straight to it: `agent.yaml:12: workloads[0].cgroup: ...`.
public struct YAMLError: Error, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int?
    public let keyPath: String
    public let reason: String

    public init(file: String, line: Int?, keyPath: String, reason: String) {
        self.file = file
        self.line = line
        self.keyPath = keyPath
        self.reason = reason
    }

    public var description: String {
        let location = line.map { "\(file):\($0)" } ?? file
        return keyPath.isEmpty ? "\(location): \(reason)" : "\(location): \(keyPath): \(reason)"
    }
}

/// Reads typed values out of a composed YAML node tree and remembers where each
/// came from. Unknown keys are errors: a misspelt key silently ignored is a
/// security setting silently left at its default.
public struct YAMLNode {
    let node: Node
    public let file: String
    public let keyPath: String

    public var line: Int? { node.mark?.line }

    /// True for an empty value (`key:` with nothing after it, `~`, `null`), and for
    /// an empty document. A quoted `"null"` is a string.
    public var isNull: Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain else { return false }
        return Self.nullSpellings.contains(scalar.string)
    }

    /// YAML's plain null (`~`, `null`, empty), as its core schema spells it.
    private static let nullSpellings: Set<String> = ["", "~", "null", "Null", "NULL"]

    /// Tags every scalar as a string: every value is read by the typed
    /// accessors below, never by its tag. Yams' default resolver decides tags
    /// with NSRegularExpression, which would load ICU's regex engine into the
    /// agent (about 1.5 MiB of resident memory) to parse its config.
    private static let untypedScalars = Resolver.basic

    public func error(_ reason: String) -> YAMLError {
        YAMLError(file: file, line: line, keyPath: keyPath, reason: reason)
    }

    public static func parse(_ text: String, file: String) throws -> YAMLNode? {
        do {
            guard let node = try Yams.compose(yaml: text, untypedScalars) else { return nil }
            return YAMLNode(node: node, file: file, keyPath: "")
        } catch let error as YamlError {
            throw YAMLError(file: file, line: error.line, keyPath: "", reason: "not valid YAML: \(error.summary)")
        }
    }

    /// Every document of a multi-document stream (separated by `---`), in order.
    /// A syntax error anywhere fails the whole stream.
    public static func documents(_ text: String, file: String) throws -> [YAMLNode] {
        do {
            let parser = try Parser(yaml: text, resolver: untypedScalars)
            var documents: [YAMLNode] = []
            while let node = try parser.nextRoot() {
                documents.append(YAMLNode(node: node, file: file, keyPath: ""))
            }
            return documents
        } catch let error as YamlError {
            throw YAMLError(file: file, line: error.line, keyPath: "", reason: "not valid YAML: \(error.summary)")
        }
    }

    public var isMapping: Bool {
        if case .mapping = node { return true }
        return false
    }

    public func mapping() throws -> YAMLMapping {
        guard case .mapping(let mapping) = node else {
            throw error("expected a mapping of keys to values")
        }
        var entries: [(key: String, value: YAMLNode)] = []
        var seen = Set<String>()
        var keyLines: [String: Int] = [:]
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let key) = keyNode else {
                throw YAMLError(file: file, line: keyNode.mark?.line, keyPath: keyPath, reason: "keys must be plain strings")
            }
            let childPath = keyPath.isEmpty ? key.string : "\(keyPath).\(key.string)"
            guard seen.insert(key.string).inserted else {
                throw YAMLError(file: file, line: keyNode.mark?.line, keyPath: childPath, reason: "key appears twice")
            }
            keyLines[key.string] = keyNode.mark?.line
            entries.append((key.string, YAMLNode(node: valueNode, file: file, keyPath: childPath)))
        }
        return YAMLMapping(owner: self, entries: entries, keyLines: keyLines)
    }

    public func sequence() throws -> [YAMLNode] {
        guard case .sequence(let sequence) = node else {
            throw error("expected a list")
        }
        return sequence.enumerated().map { index, child in
            YAMLNode(node: child, file: file, keyPath: "\(keyPath)[\(index)]")
        }
    }

    public func string() throws -> String {
        guard case .scalar(let scalar) = node else {
            throw error("expected a single value, not a list or mapping")
        }
        return scalar.string
    }

    public func nonEmptyString() throws -> String {
        let value = try string()
        guard !value.isEmpty else { throw error("must not be empty") }
        return value
    }

    public func bool() throws -> Bool {
        switch try string().lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error("expected true or false")
        }
    }

    /// Accepts decimal and `0x` hexadecimal, as operators write packet marks.
    public func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, in range: ClosedRange<T>? = nil) throws -> T {
        let text = try string()
        let bounds = range ?? T.min...T.max
        let parsed: UInt64?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            parsed = UInt64(text.dropFirst(2), radix: 16)
        } else {
            parsed = UInt64(text, radix: 10)
        }
        guard let wide = parsed else {
            throw error("expected a whole number from \(bounds.lowerBound) to \(bounds.upperBound), got \"\(text)\"")
        }
        guard let value = T(exactly: wide), bounds.contains(value) else {
            throw error("must be between \(bounds.lowerBound) and \(bounds.upperBound), got \(text)")
        }
        return value
    }

    public func stringMap() throws -> [String: String] {
        var result: [String: String] = [:]
        for (key, value) in try mapping().entries {
            result[key] = try value.string()
        }
        return result
    }

    public func oneOf<T: RawRepresentable>(_ type: T.Type, _ allowed: [T]) throws -> T where T.RawValue == String {
        let text = try string()
        guard let value = T(rawValue: text), allowed.contains(where: { $0.rawValue == value.rawValue }) else {
            throw error("must be one of \(allowed.map(\.rawValue).joined(separator: ", ")), got \"\(text)\"")
        }
        return value
    }
}

/// The keys of one YAML mapping. Every key must be taken; `finish()` reports the
/// first one nobody asked for.
public struct YAMLMapping {
    public let owner: YAMLNode
    public let entries: [(key: String, value: YAMLNode)]
    private let keyLines: [String: Int]
    private var taken = Set<String>()

    init(owner: YAMLNode, entries: [(key: String, value: YAMLNode)], keyLines: [String: Int]) {
        self.owner = owner
        self.entries = entries
        self.keyLines = keyLines
    }

    /// The line of `key` itself (a value written on the lines below its key starts
    /// later).
    public func line(ofKey key: String) -> Int? {
        keyLines[key]
    }

    /// An error about a key of this mapping, located at the key.
    public func error(key: String, _ reason: String) -> YAMLError {
        let path = owner.keyPath.isEmpty ? key : "\(owner.keyPath).\(key)"
        return YAMLError(file: owner.file, line: line(ofKey: key) ?? owner.line, keyPath: path, reason: reason)
    }

    public mutating func take(_ key: String) -> YAMLNode? {
        taken.insert(key)
        return entries.first(where: { $0.key == key })?.value
    }

    public mutating func require(_ key: String) throws -> YAMLNode {
        guard let value = take(key) else {
            let path = owner.keyPath.isEmpty ? key : "\(owner.keyPath).\(key)"
            throw YAMLError(file: owner.file, line: owner.line, keyPath: path, reason: "is required")
        }
        return value
    }

    public func finish(allowed: [String]) throws {
        for entry in entries where !taken.contains(entry.key) {
            throw YAMLError(
                file: owner.file, line: entry.value.line, keyPath: entry.value.keyPath,
                reason: "unknown key; expected one of: \(allowed.sorted().joined(separator: ", "))"
            )
        }
    }
}

extension YamlError {
    var line: Int? {
        switch self {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return mark.line
        case .duplicatedKeysInMapping(_, let context):
            return context.mark.line
        default:
            return nil
        }
    }

    var summary: String {
        switch self {
        case .scanner(_, let problem, _, _), .parser(_, let problem, _, _), .composer(_, let problem, _, _):
            return problem
        case .duplicatedKeysInMapping(let duplicates, _):
            return "a mapping has the key \(duplicates.sorted().map { "\"\($0)\"" }.joined(separator: ", ")) twice"
        default:
            return String(describing: self)
        }
    }
}
