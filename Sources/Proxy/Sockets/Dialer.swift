import LinuxNet
import NIOCore
import NIOPosix

/// Opens the agent's own connections: marked with `SO_MARK` so the capture rules
/// let them pass, with the options the splice relies on, on the event loop of the
/// connection they serve (spliced channels must share a loop).
struct Dialer: Sendable {
    var mark: UInt32
    var connectTimeout: TimeAmount
    /// For a workload in a namespace of its own: its connections leave from
    /// there, with its address as the source (the node's table never sees them).
    var namespace: SocketNamespace?

    /// Connects to `destination`; `initialize` sets up the new channel's pipeline
    /// before any byte can arrive on it.
    func connect(
        to destination: SocketAddress, on eventLoop: EventLoop,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        guard let namespace else {
            return bootstrap(on: eventLoop, initialize: initialize).connect(to: destination)
        }
        // The bootstrap makes the socket on the calling thread, then connects on
        // the event loop: only the first part needs the namespace.
        let promise = eventLoop.makePromise(of: Channel.self)
        namespace.thread.run(in: namespace.handle, { bootstrap(on: eventLoop, initialize: initialize).connect(to: destination) }) { result in
            switch result {
            case .success(let connecting): connecting.cascade(to: promise)
            case .failure(let error): promise.fail(error)
            }
        }
        return promise.futureResult
    }

    private func bootstrap(on eventLoop: EventLoop, initialize: @escaping @Sendable (Channel) throws -> Void) -> ClientBootstrap {
        ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_MARK)), value: Int(CInt(bitPattern: mark)))
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: Self.receiveBuffers)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try initialize(channel) }
            }
    }

    /// Bulk transfers read up to 256 KiB per syscall (NIO's default stops at
    /// 64 KiB); the buffer grows only while reads fill it, so idle and chatty
    /// connections keep small ones.
    static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16 * 1024, maximum: 256 * 1024)
}
