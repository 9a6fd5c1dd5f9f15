import CNetlink
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Netlink request/reply over pooled sockets

/// What the netlink code shared by the clients (`NetlinkSocketPool`,
/// `NetlinkAttributes`) needs from a client's error type: cases for its own
/// failures, and which of the client's errors are a clean answer.
protocol NetlinkClientError: Error {
    /// No reply within the receive timeout.
    static var timeout: Self { get }
    /// A system call on the netlink socket failed.
    static func system(operation: String, errno: Int32) -> Self
    /// A datagram larger than the receive buffer.
    static func truncated(expected: Int, actual: Int) -> Self
    /// A reply that does not parse.
    static func malformed(_ why: String) -> Self
    /// The kernel answered and the exchange ended cleanly (not found, refused):
    /// the socket can serve the next request.
    var isAnswer: Bool { get }
}

/// Netlink sockets of one protocol in one network namespace, and the blocking
/// request/reply exchange on them: what `SockDiagClient` and `ConntrackClient`
/// share.
///
/// Safe to use from many threads at once: each exchange takes a socket from a
/// small pool (making one if the pool is empty) and gives it back afterwards;
/// the caller gives every request its own sequence number, its reply parser
/// skips replies of other sequences, and each receive gives up after
/// `receiveTimeout`.
final class NetlinkSocketPool<Failure: NetlinkClientError>: Sendable {
    /// `NETLINK_SOCK_DIAG`, `NETLINK_NETFILTER`, ...
    let netlinkProtocol: CInt
    /// The protocol's name, for error messages.
    let protocolName: String
    let namespace: NetworkNamespace?
    let receiveTimeout: Duration

    /// Idle netlink sockets.
    private let idle: Mutex<[CInt]>

    /// At most this many idle sockets are kept; extra ones are closed.
    static var maxIdleSockets: Int { 8 }
    /// A receive loop reads at most this many datagrams for one request.
    static var maxStrayReplies: Int { 16 }
    /// Large enough for any single-socket or single-entry reply (a few hundred bytes).
    static var receiveBufferSize: Int { 8192 }

    /// Makes the pool and its first socket, so that a missing namespace or
    /// privilege shows up here rather than on the first request.
    init(protocol netlinkProtocol: CInt, name: String, namespace: NetworkNamespace?, receiveTimeout: Duration) throws {
        self.netlinkProtocol = netlinkProtocol
        self.protocolName = name
        self.namespace = namespace
        self.receiveTimeout = receiveTimeout
        let first = try Self.openSocket(
            protocol: netlinkProtocol, name: name, namespace: namespace, timeout: receiveTimeout)
        self.idle = Mutex([first])
    }

    deinit {
        idle.withLock { sockets in
            for fd in sockets { close(fd) }
            sockets.removeAll()
        }
    }

    /// Sends `request` and feeds each reply datagram from the kernel to
    /// `handle` until it returns a result (nil: not yet, read the next one).
    func exchange<T>(request: [UInt8], sequence: UInt32, _ handle: (UnsafeRawBufferPointer) throws -> T?) throws -> T {
        try withSocket { fd in
            try Self.roundTrip(fd: fd, request: request, sequence: sequence, timeout: receiveTimeout, handle)
        }
    }

    /// Runs `body` with a pooled socket. The socket goes back to the pool when
    /// `body` returns or throws an answer (the exchange finished cleanly);
    /// after an I/O error, a timeout or a malformed reply it is closed, so a
    /// late reply can never be mistaken for the next one.
    private func withSocket<T>(_ body: (CInt) throws -> T) throws -> T {
        let fd: CInt
        if let pooled = idle.withLock({ $0.popLast() }) {
            fd = pooled
        } else {
            fd = try Self.openSocket(
                protocol: netlinkProtocol, name: protocolName, namespace: namespace, timeout: receiveTimeout)
        }
        do {
            let result = try body(fd)
            giveBack(fd)
            return result
        } catch let error as Failure where error.isAnswer {
            giveBack(fd)
            throw error
        } catch {
            close(fd)
            throw error
        }
    }

