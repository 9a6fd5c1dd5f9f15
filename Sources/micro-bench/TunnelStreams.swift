import EmbeddedLinks
import NIOCore
import NIOEmbedded
import NIOHTTP2
import Proxy

/// One HBONE tunnel stream opened and closed on an established HTTP/2
/// connection: the client sends the CONNECT, the server answers 200, then each
/// side ends its half of the stream. Then a 1-byte round trip on a stream that
/// stays open. Both ends run the product's tunnel connection (frame codec and
/// stream table) on in-memory channels, without sockets or TLS.
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
    private let clientStreams: TunnelStreams
    private let destination: SocketAddress

    init() throws {
        destination = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
        // As TunnelClient's pooled connections and TunnelServer's peer
        // connections, less TLS (and, on the server, the idle monitor).
        clientStreams = try HBONE.configureConnection(
            link.client.pipeline.syncOperations, role: .client, maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection)
        let tally = self.tally
        _ = try HBONE.configureConnection(link.server.pipeline.syncOperations, role: .server { stream, request in
            // As the tunnel server does once the workload's connection is up.
            stream.closeFuture.assumeIsolated().whenComplete { _ in tally.closed += 1 }
            guard !request.endStream, case .success = HBONE.target(of: request.headers) else {
                tally.failed("the server got a stream that did not start with a tunnel CONNECT: \(request)")
                stream.close(promise: nil)
                return
            }
            stream.respond(.ok, endStream: false)
            do {
                try stream.pipeline.syncOperations.addHandler(TunnelAnswerer(tally: tally))
                try stream.startReading()
            } catch {
                tally.failed("cannot read the server stream: \(error)")
            }
        }, maximumConcurrentStreams: HBONE.defaultMaximumStreamsPerConnection)
        // The prefaces and SETTINGS: after this the connection is established.
        try link.connect()
    }

    /// Opens one stream with the tunnel client's own code, ends it from both
    /// sides once it is answered, and returns whether it was answered 200 and
    /// both its ends closed.
    func openAndCloseStream() throws -> Bool {
        let answeredBefore = tally.answered
        let closedBefore = tally.closed
        let opened = clientStreams.openStream(to: destination, timeout: .seconds(10), eventLoop: link.loop)
        opened.assumeIsolated().whenComplete { [tally] result in
            switch result {
            case .success(let stream):
                // openStream succeeds only once the answer was 200.
                tally.answered += 1
                stream.closeFuture.assumeIsolated().whenComplete { _ in tally.closed += 1 }
                // As the outbound proxy does once the stream is spliced: read
                // it, and end it when the workload's client half-closes.
                do {
                    try stream.syncOptions?.setOption(.autoRead, value: true)
                } catch {
                    tally.failed("cannot read the client stream: \(error)")
                }
                stream.close(mode: .output, promise: nil)
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
        let opened = clientStreams.openStream(to: destination, timeout: .seconds(10), eventLoop: link.loop)
        try link.exchangeUntilQuiet()
        let stream = try opened.wait()
        try stream.pipeline.syncOperations.addHandler(EchoCounter(tally: tally))
        try stream.syncOptions?.setOption(.autoRead, value: true)
        return stream
    }

    /// Writes `bytes` (one byte unless told) on `stream` and returns whether
    /// they all came back.
    func roundTrip(on stream: Channel, _ bytes: ByteBuffer = ByteBuffer(bytes: [0x2A])) throws -> Bool {
        let before = tally.echoed
        stream.writeAndFlush(bytes, promise: nil)
        try link.exchangeUntilQuiet()
        return tally.echoed == before + bytes.readableBytes
    }
}

/// The server end of one tunnel stream: echoes what it reads when asked to,
/// and ends its half of the stream when the client ends its.
final class TunnelAnswerer: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let tally: StreamTally

    init(tally: StreamTally) {
        self.tally = tally
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if tally.echoes {
            context.writeAndFlush(data, promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(mode: .output, promise: nil)
        }
    }
}

/// Counts the bytes that come back on the client end of a round-trip stream.
final class EchoCounter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let tally: StreamTally

    init(tally: StreamTally) {
        self.tally = tally
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        tally.echoed += unwrapInboundIn(data).readableBytes
    }
}
