import CNetlink
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - One socket

/// A bound netlink socket of one protocol, in the network namespace it was
/// made in, and the exchanges every netlink client needs on it: send, receive
/// with a timeout, a request's reply (up to `NLMSG_DONE` or its
/// acknowledgement), a batch's acknowledgements.
///
/// One exchange at a time: the owner serialises its use (`NetlinkSocketPool`
/// lends each socket to one exchange, `NetfilterClient` holds a lock), or the
/// replies of two exchanges would interleave. The object holds only constants,
/// so it may move between threads; the socket closes with the object.
package final class NetlinkSocket<Failure: NetlinkClientError>: Sendable {
    /// How the socket is set up.
    package struct Options: Sendable {
        /// The largest datagram a receive takes; a larger one throws
        /// `truncated` rather than being cut.
        package var receiveBufferSize: Int
        /// How long a send may block (`SO_SNDTIMEO`); nil: as long as it takes.
        package var sendTimeout: Duration?
        /// Kernel buffer sizes (`SO_SNDBUF`, `SO_RCVBUF`) for large batches and
        /// their answers; the `FORCE` variants are tried first, as they pass the
        /// system limits with CAP_NET_ADMIN. nil leaves the defaults.
        package var kernelBufferSize: Int32?
        /// `NETLINK_CAP_ACK` and `NETLINK_EXT_ACK`: acknowledgements leave out
        /// the request and carry the kernel's explanation of a refusal.
        package var extendedAcknowledgements: Bool

        package init(
            receiveBufferSize: Int, sendTimeout: Duration? = nil, kernelBufferSize: Int32? = nil,
            extendedAcknowledgements: Bool = false
        ) {
            self.receiveBufferSize = receiveBufferSize
            self.sendTimeout = sendTimeout
            self.kernelBufferSize = kernelBufferSize
            self.extendedAcknowledgements = extendedAcknowledgements
        }
    }

    private let fd: CInt
    private let receiveBufferSize: Int

    /// Makes the socket, inside `namespace` when given (on a thread that
    /// entered it; the socket keeps the namespace afterwards), and binds it.
    /// `name` is the protocol's name for error messages (`NETLINK_SOCK_DIAG`).
    /// Throws `Failure` or `NetworkNamespaceError`.
    package init(protocol netlinkProtocol: CInt, name: String, namespace: NetworkNamespace?, options: Options) throws {
        let open = { @Sendable () throws -> CInt in
            let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkProtocol)
            guard fd >= 0 else { throw Failure.cannotOpen(protocolName: name, errno: errno) }
            return fd
        }
        let fd = try namespace?.run(open) ?? open()
        do {
            try Self.configure(fd, options)
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
        self.receiveBufferSize = options.receiveBufferSize
    }

    deinit {
        close(fd)
    }

    private static func configure(_ fd: CInt, _ options: Options) throws(Failure) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard bound == 0 else { throw Failure.system(operation: "bind(netlink)", errno: errno) }

        if let timeout = options.sendTimeout {
            let (seconds, attoseconds) = timeout.components
            var tv = timeval(
                tv_sec: Int(max(seconds, 0)),
                tv_usec: Int(max(attoseconds, 0) / 1_000_000_000_000))
            if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }  // 0 would mean "wait forever"
            guard setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
                throw Failure.system(operation: "setsockopt(SO_SNDTIMEO)", errno: errno)
            }
        }
        // Kernels without these options still work, with plainer acknowledgements.
        if options.extendedAcknowledgements {
            let solNetlink: Int32 = 270  // SOL_NETLINK
            var on: Int32 = 1
            _ = setsockopt(fd, solNetlink, 10, &on, socklen_t(MemoryLayout<Int32>.size))  // NETLINK_CAP_ACK
            _ = setsockopt(fd, solNetlink, 11, &on, socklen_t(MemoryLayout<Int32>.size))  // NETLINK_EXT_ACK
        }
        // Without CAP_NET_ADMIN the system limits cap the sizes: a batch too large
        // for them then fails with a clear error rather than here.
        if var size = options.kernelBufferSize {
            let length = socklen_t(MemoryLayout<Int32>.size)
            for (forced, plain) in [(SO_SNDBUFFORCE, SO_SNDBUF), (SO_RCVBUFFORCE, SO_RCVBUF)] {
                if setsockopt(fd, SOL_SOCKET, forced, &size, length) != 0 {
                    _ = setsockopt(fd, SOL_SOCKET, plain, &size, length)
                }
            }
        }
    }

    // MARK: Sending and receiving

    /// Sends one datagram to the kernel.
    func send(_ datagram: [UInt8]) throws(Failure) {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let sent = datagram.withUnsafeBytes { bytes in
            withUnsafePointer(to: &kernel) { address in
                address.withMemoryRebound(to: sockaddr.self, capacity: 1) { kernelAddress in
                    retryingOnEINTR {
                        sendto(fd, bytes.baseAddress, bytes.count, 0, kernelAddress, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
        }
        guard sent != datagram.count else { return }
        let code = errno
        if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) { throw Failure.timeout }
        throw Failure.cannotSend(errno: sent < 0 ? code : EMSGSIZE)
    }

    /// The messages of the next datagram from the kernel, or nil if none came
    /// within `timeout`.
    func receive(timeout: Duration) throws(Failure) -> [NetlinkMessage]? {
        try withUnsafeTemporaryAllocation(byteCount: receiveBufferSize, alignment: 8) {
            (buffer) throws(Failure) -> [NetlinkMessage]? in
            guard let count = try receive(into: buffer, timeout: timeout) else { return nil }
            return try NetlinkMessage.split(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), as: Failure.self)
        }
    }

    /// Calls `read` with the next datagram from the kernel, without copying
    /// it; nil if none came within `timeout`.
    func receiveDatagram<T>(timeout: Duration, _ read: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        try withUnsafeTemporaryAllocation(byteCount: receiveBufferSize, alignment: 8) { buffer in
            guard let count = try receive(into: buffer, timeout: timeout) else { return nil }
            return try read(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    /// Discards whatever is queued on the socket: late answers to an earlier,
    /// interrupted exchange.
    func drain() {
        withUnsafeTemporaryAllocation(byteCount: receiveBufferSize, alignment: 8) { buffer in
            while true {
                let received = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
                if received < 0 && errno == EINTR { continue }
                if received <= 0 { return }
            }
        }
    }

    /// Waits up to `timeout` for a datagram from the kernel, reads it into
    /// `buffer` and returns its length; nil if none came in time. Datagrams
    /// from other sockets (port id not 0) are dropped: only the kernel answers.
    private func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws(Failure) -> Int? {
        var deadline: ContinuousClock.Instant?
        // The kernel answers most requests while the send is still in the
        // system call, so the reply is usually queued already: read first, and
        // wait only when nothing is there.
        var readable = true
        while true {
            if !readable {
                let end = deadline ?? ContinuousClock.now.advanced(by: timeout)
                deadline = end
                let remaining = ContinuousClock.now.duration(to: end)
                guard remaining > .zero else { return nil }
                var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, milliseconds(remaining))
                if ready < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    throw Failure.system(operation: "poll(netlink)", errno: code)
                }
                if ready == 0 { continue }  // rounded up to whole milliseconds: the deadline has passed
            }
            var from = sockaddr_nl()
            var fromLength = socklen_t(MemoryLayout<sockaddr_nl>.size)
            let received = withUnsafeMutablePointer(to: &from) { address in
                address.withMemoryRebound(to: sockaddr.self, capacity: 1) { sender in
                    // MSG_TRUNC: return the real length, so an oversized datagram is seen.
                    recvfrom(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC) | Int32(MSG_DONTWAIT), sender, &fromLength)
                }
            }
            if received < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    readable = false
                    continue
                }
                throw Failure.system(operation: "recvfrom", errno: code)
            }
            guard from.nl_pid == 0 else { continue }
            guard received <= buffer.count else { throw Failure.truncated(expected: received, actual: buffer.count) }
            return received
        }
    }

    // MARK: Exchanges

    /// Sends one request and reads its reply: the messages of `sequence` up to
    /// `NLMSG_DONE` (a dump) or the acknowledgement (a request sent with
    /// `NLM_F_ACK`). Anything left from an earlier exchange is discarded first;
    /// each datagram is waited for up to `timeout`.
    package func request(_ datagram: [UInt8], sequence: UInt32, timeout: Duration) throws(Failure) -> NetlinkReply {
        drain()
        try send(datagram)
        var messages: [NetlinkMessage] = []
        while true {
            guard let received = try receive(timeout: timeout) else { return .timedOut }
            for message in received where message.sequence == sequence {
                // The dumped objects changed while the kernel was writing them out.
                if message.flags & NetlinkMessages.flagDumpInterrupted != 0 { return .interrupted }
                switch message.type {
                case NetlinkMessages.typeDone:
                    return .complete(messages)
                case NetlinkMessages.typeError:
                    let answer = try message.acknowledgement(as: Failure.self)
                    return answer.isSuccess ? .complete(messages) : .refused(answer)
                case NetlinkMessages.typeNoop, NetlinkMessages.typeOverrun:
                    continue
                default:
                    messages.append(message)
                }
            }
        }
    }

    /// Sends a batch (several messages in one datagram, as an nfnetlink
    /// transaction is) and collects the kernel's answers: the acknowledgement
    /// of each message in `awaited` (those sent with `NLM_F_ACK`), and the
    /// refusal of any message in `sequences` (all of the batch's). Anything
    /// left from an earlier exchange is discarded first.
    ///
    /// Each datagram is waited for up to `timeout` until a refusal arrives,
    /// then only up to `afterRefusal`: the kernel answers a batch within the
    /// send, so once one answer is in, the rest are queued or will not come.
    package func sendBatch(
        _ datagram: [UInt8], sequences: Set<UInt32>, awaited: Set<UInt32>, timeout: Duration, afterRefusal: Duration
    ) throws(Failure) -> NetlinkBatchReply {
        drain()
        try send(datagram)
        var reply = NetlinkBatchReply(refusals: [:], unacknowledged: awaited)
        while !reply.unacknowledged.isEmpty {
            guard let received = try receive(timeout: reply.refusals.isEmpty ? timeout : afterRefusal) else { break }
            for message in received where message.type == NetlinkMessages.typeError && sequences.contains(message.sequence) {
                let answer = try message.acknowledgement(as: Failure.self)
                reply.unacknowledged.remove(message.sequence)
                if !answer.isSuccess { reply.refusals[message.sequence] = answer }
            }
        }
        return reply
    }
}

