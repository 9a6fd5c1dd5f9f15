import NIOCore
import Policy

/// Finds the request heads in one direction of an HTTP/1.x connection
/// without changing or keeping its bytes: it reads request lines and header
/// fields, and skips bodies by their length or their chunks. It only watches
/// (the graph's `graph.http`), so anything it does not understand stops it
/// rather than the connection: a protocol that is not HTTP/1.x, HTTP/2's
/// preface, the bytes after an upgrade or a CONNECT, a head over the limit.
package struct HTTPRequestFraming {
    /// A request head: its method and its target as sent.
    package struct Head: Equatable {
        package var method: String
        package var target: String
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

    package init(maximumHeadBytes: Int) {
        self.maximumHeadBytes = maximumHeadBytes
    }

    package var isStopped: Bool {
        if case .stopped = state { return true }
        return false
    }

    /// Reads the next bytes of the stream; `found` gets each complete head.
    package mutating func read(_ bytes: UnsafeRawBufferPointer, found: (Head) -> Void) {
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
                    if admit(bytes.endIndex - index) { line.append(contentsOf: bytes[index...]) }
                    return
                }
                guard admit(newline - index) else { return }
                var head: Head?
                if line.isEmpty {
                    // The whole line is in this read: read it where it is.
                    head = lineEnded(UnsafeRawBufferPointer(rebasing: bytes[index..<newline]).droppingCarriageReturn)
                } else {
                    // Taken out of `self` while `lineEnded` mutates it, and
                    // put back empty with its storage for the next split line.
                    var complete: [UInt8] = []
                    swap(&complete, &line)
                    complete.append(contentsOf: bytes[index..<newline])
                    head = complete.withUnsafeBytes { lineEnded($0.droppingCarriageReturn) }
                    complete.removeAll(keepingCapacity: true)
                    swap(&complete, &line)
                }
                index = newline + 1
                if let head { found(head) }
            }
        }
    }

    /// Whether `count` more bytes fit the line being read: a head (request
    /// line, fields, trailers) has at most `maximumHeadBytes`, a chunk-size
    /// line at most `maximumChunkLine`. Past them it is not HTTP worth
    /// watching, and watching stops.
    private mutating func admit(_ count: Int) -> Bool {
        switch state {
        case .chunkSize, .chunkEnd:
            guard line.count + count <= Self.maximumChunkLine else {
                state = .stopped
                return false
            }
        default:
            headBytes += count
            guard headBytes <= maximumHeadBytes else {
                state = .stopped
                return false
            }
        }
        return true
    }

    static let maximumChunkLine = HTTP1BodyReader.maximumChunkLine

    /// One line of the stream, without its line ending; a head when it was
    /// the end of one.
    private mutating func lineEnded(_ line: UnsafeRawBufferPointer) -> Head? {
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
            guard let size = line.chunkSize else {
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
    private mutating func field(_ line: UnsafeRawBufferPointer) -> Bool {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return false }
        let name = UnsafeRawBufferPointer(rebasing: line[..<colon])
        let value = UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]).trimmingWhitespace
        if name.equalsIgnoringASCIICase("content-length") {
            guard let length = value.decimal, contentLength == nil || contentLength == length else { return false }
            contentLength = length
        } else if name.equalsIgnoringASCIICase("transfer-encoding") {
            let codings = String(decoding: value, as: UTF8.self).lowercased()
            chunked = codings.split(separator: ",").last.map { $0.filter { $0 != " " && $0 != "\t" } == "chunked" } ?? false
            if !chunked { return false }
        } else if name.equalsIgnoringASCIICase("upgrade") {
            switchesProtocol = true
        }
        return true
    }

    /// `METHOD SP target SP HTTP/1.x`, with a method of token characters.
    static func requestLine(_ line: UnsafeRawBufferPointer) -> Head? {
        guard let firstSpace = line.firstIndex(of: UInt8(ascii: " ")),
            let lastSpace = line.lastIndex(of: UInt8(ascii: " ")), lastSpace > firstSpace + 1, firstSpace > 0
        else { return nil }
        let method = line[..<firstSpace]
        let target = line[(firstSpace + 1)..<lastSpace]
        let version = line[(lastSpace + 1)...]
        guard version.elementsEqual("HTTP/1.1".utf8) || version.elementsEqual("HTTP/1.0".utf8),
            method.allSatisfy(HTTPSyntax.isTokenByte), !target.contains(UInt8(ascii: " "))
        else { return nil }
        return Head(method: String(decoding: method, as: UTF8.self), target: String(decoding: target, as: UTF8.self))
    }

}

/// Watches a spliced connection's client bytes for HTTP/1.x request heads, for
/// the service graph (`graph.http: true`): each head is reported with its
/// method and normalized path, and the bytes go on to the splice untouched
/// and uncopied. Nothing is decided and nothing is answered here, so a
/// connection that is not HTTP/1.x only ends the watching, never the
/// connection.
package final class HTTPRequestTap: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer

    /// What to watch for and whom to tell.
    package struct Watch: Sendable {
        /// How paths are normalized, as for policy.
        var pathRules: HTTPPath.Rules
        /// A request head seen: its method and its path (nil when the target
        /// does not normalize, e.g. an absolute or asterisk form).
        var observer: @Sendable (_ method: String, _ path: String?) -> Void

        /// For `graph.http`: each request seen on the connection `opened`
        /// counts in the graph as a request to its workload, with the
        /// connection's decision. It names no policy or rule: none decided
        /// the request, and the connection's own edge already counts for the
        /// rule that let it in (`policy report` would count it twice).
        package static func countingRequests(of opened: AccessLogEntry, in accessLog: AccessLogSink, pathRules: HTTPPath.Rules) -> Watch {
            var connection = opened
            connection.policy = nil
            connection.rule = nil
            connection.audit = nil
            connection.auditPolicy = nil
            connection.auditRule = nil
            return Watch(pathRules: pathRules) { [connection] method, path in
                var entry = connection.requestEntry(at: wallClock())
                entry.method = method
                entry.path = path
                accessLog.observe(entry)
            }
        }
    }

    /// The longest head watched; a longer one ends the watching.
    static let maximumHeadBytes = 64 * 1024

    private var framing = HTTPRequestFraming(maximumHeadBytes: HTTPRequestTap.maximumHeadBytes)
    private let watch: Watch

    package init(_ watch: Watch) {
        self.watch = watch
    }

    var isWatching: Bool { !framing.isStopped }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
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

extension UnsafeRawBufferPointer {
    /// The graph's reader takes a bare LF for a line end, where the strict
    /// reader refuses it: it watches and never decides.
    fileprivate var droppingCarriageReturn: UnsafeRawBufferPointer {
        last == UInt8(ascii: "\r") ? UnsafeRawBufferPointer(rebasing: self[..<(endIndex - 1)]) : self
    }
}
