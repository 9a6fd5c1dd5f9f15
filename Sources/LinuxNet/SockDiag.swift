import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the kernel says about one TCP socket (`struct inet_diag_msg` plus the
/// `INET_DIAG_CGROUP_ID` attribute).
public struct SockDiagReply: Hashable, Sendable {
    /// `AF_INET` or `AF_INET6`: the family of the socket that was found (a
    /// dual-stack IPv6 socket talking IPv4 reports `AF_INET6`).
    public var family: UInt8
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    public var state: UInt8
    /// The uid that owns the socket.
    public var uid: UInt32
    /// The socket's inode (as in /proc/PID/fd: `socket:[inode]`).
    public var inode: UInt32
    /// The cgroup v2 id of the socket (fixed when it was created); nil if the
    /// kernel sent none (time-wait sockets, kernels without cgroup socket data).
    public var cgroupID: CgroupID?

    public init(family: UInt8, state: UInt8, uid: UInt32, inode: UInt32, cgroupID: CgroupID?) {
        self.family = family
        self.state = state
        self.uid = uid
        self.inode = inode
        self.cgroupID = cgroupID
    }
}

public enum SockDiagError: Error, Equatable, Hashable, CustomStringConvertible {
    /// The kernel has no TCP socket with that 4-tuple (`NLMSG_ERROR` -ENOENT).
    case notFound
    /// The kernel answered with another error.
    case kernel(errno: Int32)
    /// The reply is shorter than what it announces or what its type requires.
    case truncated(expected: Int, actual: Int)
    /// The reply does not parse: bad lengths, unexpected type or sequence, bad attribute.
    case malformed(String)
    /// The socket was found but the reply carries no `INET_DIAG_CGROUP_ID`.
    case noCgroupID
    /// The addresses cannot be described in one request (mixed families, Unix sockets).
    case unsupportedAddress(String)
    /// No reply within the receive timeout.
    case timeout
    /// A system call on the netlink socket failed.
    case system(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .notFound:
            return "sock_diag: no TCP socket with this address pair (the connection is already gone, or it lives in another network namespace)"
        case .kernel(let code):
            return "sock_diag: the kernel refused the lookup: \(String(cString: strerror(code)))"
        case .truncated(let expected, let actual):
            return "sock_diag: reply truncated: needs \(expected) bytes, has \(actual)"
        case .malformed(let why):
            return "sock_diag: malformed reply: \(why)"
        case .noCgroupID:
            return "sock_diag: the reply has no cgroup id (INET_DIAG_CGROUP_ID); the socket may be in TIME_WAIT, or the kernel lacks CONFIG_SOCK_CGROUP_DATA"
        case .unsupportedAddress(let why):
            return "sock_diag: cannot look up \(why)"
        case .timeout:
            return "sock_diag: no reply from the kernel within the receive timeout"
        case .system(let operation, let code):
            return "sock_diag: \(operation) failed: \(String(cString: strerror(code)))"
        }
    }
}

/// The bytes of a NETLINK_SOCK_DIAG exact lookup and the parsing of its reply.
/// Pure: no sockets, no globals; the parser never traps on any input.
///
/// Layouts (linux/netlink.h, linux/inet_diag.h), all in host byte order except
/// ports and addresses:
///
/// ```
/// nlmsghdr          len u32 | type u16 | flags u16 | seq u32 | pid u32         16 bytes
/// inet_diag_req_v2  family u8 | protocol u8 | ext u8 | pad u8 | states u32     8 bytes
///   inet_diag_sockid sport be16 | dport be16 | src [16] | dst [16] | if u32 | cookie u32[2]  48 bytes
/// inet_diag_msg     family, state, timer, retrans u8 | sockid (48) |
///                   expires, rqueue, wqueue, uid, inode u32                     72 bytes
/// nlattr            len u16 | type u16 | payload, padded to 4
/// ```
public enum SockDiagMessage {
    // Constants, checked against the C headers by the tests.
    static let netlinkHeaderLength = 16
    static let requestBodyLength = 56  // MemoryLayout<inet_diag_req_v2>.size
    static let diagMessageLength = 72  // MemoryLayout<inet_diag_msg>.size
    public static let requestLength = 72  // header + inet_diag_req_v2