    private func giveBack(_ fd: CInt) {
        let kept = idle.withLock { sockets -> Bool in
            guard sockets.count < Self.maxIdleSockets else { return false }
            sockets.append(fd)
            return true
        }
        if !kept { close(fd) }
    }

    private static func openSocket(
        protocol netlinkProtocol: CInt, name: String, namespace: NetworkNamespace?, timeout: Duration
    ) throws -> CInt {
        guard let namespace else { return try openSocketHere(protocol: netlinkProtocol, name: name, timeout: timeout) }
        return try namespace.run { try openSocketHere(protocol: netlinkProtocol, name: name, timeout: timeout) }
    }

    private static func openSocketHere(protocol netlinkProtocol: CInt, name: String, timeout: Duration) throws -> CInt {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkProtocol)
        guard fd >= 0 else { throw Failure.system(operation: "socket(AF_NETLINK, \(name))", errno: errno) }
        let (seconds, attoseconds) = timeout.components
        var tv = timeval(
            tv_sec: Int(max(seconds, 0)),
            tv_usec: Int(max(attoseconds, 0) / 1_000_000_000_000))
        if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }  // 0 would mean "wait forever"
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            guard setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
                let code = errno
                close(fd)
                throw Failure.system(operation: "setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)", errno: code)
            }
        }
        return fd
    }

    // MARK: One exchange

    private static func roundTrip<T>(
        fd: CInt, request: [UInt8], sequence: UInt32, timeout: Duration,
        _ handle: (UnsafeRawBufferPointer) throws -> T?
    ) throws -> T {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let sent = request.withUnsafeBytes { bytes in
            withUnsafePointer(to: &kernel) { address in
                address.withMemoryRebound(to: sockaddr.self, capacity: 1) { kernelAddress in
                    retryingOnEINTR {
                        sendto(
                            fd, bytes.baseAddress, bytes.count, 0, kernelAddress,
                            socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
        }
        guard sent == request.count else {
            let code = errno
            if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) { throw Failure.timeout }
            throw Failure.system(operation: sent < 0 ? "sendto" : "sendto (short write)", errno: sent < 0 ? code : 0)
        }

        let deadline = ContinuousClock.now.advanced(by: timeout)
        return try withUnsafeTemporaryAllocation(byteCount: receiveBufferSize, alignment: 8) { buffer in
            for _ in 0..<maxStrayReplies {
                var from = sockaddr_nl()
                var fromLength = socklen_t(MemoryLayout<sockaddr_nl>.size)
                let received = withUnsafeMutablePointer(to: &from) { address in
                    address.withMemoryRebound(to: sockaddr.self, capacity: 1) { sender in
                        retryingOnEINTR {
                            // MSG_TRUNC: return the real length, so an oversized reply is seen.
                            recvfrom(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC), sender, &fromLength)
                        }
                    }
                }
                if received < 0 {
                    let code = errno
                    if code == EAGAIN || code == EWOULDBLOCK { throw Failure.timeout }
                    throw Failure.system(operation: "recvfrom", errno: code)
                }
                if received > buffer.count {
                    throw Failure.truncated(expected: received, actual: buffer.count)
                }
                // Only the kernel (port id 0) answers.
                if from.nl_pid == 0, let result = try handle(UnsafeRawBufferPointer(rebasing: buffer[0..<received])) {
                    return result
                }
                if ContinuousClock.now >= deadline { break }
            }
            throw Failure.timeout
        }
    }
}

@inline(__always)
private func retryingOnEINTR(_ call: () -> Int) -> Int {
    while true {
        let result = call()
        if result < 0 && errno == EINTR { continue }
        return result
    }
}

// MARK: - Netlink messages and attributes

/// Netlink messages (`struct nlmsghdr` and payload, each aligned to 4 bytes)
/// packed in one datagram. Generic over the client's error type, so that every
/// netlink parser can walk messages the same way.
enum NetlinkMessages {
    static let headerLength = 16  // sizeof(struct nlmsghdr)
    static let typeError: UInt16 = 2  // NLMSG_ERROR
    static let typeDone: UInt16 = 3  // NLMSG_DONE

    /// Calls `body` with the type and payload of each message of `sequence` in
    /// `bytes`, in order, until it returns a result; messages of other sequences
    /// (stray, late replies) are skipped. Returns nil if no call gave a result.
    /// Throws `Failure.truncated` or `.malformed` for an empty datagram or a
    /// header or length that does not fit.
    static func first<T, Failure: NetlinkClientError>(
        in bytes: UnsafeRawBufferPointer, sequence: UInt32, as _: Failure.Type,
        _ body: (UInt16, UnsafeRawBufferPointer) throws -> T?
    ) throws -> T? {
        if bytes.isEmpty { throw Failure.truncated(expected: headerLength, actual: 0) }
        var offset = 0
        while offset < bytes.count {
            let remaining = bytes.count - offset
            guard remaining >= headerLength else { throw Failure.truncated(expected: headerLength, actual: remaining) }
            let length = Int(load(UInt32.self, bytes, offset))
            guard length >= headerLength else {
                throw Failure.malformed("nlmsg_len \(length) is smaller than the netlink header")
            }
            guard length <= remaining else { throw Failure.truncated(expected: length, actual: remaining) }
            if load(UInt32.self, bytes, offset + 8) == sequence {
                let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + headerLength)..<(offset + length)])
                if let result = try body(load(UInt16.self, bytes, offset + 4), payload) { return result }
            }
            offset += min((length + 3) & ~3, remaining)  // NLMSG_ALIGN, clamped to the end
        }
        return nil
    }

    /// The errno of an `NLMSG_ERROR` message's payload (`struct nlmsgerr`),
    /// positive; 0 for an acknowledgement. Throws for a payload too short for
    /// the code, or a code that is not 0 or a negated errno.
    static func errorCode<Failure: NetlinkClientError>(of payload: UnsafeRawBufferPointer, as _: Failure.Type) throws
        -> Int32
    {
        guard payload.count >= 4 else { throw Failure.truncated(expected: 4, actual: payload.count) }
        let code = load(Int32.self, payload, 0)
        guard code <= 0, code != Int32.min else { throw Failure.malformed("NLMSG_ERROR with error code \(code)") }
        return -code
    }
}