/// How the kernel answered one request.
package enum NetlinkReply: Hashable, Sendable {
    /// The reply's messages (none for a plain acknowledgement), up to the end.
    case complete([NetlinkMessage])
    /// The kernel refused the request.
    case refused(NetlinkAcknowledgement)
    /// A dump was interrupted by a change to what it lists (`NLM_F_DUMP_INTR`):
    /// its messages may be inconsistent; ask again.
    case interrupted
    /// No datagram within the timeout.
    case timedOut
}

/// The kernel's answers to a batch.
package struct NetlinkBatchReply: Hashable, Sendable {
    /// The refused messages, by sequence number, with the kernel's reasons.
    package var refusals: [UInt32: NetlinkAcknowledgement]
    /// Awaited messages whose acknowledgement did not come.
    package var unacknowledged: Set<UInt32>
}

/// Whole milliseconds for poll(2), rounded up so that a wait is never cut short.
private func milliseconds(_ duration: Duration) -> Int32 {
    let (seconds, attoseconds) = duration.components
    let rounded = Double(seconds) * 1000 + (Double(attoseconds) / 1e15).rounded(.up)
    return Int32(max(0, min(rounded, Double(Int32.max))))
}

@inline(__always)
private func retryingOnEINTR(_ call: () -> Int) -> Int {
    while true {
        let result = call()
        if result < 0 && errno == EINTR { continue }
        return result
    }
}

