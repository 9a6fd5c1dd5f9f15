/// Cuts a watch response body into its lines, whatever the chunks it arrives
/// in: one JSON object per line, a line may span any number of chunks and a
/// chunk may end anywhere.
///
/// A line longer than `maximumLineBytes` is not kept: its bytes are counted
/// and dropped as they come, so a broken or hostile server cannot make the
/// agent hold more than that much of one line. The caller learns of it
/// (`.oversized`) when the line ends, and must then list again, since an event
/// was lost.
public struct WatchLineSplitter: Sendable {
    public enum Line: Equatable, Sendable {
        /// A line's bytes, without the newline (or a `\r` before it).
        case complete([UInt8])
        case oversized(byteCount: Int)
    }

    /// A pod is at most 1.5 MiB in etcd; its JSON can be a few times that.
    public static let defaultMaximumLineBytes = 8 << 20

    public let maximumLineBytes: Int
    private var pending: [UInt8] = []
    /// Bytes of the oversized line being dropped; nil when not dropping.
    private var dropped: Int?

    public init(maximumLineBytes: Int = defaultMaximumLineBytes) {
        self.maximumLineBytes = max(1, maximumLineBytes)
    }

    /// The lines that `chunk` completes. Blank lines are skipped.
    public mutating func append(_ chunk: some Collection<UInt8>) -> [Line] {
        var lines: [Line] = []
        var rest = chunk[...]
        while let newline = rest.firstIndex(of: UInt8(ascii: "\n")) {
            take(rest[rest.startIndex..<newline])
            if let count = dropped {
                lines.append(.oversized(byteCount: count))
                dropped = nil
            } else {
                if pending.last == UInt8(ascii: "\r") { pending.removeLast() }
                if !pending.allSatisfy(Self.isBlank) { lines.append(.complete(pending)) }
            }
            pending.removeAll(keepingCapacity: pending.count <= 64 << 10)
            rest = rest[rest.index(after: newline)...]
        }
        take(rest)
        return lines
    }

    /// Ends the stream: the number of bytes of a last line that never got its
    /// newline (the connection broke mid-event), or nil if the stream ended
    /// between lines. That line is not an event: its JSON may be cut anywhere.
    public mutating func finish() -> Int? {
        defer {
            pending = []
            dropped = nil
        }
        if let count = dropped { return count }
        return pending.allSatisfy(Self.isBlank) ? nil : pending.count
    }

    /// Bytes held for a line not yet complete.
    public var bufferedBytes: Int { pending.count }

    private mutating func take(_ bytes: some Collection<UInt8>) {
        if let count = dropped {
            dropped = count + bytes.count
        } else if pending.count + bytes.count > maximumLineBytes {
            dropped = pending.count + bytes.count
            pending = []
        } else {
            pending.append(contentsOf: bytes)
        }
    }

    private static func isBlank(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r")
    }
}
