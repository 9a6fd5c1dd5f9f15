import NIOCore
import NIOEmbedded
import NIOHTTP2

/// Two in-memory channels on one event loop, joined: the bytes each end
/// writes are handed to the other as it reads them. For the tunnel's tests
/// and micro-benchmarks, where both ends of a connection run in one process.
public final class InMemoryLink {
    public let loop = EmbeddedEventLoop()
    public let client: EmbeddedChannel
    public let server: EmbeddedChannel

    public init() {
        client = EmbeddedChannel(loop: loop)
        server = EmbeddedChannel(loop: loop)
    }

    /// Makes both ends active and lets them exchange what they send first.
    public func connect() throws {
        let address = try SocketAddress(ipAddress: "10.77.0.1", port: 15008)
        client.connect(to: address, promise: nil)
        server.connect(to: address, promise: nil)
        try exchangeUntilQuiet()
    }

    /// Hands each end's output to the other until neither has anything to send.
    public func exchangeUntilQuiet() throws {
        var moved = true
        while moved {
            loop.run()
            moved = try forward(from: client, to: server)
            moved = try forward(from: server, to: client) || moved
        }
    }

    private func forward(from sender: EmbeddedChannel, to receiver: EmbeddedChannel) throws -> Bool {
        var moved = false
        while let bytes = try sender.readOutbound(as: ByteBuffer.self) {
            try receiver.writeInbound(bytes)
            moved = true
        }
        // Connection-level frames (SETTINGS, their ACKs) that reach the end of
        // the pipeline are read by nothing there: drop them.
        while try receiver.readInbound(as: HTTP2Frame.self) != nil {}
        return moved
    }
}
