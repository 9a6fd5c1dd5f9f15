import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The listening sockets of one listener: bound together, closed together.
final class ListenerSet: Sendable {
    private let channels = NIOLockedValueBox<[Channel]>([])
    let name: String

    init(name: String) {
        self.name = name
    }

    /// Binds a listener on every address, each accepted connection handed to
    /// `accept` with the options the splice relies on (half-close, no Nagle, the
    /// proxies' receive buffers), and says so in the log.
    func bind(
        group: EventLoopGroup, addresses: [String], port: UInt16, logger: Logger,
        accept: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws {
        try await bind(addresses: addresses, port: port, warn: { logger.warning("\($0)") }) {
            ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 4096)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.recvAllocator, value: Dialer.receiveBuffers)
                .childChannelInitializer(accept)
        }
        logger.info("\(name) listener ready on port \(port)")
    }

    /// Binds a bootstrap from `makeBootstrap` on every address. IPv6 sockets are
    /// IPv6-only, so `0.0.0.0` and `::` can both be bound and IPv4 peers keep
    /// IPv4 addresses. An IPv6 address that cannot be bound (a host without IPv6)
    /// is skipped once another address is bound.
    private func bind(addresses: [String], port: UInt16, warn: (String) -> Void, makeBootstrap: () -> ServerBootstrap) async throws {
        var bound: [Channel] = []
        for address in addresses {
            do {
                var bootstrap = makeBootstrap()
                if address.contains(":") {
                    bootstrap = bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
                }
                bound.append(try await bootstrap.bind(host: address, port: Int(port)).get())
            } catch where address.contains(":") && !bound.isEmpty {
                warn("\(name) listener not bound on [\(address)]:\(port): \(error); IPv6 connections will not reach it")
            } catch {
                for channel in bound { try? await channel.close() }
                throw ProxyError.cannotListen(address: address, port: port, underlying: "\(error)")
            }
        }
        channels.withLockedValue { $0 = bound }
    }

    func close() async {
        for channel in channels.withLockedValue({ channels in defer { channels = [] }; return channels }) {
            try? await channel.close()
        }
    }
}