/// Netlink attributes (`struct nlattr`: len u16 | type u16 | payload, padded to 4).
enum NetlinkAttributes {
    static let nestedFlag: UInt16 = 0x8000  // NLA_F_NESTED
    static let typeMask: UInt16 = 0x3FFF  // NLA_TYPE_MASK: ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

    /// Calls `body` with the type (flag bits cleared) and the payload of each
    /// attribute packed in `bytes`, in order. Throws `Failure.malformed` for a
    /// header or a length that does not fit.
    static func forEach<Failure: NetlinkClientError>(
        in bytes: UnsafeRawBufferPointer, as _: Failure.Type,
        _ body: (UInt16, UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var offset = 0
        while offset < bytes.count {
            let remaining = bytes.count - offset
            guard remaining >= 4 else { throw Failure.malformed("\(remaining) stray bytes after the last attribute") }
            let length = Int(load(UInt16.self, bytes, offset))
            let type = load(UInt16.self, bytes, offset + 2) & typeMask
            guard length >= 4 else { throw Failure.malformed("attribute length \(length) is smaller than its header") }
            guard length <= remaining else {
                throw Failure.malformed(
                    "attribute \(type) of \(length) bytes runs past the end of its container (\(remaining) left)")
            }
            try body(type, UnsafeRawBufferPointer(rebasing: bytes[(offset + 4)..<(offset + length)]))
            offset += min((length + 3) & ~3, remaining)
        }
    }
}

/// Host-order load; callers check bounds first.
@inline(__always)
private func load<T: FixedWidthInteger>(_: T.Type, _ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
    precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count)
    return bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
}
