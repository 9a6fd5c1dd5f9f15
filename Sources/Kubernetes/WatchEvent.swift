import Foundation

/// One line of a watch stream: `{"type":"ADDED","object":{…}}`.
public enum WatchEvent<Object: Decodable & Sendable>: Sendable {
    case added(Object)
    case modified(Object)
    case deleted(Object)
    /// The API server's progress note: every change up to this version has
    /// been sent. Its object carries nothing but `metadata.resourceVersion`.
    case bookmark(resourceVersion: String)
    /// The watch failed; with code 410 the version it started from is too old
    /// and only a new list can continue.
    case error(Status)
    /// A type this agent does not know; skipped, as clients of newer API
    /// servers must.
    case unknown(type: String)
}

extension WatchEvent: Equatable where Object: Equatable {}

/// Turns lines of a watch stream, and list bodies, into values; says what
/// failed without quoting the object (pod specs can hold secrets in env vars).
public enum KubernetesDecoder {
    /// Decodes one watch line.
    public static func watchEvent<Object>(_ line: some Collection<UInt8>, as: Object.Type) throws -> WatchEvent<Object> {
        try decode(WatchEnvelope<Object>.self, from: line, what: "watch event").event
    }

    /// Decodes a list response (`PodList`, `NamespaceList`).
    public static func list<Item>(_ body: some Collection<UInt8>, of: Item.Type) throws -> ObjectList<Item> {
        try decode(ObjectList<Item>.self, from: body, what: "\(Item.self) list")
    }

    /// Decodes the `Status` of an HTTP error body, if it is one.
    public static func status(_ body: some Collection<UInt8>) -> Status? {
        try? decode(Status.self, from: body, what: "status")
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>, what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch let error as DecodingError {
            throw KubernetesDecodingError(what: what, byteCount: bytes.count, detail: describe(error))
        } catch let error as KubernetesDecodingError {
            throw KubernetesDecodingError(what: what, byteCount: bytes.count, detail: error.detail)
        } catch {
            throw KubernetesDecodingError(what: what, byteCount: bytes.count, detail: loggable("\(error)"))
        }
    }

    /// A decoding error as where and what, without Foundation's debug dump.
    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return keys.isEmpty ? "the top level" : String(keys.dropFirst(keys.hasPrefix(".") ? 1 : 0))
        }
        switch error {
        case .typeMismatch(let type, let context):
            return "\(loggable(path(context))) is not \(describeType(type))"
        case .valueNotFound(let type, let context):
            return "\(loggable(path(context))) is null, expected \(describeType(type))"
        case .keyNotFound(let key, let context):
            let at = context.codingPath.isEmpty ? "" : " in \(loggable(path(context)))"
            return "\"\(loggable(key.stringValue))\" is missing\(at)"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not valid JSON" : "\(loggable(path(context))): \(loggable(context.debugDescription))"
        @unknown default:
            return "not the expected JSON"
        }
    }

    private static func describeType(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "an integer"
        case is Bool.Type: "true or false"
        default: "an object or array of the expected shape"
        }
    }
}

/// A watch line or list body that is not the JSON the API server writes.
public struct KubernetesDecodingError: Error, Equatable, CustomStringConvertible {
    public let what: String
    public let byteCount: Int
    public let detail: String

    public var description: String {
        "cannot decode a \(what) (\(byteCount) bytes): \(detail)"
    }
}

/// `{"type": …, "object": …}`, the object decoded as the type says.
struct WatchEnvelope<Object: Decodable & Sendable>: Decodable {
    let event: WatchEvent<Object>

    private enum Keys: String, CodingKey {
        case type, object
    }

    /// A bookmark's object is an empty object of the watched kind; only its
    /// version counts.
    private struct Bookmark: Decodable {
        struct Metadata: Decodable { var resourceVersion: String? }
        var metadata: Metadata?
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "ADDED": event = .added(try container.decode(Object.self, forKey: .object))
        case "MODIFIED": event = .modified(try container.decode(Object.self, forKey: .object))
        case "DELETED": event = .deleted(try container.decode(Object.self, forKey: .object))
        case "BOOKMARK":
            let bookmark = try container.decode(Bookmark.self, forKey: .object)
            guard let version = bookmark.metadata?.resourceVersion, !version.isEmpty else {
                throw KubernetesDecodingError(what: "watch event", byteCount: 0, detail: "a BOOKMARK without metadata.resourceVersion")
            }
            event = .bookmark(resourceVersion: version)
        case "ERROR": event = .error(try container.decode(Status.self, forKey: .object))
        default: event = .unknown(type: loggable(type))
        }
    }
}

/// Text from outside, fit for one log line: control characters replaced,
/// at most `limit` characters.
func loggable(_ text: String, limit: Int = 300) -> String {
    var out = String(text.unicodeScalars.prefix(limit).map { scalar -> Character in
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) ? "?" : Character(scalar)
    })
    if text.unicodeScalars.count > limit { out += "…" }
    return out
}
