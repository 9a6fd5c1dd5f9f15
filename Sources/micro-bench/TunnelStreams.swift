import NIOCore
import NIOEmbedded
import NIOHTTP2
import Proxy

/// One HBONE tunnel stream opened and closed on an established HTTP/2
/// connection: the client sends the CONNECT, the server answers 200, then each
/// side ends its half of the stream. Both ends run the product's HTTP/2
/// configuration on in-memory channels, without sockets or TLS.
func measureTunnelStreams() throws {
    let tunnel = try InMemoryTunnel()
    let failure = { tunnel.tally.firstFailureDescription }
    // When streams go wrong the connection gives up too (too many resets,
    // say); the first stream that went wrong tells why.
    measureEvery("HTTP/2 stream open+close", per: "stream", iterations: 20_000, counting: "answered 200 and closed", explained: failure) {
        try tunnel.openAndCloseStream()
    }
    let stream = try tunnel.openStreamForRoundTrips()
    measureEvery("HBONE hop pair 1-byte round trip", per: "round trip", iterations: 100_000, counting: "echoed", explained: failure) {
        try tunnel.roundTrip(on: stream)
    }
}

/// The same two measurements on the frame-level prototype (FrameLevelTunnel).
func measureFrameLevelTunnel() throws {
    let tunnel = try FrameLevelTunnel()
    measureEvery("frame-level stream open+close", per: "stream", iterations: 20_000, counting: "answered 200 and closed") {
        try tunnel.openAndCloseStream()
    }
    let stream = try tunnel.openStreamForRoundTrips()
    measureEvery("frame-level 1-byte round trip", per: "round trip", iterations: 100_000, counting: "echoed") {
        try tunnel.roundTrip(on: stream)
    }
}

/// What happened to the streams so far, counted on the event loop.
final class StreamTally {
    /// Client streams whose CONNECT the server answered with 200.
    var answered = 0
    /// Stream channels closed, on either end.
    var closed = 0
    /// Bytes that came back to the client on a round-trip stream.
    var echoed = 0
    /// Whether the server end sends back what it receives.
    var echoes = false
    /// What went wrong first, for the message that ends a failed run.
    private var firstFailure: String?

    func failed(_ reason: String) {
        if firstFailure == nil { firstFailure = reason }
    }

    var firstFailureDescription: String {
        firstFailure.map { "; first failure: \($0)" } ?? ""
    }
}

/// A tunnel client and a tunnel server joined in memory: the bytes each end's
/// HTTP/2 connection writes are handed to the other end as it reads them.
final class InMemoryTunnel {
    let tally = StreamTally()
    private let link = InMemoryLink()
    private var loop: EmbeddedEventLoop { link.loop }
    private let clientStreams: NIOHTTP2Handler.StreamMultiplexer
    private let destination: SocketAddress