// MARK: - Pooled sockets

/// What a pooled client's error type adds: which of its errors are a clean
/// answer after which a socket can be used again.
protocol NetlinkPooledClientError: NetlinkClientError {
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
final class NetlinkSocketPool<Failure: NetlinkPooledClientError>: Sendable {
    /// `NETLINK_SOCK_DIAG`, `NETLINK_NETFILTER`, ...
    let netlinkProtocol: CInt
    /// The protocol's name, for error messages.
    let protocolName: String
    let namespace: NetworkNamespace?
    let receiveTimeout: Duration

    /// Idle netlink sockets. Event loops take them concurrently; a pthread
    /// lock rather than `Mutex`, whose contended path ThreadSanitizer cannot
    /// see on Linux (it reports the protected value as raced).
    private let idle: NIOLockedValueBox<[NetlinkSocket<Failure>]>

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
        self.idle = NIOLockedValueBox([
            try Self.openSocket(protocol: netlinkProtocol, name: name, namespace: namespace, timeout: receiveTimeout)
        ])
    }

    /// Sends `request` and feeds each reply datagram from the kernel to
    /// `handle` until it returns a result (nil: not yet, read the next one).
    func exchange<T>(request: [UInt8], sequence: UInt32, _ handle: (UnsafeRawBufferPointer) throws -> T?) throws -> T {
        try withSocket { socket in
            try socket.send(request)
            let deadline = ContinuousClock.now.advanced(by: receiveTimeout)
            for _ in 0..<Self.maxStrayReplies {
                switch try socket.receiveDatagram(timeout: receiveTimeout, handle) {
                case nil: throw Failure.timeout
                case .some(let result?): return result
                case .some(nil): break
                }
                if ContinuousClock.now >= deadline { break }
            }
            throw Failure.timeout
        }
    }

    /// Runs `body` with a pooled socket. The socket goes back to the pool when
    /// `body` returns or throws an answer (the exchange finished cleanly);
    /// after an I/O error, a timeout or a malformed reply it is closed, so a
    /// late reply can never be mistaken for the next one.
    private func withSocket<T>(_ body: (NetlinkSocket<Failure>) throws -> T) throws -> T {
        let socket: NetlinkSocket<Failure>
        if let pooled = idle.withLockedValue({ $0.popLast() }) {
            socket = pooled
        } else {
            socket = try Self.openSocket(
                protocol: netlinkProtocol, name: protocolName, namespace: namespace, timeout: receiveTimeout)
        }
        do {
            let result = try body(socket)
            giveBack(socket)
            return result
        } catch let error as Failure where error.isAnswer {
            giveBack(socket)
            throw error
        }
    }

    private static func openSocket(
        protocol netlinkProtocol: CInt, name: String, namespace: NetworkNamespace?, timeout: Duration
    ) throws -> NetlinkSocket<Failure> {
        try NetlinkSocket(
            protocol: netlinkProtocol, name: name, namespace: namespace,
            options: .init(receiveBufferSize: receiveBufferSize, sendTimeout: timeout))
    }

    private func giveBack(_ socket: NetlinkSocket<Failure>) {
        idle.withLockedValue { sockets in
            if sockets.count < Self.maxIdleSockets { sockets.append(socket) }
        }
    }
}
