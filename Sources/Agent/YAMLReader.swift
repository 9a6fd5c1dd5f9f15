import Yams

/// A problem in a YAML document, located by file, line and key path so that the
/// operator can go straight to it: `agent.yaml:12: workloads[0].cgroup: ...`.
public struct YAMLError: Error, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int?
    public let keyPath: String
    public let reason: String

    public var description: String {
        let location = line.map { "\(file):\($0)" } ?? file
        return keyPath.isEmpty ? "\(location): \(reason)" : "\(location): \(keyPath): \(reason)"
    }
}

/// Reads typed values out of a composed YAML node tree and remembers where each
/// came from. Unknown keys are errors: a misspelt key silently ignored is a
/// security setting silently left at its default.
struct YAMLNode {
    let node: Node
    let file: String
    let keyPath: String

    var line: Int? { node.mark?.line }

    func error(_ reason: String) -> YAMLError {
        YAMLError(file: file, line: line, keyPath: keyPath, reason: reason)
    }

    static func parse(_ text: String, file: String) throws -> YAMLNode? {
        do {
            guard let node = try Yams.compose(yaml: text) else { return nil }
            return YAMLNode(node: node, file: file, keyPath: "")
        } catch let error as YamlError {
            throw YAMLError(file: file, line: error.line, keyPath: "", reason: "not valid YAML: \(error.summary)")
        }
    }

    func mapping() throws -> YAMLMapping {
        guard case .mapping(let mapping) = node else {
            throw error("expected a mapping of keys to values")
        }
        var entries: [(key: String, value: YAMLNode)] = []
        var seen = Set<String>()
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let key) = keyNode else {
                throw YAMLError(file: file, line: keyNode.mark?.line, keyPath: keyPath, reason: "keys must be plain strings")
            }
            let childPath = keyPath.isEmpty ? key.string : "\(keyPath).\(key.string)"
            guard seen.insert(key.string).inserted else {
                throw YAMLError(file: file, line: keyNode.mark?.line, keyPath: childPath, reason: "key appears twice")
            }
            entries.append((key.string, YAMLNode(node: valueNode, file: file, keyPath: childPath)))
        }
        return YAMLMapping(owner: self, entries: entries)
    }

    func sequence() throws -> [YAMLNode] {
        guard case .sequence(let sequence) = node else {
            throw error("expected a list")
        }
        return sequence.enumerated().map { index, child in
            YAMLNode(node: child, file: file, keyPath: "\(keyPath)[\(index)]")
        }
    }

    func string() throws -> String {
        guard case .scalar(let scalar) = node else {
            throw error("expected a single value, not a list or mapping")
        }
        return scalar.string
    }

    func nonEmptyString() throws -> String {
        let value = try string()
        guard !value.isEmpty else { throw error("must not be empty") }
        return value
    }

    func bool() throws -> Bool {
        switch try string().lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error("expected true or false")
        }
    }

    /// Accepts decimal and `0x` hexadecimal, as operators write packet marks.
    func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, in range: ClosedRange<T>? = nil) throws -> T {
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

    func stringMap() throws -> [String: String] {
        var result: [String: String] = [:]
        for (key, value) in try mapping().entries {
            result[key] = try value.string()
        }
        return result
    }

    func oneOf<T: RawRepresentable>(_ type: T.Type, _ allowed: [T]) throws -> T where T.RawValue == String {
        let text = try string()
        guard let value = T(rawValue: text), allowed.contains(where: { $0.rawValue == value.rawValue }) else {
            throw error("must be one of \(allowed.map(\.rawValue).joined(separator: ", ")), got \"\(text)\"")
        }
        return value
    }
}

/// The keys of one YAML mapping. Every key must be taken; `finish()` reports the
/// first one nobody asked for.
struct YAMLMapping {
    let owner: YAMLNode
    let entries: [(key: String, value: YAMLNode)]
    private var taken = Set<String>()

    init(owner: YAMLNode, entries: [(key: String, value: YAMLNode)]) {
        self.owner = owner
        self.entries = entries
    }

    mutating func take(_ key: String) -> YAMLNode? {
        taken.insert(key)
        return entries.first(where: { $0.key == key })?.value
    }

    mutating func require(_ key: String) throws -> YAMLNode {
        guard let value = take(key) else {
            let path = owner.keyPath.isEmpty ? key : "\(owner.keyPath).\(key)"
            throw YAMLError(file: owner.file, line: owner.line, keyPath: path, reason: "is required")
        }
        return value
    }

    func finish(allowed: [String]) throws {
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
        default:
            return nil
        }
    }

    var summary: String {
        switch self {
        case .scanner(_, let problem, _, _), .parser(_, let problem, _, _), .composer(_, let problem, _, _):
            return problem
        default:
            return String(describing: self)
        }
    }
}
