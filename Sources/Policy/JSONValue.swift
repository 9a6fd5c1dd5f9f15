import Foundation

/// A JSON value as read from a token's claims or a key set, kept whole so that
/// policies can match nested claims (`request.auth.claims[groups]`,
/// `request.auth.claims[realm][roles]`).
public enum JSONValue: Hashable, Sendable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([String: JSONValue])

    /// The member `key` of an object; nil for a missing member or a non-object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members[key]
    }

    public var stringValue: String? {
        guard case .string(let value) = self else { return nil }
        return value
    }

    /// Parses one JSON text whose top level is an object or array. Throws
    /// `JSONValue.ParseError` for anything else or for malformed input.
    public static func parse(_ data: Data) throws(ParseError) -> JSONValue {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            throw ParseError(reason: "not valid JSON")
        }
        return try convert(object, depth: 0)
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// Claims nest a few levels at most; a deeper document is hostile.
    public static let maximumDepth = 32

    private static let booleanNumberType = type(of: NSNumber(value: true))

    private static func convert(_ object: Any, depth: Int) throws(ParseError) -> JSONValue {
        guard depth <= maximumDepth else { throw ParseError(reason: "JSON nested deeper than \(maximumDepth) levels") }
        switch object {
        case let value as String:
            return .string(value)
        case let value as NSNumber:
            // JSONSerialization gives booleans as NSNumbers too, of their own class.
            if type(of: value) == booleanNumberType { return .bool(value.boolValue) }
            return .number(value.doubleValue)
        case is NSNull:
            return .null
        case let values as [Any]:
            var converted: [JSONValue] = []
            converted.reserveCapacity(values.count)
            for value in values { converted.append(try convert(value, depth: depth + 1)) }
            return .array(converted)
        case let members as [String: Any]:
            var converted: [String: JSONValue] = [:]
            for (key, value) in members { converted[key] = try convert(value, depth: depth + 1) }
            return .object(converted)
        default:
            throw ParseError(reason: "unsupported JSON value")
        }
    }
}
