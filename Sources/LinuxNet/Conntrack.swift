import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One direction of a tracked TCP connection, as conntrack records it.
public struct ConntrackTuple: Hashable, Sendable {
    public var source: SocketAddress
    public var destination: SocketAddress

    public init(source: SocketAddress, destination: SocketAddress) {
        self.source = source
        self.destination = destination
    }
}

public enum ConntrackError: Error, Equatable, Hashable, CustomStringConvertible {
    /// The kernel tracks no connection with that reply tuple (`NLMSG_ERROR` -ENOENT).
    case noEntry
    /// The kernel answered with another error.
    case kernel(errno: Int32)
    /// The reply is shorter than what it announces or what its type requires.
    case truncated(expected: Int, actual: Int)
    /// The reply does not parse: bad lengths, unexpected type, bad or missing attribute.
    case malformed(String)
    /// The addresses cannot be described in one request (mixed families, Unix sockets).
    case unsupportedAddress(String)
    /// No reply within the receive timeout.
    case timeout
    /// A system call on the netlink socket failed.
    case system(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .noEntry:
            return "conntrack: no tracked connection has this reply tuple (the connection is already gone, was not NATed, or lives in another network namespace)"
        case .kernel(let code):
            return "conntrack: the kernel refused the lookup: \(String(cString: strerror(code)))\(Self.hint(kernel: code))"
        case .truncated(let expected, let actual):
            return "conntrack: reply truncated: needs \(expected) bytes, has \(actual)"
        case .malformed(let why):
            return "conntrack: malformed reply: \(why)"
        case .unsupportedAddress(let why):
            return "conntrack: cannot look up \(why)"
        case .timeout:
            return "conntrack: no reply from the kernel within the receive timeout"
        case .system(let operation, let code):
            let hint = code == EPROTONOSUPPORT
                ? "; the kernel has no netfilter netlink (CONFIG_NETFILTER_NETLINK, module nfnetlink)" : ""
            return "conntrack: \(operation) failed: \(String(cString: strerror(code)))\(hint)"
        }
    }

    /// What a kernel error most likely means for a ctnetlink lookup.
    private static func hint(kernel code: Int32) -> String {
        switch code {
        case EPERM, EACCES:
            return "; reading conntrack needs CAP_NET_ADMIN in the network namespace"
        case EINVAL:
            return "; the kernel probably lacks ctnetlink: load the nf_conntrack_netlink module (modprobe nf_conntrack_netlink) or build with CONFIG_NF_CT_NETLINK"
        case EOPNOTSUPP, EAFNOSUPPORT:
            return "; connection tracking for this address family is not available in the kernel"
        default:
            return ""
        }
    }
}

/// The bytes of a ctnetlink (`NFNL_SUBSYS_CTNETLINK`) lookup by reply tuple and
/// the parsing of its reply. Pure: no sockets, no globals; the parser never
/// traps on any input.
///
/// Layouts (linux/netlink.h, linux/netfilter/nfnetlink.h,
/// linux/netfilter/nfnetlink_conntrack.h), in host byte order except addresses
/// and ports:
///
/// ```
/// nlmsghdr  len u32 | type u16 | flags u16 | seq u32 | pid u32                 16 bytes
/// nfgenmsg  family u8 | version u8 (NFNETLINK_V0) | res_id be16               4 bytes
/// nlattr    len u16 | type u16 (| NLA_F_NESTED) | payload, padded to 4
///
/// request:  CTA_TUPLE_REPLY { CTA_TUPLE_IP { CTA_IP_V4_SRC, CTA_IP_V4_DST } (or V6),
///                             CTA_TUPLE_PROTO { CTA_PROTO_NUM u8, CTA_PROTO_SRC_PORT be16,
///                                               CTA_PROTO_DST_PORT be16 } }
/// reply:    IPCTNL_MSG_CT_NEW with nfgenmsg and CTA_TUPLE_ORIG, CTA_TUPLE_REPLY
///           (same shape), CTA_STATUS, ...; then NLMSG_ERROR 0 (the NLM_F_ACK).
///           No entry: only NLMSG_ERROR -ENOENT.
/// ```
public enum ConntrackMessage {
    // Constants, checked against the C headers by the tests.
    static let nfgenmsgLength = 4

