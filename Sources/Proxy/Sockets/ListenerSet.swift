import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The listening sockets of one listener: bound together, closed together.
/// The sockets come from `ListeningSockets`, which may have them from the
/// process before this one.
package final class ListenerSet: Sendable {
    private let channels = NIOLockedValueBox<[Channel]>([])
    package let name: String
    private let sockets: ListeningSockets

    package init(name: String, sockets: ListeningSockets) {
        self.name = name
        self.sockets = sockets
    }

    /// Binds a listener on every address, each accepted connection handed to
    /// `accept` with the options the splice relies on (half-close, no Nagle, the
    /// proxies' receive buffers), and says so in the log.
    func bind(
        group: EventLoopGroup, addresses: [String], port: UInt16, logger: Logger,
        accept: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws {
        try await bind(addresses: addresses, port: port, logger: logger) {
            ServerBootstrap(group: group)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.recvAllocator, value: Dialer.receiveBuffers)
                .childChannelInitializer(accept)
        }
        logger.info("\(name) listener ready on port \(port)")
    }

    /// Adopts a socket for every address with a bootstrap from
    /// `makeBootstrap`. An IPv6 address that cannot be bound (a host without
    /// IPv6) is skipped once another address is bound.
    package func bind(addresses: [String], port: UInt16, logger: Logger, makeBootstrap: () -> ServerBootstrap) async throws {
        var bound: [Channel] = []
        for address in addresses {
            do {
                let fd = try sockets.socket(listener: name, address: address, port: port)
                bound.append(try await makeBootstrap().withBoundSocket(fd).get())
            } catch where address.contains(":") && !bound.isEmpty {
                logger.warning("\(name) listener not bound on [\(address)]:\(port): \(error); IPv6 connections will not reach it")
            } catch {
                for channel in bound { try? await channel.close() }
                // The socket's own error already names the address and the cause.
                if error is ListeningSocketError { throw error }
                throw ProxyError.cannotListen(address: address, port: port, underlying: "\(error)")
            }
        }
        sockets.restoreBacklogs()
        channels.withLockedValue { $0 = bound }
    }

    /// Stops accepting and leaves the sockets open: connections arriving
    /// meanwhile wait in their queues (for this agent after `resume`, for the
    /// agent it hands over to, or for the next process). Closing the
    /// listening channel instead would also close the connections it accepted
    /// whose set-up (identifying the source, opening the upstream) is still
    /// running, since the event-loop library registers an accepted channel
    /// only after that.
    package func pause() async {
        await setAccepting(false)
    }

    package func resume() async {
        await setAccepting(true)
    }

    private func setAccepting(_ accepting: Bool) async {
        for channel in channels.withLockedValue({ $0 }) {
            try? await channel.setOption(.autoRead, value: accepting).get()
        }
    }

    /// Closes the listening channels: at the end of a drain, since a
    /// connection still being set up is closed with its listening channel
    /// (see `pause`).
    package func close() async {
        for channel in channels.withLockedValue({ channels in defer { channels = [] }; return channels }) {
            try? await channel.close()
        }
    }
}

public enum ProxyError: Error, CustomStringConvertible {
    case cannotListen(address: String, port: UInt16, underlying: String)

    public var description: String {
        switch self {
        case .cannotListen(let address, let port, let underlying):
            return "cannot listen on \(address.contains(":") ? "[\(address)]" : address):\(port): \(underlying)"
        }
    }
}
