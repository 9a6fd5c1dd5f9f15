import NIOCore
import Policy

/// The line syntax that HTTP/1.1 heads, chunk-size lines and trailers share,
/// read strictly (RFC 9112): a line ends with CRLF, never with a bare LF, and a
/// field line is `token ":" OWS value OWS` with no control byte but HTAB in
/// its value. Whatever two parsers could split differently is refused, so the
/// agent and the workload always agree on where a line, a field and a message
/// end.
///
/// Lines are found in a `ByteBuffer` without consuming it: a head is consumed
/// whole once its blank line arrives, so that it can be forwarded as the
/// bytes it arrived as.
struct HTTP1Lines {
    /// How far past the reader index lines have been read.
    private(set) var scanned = 0
    /// How far past the reader index no line end is known to be: a line
    /// that arrives in many reads is searched once, not from its start at
    /// every read (which a client sending a long line a byte at a time would
    /// turn into quadratic work).
    private var searched = 0
    /// Bytes searched for a line end, in all: what a line costs to find.
    private(set) var bytesSearched = 0

    /// The next complete line after what was scanned, as offsets from the
    /// buffer's reader index without its CRLF; nil when it has not all
    /// arrived. A line longer than `maximumLength` is refused before its end
    /// arrives, so a client cannot make the agent buffer without bound.
    mutating func next(in buffer: ByteBuffer, maximumLength: Int, tooLong: @autoclosure () -> RequestRefusal) throws(RequestRefusal) -> Range<Int>? {
        let from = max(scanned, searched)
        let found = buffer.withUnsafeReadableBytes { bytes -> Int? in
            UnsafeRawBufferPointer(rebasing: bytes[from...]).firstIndex(of: UInt8(ascii: "\n")).map { from + $0 }
        }
        bytesSearched += (found.map { $0 + 1 } ?? buffer.readableBytes) - from
        guard let newline = found else {
            searched = buffer.readableBytes
            if buffer.readableBytes - scanned > maximumLength { throw tooLong() }
            return nil
        }
        guard newline > scanned, buffer.readableBytesView[buffer.readerIndex + newline - 1] == UInt8(ascii: "\r") else {
            throw RequestRefusal(.badRequest, "malformed HTTP/1.1 message: a line ends with LF without CR")
        }
        let line = scanned..<(newline - 1)
        guard line.count <= maximumLength else { throw tooLong() }
        scanned = newline + 1
        searched = scanned
        return line
    }

    /// Everything scanned, taken out of the buffer; scanning starts again at
    /// its new reader index.
    mutating func take(from buffer: inout ByteBuffer) -> ByteBuffer {
        defer {
            scanned = 0
            searched = 0
        }
        return buffer.readSlice(length: scanned) ?? ByteBuffer()
    }

    /// Drops what was scanned (blank lines before a start line).
    mutating func drop(from buffer: inout ByteBuffer) {
        buffer.moveReaderIndex(forwardBy: scanned)
        scanned = 0
        searched = 0
    }
}

/// One field line's parts, checked: the name a token, the value free of
/// control bytes but HTAB, no whitespace before the colon and no obs-fold.
struct HTTP1FieldLine {
    var name: UnsafeRawBufferPointer
    var value: UnsafeRawBufferPointer

    init(_ line: UnsafeRawBufferPointer, index: Int) throws(RequestRefusal) {
        guard let first = line.first, first != UInt8(ascii: " "), first != UInt8(ascii: "\t") else {
            throw RequestRefusal(.badRequest, "header line \(index + 1) starts with whitespace (obs-fold), which is not allowed")
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
            throw RequestRefusal(.badRequest, "header line \(index + 1) has no colon")
        }
        name = UnsafeRawBufferPointer(rebasing: line[..<colon])
        guard !name.isEmpty, name.allSatisfy(HTTPSyntax.isTokenByte) else {
            throw RequestRefusal(.badRequest, "header field \(index + 1) has a name that is not an HTTP token")
        }
        value = UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]).trimmingWhitespace
        if let control = value.first(where: { $0 == 0x7F || ($0 < 0x20 && $0 != UInt8(ascii: "\t")) }) {
            let what = control == UInt8(ascii: "\r") ? "CR" : control == 0 ? "NUL" : "control byte 0x" + String(control, radix: 16, uppercase: true)
            throw RequestRefusal(.badRequest, "header \(String(decoding: name.prefix(64), as: UTF8.self).lowercased()) has \(what) in its value")
        }
    }

    /// Whether the name is `lowercase`, in any case.
    func named(_ lowercase: StaticString) -> Bool {
        name.equalsIgnoringASCIICase(lowercase)
    }
}

