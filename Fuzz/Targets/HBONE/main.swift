import FuzzSupport
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
@testable import Proxy

/// HTTP/2 frames from a tunnel peer (the preface is added here, so every
/// input is a frame sequence) into a connection set up as the tunnel server
/// sets up each peer's (`HBONE.configureConnection`, server mode), each
/// stream's request read by `HBONE.target(of:)` and answered. A target it
/// accepts must be an IP literal and port that the request this agent sends
/// for it names again exactly; a reason it refuses with is logged, so it must
/// be safe to log.
Fuzzing.run { bytes in
    let channel = EmbeddedChannel()
    do {
        _ = try HBONE.configureConnection(channel.pipeline.syncOperations, mode: .server, maximumConcurrentStreams: 100) { stream in
            stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(TunnelRequestReader()) }
        }
    } catch {
        fatalError("the tunnel connection cannot be set up: \(error)")
    }
    channel.connect(to: MeshFixture.workloadAddress, promise: nil)
    _ = try? channel.writeInbound(ByteBuffer(bytes: Fuzzing.http2Preface + bytes))
    channel.embeddedEventLoop.run()
    channel.close(promise: nil)
    channel.embeddedEventLoop.run()
    _ = try? channel.finish(acceptAlreadyClosed: true)
}

/// The first frame of a stream, answered as the tunnel server answers it:
/// 200 for a target, the refusal's status otherwise.
private final class TunnelRequestReader: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered, case .headers(let request) = unwrapInboundIn(data) else { return }
        answered = true
        let status: HBONE.Status
        switch HBONE.target(of: request.headers) {
        case .success(let target):
            Fuzzing.require(target.ipAddress != nil && (1...65535).contains(target.port ?? 0), "CONNECT target \(target) is not an IP address and port")
            let again = HBONE.target(of: HBONE.connectRequest(to: target))
            Fuzzing.require(again == .success(target), "the request for \(target) reads back as \(again)")
            status = .ok
        case .failure(let refusal):
            Fuzzing.requireLoggable(refusal.reason, "the reason a tunnel request was refused")
            status = refusal.status
        }
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: HBONE.response(status: status), endStream: status != .ok))), promise: nil)
    }
}
