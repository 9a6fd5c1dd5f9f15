import NIOCore
import NIOHPACK
import NIOHTTP2
import Proxy

/// The prototype of a tunnel without a child channel per stream: both ends run
/// swift-nio-http2's connection handler (frame codec, HPACK, connection state
/// machine, flow control and its DoS limits) in frame mode, and one handler
/// behind it keeps a table of streams. It measures the floor of that design
/// against the stream-channel one, with the same settings and the same
/// CONNECT/200/END_STREAM exchange.
final class FrameLevelTunnel {
    private let link = InMemoryLink()
    private let clientStreams: StreamTable
    private let serverStreams: StreamTable
    private let destination: SocketAddress

    init() throws {
        destination = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
        clientStreams = StreamTable(role: .client)
        serverStreams = StreamTable(role: .server)
        let connection = HBONE.connectionConfiguration(maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection)
        try link.client.pipeline.syncOperations.addHandler(NIOHTTP2Handler(mode: .client, connectionConfiguration: connection))
        try link.client.pipeline.syncOperations.addHandler(clientStreams)
        try link.server.pipeline.syncOperations.addHandler(NIOHTTP2Handler(mode: .server, connectionConfiguration: connection))
        try link.server.pipeline.syncOperations.addHandler(serverStreams)
        try link.connect()
    }

    /// Opens one stream, has it answered 200, ends it from both sides, and
    /// returns whether both tables saw it open and then forgot it.
    func openAndCloseStream() throws -> Bool {
        let answeredBefore = clientStreams.answered
        let id = clientStreams.open(to: destination)
        try link.exchangeUntilQuiet()
        guard clientStreams.answered == answeredBefore + 1 else { return false }
        clientStreams.endOutput(of: id)
        try link.exchangeUntilQuiet()
        return clientStreams.isEmpty && serverStreams.isEmpty
    }

    /// Opens a stream for round trips and returns its id.
    func openStreamForRoundTrips() throws -> HTTP2StreamID {
        let id = clientStreams.open(to: destination)
        serverStreams.echoes = true
        try link.exchangeUntilQuiet()
        return id
    }

    /// Sends one byte on `stream`; the server end echoes it. Returns whether the
    /// byte came back.
    func roundTrip(on stream: HTTP2StreamID) throws -> Bool {
        let before = clientStreams.bytesReceived
        clientStreams.send(ByteBuffer(bytes: [0x2A]), on: stream)
        try link.exchangeUntilQuiet()
        return clientStreams.bytesReceived == before + 1
    }
}

/// One end's streams: id → where the stream stands. What the product's
/// multiplexer would also hold per stream (the workload channel, its window)
/// is reduced here to the window's consumed bytes.
private final class StreamTable: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    enum Role { case client, server }

    struct Stream {
        var sentEnd = false
        var receivedEnd = false
        /// Bytes received since the last WINDOW_UPDATE.
        var unacknowledged = 0
    }

    private let role: Role
    private var streams: [HTTP2StreamID: Stream] = [:]
    private var nextStreamID = HTTP2StreamID(1)
    /// Bytes received on all streams since the last connection WINDOW_UPDATE.
    private var connectionUnacknowledged = 0
    private var context: ChannelHandlerContext?
    var answered = 0
    var bytesReceived = 0
    var echoes = false

    init(role: Role) {
        self.role = role
    }

    var isEmpty: Bool { streams.isEmpty }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        // Without a stream multiplexer the connection's window is ours to keep:
        // raise it from the protocol's 64 KiB to the tunnel's 16 MiB at once.
        let raise = HBONE.connectionWindow - 65_535
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: raise))), promise: nil)
        context.fireChannelActive()
    }

    func open(to destination: SocketAddress) -> HTTP2StreamID {
        let id = nextStreamID
        nextStreamID = id.advanced(by: 2)
        streams[id] = Stream()
        let request = HTTP2Frame(streamID: id, payload: .headers(.init(headers: [":method": "CONNECT", ":authority": destination.authority])))
        context?.writeAndFlush(wrapOutboundOut(request), promise: nil)
        return id
    }

    func send(_ bytes: ByteBuffer, on id: HTTP2StreamID) {
        context?.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(bytes))))), promise: nil)
    }

    func endOutput(of id: HTTP2StreamID) {
        guard var stream = streams[id], !stream.sentEnd else { return }
        stream.sentEnd = true
        streams[id] = stream
        context?.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .headers(let headers):
            switch role {
            case .server:
                guard case .success = HBONE.target(of: headers.headers) else {
                    context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .rstStream(.refusedStream))), promise: nil)
                    return
                }
                streams[frame.streamID] = Stream()
                context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .headers(.init(headers: HBONE.response(status: .ok))))), promise: nil)
            case .client:
                if HBONE.status(of: headers.headers) == 200 { answered += 1 }
            }
        case .data(let payload):
            guard var stream = streams[frame.streamID] else { return }
            if case .byteBuffer(let buffer) = payload.data, buffer.readableBytes > 0 {
                bytesReceived += buffer.readableBytes
                stream.unacknowledged += buffer.readableBytes
                if stream.unacknowledged >= HBONE.streamWindow / 2 {
                    context.write(wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .windowUpdate(windowSizeIncrement: stream.unacknowledged))), promise: nil)
                    stream.unacknowledged = 0
                }
                connectionUnacknowledged += buffer.readableBytes
                if connectionUnacknowledged >= HBONE.connectionWindow / 2 {
                    context.write(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionUnacknowledged))), promise: nil)
                    connectionUnacknowledged = 0
                }
                if echoes {
                    context.write(wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .data(.init(data: .byteBuffer(buffer))))), promise: nil)
                }
            }
            streams[frame.streamID] = stream
            if payload.endStream {
                streams[frame.streamID]?.receivedEnd = true
                endOutput(of: frame.streamID)
            }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The connection handler says when a stream is closed for good (both
        // END_STREAMs, or a reset): the table forgets it then.
        if let closed = event as? StreamClosedEvent {
            streams[closed.streamID] = nil
        }
        context.fireUserInboundEventTriggered(event)
    }
}
