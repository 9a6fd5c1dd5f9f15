import NIOCore
import NIOHPACK
import NIOHTTP2
import Workloads

/// HBONE as Istio ambient speaks it: TLS 1.3 with ALPN `h2`, then one HTTP/2
/// `CONNECT` stream per tunnelled TCP connection, whose `:authority` is the
/// original destination `ip:port`. These are the protocol's rules, with no I/O.
public enum HBONE {
    public static let applicationProtocol = "h2"

    /// Streams one pooled connection carries before the pool opens another.
    public static let defaultMaximumStreamsPerConnection = 100

    /// Flow-control windows sized for throughput, as ztunnel sizes them: a stream
    /// may have 4 MiB in flight and a connection 16 MiB.
    public static let streamWindow = 4 * 1024 * 1024
    public static let connectionWindow = 16 * 1024 * 1024

    /// Adds what both ends of a tunnel run between TLS and the streams: the
    /// parser's input in record-sized pieces, one flush per event-loop tick, and
    /// HTTP/2 with the tunnel's settings. `inboundStreamInitializer` sets up the
    /// streams the peer opens.
    package static func configureConnection(
        _ operations: ChannelPipeline.SynchronousOperations, mode: NIOHTTP2Handler.ParserMode, maximumConcurrentStreams: Int,
        inboundStreamInitializer: @escaping NIOChannelInitializer
    ) throws -> NIOHTTP2Handler.StreamMultiplexer {
        try operations.addHandler(HTTP2InputChunker())
        try operations.addHandler(FlushCoalescer())
        return try operations.configureHTTP2Pipeline(
            mode: mode,
            connectionConfiguration: connectionConfiguration(maximumConcurrentStreams: maximumConcurrentStreams),
            streamConfiguration: streamConfiguration,
            inboundStreamInitializer: inboundStreamInitializer
        )
    }

    /// The HTTP/2 settings and windows both ends of a tunnel use.
    package static func connectionConfiguration(maximumConcurrentStreams: Int) -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maximumConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 16 * 1024),
        ]
        configuration.targetWindowSize = connectionWindow
        return configuration
    }

    static var streamConfiguration: NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = streamWindow
        // A splice writes up to one receive buffer (256 KiB) at a time; a stream
        // that holds a few of them keeps the connection busy without letting one
        // stream queue unbounded data behind the peer's window.
        configuration.outboundBufferSizeHighWatermark = 1024 * 1024
        configuration.outboundBufferSizeLowWatermark = 256 * 1024
        return configuration
    }

    /// The request that opens a tunnel to `destination`.
    static func connectRequest(to destination: SocketAddress) -> HPACKHeaders {
        [":method": "CONNECT", ":authority": destination.authority]
    }

    package static func response(status: Status) -> HPACKHeaders {
        [":status": String(status.rawValue)]
    }

    public enum Status: Int, Sendable {
        case ok = 200
        case badRequest = 400
        case forbidden = 403
        case serviceUnavailable = 503
    }

    /// Why the server did not open a tunnel: the answer to send and the reason to log.
    package struct Refusal: Error, Equatable {
        package var status: Status
        package var reason: String
    }

    /// The target of a tunnel request, or why it is refused. Only plain `CONNECT`
    /// (not the extended CONNECT of RFC 8441) to an IP literal and port is HBONE.
    package static func target(of request: HPACKHeaders) -> Result<SocketAddress, Refusal> {
        guard let method = request.first(name: ":method") else {
            return .failure(Refusal(status: .badRequest, reason: "request has no :method"))
        }
        guard method == "CONNECT" else {
            return .failure(Refusal(status: .badRequest, reason: "method \(method) is not CONNECT; this port only opens tunnels"))
        }
        if request.first(name: ":protocol") != nil {
            return .failure(Refusal(status: .badRequest, reason: "extended CONNECT (:protocol) is not HBONE"))
        }
        guard let authority = request.first(name: ":authority") else {
            return .failure(Refusal(status: .badRequest, reason: "CONNECT has no :authority"))
        }
        guard let target = parseAuthority(authority) else {
            return .failure(Refusal(status: .badRequest, reason: "CONNECT authority \"\(authority.prefix(80))\" is not IP:PORT"))
        }
        return .success(target)
    }

    /// `10.77.0.2:8080` or `[fd77::2]:8080`: an IP literal (never a name, so the
    /// server resolves nothing) and a port from 1 to 65535.
    static func parseAuthority(_ authority: String) -> SocketAddress? {
        // Scanned as UTF-8: every byte that matters here is ASCII, and a scan by
        // Character (grapheme breaking, Unicode digit properties) cost more than
        // the rest of opening a stream.
        let bytes = authority.utf8
        let host: Substring.UTF8View
        let port: Substring.UTF8View
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            host = authority[bytes.index(after: bytes.startIndex)..<close].utf8
            let rest = authority[bytes.index(after: close)...].utf8
            guard rest.first == UInt8(ascii: ":") else { return nil }
            port = rest.dropFirst()
            guard host.contains(UInt8(ascii: ":")) else { return nil }
        } else {
            guard let colon = bytes.lastIndex(of: UInt8(ascii: ":")) else { return nil }
            host = authority[..<colon].utf8
            port = authority[bytes.index(after: colon)...].utf8
            guard !host.contains(UInt8(ascii: ":")) else { return nil }
        }
        guard !host.isEmpty, let number = portNumber(port) else { return nil }
        return try? SocketAddress(ipAddress: String(Substring(host)), port: number)
    }

    /// A port written as 1 to 5 ASCII digits, 1...65535.
    private static func portNumber(_ digits: Substring.UTF8View) -> Int? {
        guard (1...5).contains(digits.count) else { return nil }
        var number = 0
        for byte in digits {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            number = number * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return (1...65535).contains(number) ? number : nil
    }

    /// The status of a tunnel response, if it is a well-formed one.
    package static func status(of response: HPACKHeaders) -> Int? {
        response.first(name: ":status").flatMap { Int($0) }
    }
}

