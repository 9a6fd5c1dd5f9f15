import NIOCore
import Policy

/// What a message body yields, as received: its payload, the chunked coding's
/// own lines (sizes, line ends, trailers), and its end. Payload and framing
/// are slices of the bytes read, never copies; forwarded in order they are the
/// body exactly as it arrived.
enum HTTP1BodyPart {
    case payload(ByteBuffer)
    case framing(ByteBuffer)
    case end
}

/// Reads one message body by its framing: a length, the chunked coding, or
/// (responses only) until the connection closes.
struct HTTP1BodyReader {
    enum Framing: Equatable {
        case none
        case length(Int64)
        case chunked
        case untilClose
    }

    private enum State {
        case length(remaining: Int64)
        case chunkSize
        case chunkData(remaining: Int64)
        case chunkDataEnd
        case trailers
        case untilClose
        /// All of the body has been read; `.end` is next.
        case ending
        case ended
    }

    private var state: State
    private var lines = HTTP1Lines()
    private var trailerBudget: HTTP1HeadBudget

    /// The longest chunk-size line (with extensions) read.
    static let maximumChunkLine = 1024

    /// `trailers`: what a chunked body's trailer section may hold.
    init(_ framing: Framing, trailers: HTTP1HeadBudget) {
        switch framing {
        case .none, .length(0): state = .ending
        case .length(let length): state = .length(remaining: length)
        case .chunked: state = .chunkSize
        case .untilClose: state = .untilClose
        }
        trailerBudget = trailers
    }

    /// The next part of the body from `buffer`; nil when more bytes are
    /// needed. The last part is `.end`, even of a body with no bytes.
    mutating func read(_ buffer: inout ByteBuffer) throws(RequestRefusal) -> HTTP1BodyPart? {
        switch state {
        case .ended:
            return nil
        case .ending:
            state = .ended
            return .end
        case .length(let remaining):
            return Self.payload(of: remaining, from: &buffer, next: &state, then: .ending, rest: State.length)
        case .untilClose:
            guard buffer.readableBytes > 0 else { return nil }
            return .payload(buffer.readSlice(length: buffer.readableBytes) ?? ByteBuffer())
        case .chunkData(let remaining):
            return Self.payload(of: remaining, from: &buffer, next: &state, then: .chunkDataEnd, rest: State.chunkData)
        case .chunkDataEnd:
            guard buffer.readableBytes >= 2 else {
                if buffer.readableBytes == 1, buffer.readableBytesView.first != UInt8(ascii: "\r") { throw Self.overlongChunk }
                return nil
            }
            guard buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) == Self.lineEnd else { throw Self.overlongChunk }
            state = .chunkSize
            return .framing(buffer.readSlice(length: 2) ?? ByteBuffer())
        case .chunkSize:
            guard let line = try lines.next(in: buffer, maximumLength: Self.maximumChunkLine, tooLong: Self.badChunkSize) else { return nil }
            let size = try buffer.withUnsafeReadableBytes { bytes throws(RequestRefusal) in
                try Self.chunkSize(UnsafeRawBufferPointer(rebasing: bytes[line]))
            }
            state = size == 0 ? .trailers : .chunkData(remaining: Int64(size))
            return .framing(lines.take(from: &buffer))
        case .trailers:
            // The trailer section is passed on whole once its blank line arrives.
            while let line = try lines.next(in: buffer, maximumLength: trailerBudget.maximumLineLength, tooLong: trailerBudget.exceeded) {
                if line.isEmpty {
                    state = .ending
                    return .framing(lines.take(from: &buffer))
                }
                try buffer.withUnsafeReadableBytes { bytes throws(RequestRefusal) in
                    let field = try HTTP1FieldLine(UnsafeRawBufferPointer(rebasing: bytes[line]), index: trailerBudget.fields)
                    try trailerBudget.add(lineLength: line.count, counted: field.name.count + field.value.count, isField: true)
                }
            }
            return nil
        }
    }

    /// The connection's input ended: true when that ends this body (one read
    /// until close; `.end` is next), false when the body was cut short.
    mutating func inputEnded() -> Bool {
        guard case .untilClose = state else { return false }
        state = .ending
        return true
    }

    /// Up to `remaining` payload bytes from what has arrived; the state
    /// becomes `then` when they were the last, else `rest` of what remains.
    private static func payload(
        of remaining: Int64, from buffer: inout ByteBuffer, next state: inout State, then: State, rest: (Int64) -> State
    ) -> HTTP1BodyPart? {
        guard buffer.readableBytes > 0 else { return nil }
        let count = Int(min(remaining, Int64(buffer.readableBytes)))
        state = remaining == Int64(count) ? then : rest(remaining - Int64(count))
        return .payload(buffer.readSlice(length: count) ?? ByteBuffer())
    }

    private static let lineEnd = UInt16(UInt8(ascii: "\r")) << 8 | UInt16(UInt8(ascii: "\n"))
    private static let overlongChunk = RequestRefusal(.badRequest, "malformed HTTP/1.1 message: chunk data is longer than its size")
    private static let badChunkSize = RequestRefusal(.badRequest, "malformed HTTP/1.1 message: invalid chunk size")

    /// A chunk-size line: the size, then maybe extensions (`;name=value`),
    /// with no control byte but HTAB.
    private static func chunkSize(_ line: UnsafeRawBufferPointer) throws(RequestRefusal) -> Int {
        guard let size = line.chunkSize,
            !line.contains(where: { $0 == 0x7F || ($0 < 0x20 && $0 != UInt8(ascii: "\t")) })
        else { throw badChunkSize }
        return size
    }
}
