import Foundation
import NIOCore
import NIOPosix
import NIOTLS
@testable import TLS

/// What one side of a socket test saw, reported when its channel closed.
struct PeerReport: Sendable {
    var receivedBytes = 0
    var receivedDigest = ""
    /// The first 64 KiB received, as text.
    var receivedText = ""
    var sentBytes = 0
    var sentDigest = ""
    var errors: [TLSError] = []
    var otherErrors: [String] = []
    var peerIdentity: SpiffeID?
    var negotiatedProtocol: String?
    var handshakeCompleted = false
    var inputClosed = false
}

/// Sends `sendBytes` in 1 MiB chunks (each written and flushed) and then closes
/// its output; hashes everything it receives. The initiator sends as soon as the
/// handshake completes, the responder once the peer has finished (inputClosed).
/// Reports when the channel closes.
final class BulkPeer: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let chunkSize = 1 << 20
    static let block = testBytes(chunkSize, seed: 42)

    let sendBytes: Int
    let initiator: Bool
    let report: EventLoopPromise<PeerReport>
    private var state = PeerReport()
    private let received = SHA256Hasher()
    private let sent = SHA256Hasher()
    private var started = false

    init(sendBytes: Int, initiator: Bool, report: EventLoopPromise<PeerReport>) {
        self.sendBytes = sendBytes
        self.initiator = initiator
        self.report = report
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received.update(unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            state.handshakeCompleted = true
            state.negotiatedProtocol = negotiated
            if initiator { send(context: context) }
        } else if let event = event as? TLSPeerIdentityEvent {
            state.peerIdentity = event.peerIdentity
        } else if let event = event as? ChannelEvent, event == .inputClosed {
            state.inputClosed = true
            if !initiator { send(context: context) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func send(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        var remaining = sendBytes
        var index: UInt64 = 0
        while remaining > 0 {
            var chunk = Self.block
            let size = min(remaining, Self.chunkSize)
            chunk.moveWriterIndex(to: size)
            if size >= 8 { chunk.setInteger(index, at: 0) }
            sent.update(chunk)
            context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
            remaining -= size
            index += 1
        }
        context.close(mode: .output, promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? TLSError {
            state.errors.append(error)
        } else {
            state.otherErrors.append("\(error)")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.receivedBytes = received.count
        state.receivedDigest = received.finish()
        state.sentBytes = sent.count
        state.sentDigest = sent.finish()
        report.succeed(state)
        context.fireChannelInactive()
    }
}

/// Records errors and the handshake on a channel, and reports when it closes.
final class ReportingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let report: EventLoopPromise<PeerReport>?
    let onClose: (@Sendable (PeerReport) -> Void)?
    private var state = PeerReport()
    private let received = SHA256Hasher()
    /// Bytes to send when the handshake completes.
    let greeting: ByteBuffer?

    let onRead: (@Sendable (Int) -> Void)?

    /// Writes back what it reads.
    let echo: Bool
    /// Asks for one read when the handshake completes (for channels without autoRead).
    var readOnHandshake = false

    init(report: EventLoopPromise<PeerReport>? = nil, greeting: ByteBuffer? = nil, echo: Bool = false,
         onRead: (@Sendable (Int) -> Void)? = nil, onClose: (@Sendable (PeerReport) -> Void)? = nil) {
        self.report = report
        self.echo = echo
        self.greeting = greeting
        self.onRead = onRead
        self.onClose = onClose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received.update(buffer)
        if state.receivedText.utf8.count < 65_536 {
            state.receivedText += String(buffer: buffer)
        }
        if echo { context.writeAndFlush(data, promise: nil) }
        onRead?(received.count)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            state.handshakeCompleted = true
            state.negotiatedProtocol = negotiated
            if let greeting { context.writeAndFlush(NIOAny(greeting), promise: nil) }
            if readOnHandshake { context.read() }
        } else if let event = event as? TLSPeerIdentityEvent {
            state.peerIdentity = event.peerIdentity
        } else if let event = event as? ChannelEvent, event == .inputClosed {
            state.inputClosed = true
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? TLSError {
            state.errors.append(error)
        } else {
            state.otherErrors.append("\(error)")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.receivedBytes = received.count
        state.receivedDigest = received.finish()
        report?.succeed(state)
        onClose?(state)
    }
}

/// Sits between the socket and TLSHandler so a test can end TCP without TLS
/// knowing (no close_notify): `context.close` from here skips TLSHandler.
final class RawCloser: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var context: ChannelHandlerContext?
    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func closeTCP() {
        context?.close(promise: nil)
    }
}

enum SocketHarness {
    /// A TLS server on 127.0.0.1 (any free port): TLSHandler, then `handlers()`.
    static func startServer(
        group: EventLoopGroup, context: TLSContext, allowHalfClosure: Bool = true, autoRead: Bool = true,
        handlers: @escaping @Sendable () -> [any ChannelHandler]
    ) throws -> Channel {
        try ServerBootstrap(group: group)
            .childChannelOption(.autoRead, value: autoRead)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: allowHalfClosure)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context))
                    try channel.pipeline.syncOperations.addHandlers(handlers())
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    /// A TLS client to `port`: `below` (between socket and TLS), TLSHandler, `above`.
    static func connect(
        group: EventLoopGroup, port: Int, context: TLSContext, allowHalfClosure: Bool = true,
        below: @escaping @Sendable () -> [any ChannelHandler] = { [] },
        above: @escaping @Sendable () -> [any ChannelHandler]
    ) -> EventLoopFuture<Channel> {
        ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: allowHalfClosure)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(below())
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context, serverName: "server.example.org"))
                    try channel.pipeline.syncOperations.addHandlers(above())
                }
            }
            .connect(host: "127.0.0.1", port: port)
    }

    /// A plain TCP client (no TLS) that reports when the server closes it.
    static func connectRaw(group: EventLoopGroup, port: Int, closed: @escaping @Sendable () -> Void) -> EventLoopFuture<Channel> {
        ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.closeFuture.whenComplete { _ in closed() }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .connect(host: "127.0.0.1", port: port)
    }
}

extension EventLoopFuture where Value: Sendable {
    /// Waits at most `seconds`, so a broken test fails instead of hanging.
    func wait(seconds: Int64) throws -> Value {
        let bounded = eventLoop.makePromise(of: Value.self)
        let timer = eventLoop.scheduleTask(in: .seconds(seconds)) {
            bounded.fail(ChannelError.connectTimeout(.seconds(seconds)))
        }
        self.cascade(to: bounded)
        defer { timer.cancel() }
        return try bounded.futureResult.wait()
    }
}
