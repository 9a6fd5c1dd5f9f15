import CNetlink
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Asks the kernel (NETLINK_SOCK_DIAG, exact 4-tuple lookup) which cgroup a TCP
/// socket belongs to.
///
/// One lookup is one blocking request/reply round trip of a few tens of
/// microseconds, cheap enough to run on an event-loop thread once per accepted
/// connection. Safe to call from many threads at once: each call takes a netlink
/// socket from a small pool (making one if the pool is empty) and gives it back
/// afterwards, every request has its own sequence number, replies of other
/// sequences are skipped, and each receive gives up after `receiveTimeout`.
///
/// The netlink sockets see the network namespace they were made in: pass
/// `namespace` to look up sockets of another namespace.
public final class SockDiagClient: Sendable {
    /// The namespace whose sockets this client sees (nil: the caller's).
    public var namespace: NetworkNamespace? { sockets.namespace }
    /// How long one receive waits for the kernel.
    public var receiveTimeout: Duration { sockets.receiveTimeout }

    private let sockets: NetlinkSocketPool<SockDiagError>
    private let nextSequence: Atomic<UInt32>

    /// At most this many idle sockets are kept; extra ones are closed.
    public static let maxIdleSockets = NetlinkSocketPool<SockDiagError>.maxIdleSockets

    /// Makes the client and its first netlink socket, so that a missing
    /// namespace or privilege shows up here rather than on the first connection.
    public init(namespace: NetworkNamespace? = nil, receiveTimeout: Duration = .seconds(1)) throws {
        self.sockets = try NetlinkSocketPool(
            protocol: NETLINK_SOCK_DIAG, name: "NETLINK_SOCK_DIAG", namespace: namespace, receiveTimeout: receiveTimeout)
        self.nextSequence = Atomic(UInt32.random(in: 1...UInt32.max / 2))
    }

    /// The cgroup of the client socket of a connection: `source` is the client's
    /// address (for an accepted connection: the channel's remote address) and
    /// `destination` is where it connected to (for a redirected connection: the
    /// original destination, not the listener).
    public func cgroupID(ofClient source: SocketAddress, connectedTo destination: SocketAddress) throws -> CgroupID {
        guard let id = try lookup(source: source, destination: destination).cgroupID else {
            throw SockDiagError.noCgroupID
        }
        return id
    }

    /// Everything the kernel reports about the TCP socket whose local address is
    /// `source` and whose remote address is `destination`.
    public func lookup(source: SocketAddress, destination: SocketAddress) throws -> SockDiagReply {
        let sequence = nextSequence.wrappingAdd(1, ordering: .relaxed).newValue
        let request = try SockDiagMessage.request(source: source, destination: destination, sequence: sequence)
        return try sockets.exchange(request: request, sequence: sequence) {
            try SockDiagMessage.parseDatagram($0, sequence: sequence)
        }
    }

    /// The raw reply datagram to `request` (for recording test fixtures).
    func rawRoundTrip(request: [UInt8], sequence: UInt32) throws -> [UInt8] {
        try sockets.exchange(request: request, sequence: sequence) { Array($0) }
    }
}

extension SockDiagError: NetlinkPooledClientError {
    var isAnswer: Bool {
        switch self {
        case .notFound, .kernel, .noCgroupID: return true
        default: return false
        }
    }
}