    init() throws {
        destination = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
        // As TunnelClient's pooled connections and TunnelServer's peer
        // connections, less TLS (and, on the server, the idle monitor): streams
        // start without reading, and the first handler reads the request.
        clientStreams = try HBONE.configureConnection(
            link.client.pipeline.syncOperations, mode: .client, maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection
        ) { pushed in
            pushed.close()
        }
        let boundTally = NIOLoopBound(tally, eventLoop: loop)
        _ = try HBONE.configureConnection(
            link.server.pipeline.syncOperations, mode: .server, maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection
        ) { stream in
            stream.closeFuture.whenComplete { _ in boundTally.value.closed += 1 }
            return stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions?.setOption(.autoRead, value: false)
                try stream.pipeline.syncOperations.addHandler(TunnelAnswerer(tally: boundTally.value))
            }
        }
        // The prefaces and SETTINGS: after this the connection is established.
        try link.connect()
    }

    /// Opens one stream with the tunnel client's own code, ends it from both
    /// sides once it is answered, and returns whether it was answered 200 and
    /// both its ends closed.
    func openAndCloseStream() throws -> Bool {
        let answeredBefore = tally.answered
        let closedBefore = tally.closed
        let opened = TunnelClient.openStream(on: clientStreams, to: destination, timeout: .seconds(10), eventLoop: loop)
        opened.assumeIsolated().whenComplete { [tally] result in
            switch result {
            case .success(let stream):
                // TunnelClient succeeds only once the answer was 200.
                tally.answered += 1
                stream.closeFuture.assumeIsolated().whenComplete { _ in tally.closed += 1 }
                // As the outbound proxy does once the stream is spliced: read
                // it, and end it when the workload's client half-closes.
                do {
                    try stream.syncOptions?.setOption(.autoRead, value: true)
                } catch {
                    tally.failed("cannot read the client stream: \(error)")
                }
                stream.read()
                stream.writeAndFlush(HTTP2Frame.FramePayload.endOfStream, promise: nil)
            case .failure(let error):
                tally.failed("the client's stream failed: \(error)")
            }
        }
        try link.exchangeUntilQuiet()
        return tally.answered == answeredBefore + 1 && tally.closed == closedBefore + 2
    }

    /// Opens a stream that stays open, whose server end echoes every byte.
    func openStreamForRoundTrips() throws -> Channel {
        tally.echoes = true
        let opened = TunnelClient.openStream(on: clientStreams, to: destination, timeout: .seconds(10), eventLoop: loop)
        try link.exchangeUntilQuiet()
        let stream = try opened.wait()
        try stream.pipeline.syncOperations.addHandler(EchoCounter(tally: tally))
        try stream.syncOptions?.setOption(.autoRead, value: true)
        stream.read()
        return stream
    }

    /// Writes one byte on `stream` and returns whether it came back.
    func roundTrip(on stream: Channel) throws -> Bool {
        let before = tally.echoed
        stream.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(bytes: [0x2A])))), promise: nil)
        try link.exchangeUntilQuiet()
        return tally.echoed == before + 1
    }
}

/// The server end of one tunnel stream: answers a CONNECT with 200, as the
/// tunnel server does once the workload's connection is up, and ends its half
/// of the stream when the client ends its.
final class TunnelAnswerer: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let tally: StreamTally
    private var requestSeen = false

    init(tally: StreamTally) {
        self.tally = tally
    }

    // The stream does not read on its own until it is answered (autoRead off,
    // as on the tunnel server): these reads fetch the request.
    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { context.read() }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if !requestSeen {
            requestSeen = true
            guard case .headers(let request) = frame, !request.endStream, case .success = HBONE.target(of: request.headers) else {
                tally.failed("the server got a stream that did not start with a tunnel CONNECT: \(frame)")
                context.close(promise: nil)
                return
            }
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: HBONE.response(status: .ok)))), promise: nil)
            do {
                try context.channel.syncOptions?.setOption(.autoRead, value: true)
            } catch {
                tally.failed("cannot read the server stream: \(error)")
            }
            context.read()
            return
        }
        guard case .data(let data) = frame else { return }
        if tally.echoes, case .byteBuffer(let bytes) = data.data, bytes.readableBytes > 0 {
            context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(bytes)))), promise: nil)
        }
        if data.endStream {
            context.writeAndFlush(wrapOutboundOut(.endOfStream), promise: nil)
        }
    }
}

/// Counts the bytes that come back on the client end of a round-trip stream.
final class EchoCounter: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload

    private let tally: StreamTally

    init(tally: StreamTally) {
        self.tally = tally
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .data(let payload) = unwrapInboundIn(data), case .byteBuffer(let bytes) = payload.data {
            tally.echoed += bytes.readableBytes
        }
    }
}

extension HTTP2Frame.FramePayload {
    /// An empty DATA frame with END_STREAM: how a tunnel end says its side is done.
    static var endOfStream: HTTP2Frame.FramePayload {
        .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))
    }
}
