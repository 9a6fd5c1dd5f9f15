import CNetlink
import NIOCore
import Synchronization

/// Asks the kernel's connection tracking (ctnetlink, `NETLINK_NETFILTER`)
/// where a redirected connection really came from.
///
/// A redirected connection's reply tuple is (listener → client). When two
/// connections would share one — a client reusing a source port for a second
/// destination while conntrack still holds the first, or two ephemeral ports
/// colliding that way — NAT gives the second one another source port, and the
/// accepted socket's peer address is then not the client socket's address, so
/// sock_diag cannot find the client. The conntrack entry still records the
/// client's real address in its original tuple: look it up by the reply tuple
/// (accepted socket's local address → its remote address) and retry sock_diag
/// with the original source.
///
/// One lookup is one blocking request/reply round trip on a pooled netlink
/// socket; threading, pooling and timeouts are as for `SockDiagClient`. Needs
/// CAP_NET_ADMIN in the namespace and a kernel with ctnetlink
/// (`nf_conntrack_netlink`, CONFIG_NF_CT_NETLINK).
///
/// The netlink sockets see the conntrack table of the network namespace they
/// were made in: pass `namespace` to look up connections of another namespace.
public final class ConntrackClient: Sendable {
    /// The namespace whose connections this client sees (nil: the caller's).
    public var namespace: NetworkNamespace? { sockets.namespace }
    /// How long one receive waits for the kernel.
    public var receiveTimeout: Duration { sockets.receiveTimeout }

    private let sockets: NetlinkSocketPool<ConntrackError>
    private let nextSequence: Atomic<UInt32>

    /// Makes the client and its first netlink socket, and checks with one lookup
    /// that the kernel answers ctnetlink requests from us, so that a missing
    /// namespace, privilege or kernel module shows up here rather than on the
    /// first connection that needs it.
    public init(namespace: NetworkNamespace? = nil, receiveTimeout: Duration = .seconds(1)) throws {
        self.sockets = try NetlinkSocketPool(
            protocol: NETLINK_NETFILTER, name: "NETLINK_NETFILTER", namespace: namespace, receiveTimeout: receiveTimeout)
        self.nextSequence = Atomic(UInt32.random(in: 1...UInt32.max / 2))
        try checkAvailability()
    }

    /// The client socket's address of a redirected connection whose reply
    /// direction goes from `replySource` to `replyDestination`: for an accepted
    /// connection, its local address (the capture listener) and its remote
    /// address (the client's address as NAT left it). An IPv4 connection on a
    /// dual-stack socket (`::ffff:a.b.c.d`) gives an IPv4 address.
    ///
    /// Throws `ConntrackError.noEntry` if no tracked connection has that reply tuple.
    public func originalSource(ofReplyFrom replySource: SocketAddress, to replyDestination: SocketAddress) throws
        -> SocketAddress
    {
        try originalTuple(ofReplyFrom: replySource, to: replyDestination).source
    }

    /// The original direction (client → original destination) of the tracked TCP
    /// connection whose reply direction goes from `replySource` to `replyDestination`.
    public func originalTuple(ofReplyFrom replySource: SocketAddress, to replyDestination: SocketAddress) throws
        -> ConntrackTuple
    {
        let sequence = nextSequence.wrappingAdd(1, ordering: .relaxed).newValue
        let request = try ConntrackMessage.request(
            replySource: replySource, replyDestination: replyDestination, sequence: sequence)
        var reader = ConntrackMessage.ReplyReader(sequence: sequence)
        return try sockets.exchange(request: request, sequence: sequence) { try reader.read($0) }
    }

    /// The raw reply datagrams to `request`, up to the one that ends the exchange
    /// (for recording test fixtures).
    func rawRoundTrip(request: [UInt8], sequence: UInt32) throws -> [[UInt8]] {
        var reader = ConntrackMessage.ReplyReader(sequence: sequence)
        var datagrams: [[UInt8]] = []
        return try sockets.exchange(request: request, sequence: sequence) { bytes in
            datagrams.append(Array(bytes))
            do {
                return try reader.read(bytes) == nil ? nil : datagrams
            } catch let error as ConntrackError where error.isAnswer {
                return datagrams
            }
        }
    }

    /// Looks up a reply tuple no connection can have (0.0.0.0:0 → 0.0.0.0:0):
    /// a kernel that has ctnetlink and lets us use it answers "no entry"; any
    /// other answer says what is missing.
    private func checkAvailability() throws {
        let nowhere = try SocketAddress(ipAddress: "0.0.0.0", port: 0)
        do {
            _ = try originalTuple(ofReplyFrom: nowhere, to: nowhere)
        } catch ConntrackError.noEntry {
            return
        }
    }
}

extension ConntrackError: NetlinkPooledClientError {
    var isAnswer: Bool {
        switch self {
        case .noEntry, .kernel: return true
        default: return false
        }
    }
}