    static let typeGet: UInt16 = 0x0101  // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
    static let typeNew: UInt16 = 0x0100  // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW: the entry
    static let flagRequest: UInt16 = 1  // NLM_F_REQUEST
    static let flagAck: UInt16 = 4  // NLM_F_ACK
    static let version: UInt8 = 0  // NFNETLINK_V0

    static let tupleOriginal: UInt16 = 1  // CTA_TUPLE_ORIG
    static let tupleReply: UInt16 = 2  // CTA_TUPLE_REPLY
    static let tupleIP: UInt16 = 1  // CTA_TUPLE_IP
    static let tupleProtocol: UInt16 = 2  // CTA_TUPLE_PROTO
    static let ipV4Source: UInt16 = 1  // CTA_IP_V4_SRC
    static let ipV4Destination: UInt16 = 2  // CTA_IP_V4_DST
    static let ipV6Source: UInt16 = 3  // CTA_IP_V6_SRC
    static let ipV6Destination: UInt16 = 4  // CTA_IP_V6_DST
    static let protocolNumber: UInt16 = 1  // CTA_PROTO_NUM
    static let protocolSourcePort: UInt16 = 2  // CTA_PROTO_SRC_PORT
    static let protocolDestinationPort: UInt16 = 3  // CTA_PROTO_DST_PORT

    static let protocolTCP: UInt8 = 6
    static let familyINET: UInt8 = 2
    static let familyINET6: UInt8 = 10

    // MARK: Request

    /// The lookup of the TCP connection whose reply direction goes from
    /// `replySource` to `replyDestination`. For a connection the agent accepted
    /// after a redirect, that is: `replySource` = the accepted socket's local
    /// address (the capture listener, 127.0.0.1:15001 or [::1]:15001),
    /// `replyDestination` = its remote address (the client as NAT left it).
    ///
    /// Both addresses must be of one family; an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4) counts as IPv4,
    /// and the request is then an `AF_INET` one, as the conntrack entry is.
    public static func request(replySource: SocketAddress, replyDestination: SocketAddress, sequence: UInt32) throws
        -> [UInt8]
    {
        let endpoints: SockDiagMessage.Endpoints
        do {
            endpoints = try SockDiagMessage.normalize(source: replySource, destination: replyDestination)
        } catch SockDiagError.unsupportedAddress(let why) {
            throw ConntrackError.unsupportedAddress(why)
        }
        let v4 = endpoints.family == familyINET
        let addresses = [
            attribute(v4 ? ipV4Source : ipV6Source, endpoints.sourceAddress),
            attribute(v4 ? ipV4Destination : ipV6Destination, endpoints.destinationAddress),
        ]
        let ports = [
            attribute(protocolNumber, [protocolTCP]),
            attribute(protocolSourcePort, bigEndian(endpoints.sourcePort)),
            attribute(protocolDestinationPort, bigEndian(endpoints.destinationPort)),
        ]
        let body =
            [endpoints.family, version, 0, 0]  // nfgenmsg: res_id 0
            + nested(tupleReply, [nested(tupleIP, addresses), nested(tupleProtocol, ports)])
        let length = NetlinkMessages.headerLength + body.count
        return host(UInt32(length)) + host(typeGet) + host(flagRequest | flagAck) + host(sequence)
            + host(UInt32(0))  // nlmsg_pid: 0, the kernel fills in our port id
            + body
    }

    /// One attribute: header, payload, zero padding to 4 bytes.
    private static func attribute(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        let length = 4 + payload.count
        return host(UInt16(length)) + host(type) + payload + Array(repeating: 0, count: (4 - length % 4) % 4)
    }

