import NIOCore
import Policy

/// Finds the request heads in one direction of an HTTP/1.x connection
/// without changing or keeping its bytes: it reads request lines and header
/// fields, and skips bodies by their length or their chunks. It only watches
/// (the graph's `graph.http`), so anything it does not understand stops it
/// rather than the connection: a protocol that is not HTTP/1.x, HTTP/2's
/// preface, the bytes after an upgrade or a CONNECT, a head over the limit.
struct HTTPRequestFraming {
    /// A request head: its method and its target as sent.
    struct Head: Equatable {
        var method: String
        var target: String
    }

    private enum State {
        case requestLine
        case fields
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkEnd
        case trailers
        case stopped
    }

    private var state = State.requestLine
    /// The line being read, when it spans reads.
    private var line: [UInt8] = []
    /// Bytes of the current head so far.
    private var headBytes = 0
    private var head: Head?
    private var contentLength: Int?
    private var chunked = false
    private var switchesProtocol = false
    let maximumHeadBytes: Int

    init(maximumHeadBytes: Int) {
        self.maximumHeadBytes = maximumHeadBytes
    }

    var isStopped: Bool {
        if case .stopped = state { return true }
        return false
    }

    /// Reads the next bytes of the stream; `found` gets each complete head.
    mutating func read(_ bytes: UnsafeRawBufferPointer, found: (Head) -> Void) {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            switch state {
            case .stopped:
                return
            case .body(let remaining):
                let skipped = min(remaining, bytes.endIndex - index)
                index += skipped
                state = remaining == skipped ? .requestLine : .body(remaining: remaining - skipped)
            case .chunkData(let remaining):
                let skipped = min(remaining, bytes.endIndex - index)
                index += skipped
                state = remaining == skipped ? .chunkEnd : .chunkData(remaining: remaining - skipped)
            case .requestLine, .fields, .chunkSize, .chunkEnd, .trailers:
                guard let newline = bytes[index...].firstIndex(of: UInt8(ascii: "\n")) else {
                    append(bytes[index...])
                    return
                }
                append(bytes[index..<newline])
                index = newline + 1
                guard !isStopped else { return }
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                let complete = line
                line.removeAll(keepingCapacity: true)
                if let head = lineEnded(complete) { found(head) }
            }
        }
    }

    /// Adds to the line being read, within limits: a head (request line,
    /// fields, trailers) of at most `maximumHeadBytes`, a chunk-size line of
    /// at most `maximumChunkLine`. Past them it is not HTTP worth watching.
    private mutating func append(_ bytes: Slice<UnsafeRawBufferPointer>) {
        switch state {
        case .chunkSize, .chunkEnd:
            guard line.count + bytes.count <= Self.maximumChunkLine else {
                state = .stopped
                return
            }
        default:
            headBytes += bytes.count
            guard headBytes <= maximumHeadBytes else {
                state = .stopped
                return
            }
        }
        line.append(contentsOf: bytes)
    }

    static let maximumChunkLine = 1024

    /// One line of the stream, without its line ending; a head when it was
    /// the end of one.
    private mutating func lineEnded(_ line: [UInt8]) -> Head? {
        switch state {
        case .requestLine:
            // Blank lines before a request line are allowed (RFC 9112 2.2).
            guard !line.isEmpty else { return nil }
            guard let parsed = Self.requestLine(line) else {
                state = .stopped
                return nil
            }
            head = parsed
            contentLength = nil
            chunked = false
            switchesProtocol = parsed.method == "CONNECT"
            state = .fields
        case .fields:
            if line.isEmpty { return headEnded() }
            guard field(line) else {
                state = .stopped
                return nil
            }
        case .chunkSize:
            guard let size = Self.chunkSize(line) else {
                state = .stopped
                return nil
            }
            state = size == 0 ? .trailers : .chunkData(remaining: size)
        case .chunkEnd:
            state = line.isEmpty ? .chunkSize : .stopped
        case .trailers:
            if line.isEmpty { startNextRequest() }
        case .body, .chunkData, .stopped:
            break
        }
        return nil
    }

    private mutating func headEnded() -> Head? {
        let ended = head
        if switchesProtocol {
            state = .stopped
        } else if chunked {
            state = .chunkSize
        } else if let length = contentLength, length > 0 {
            state = .body(remaining: length)
        } else {
            startNextRequest()
        }
        headBytes = 0
        return ended
    }

    private mutating func startNextRequest() {
        state = .requestLine
        headBytes = 0
        head = nil
    }

    /// Reads a header field for the framing; false when it cannot be a field
    /// or makes the framing ambiguous (then watching stops).
    private mutating func field(_ line: [UInt8]) -> Bool {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return false }
        let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
        let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingSpaces
        switch name {
        case "content-length":
            guard let length = Int(value), length >= 0, contentLength == nil || contentLength == length else { return false }
            contentLength = length
        case "transfer-encoding":
            chunked = value.lowercased().split(separator: ",").last.map { $0.trimmingSpaces == "chunked" } ?? false
            if !chunked { return false }
        case "upgrade":
            switchesProtocol = true
        default:
            break
        }
        return true
    }

    /// `METHOD SP target SP HTTP/1.x`, with a method of token characters.
    static func requestLine(_ line: [UInt8]) -> Head? {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty,
            parts[2].elementsEqual("HTTP/1.1".utf8) || parts[2].elementsEqual("HTTP/1.0".utf8),
            parts[0].allSatisfy(isTokenCharacter)
        else { return nil }
        return Head(method: String(decoding: parts[0], as: UTF8.self), target: String(decoding: parts[1], as: UTF8.self))
    }

    /// A chunk-size line: hexadecimal digits, maybe extensions after `;`.
    static func chunkSize(_ line: [UInt8]) -> Int? {
        let digits = line.prefix { $0 != UInt8(ascii: ";") }
        let text = String(decoding: digits, as: UTF8.self).trimmingSpaces
        guard !text.isEmpty, text.count <= 15 else { return nil }
        return Int(text, radix: 16)
    }

    private static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

extension StringProtocol {
    fileprivate var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

/// Watches a spliced connection's client bytes for HTTP/1.x request heads, for
/// the service graph (`graph.http: true`): each head is reported with its
/// method and normalized path, and the bytes go on to the splice untouched
/// and uncopied. Nothing is decided and nothing is answered here, so a
/// connection that is not HTTP/1.x only ends the watching, never the
/// connection.
final class HTTPRequestTap: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// What to watch for and whom to tell.
    struct Watch: Sendable {
        /// How paths are normalized, as for policy.
        var pathRules: HTTPPath.Rules
        /// A request head seen: its method and its path (nil when the target
        /// does not normalize, e.g. an absolute or asterisk form).
        var observer: @Sendable (_ method: String, _ path: String?) -> Void
    }

    /// The longest head watched; a longer one ends the watching.
    static let maximumHeadBytes = 64 * 1024

    private var framing = HTTPRequestFraming(maximumHeadBytes: HTTPRequestTap.maximumHeadBytes)
    private let watch: Watch

    init(_ watch: Watch) {
        self.watch = watch
    }

    var isWatching: Bool { !framing.isStopped }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !framing.isStopped {
            let bytes = unwrapInboundIn(data)
            bytes.withUnsafeReadableBytes { raw in
                framing.read(raw) { head in
                    let path = try? HTTPPath.normalize(head.target, rules: watch.pathRules).get().path
                    watch.observer(head.method, path)
                }
            }
        }
        context.fireChannelRead(data)
    }
}
