import LinuxNet
import NIOCore
import NIOHPACK
import NIOHTTP2

/// HTTP/2 on an inspected connection (gRPC, or any client speaking HTTP/2 with
/// prior knowledge). The client's HTTP/2 connection ends at the agent; each of
/// its streams is decided by the same `HTTPRequestInspector` as an HTTP/1.1
/// request, and the allowed ones continue as streams of one HTTP/2 connection
/// that the agent opens to the workload on the upstream channel.
///
/// Memory stays bounded by flow control, stream by stream: a stream channel that
/// is not read sends no WINDOW_UPDATE, so its peer can have at most one window
/// of DATA waiting in it, and each side reads a stream only while the stream it
/// feeds is below its high-water mark. A stuck stream therefore holds at most one
/// window unread, plus one window and the high-water mark queued towards the
/// slow peer: 320 KiB per direction, 32 MiB for a connection with every stream
/// stuck, whatever the peers do.
enum HTTP2Inspection {
    /// The streams a client may have open at once on one connection.
    static let maximumConcurrentStreams = 100
    /// Each stream's receive window, on both connections.
    static let streamWindow = 128 * 1024
    /// The connection window: NIOHTTP2 opens it again as DATA arrives (the
    /// stream windows are what bound memory), so it is sized for throughput.
    static let connectionWindow = 4 * 1024 * 1024

    /// Puts HTTP/2 on both sides of an inspected connection: a server for the
    /// client, behind the sniffer that found the preface (which then hands it
    /// on), and a client, with prior knowledge, for the workload.
    static func install(
        client: Channel, upstream: Channel, inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit,
        received: ByteCounter, sent: ByteCounter
    ) throws {
        let connection = HTTP2ProxyConnection(
            inspector: inspector, accessLog: accessLog, limit: limit, received: received, sent: sent, eventLoop: client.eventLoop)
        let bound = NIOLoopBound(connection, eventLoop: client.eventLoop)

        // The workload's side first: the client's streams need somewhere to go.
        let upstreamOperations = upstream.pipeline.syncOperations
        try upstreamOperations.addHandler(HTTP2InputChunker())
        var workloadSettings = connectionConfiguration(limit: limit)
        workloadSettings.initialSettings.append(HTTP2Setting(parameter: .enablePush, value: 0))
        let multiplexer = try upstreamOperations.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: workloadSettings, streamConfiguration: streamConfiguration
        ) { stream in
            // Push is off; a stream the workload opens anyway has nowhere to go.
            stream.close()
        }
        let workloadWatcher = HTTP2ConnectionWatcher(side: .workload, connection: connection)
        try upstreamOperations.addHandler(workloadWatcher)
        connection.attachWorkload(multiplexer: multiplexer, watcher: workloadWatcher)

        let clientOperations = client.pipeline.syncOperations
        try clientOperations.addHandler(HTTP2InputChunker())
        _ = try clientOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connectionConfiguration(limit: limit), streamConfiguration: streamConfiguration
        ) { stream in
            // The multiplexer keeps its stream events to itself, so the client's
            // streams are counted here, where they are made: a GOAWAY must name
            // the last of them, or it cancels them.
            if let id = try? stream.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID) {
                bound.value.streamCreated(id)
            }
            return stream.eventLoop.makeCompletedFuture {
                // Reads are gated by the handler (back-pressure), as on a socket.
                try stream.syncOptions?.setOption(.autoRead, value: true)
                try stream.pipeline.syncOperations.addHandler(HTTP2RequestStream(connection: bound.value))
            }
        }
        let clientWatcher = HTTP2ConnectionWatcher(side: .client, connection: connection)
        try clientOperations.addHandler(clientWatcher)
        connection.attachClient(watcher: clientWatcher)
    }

    static func connectionConfiguration(limit: HTTPHeadSizeLimit) -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maximumConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
            // HPACK counts 32 bytes per field on top of its name and value.
            HTTP2Setting(parameter: .maxHeaderListSize, value: limit.maximumBytes + 32 * limit.maximumFields),
        ]
        configuration.targetWindowSize = connectionWindow
        return configuration
    }

    static var streamConfiguration: NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = streamWindow
        // What a stream queues for a peer whose window is shut before the other
        // side stops being read: little, so that the windows are what bound it.
        configuration.outboundBufferSizeHighWatermark = 64 * 1024
        configuration.outboundBufferSizeLowWatermark = 16 * 1024
        return configuration
    }

    /// The answer the agent gives a stream itself (403, 400, 502): plain text,
    /// which gRPC clients turn into a status from the HTTP one (403 becomes
    /// PERMISSION_DENIED).
    static func localResponse(_ response: LocalResponse) -> (HPACKHeaders, ByteBuffer) {
        let body = ByteBuffer(string: response.body)
        let headers: HPACKHeaders = [
            ":status": String(response.status.code),
            "content-type": "text/plain",
            "content-length": String(body.readableBytes),
        ]
        return (headers, body)
    }

    /// RFC 9113's name for an error code, for logs.
    static func name(of code: HTTP2ErrorCode) -> String {
        switch code {
        case .noError: return "NO_ERROR"
        case .protocolError: return "PROTOCOL_ERROR"
        case .internalError: return "INTERNAL_ERROR"
        case .flowControlError: return "FLOW_CONTROL_ERROR"
        case .settingsTimeout: return "SETTINGS_TIMEOUT"
        case .streamClosed: return "STREAM_CLOSED"
        case .frameSizeError: return "FRAME_SIZE_ERROR"
        case .refusedStream: return "REFUSED_STREAM"
        case .cancel: return "CANCEL"
        case .compressionError: return "COMPRESSION_ERROR"
        case .connectError: return "CONNECT_ERROR"
        case .enhanceYourCalm: return "ENHANCE_YOUR_CALM"
        case .inadequateSecurity: return "INADEQUATE_SECURITY"
        case .http11Required: return "HTTP_1_1_REQUIRED"
        default: return "0x" + String(code.networkCode, radix: 16)
        }
    }
}