public enum TunnelError: Error, CustomStringConvertible, Equatable {
    /// The destination's agent answered the CONNECT with something other than 200.
    case refused(destination: String, status: Int)
    /// The stream ended, or the connection failed, before the answer came.
    case streamClosedBeforeResponse(destination: String)
    case noResponse(destination: String, after: TimeAmount)
    /// The pooled connection to the destination's agent could not be made.
    case tunnelFailed(agent: String, reason: String)

    public var description: String {
        switch self {
        case .refused(let destination, let status):
            return "the destination's agent refused the tunnel to \(destination) with status \(status)"
        case .streamClosedBeforeResponse(let destination):
            return "the tunnel stream to \(destination) closed before the destination's agent answered"
        case .noResponse(let destination, let after):
            return "the destination's agent did not answer the tunnel request to \(destination) within \(after.nanoseconds / 1_000_000) ms"
        case .tunnelFailed(let agent, let reason):
            return "cannot reach the agent at \(agent) over mTLS: \(reason)"
        }
    }
}

/// Hands the HTTP/2 parser its input in pieces of at most one TLS record.
///
/// swift-nio-http2's frame parser appends each input buffer to the unparsed
/// remainder of the previous one. When DATA it emitted earlier still shares that
/// storage (the stream has not delivered it yet), the append copies the whole
/// storage, and a storage grown from 256 KiB reads is copied, and re-faulted in
/// from fresh pages, on every read: a tunnel then spent its CPU in memmove and
/// page faults at a fraction of the link's speed. With record-sized pieces the
/// parser's storage stays record-sized, and so does any copy.
final class HTTP2InputChunker: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    static let pieceSize = 16 * 1024

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard buffer.readableBytes > Self.pieceSize else {
            context.fireChannelRead(data)
            return
        }
        while let piece = buffer.readSlice(length: min(Self.pieceSize, buffer.readableBytes)), piece.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(piece))
        }
    }
}
