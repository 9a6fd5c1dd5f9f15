import COpenSSL
import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOTLS
@testable import TLS

// MARK: - Pipeline helpers

/// The last handler of a test pipeline: keeps what reaches it, passes nothing on
/// (so errors do not make EmbeddedChannel throw).
final class EventRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    var received = ByteBufferAllocator().buffer(capacity: 0)
    var readCount = 0
    var errors: [any Error] = []
    var handshakeCompleted: String?? = .none
    var identityEvent: TLSPeerIdentityEvent?
    var inputClosed = false
    var outputClosed = false
    var inactive = false
    /// Called for every plaintext read, after it is recorded.
    var onRead: ((ChannelHandlerContext, ByteBuffer) -> Void)?

    var tlsErrors: [TLSError] { errors.compactMap { $0 as? TLSError } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        readCount += 1
        let copy = buffer
        received.writeBuffer(&buffer)
        onRead?(context, copy)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let event as TLSUserEvent:
            if case .handshakeCompleted(let negotiated) = event { handshakeCompleted = .some(negotiated) }
        case let event as TLSPeerIdentityEvent:
            identityEvent = event
        case let event as ChannelEvent:
            if event == .inputClosed { inputClosed = true }
            if event == .outputClosed { outputClosed = true }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        errors.append(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
    }

    var didCompleteHandshake: Bool { handshakeCompleted != nil }
}

/// Sits next to the head of an EmbeddedChannel and stands in for TCP's half-close,
/// which EmbeddedChannel does not have: `close(mode: .output)` is recorded and
/// reported as NIO reports it (`ChannelEvent.outputClosed`), not turned into a
/// full close.
final class OutputShutdownInterceptor: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var outputShutdowns = 0

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        outputShutdowns += 1
        promise?.succeed(())
        context.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
    }
}

// MARK: - Two handlers talking in memory

/// A client and a server `TLSHandler`, each in its own EmbeddedChannel on one
/// EmbeddedEventLoop; `shuttle()` carries the ciphertext between them.
final class EmbeddedTLSPair {
    let loop = EmbeddedEventLoop()
    let client: EmbeddedChannel
    let server: EmbeddedChannel
    let clientTLS: TLSHandler
    let serverTLS: TLSHandler
    let clientRecorder = EventRecorder()
    let serverRecorder = EventRecorder()
    let clientShutdown = OutputShutdownInterceptor()
    let serverShutdown = OutputShutdownInterceptor()
    /// Ciphertext writes each side made (one per flush is the contract).
    private(set) var clientWrites = 0
    private(set) var serverWrites = 0

    init(clientContext: TLSContext, serverContext: TLSContext, allowHalfClosure: Bool = true) throws {
        client = EmbeddedChannel(loop: loop)
        server = EmbeddedChannel(loop: loop)
        clientTLS = TLSHandler(context: clientContext, serverName: "server.example.org")
        serverTLS = TLSHandler(context: serverContext)
        try client.pipeline.syncOperations.addHandlers([clientShutdown, clientTLS, clientRecorder])
        try server.pipeline.syncOperations.addHandlers([serverShutdown, serverTLS, serverRecorder])
        try client.syncOptions!.setOption(.allowRemoteHalfClosure, value: allowHalfClosure)
        try server.syncOptions!.setOption(.allowRemoteHalfClosure, value: allowHalfClosure)
    }

    convenience init(pki: CLITestPKI = .shared, clientALPN: [String] = ["h2"], serverALPN: [String] = ["h2"],
                     client clientIdentity: CLITestPKI.Identity = .client, server serverIdentity: CLITestPKI.Identity = .server,
                     allowHalfClosure: Bool = true) throws {
        try self.init(
            clientContext: pki.context(.client, as: clientIdentity, alpn: clientALPN),
            serverContext: pki.context(.server, as: serverIdentity, alpn: serverALPN),
            allowHalfClosure: allowHalfClosure)
    }

    deinit {
        // Close what is still open and run the loop, so NIO tears the pipelines
        // down (EmbeddedEventLoop only runs its tasks when told to).
        for channel in [client, server] {
            _ = try? channel.close().wait()
        }
        loop.run()
        try? loop.syncShutdownGracefully()
    }

    /// Makes both channels active: the client sends its ClientHello.
    func activate() throws {
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
    }

    /// Carries ciphertext both ways until neither side has anything to send.
    /// Returns the number of bytes moved.
    @discardableResult
    func shuttle() throws -> Int {
        var moved = 0
        while true {
            let toServer = try drain(client, into: server)
            let toClient = try drain(server, into: client)
            clientWrites += toServer.writes
            serverWrites += toClient.writes
            moved += toServer.bytes + toClient.bytes
            if toServer.writes == 0 && toClient.writes == 0 { return moved }
        }
    }

    func activateAndHandshake() throws {
        try activate()
        try shuttle()
    }

    /// Takes what `from` wrote and feeds it to `to`, write by write.
    private func drain(_ from: EmbeddedChannel, into to: EmbeddedChannel) throws -> (writes: Int, bytes: Int) {
        var writes = 0
        var bytes = 0
        while let buffer = try from.readOutbound(as: ByteBuffer.self) {
            writes += 1
            bytes += buffer.readableBytes
            if to.isActive {
                try to.writeInbound(buffer)
            }
        }
        return (writes, bytes)
    }

    /// Ciphertext `from` wrote, taken out without delivering it.
    func takeOutbound(_ from: EmbeddedChannel) throws -> [ByteBuffer] {
        var result: [ByteBuffer] = []
        while let buffer = try from.readOutbound(as: ByteBuffer.self) { result.append(buffer) }
        return result
    }
}

// MARK: - Data

/// `count` bytes of a fixed pseudo-random pattern, different for each `seed`.
func testBytes(_ count: Int, seed: UInt64 = 1) -> ByteBuffer {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var buffer = ByteBufferAllocator().buffer(capacity: count)
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { space in
        var index = 0
        while index < count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            var word = state
            withUnsafeBytes(of: &word) { bytes in
                let take = min(8, count - index)
                space.baseAddress!.advanced(by: index).copyMemory(from: bytes.baseAddress!, byteCount: take)
            }
            index += 8
        }
        return count
    }
    return buffer
}

/// SHA-256 through OpenSSL, fed piece by piece.
final class SHA256Hasher {
    private let context: OpaquePointer
    private(set) var count = 0

    init() {
        context = EVP_MD_CTX_new()!
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    func update(_ buffer: ByteBuffer) {
        count += buffer.readableBytes
        buffer.withUnsafeReadableBytes { _ = EVP_DigestUpdate(context, $0.baseAddress, $0.count) }
    }

    func finish() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}

// MARK: - Threads

/// A value shared between event loops and the test.
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    var current: Value { withLock { $0 } }
}

/// Polls `condition` until it holds or `timeout` passes.
func waitUntil(timeout: TimeInterval = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
func freeLocalPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
