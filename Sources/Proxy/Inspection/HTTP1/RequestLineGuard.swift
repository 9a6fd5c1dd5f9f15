import NIOCore
import NIOHTTP1

/// What to make of the bytes of a request line as they arrive, before the
/// HTTP/1.1 decoder sees them.
///
/// llhttp takes `GET /` followed by a line end, with no version, for the
/// start of an HTTP/0.9 request and waits for more; a client that sent just
/// that waits for an answer, and both wait until a timeout. A request line is
/// `METHOD SP target SP HTTP/x.y`, so one that ends without " HTTP/" can be
/// refused as soon as its end arrives.
///
/// Only a connection's first request line is read here: that is where an
/// HTTP/0.9 client (one request per connection) speaks, and where the bytes
/// of a request line are known exactly. Later requests begin wherever the
/// decoder's framing says; a version-less line there meets the idle timeout,
/// and is never forwarded either.
struct RequestLineScan {
    enum Verdict: Equatable {
        /// Keep passing bytes on; the line has not ended yet, or is fine.
        case pass
        /// The line ended without an HTTP version: `METHOD target`, HTTP/0.9.
        case noVersion
        /// The line ended and is not a request line at all.
        case malformed
    }

    private static let versionMarker = Array(" HTTP/".utf8)

    /// Whether the first request line is still being read; after it,
    /// everything passes unread.
    private(set) var scanning = true
    private var line: [UInt8] = []
    /// Lines longer than this are the decoder's to refuse (431).
    let maximumLength: Int

    init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    /// The next bytes from the client.
    mutating func next(_ bytes: UnsafeRawBufferPointer) -> Verdict {
        guard scanning else { return .pass }
        for byte in bytes {
            guard byte != UInt8(ascii: "\n") else {
                var content = line[...]
                if content.last == UInt8(ascii: "\r") { content = content.dropLast() }
                line.removeAll(keepingCapacity: true)
                // Empty lines before a request line are allowed (RFC 9112 §2.2).
                if content.isEmpty { continue }
                scanning = false
                if content.firstRange(of: Self.versionMarker) != nil { return .pass }
                // HTTP/0.9 is a method, one space and a target; anything else is not HTTP.
                let parts = content.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
                return parts.count == 2 && !parts[0].isEmpty && parts[1].first == UInt8(ascii: "/") ? .noVersion : .malformed
            }
            line.append(byte)
            if line.count > maximumLength {
                scanning = false
                line = []
                return .pass
            }
        }
        return .pass
    }
}

/// Sits before the HTTP/1.1 request decoder and refuses a first request line
/// that has no HTTP version as soon as it ends, where the decoder would wait
/// (`RequestLineScan`), then leaves the pipeline.
final class RequestLineGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var scan: RequestLineScan
    private var refused = false

    init(limit: HTTPHeadSizeLimit) {
        scan = RequestLineScan(maximumLength: limit.maximumBytes)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        let buffer = unwrapInboundIn(data)
        let verdict = buffer.withUnsafeReadableBytes { scan.next($0) }
        guard verdict == .pass else {
            refused = true
            // The gate answers these as the decoder's own errors would be:
            // 505 for a missing version, 400 for a line that is not a request line.
            context.fireErrorCaught(verdict == .noVersion ? HTTPParserError.invalidVersion : HTTPParserError.invalidConstant)
            return
        }
        context.fireChannelRead(data)
        if !scan.scanning {
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}