    static let typeError = NetlinkMessages.typeError  // NLMSG_ERROR
    static let typeDone = NetlinkMessages.typeDone  // NLMSG_DONE
    static let typeSockDiagByFamily: UInt16 = 20  // SOCK_DIAG_BY_FAMILY
    static let flagRequest: UInt16 = 1  // NLM_F_REQUEST
    static let attributeCgroupID: UInt16 = 21  // INET_DIAG_CGROUP_ID
    static let allStates: UInt32 = 0xFFFF_FFFF
    static let noCookie: UInt32 = 0xFFFF_FFFF  // INET_DIAG_NOCOOKIE
    static let protocolTCP: UInt8 = 6
    static let familyINET: UInt8 = 2
    static let familyINET6: UInt8 = 10

    // MARK: Request

    /// A normalized pair of endpoints: both IPv4 (IPv4-mapped IPv6 addresses are
    /// unmapped) or both IPv6.
    struct Endpoints: Equatable {
        var family: UInt8
        var sourceAddress: [UInt8]  // 4 or 16 bytes, network order
        var sourcePort: UInt16
        var destinationAddress: [UInt8]
        var destinationPort: UInt16
    }

    /// The request for the TCP socket whose local end is `source` and whose
    /// remote end is `destination`. For a connection the agent accepted after a
    /// redirect, that is the client's socket: `source` = the accepted channel's
    /// remote address, `destination` = the original destination.
    ///
    /// Both addresses must be of one family; an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4 peers) counts as
    /// IPv4, and the request is then an `AF_INET` one (the kernel's lookup finds
    /// both IPv4 sockets and dual-stack IPv6 sockets talking IPv4 that way).
    public static func request(source: SocketAddress, destination: SocketAddress, sequence: UInt32) throws
        -> [UInt8]
    {
        let endpoints = try normalize(source: source, destination: destination)
        var out: [UInt8] = []
        out.reserveCapacity(requestLength)
        // nlmsghdr
        appendHost(&out, UInt32(requestLength))
        appendHost(&out, typeSockDiagByFamily)
        appendHost(&out, flagRequest)
        appendHost(&out, sequence)
        appendHost(&out, UInt32(0))  // nlmsg_pid: 0, the kernel fills in our port id
        // inet_diag_req_v2
        out.append(endpoints.family)
        out.append(protocolTCP)
        out.append(0)  // idiag_ext: none; INET_DIAG_CGROUP_ID comes anyway
        out.append(0)  // pad
        appendHost(&out, allStates)
        // inet_diag_sockid
        appendBigEndian(&out, endpoints.sourcePort)
        appendBigEndian(&out, endpoints.destinationPort)
        appendAddress(&out, endpoints.sourceAddress)
        appendAddress(&out, endpoints.destinationAddress)
        appendHost(&out, UInt32(0))  // idiag_if: any
        appendHost(&out, noCookie)
        appendHost(&out, noCookie)
        assert(out.count == requestLength)
        return out
    }

    static func normalize(source: SocketAddress, destination: SocketAddress) throws -> Endpoints {
        let (sourceFamily, sourceAddress, sourcePort) = try parts(of: source, role: "source")
        let (destinationFamily, destinationAddress, destinationPort) = try parts(
            of: destination, role: "destination")
        if sourceFamily == destinationFamily {
            return Endpoints(
                family: sourceFamily, sourceAddress: sourceAddress, sourcePort: sourcePort,
                destinationAddress: destinationAddress, destinationPort: destinationPort)
        }
        throw SockDiagError.unsupportedAddress(
            "\(source) -> \(destination): an IPv4 and an IPv6 address cannot describe one TCP connection")
    }

    /// Family, address bytes and port of an IP socket address; IPv4-mapped IPv6
    /// addresses come back as IPv4.
    private static func parts(of address: SocketAddress, role: String) throws -> (UInt8, [UInt8], UInt16) {
        switch address {
        case .v4(let v4):
            let raw = withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
            return (familyINET, raw, UInt16(bigEndian: v4.address.sin_port))
        case .v6(let v6):
            let raw = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            let port = UInt16(bigEndian: v6.address.sin6_port)
            if let v4 = unmapIPv4(raw) { return (familyINET, v4, port) }
            return (familyINET6, raw, port)
        case .unixDomainSocket:
            throw SockDiagError.unsupportedAddress("\(role) \(address): not a TCP address")
        }
    }