    /// An attribute holding `children`, flagged NLA_F_NESTED (ctnetlink requires it).
    private static func nested(_ type: UInt16, _ children: [[UInt8]]) -> [UInt8] {
        attribute(type | NetlinkAttributes.nestedFlag, children.flatMap { $0 })
    }

    private static func host<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }

    private static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        host(value.bigEndian)
    }

    // MARK: Reply

    /// Parses the reply datagrams to the request with `sequence`, in the order
    /// they arrived, and returns the connection's original tuple.
    public static func parseReply(_ datagrams: [[UInt8]], sequence: UInt32) throws -> ConntrackTuple {
        var reader = ReplyReader(sequence: sequence)
        for datagram in datagrams {
            if let original = try datagram.withUnsafeBytes({ try reader.read($0) }) { return original }
        }
        throw ConntrackError.malformed("the reply ends before the kernel's acknowledgement")
    }

    /// Reads the reply to one request datagram by datagram: the kernel sends the
    /// entry (`IPCTNL_MSG_CT_NEW`), then the acknowledgement asked for with
    /// `NLM_F_ACK`; or only an `NLMSG_ERROR`. Waiting for the acknowledgement
    /// leaves nothing of this exchange on the socket.
    struct ReplyReader {
        let sequence: UInt32
        /// The entry's original tuple, once its message was read.
        private(set) var original: ConntrackTuple?

        init(sequence: UInt32) {
            self.sequence = sequence
        }

        /// Reads one datagram. Returns the original tuple once the exchange is
        /// complete, nil if more is to come (the datagram held the entry, or
        /// only messages of other sequences: stray, late replies to skip).
        /// Throws the kernel's error (`.noEntry`, `.kernel`) or a parse error.
        mutating func read(_ bytes: UnsafeRawBufferPointer) throws(ConntrackError) -> ConntrackTuple? {
            try NetlinkMessages.first(in: bytes, sequence: sequence, as: ConntrackError.self) { (type, payload) throws(ConntrackError) in
                try read(type: type, payload: payload)
            }
        }

        private mutating func read(type: UInt16, payload: UnsafeRawBufferPointer) throws(ConntrackError) -> ConntrackTuple? {
            switch type {
            case NetlinkMessages.typeError:
                let code = try NetlinkMessages.errorCode(of: payload, as: ConntrackError.self)
                if code == 0 {
                    guard let original else {
                        throw ConntrackError.malformed("acknowledgement (NLMSG_ERROR 0) without a conntrack entry")
                    }
                    return original
                }
                if code == ENOENT { throw ConntrackError.noEntry }
                throw ConntrackError.kernel(errno: code)
            case typeNew:
                guard original == nil else {
                    throw ConntrackError.malformed("a second conntrack entry in the reply to an exact lookup")
                }
                original = try parseEntry(payload)
                return nil
            case NetlinkMessages.typeDone:
                throw ConntrackError.malformed("unexpected NLMSG_DONE for an exact lookup")
            default:
                throw ConntrackError.malformed("unexpected message type 0x\(String(type, radix: 16))")
            }
        }
    }

    /// The original tuple of an entry message (nfgenmsg, then attributes).
    private static func parseEntry(_ payload: UnsafeRawBufferPointer) throws(ConntrackError) -> ConntrackTuple {
        guard payload.count >= nfgenmsgLength else {
            throw ConntrackError.truncated(expected: nfgenmsgLength, actual: payload.count)
        }
        let family = payload[0]
        guard family == familyINET || family == familyINET6 else {
            throw ConntrackError.malformed("address family \(family) is neither AF_INET nor AF_INET6")
        }
        var original: ConntrackTuple?
        try NetlinkAttributes.forEach(
            in: UnsafeRawBufferPointer(rebasing: payload[nfgenmsgLength...]), as: ConntrackError.self
        ) { (type, value) throws(ConntrackError) in
            if type == tupleOriginal { original = try parseTuple(value, family: family) }
        }
        guard let original else { throw ConntrackError.malformed("the entry has no original tuple (CTA_TUPLE_ORIG)") }
        return original
    }

    /// A TCP tuple: CTA_TUPLE_IP { source, destination } and CTA_TUPLE_PROTO
    /// { CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT }. Attributes of
    /// unknown types (CTA_TUPLE_ZONE, newer ones) are skipped.
    private static func parseTuple(_ bytes: UnsafeRawBufferPointer, family: UInt8) throws(ConntrackError) -> ConntrackTuple {
        let v4 = family == familyINET
        let (sourceType, destinationType) = v4 ? (ipV4Source, ipV4Destination) : (ipV6Source, ipV6Destination)
        let addressLength = v4 ? 4 : 16
        var sourceAddress: [UInt8]?
        var destinationAddress: [UInt8]?
        var number: UInt8?
        var sourcePort: UInt16?
        var destinationPort: UInt16?
        try NetlinkAttributes.forEach(in: bytes, as: ConntrackError.self) { (type, value) throws(ConntrackError) in
            switch type {
            case tupleIP:
                try NetlinkAttributes.forEach(in: value, as: ConntrackError.self) { (type, value) throws(ConntrackError) in
                    switch type {
                    case sourceType: sourceAddress = try exactly(addressLength, value, "the source address")
                    case destinationType: destinationAddress = try exactly(addressLength, value, "the destination address")
                    case ipV4Source...ipV6Destination:
                        throw ConntrackError.malformed(
                            "address attribute CTA_IP \(type) in an entry of family \(v4 ? "AF_INET" : "AF_INET6")")
                    default: break
                    }
                }
            case tupleProtocol:
                try NetlinkAttributes.forEach(in: value, as: ConntrackError.self) { (type, value) throws(ConntrackError) in
                    switch type {
                    case protocolNumber: number = try exactly(1, value, "CTA_PROTO_NUM")[0]
                    case protocolSourcePort: sourcePort = port(try exactly(2, value, "CTA_PROTO_SRC_PORT"))
                    case protocolDestinationPort: destinationPort = port(try exactly(2, value, "CTA_PROTO_DST_PORT"))
                    default: break
                    }
                }
            default: break
            }
        }
        guard let sourceAddress, let destinationAddress else {
            throw ConntrackError.malformed("the original tuple lacks its \(v4 ? "IPv4" : "IPv6") addresses")
        }
        guard let number else { throw ConntrackError.malformed("the original tuple has no protocol (CTA_PROTO_NUM)") }
        guard number == protocolTCP else {
            throw ConntrackError.malformed("the original tuple is of protocol \(number), not TCP")
        }
        guard let sourcePort, let destinationPort else {
            throw ConntrackError.malformed("the original tuple lacks its ports")
        }
        return ConntrackTuple(
            source: socketAddress(sourceAddress, port: sourcePort),
            destination: socketAddress(destinationAddress, port: destinationPort))
    }

    private static func exactly(_ count: Int, _ value: UnsafeRawBufferPointer, _ name: String) throws(ConntrackError) -> [UInt8] {
        guard value.count == count else {
            throw ConntrackError.malformed("\(name) has \(value.count) bytes, expected \(count)")
        }
        return Array(value)
    }

    private static func port(_ bytes: [UInt8]) -> UInt16 {
        UInt16(bytes[0]) << 8 | UInt16(bytes[1])
    }

    /// An IPv4 (4 bytes) or IPv6 (16 bytes) socket address.
    static func socketAddress(_ raw: [UInt8], port: UInt16) -> SocketAddress {
        if raw.count == 4 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &address.sin_addr) { $0.copyBytes(from: raw) }
            return SocketAddress(address)
        }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: raw.prefix(16)) }
        return SocketAddress(address)
    }
}
