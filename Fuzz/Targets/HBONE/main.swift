import FuzzSupport
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
@testable import Proxy

/// HTTP/2 frames from a tunnel peer (the preface is added here, so every
/// input is a frame sequence) into a connection set up as the tunnel server
/// sets up each peer's (`HBONE.configureConnection`, server role): each
/// stream's request is read by `HBONE.target(of:)` and answered, and an
/// accepted stream echoes what it reads, so that DATA, END_STREAM, resets and
/// window updates reach the stream table and its channels. A target it
/// accepts must be an IP literal and port that the request this agent sends
/// for it names again exactly; a reason it refuses with is logged, so it must
/// be safe to log.
Fuzzing.run { bytes in
    let channel = EmbeddedChannel()
    let streams: TunnelStreams
    do {
        streams = try HBONE.configureConnection(channel.pipeline.syncOperations, role: .server { stream, request in
            answer(stream, request)
        }, maximumConcurrentStreams: 100)
    } catch {
        fatalError("the tunnel connection cannot be set up: \(error)")
    }
    channel.connect(to: MeshFixture.workloadAddress, promise: nil)
    _ = try? channel.writeInbound(ByteBuffer(bytes: Fuzzing.http2Preface + bytes))
    channel.embeddedEventLoop.run()
    channel.close(promise: nil)
    channel.embeddedEventLoop.run()
    _ = try? channel.finish(acceptAlreadyClosed: true)
    Fuzzing.require(streams.openStreams == 0, "\(streams.openStreams) stream(s) left in the table after the connection closed")
}

/// A stream's request, answered as the tunnel server answers it: 200 for a
/// target, the refusal's status otherwise.
private func answer(_ stream: TunnelStreamChannel, _ request: HTTP2Frame.FramePayload.Headers) {
    switch HBONE.target(of: request.headers) {
    case .success(let target):
        Fuzzing.require(target.ipAddress != nil && (1...65535).contains(target.port ?? 0), "CONNECT target \(target) is not an IP address and port")
        let again = HBONE.target(of: HBONE.connectRequest(to: target))
        Fuzzing.require(again == .success(target), "the request for \(target) reads back as \(again)")
        stream.respond(.ok, endStream: false)
        do {
            try stream.pipeline.syncOperations.addHandler(Echo())
            try stream.startReading()
        } catch {
            fatalError("an accepted stream cannot read: \(error)")
        }
    case .failure(let refusal):
        Fuzzing.requireLoggable(refusal.reason, "the reason a tunnel request was refused")
        _ = stream.refuse(refusal.status)
    }
}

/// Sends back what the stream reads and ends its half when the peer ends its.
private final class Echo: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(mode: .output, promise: nil)
        }
    }
}