    /// The IPv4 address inside `::ffff:a.b.c.d`, or nil.
    static func unmapIPv4(_ raw: [UInt8]) -> [UInt8]? {
        guard raw.count == 16, raw[0..<10].allSatisfy({ $0 == 0 }), raw[10] == 0xFF, raw[11] == 0xFF
        else { return nil }
        return Array(raw[12..<16])
    }

    private static func appendHost<T: FixedWidthInteger>(_ out: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value) { out.append(contentsOf: $0) }
    }

    private static func appendBigEndian<T: FixedWidthInteger>(_ out: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }

    /// 16 bytes: an IPv4 address goes in the first word, the rest is zero.
    private static func appendAddress(_ out: inout [UInt8], _ raw: [UInt8]) {
        out.append(contentsOf: raw)
        out.append(contentsOf: repeatElement(0, count: 16 - raw.count))
    }

    // MARK: Reply

    /// Parses the reply datagram to the request with `sequence`.
    public static func parseReply(_ bytes: [UInt8], sequence: UInt32) throws -> SockDiagReply {
        try bytes.withUnsafeBytes { try parseReply($0, sequence: sequence) }
    }

    /// Parses the reply datagram to the request with `sequence`. Throws
    /// `.malformed` if the datagram holds no message with that sequence.
    public static func parseReply(_ bytes: UnsafeRawBufferPointer, sequence: UInt32) throws -> SockDiagReply {
        guard let reply = try parseDatagram(bytes, sequence: sequence) else {
            throw SockDiagError.malformed("no message with sequence \(sequence) in the reply")
        }
        return reply
    }

    /// Walks the netlink messages of one datagram. Returns the reply to
    /// `sequence`, throws its error, or returns nil if every message in the
    /// datagram belongs to another sequence (a stray, late reply to skip).
    static func parseDatagram(_ bytes: UnsafeRawBufferPointer, sequence: UInt32) throws(SockDiagError) -> SockDiagReply? {
        try NetlinkMessages.first(in: bytes, sequence: sequence, as: SockDiagError.self) { (type, payload) throws(SockDiagError) in
            try parseMessage(type: type, payload: payload)
        }
    }

    private static func parseMessage(type: UInt16, payload: UnsafeRawBufferPointer) throws(SockDiagError) -> SockDiagReply {
        switch type {
        case typeError:
            let code = try NetlinkMessages.errorCode(of: payload, as: SockDiagError.self)
            if code == 0 { throw SockDiagError.malformed("unexpected acknowledgement (NLMSG_ERROR 0)") }
            if code == ENOENT { throw SockDiagError.notFound }
            throw SockDiagError.kernel(errno: code)
        case typeDone:
            throw SockDiagError.malformed("unexpected NLMSG_DONE for an exact lookup")
        case typeSockDiagByFamily:
            return try parseDiagMessage(payload)
        default:
            throw SockDiagError.malformed("unexpected message type \(type)")
        }
    }

    private static func parseDiagMessage(_ payload: UnsafeRawBufferPointer) throws(SockDiagError) -> SockDiagReply {
        guard payload.count >= diagMessageLength else {
            throw SockDiagError.truncated(expected: diagMessageLength, actual: payload.count)
        }
        let family = payload[0]
        guard family == familyINET || family == familyINET6 else {
            throw SockDiagError.malformed("address family \(family) is neither AF_INET nor AF_INET6")
        }
        var reply = SockDiagReply(
            family: family,
            state: payload[1],
            uid: load(UInt32.self, payload, 64),
            inode: load(UInt32.self, payload, 68),
            cgroupID: nil)
        try NetlinkAttributes.forEach(
            in: UnsafeRawBufferPointer(rebasing: payload[diagMessageLength...]), as: SockDiagError.self
        ) { (type, value) throws(SockDiagError) in
            guard type == attributeCgroupID else { return }
            guard value.count == 8 else {
                throw SockDiagError.malformed("INET_DIAG_CGROUP_ID of \(value.count) bytes, expected 8")
            }
            reply.cgroupID = CgroupID(load(UInt64.self, value, 0))
        }
        return reply
    }

    /// Host-order load; callers check bounds first.
    @inline(__always)
    private static func load<T: FixedWidthInteger>(_: T.Type, _ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count)
        return bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
    }
}
