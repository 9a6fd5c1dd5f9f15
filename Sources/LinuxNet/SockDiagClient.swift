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
    public let namespace: NetworkNamespace?
    /// How long one receive waits for the kernel.
    public let receiveTimeout: Duration

    /// Idle netlink sockets.
    private let idle: Mutex<[CInt]>
    private let nextSequence: Atomic<UInt32>

    /// At most this many idle sockets are kept; extra ones are closed.
    public static let maxIdleSockets = 8
    /// A receive loop skips at most this many stray datagrams.
    static let maxStrayReplies = 16
    /// Large enough for any single-socket reply (~100 bytes with ext = 0).
    static let receiveBufferSize = 8192

    /// Makes the client and its first netlink socket, so that a missing
    /// namespace or privilege shows up here rather than on the first connection.
    public init(namespace: NetworkNamespace? = nil, receiveTimeout: Duration = .seconds(1)) throws {
        self.namespace = namespace
        self.receiveTimeout = receiveTimeout
        self.nextSequence = Atomic(UInt32.random(in: 1...UInt32.max / 2))
        let first = try Self.openSocket(namespace: namespace, timeout: receiveTimeout)
        self.idle = Mutex([first])
    }

    deinit {
        idle.withLock { sockets in
            for fd in sockets { close(fd) }
            sockets.removeAll()
        }
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
        return try withSocket { fd in
            try Self.roundTrip(fd: fd, request: request, sequence: sequence, timeout: receiveTimeout) {
                try SockDiagMessage.parseDatagram($0, sequence: sequence)
            }
        }
    }

    /// The raw reply datagram to `request` (for recording test fixtures).
    func rawRoundTrip(request: [UInt8], sequence: UInt32) throws -> [UInt8] {
        try withSocket { fd in
            try Self.roundTrip(fd: fd, request: request, sequence: sequence, timeout: receiveTimeout) {
                Array($0)
            }
        }
    }

    // MARK: Socket pool

    /// Runs `body` with a pooled socket. The socket goes back to the pool when
    /// `body` returns or throws a reply-level error (the exchange finished
    /// cleanly); after an I/O error, a timeout or a malformed reply it is closed,
    /// so a late reply can never be mistaken for the next one.
    private func withSocket<T>(_ body: (CInt) throws -> T) throws -> T {
        let fd: CInt
        if let pooled = idle.withLock({ $0.popLast() }) {
            fd = pooled
        } else {
            fd = try Self.openSocket(namespace: namespace, timeout: receiveTimeout)
        }
        do {
            let result = try body(fd)
            giveBack(fd)
            return result
        } catch let error as SockDiagError {
            switch error {
            case .notFound, .kernel, .noCgroupID: giveBack(fd)
            default: close(fd)
            }
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

    private static func openSocket(namespace: NetworkNamespace?, timeout: Duration) throws -> CInt {
        guard let namespace else { return try openSocketHere(timeout: timeout) }
        return try namespace.run { try openSocketHere(timeout: timeout) }
    }

    private static func openSocketHere(timeout: Duration) throws -> CInt {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_SOCK_DIAG)
        guard fd >= 0 else { throw SockDiagError.system(operation: "socket(AF_NETLINK, NETLINK_SOCK_DIAG)", errno: errno) }
        let (seconds, attoseconds) = timeout.components
        var tv = timeval(
            tv_sec: Int(max(seconds, 0)),
            tv_usec: Int(max(attoseconds, 0) / 1_000_000_000_000))
        if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }  // 0 would mean "wait forever"
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            guard setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
                let code = errno
                close(fd)
                throw SockDiagError.system(operation: "setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)", errno: code)
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
            if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) { throw SockDiagError.timeout }
            throw SockDiagError.system(operation: sent < 0 ? "sendto" : "sendto (short write)", errno: sent < 0 ? code : 0)
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
                    if code == EAGAIN || code == EWOULDBLOCK { throw SockDiagError.timeout }
                    throw SockDiagError.system(operation: "recvfrom", errno: code)
                }
                if received > buffer.count {
                    throw SockDiagError.truncated(expected: received, actual: buffer.count)
                }
                // Only the kernel (port id 0) answers sock_diag requests.
                if from.nl_pid == 0, let result = try handle(UnsafeRawBufferPointer(rebasing: buffer[0..<received])) {
                    return result
                }
                if ContinuousClock.now >= deadline { break }
            }
            throw SockDiagError.timeout
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
