import Foundation

/// One event of `GET /events` (Docker) or `GET /libpod/events?stream=true`
/// (Podman, which since 4.0 sends the same shape):
/// `{"Type":"container","Action":"start","Actor":{"ID":…,"Attributes":{…}},…}`.
public struct EngineEvent: Hashable, Sendable {
    public enum Kind: Hashable, Sendable, CustomStringConvertible {
        case container, pod, network
        /// Images, volumes, daemons, …: nothing a workload is made of.
        case other(String)

        public var description: String {
            switch self {
            case .container: return "container"
            case .pod: return "pod"
            case .network: return "network"
            case .other(let type): return EngineText.quoted(type)
            }
        }
    }

    public var kind: Kind
    /// `create`, `start`, `died` (Podman) / `die` (Docker), `remove`, …
    public var action: String
    /// The container, pod or network the event is about.
    public var id: String
    /// The container's labels, its name and (Podman) its `podId`; Docker's
    /// network events name the container in `container`.
    public var attributes: [String: String]

    public init(kind: Kind, action: String, id: String, attributes: [String: String] = [:]) {
        self.kind = kind
        self.action = action
        self.id = id
        self.attributes = attributes
    }

    /// Actions after which what a source reports can differ: a container or
    /// pod appears, starts, stops, goes, or changes networks. Everything else
    /// (exec, health checks, attach, image pulls, …) is frequent and changes
    /// nothing, so it must not cost a relist.
    public var changesWorkloads: Bool {
        switch kind {
        case .container:
            return Self.containerActions.contains(action)
        case .pod:
            return Self.podActions.contains(action)
        case .network:
            return action == "connect" || action == "disconnect"
        case .other:
            return false
        }
    }

    static let containerActions: Set<String> = [
        "create", "start", "restart", "die", "died", "stop", "kill", "remove", "destroy", "rename", "update",
    ]
    static let podActions: Set<String> = ["create", "start", "restart", "stop", "kill", "remove", "exited"]

    /// The ids whose inspection this event makes stale: the container or
    /// pod itself, the pod of a container, the container a network event is
    /// about.
    public var affectedIDs: Set<String> {
        var ids: Set<String> = []
        if !id.isEmpty { ids.insert(id) }
        for key in ["podId", "container"] {
            if let value = attributes[key], !value.isEmpty { ids.insert(value) }
        }
        return ids
    }

    /// Decodes one line of the stream. A line that is JSON but not an event
    /// of a known kind decodes as `.other`, so new engine versions with new
    /// event types do not break the stream; a line that is not a JSON object
    /// is an error.
    public static func decode(line: some Collection<UInt8>) throws(EventStreamError) -> EngineEvent {
        let raw: RawEvent
        do {
            raw = try JSONDecoder().decode(RawEvent.self, from: Data(line))
        } catch let error as DecodingError {
            throw .notAnEvent(reason: EngineDecoding.describe(error), excerpt: EventStreamError.excerpt(line))
        } catch {
            throw .notAnEvent(reason: "\(error)", excerpt: EventStreamError.excerpt(line))
        }
        let type = raw.kind ?? ""
        let kind: Kind
        switch type {
        case "container": kind = .container
        case "pod": kind = .pod
        case "network": kind = .network
        default: kind = .other(type)
        }
        let id = raw.Actor?.ID.flatMap { $0.isEmpty ? nil : $0 } ?? raw.id ?? ""
        return EngineEvent(kind: kind, action: raw.action ?? raw.status ?? "", id: id, attributes: raw.Actor?.Attributes?.values ?? [:])
    }
}

/// An event as sent. `Type` and `Action` are Docker's names since API 1.22;
/// `status` is the older name of the action that both engines still send.
struct RawEvent: Decodable {
    struct Actor: Decodable {
        var ID: String?
        var Attributes: StringAttributes?
    }
    var kind: String?
    var action: String?
    var status: String?
    var id: String?
    var Actor: Actor?

    enum CodingKeys: String, CodingKey {
        case kind = "Type", action = "Action", status, id, Actor
    }
}

/// Attributes whose values are strings; any other value is left out rather
/// than failing the event (engines have added numeric attributes before).
struct StringAttributes: Decodable {
    var values: [String: String] = [:]

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        for key in container.allKeys {
            if let value = try? container.decode(String.self, forKey: key) { values[key.stringValue] = value }
        }
    }
}

// MARK: - The stream

public enum EventStreamError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The stream ended in the middle of a line.
    case truncatedLine(bytes: Int)
    /// A line longer than the limit: no event is that long, so the stream is
    /// not what the agent thinks it is.
    case lineTooLong(limit: Int)
    /// A line that is not a JSON event object.
    case notAnEvent(reason: String, excerpt: String)

    public var description: String {
        switch self {
        case .truncatedLine(let bytes):
            return "the engine's event stream ended in the middle of an event (\(bytes) bytes without a newline); reconnecting and listing again"
        case .lineTooLong(let limit):
            return "the engine's event stream sent a line longer than \(limit) bytes; no event is that long, so the stream is dropped and the source lists again"
        case .notAnEvent(let reason, let excerpt):
            return "the engine's event stream sent a line that is not an event (\(reason)): \(excerpt); reconnecting and listing again"
        }
    }

    static func excerpt(_ line: some Collection<UInt8>) -> String {
        EngineText.quoted(String(decoding: line.prefix(EngineText.maxShown * 4), as: UTF8.self))
    }
}

/// Cuts a streamed body into lines, whatever the chunks' boundaries: one JSON
/// event per line, `\n` or `\r\n` terminated, empty lines skipped. Bounded:
/// a line may not grow past `maxLineBytes`. After an error the splitter
/// stays failed; the stream is to be dropped.
public struct EventLineSplitter: Sendable {
    public static let defaultMaxLineBytes = 1 << 20

    public let maxLineBytes: Int
    private var pending: [UInt8] = []
    private var failed: EventStreamError?

    public init(maxLineBytes: Int = EventLineSplitter.defaultMaxLineBytes) {
        self.maxLineBytes = max(1, maxLineBytes)
    }

    /// The lines that `bytes` completes, without their line ends.
    public mutating func append(_ bytes: some Collection<UInt8>) throws(EventStreamError) -> [[UInt8]] {
        if let failed { throw failed }
        var lines: [[UInt8]] = []
        var start = bytes.startIndex
        // Only the new bytes are searched for a newline: what is pending has
        // none, so a long line arriving byte by byte costs linear time.
        while let newline = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let piece = bytes[start..<newline]
            try checkLength(pending.count + piece.count)
            var line = pending
            pending = []
            line.append(contentsOf: piece)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if !line.allSatisfy(Self.isSpace) { lines.append(line) }
            start = bytes.index(after: newline)
        }
        let rest = bytes[start...]
        try checkLength(pending.count + rest.count)
        pending.append(contentsOf: rest)
        return lines
    }

    /// The stream ended: an error if it ended in the middle of a line.
    public mutating func finish() throws(EventStreamError) {
        if let failed { throw failed }
        let leftover = pending
        pending = []
        if !leftover.allSatisfy(Self.isSpace) {
            failed = .truncatedLine(bytes: leftover.count)
            throw .truncatedLine(bytes: leftover.count)
        }
    }

    private mutating func checkLength(_ count: Int) throws(EventStreamError) {
        guard count <= maxLineBytes else {
            pending = []
            failed = .lineTooLong(limit: maxLineBytes)
            throw .lineTooLong(limit: maxLineBytes)
        }
    }

    static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}