/// How many fields and bytes a head (or a trailer section) may have, and what
/// it has used so far.
struct HTTP1HeadBudget {
    let limit: HTTPHeadSizeLimit
    /// What passing the limit is refused with.
    let exceeded: RequestRefusal
    private var bytes = 0
    /// Fields counted so far.
    private(set) var fields = 0
    /// Bytes of the section as received, line ends and spacing included.
    private var received = 0

    /// A request's head or trailers, refused with 431 past `limit`; another
    /// section says how in `exceeded`.
    init(_ limit: HTTPHeadSizeLimit, exceeded: RequestRefusal? = nil) {
        self.limit = limit
        self.exceeded = exceeded
            ?? RequestRefusal(.requestHeaderFieldsTooLarge, "request head is over \(limit.maximumBytes) bytes or \(limit.maximumFields) fields")
    }

    /// A fresh budget for the next section of the same kind.
    var renewed: HTTP1HeadBudget { HTTP1HeadBudget(limit, exceeded: exceeded) }

    /// The longest line that may arrive: past it, refused before its end.
    var maximumLineLength: Int { limit.maximumBytes + Self.allowancePerLine }

    /// Spacing, separators and line ends a line may add beyond what counts.
    static let allowancePerLine = 64

    /// Counts a line of `lineLength` bytes carrying `counted` bytes of target,
    /// name or value, and a field if it is one. The counted bytes are what the
    /// limit names; the whole section may be larger only by a little spacing
    /// per line, so padding cannot make the agent buffer more.
    mutating func add(lineLength: Int, counted: Int, isField: Bool) throws(RequestRefusal) {
        bytes += counted
        received += lineLength + 2
        if isField { fields += 1 }
        guard bytes <= limit.maximumBytes, fields <= limit.maximumFields,
            received <= limit.maximumBytes + (limit.maximumFields + 1) * Self.allowancePerLine
        else { throw exceeded }
    }
}

extension UnsafeRawBufferPointer {
    var trimmingWhitespace: UnsafeRawBufferPointer {
        let isWhitespace = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let first = firstIndex(where: { !isWhitespace($0) }), let last = lastIndex(where: { !isWhitespace($0) }) else {
            return UnsafeRawBufferPointer(rebasing: self[startIndex..<startIndex])
        }
        return UnsafeRawBufferPointer(rebasing: self[first...last])
    }

    /// Whether these bytes are `lowercase` in any case (ASCII).
    func equalsIgnoringASCIICase(_ lowercase: StaticString) -> Bool {
        guard count == lowercase.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        return zip(self, expected).allSatisfy { byte, lower in
            byte == lower || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") && byte | 0x20 == lower)
        }
    }

    /// The bytes as a string with ASCII letters lowercased (header names).
    var asciiLowercased: String {
        String(unsafeUninitializedCapacity: count) { output in
            for (index, byte) in enumerated() {
                output[index] = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            }
            return count
        }
    }

    /// A chunk-size line's size: hexadecimal digits (no sign: `Int(_:radix:)`
    /// would take "-a" for -10), then maybe `;` and extensions.
    var chunkSize: Int? {
        let digits = UnsafeRawBufferPointer(rebasing: self[..<(firstIndex(of: UInt8(ascii: ";")) ?? endIndex)]).trimmingWhitespace
        guard !digits.isEmpty, digits.count <= 15 else { return nil }
        var size = 0
        for byte in digits {
            guard let value = HTTPSyntax.hexValue(byte) else { return nil }
            size = size << 4 | Int(value)
        }
        return size
    }

    /// A non-negative decimal number of at most 18 digits (a length).
    var decimal: Int? {
        guard !isEmpty, count <= 18 else { return nil }
        var value = 0
        for byte in self {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }
}
