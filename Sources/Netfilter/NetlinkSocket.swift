import CNetlink
import Glibc

/// One netlink message, copied out of the receive buffer after its bounds were
/// checked.
struct NetlinkMessage: Sendable {
    static let headerSize = 16  // sizeof(struct nlmsghdr)

    let type: UInt16
    let flags: UInt16
    let sequence: UInt32
    let portID: UInt32
    /// The whole message, header included.
    let bytes: [UInt8]

    var payload: ArraySlice<UInt8> { bytes[Self.headerSize...] }

    /// Splits a datagram into messages; throws on anything truncated or malformed.
    static func parse(_ data: UnsafeRawBufferPointer) throws(NetfilterError) -> [NetlinkMessage] {
        var result: [NetlinkMessage] = []
        var offset = 0
        while offset < data.count {
            let remaining = data.count - offset
            guard remaining >= headerSize else {
                throw .malformedReply("\(remaining) stray bytes after the last message")
            }
            let length = Int(data.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            guard length >= headerSize, length <= remaining else {
                throw .malformedReply("message length \(length) with \(remaining) bytes left")
            }
            result.append(
                NetlinkMessage(
                    type: data.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self),
                    flags: data.loadUnaligned(fromByteOffset: offset + 6, as: UInt16.self),
                    sequence: data.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self),
                    portID: data.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self),
                    bytes: Array(UnsafeRawBufferPointer(rebasing: data[offset..<(offset + length)]))))
            offset += min((length + 3) & ~3, remaining)
        }
        return result
    }

    /// For `NLMSG_ERROR`: the error code (0 for an acknowledgement, else -errno) and
    /// the kernel's extended-ack text, if any.
    func errorPayload() throws(NetfilterError) -> (code: Int32, message: String?) {
        let payload = Array(self.payload)
        guard payload.count >= 4 else { throw .malformedReply("error message without an error code") }
        let code = payload.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        // struct nlmsgerr { int error; struct nlmsghdr msg; } then, with NLM_F_ACK_TLVS,
        // attributes. With NLM_F_CAPPED the original message's payload is left out.
        let ackTLVs: UInt16 = 0x200, capped: UInt16 = 0x100
        guard flags & ackTLVs != 0, payload.count >= 4 + Self.headerSize else { return (code, nil) }
        var offset = 4 + Self.headerSize
        if flags & capped == 0 {
            let original = Int(payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) })
            offset = 4 + ((original + 3) & ~3)
        }
        var message: String?
        while offset + 4 <= payload.count {
            let (length, type) = payload.withUnsafeBytes {
                (Int($0.loadUnaligned(fromByteOffset: offset, as: UInt16.self)), $0.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self))
            }
            guard length >= 4, offset + length <= payload.count else { break }
            if type & 0x3fff == 1 {  // NLMSGERR_ATTR_MSG
                let text = payload[(offset + 4)..<(offset + length)].prefix { $0 != 0 }
                message = String(decoding: text, as: UTF8.self)
            }
            offset += (length + 3) & ~3
        }
        return (code, message)
    }
}

/// A NETLINK_NETFILTER socket. Not thread-safe: ``NetfilterClient`` serializes use.
final class NetlinkSocket {
    static let receiveBufferSize = 1 << 17
    /// How long to wait for the kernel. Replies to a batch are queued before the
    /// send returns, so this is only reached when something is badly wrong.
    static let replyTimeoutMilliseconds: Int32 = 5000

    let fd: Int32
    let portID: UInt32
    private var sequence: UInt32
    private let buffer: UnsafeMutableRawPointer
    /// Whether the kernel accepts NFT_MSG_DESTROYSETELEM (Linux 6.3+); learned on use.
    var supportsDestroy = true

    /// Creates the socket in the calling thread's network namespace; the socket
    /// stays in that namespace whichever thread uses it later.
    static func openDescriptor() throws(NetfilterError) -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_NETFILTER)
        guard fd >= 0 else {
            let code = Glibc.errno
            switch code {
            case EPROTONOSUPPORT, EAFNOSUPPORT:
                throw .unavailable(detail: "no NETLINK_NETFILTER sockets: \(errnoText(code)); nfnetlink is missing")
            case EPERM, EACCES:
                throw .permissionDenied(operation: "opening a netfilter netlink socket")
            default:
                throw .system(call: "socket(AF_NETLINK, NETLINK_NETFILTER)", errno: code)
            }
        }
        return fd
    }

    /// Takes ownership of `fd` (closing it if setup fails) and binds it.
    init(fd: Int32) throws(NetfilterError) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard bound == 0 else {
            let code = Glibc.errno
            close(fd)
            throw .system(call: "bind(netlink)", errno: code)
        }
        var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            let code = Glibc.errno
            close(fd)
            throw .system(call: "getsockname(netlink)", errno: code)
        }
        self.fd = fd
        self.portID = address.nl_pid
        self.sequence = UInt32(truncatingIfNeeded: time(nil))
        self.buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.receiveBufferSize, alignment: 8)

        let solNetlink: Int32 = 270  // SOL_NETLINK
        var on: Int32 = 1
        _ = setsockopt(fd, solNetlink, 10, &on, socklen_t(MemoryLayout<Int32>.size))  // NETLINK_CAP_ACK
        _ = setsockopt(fd, solNetlink, 11, &on, socklen_t(MemoryLayout<Int32>.size))  // NETLINK_EXT_ACK
        // Room for large batches and their acknowledgements (FORCE needs CAP_NET_ADMIN).
        var size: Int32 = 4 << 20
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    deinit {
        close(fd)
        buffer.deallocate()
    }

    func nextSequence() -> UInt32 {
        sequence &+= 1
        if sequence == 0 { sequence = 1 }
        return sequence
    }

    func send(_ data: [UInt8]) throws(NetfilterError) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        while true {
            let sent = data.withUnsafeBytes { raw in
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            if sent == data.count { return }
            let code = Glibc.errno
            if sent < 0, code == EINTR { continue }
            if sent < 0, code == EPERM || code == EACCES { throw .permissionDenied(operation: "sending to nf_tables") }
            throw .system(call: "sendto(netlink)", errno: sent < 0 ? code : EMSGSIZE)
        }
    }

    /// The next datagram's messages, or nil if none arrived within the timeout.
    func receive(timeoutMilliseconds: Int32) throws(NetfilterError) -> [NetlinkMessage]? {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&descriptor, 1, timeoutMilliseconds)
            if ready < 0 {
                if Glibc.errno == EINTR { continue }
                throw .system(call: "poll(netlink)", errno: Glibc.errno)
            }
            if ready == 0 { return nil }
            let received = recv(fd, buffer, Self.receiveBufferSize, Int32(MSG_TRUNC) | Int32(MSG_DONTWAIT))
            if received < 0 {
                let code = Glibc.errno
                if code == EINTR || code == EAGAIN { continue }
                throw .system(call: "recv(netlink)", errno: code)
            }
            guard received <= Self.receiveBufferSize else {
                throw .malformedReply("a reply of \(received) bytes does not fit the \(Self.receiveBufferSize)-byte buffer")
            }
            return try NetlinkMessage.parse(UnsafeRawBufferPointer(start: buffer, count: received))
        }
    }

    /// Discards anything left over from an earlier, interrupted request.
    func drain() {
        while true {
            let received = recv(fd, buffer, Self.receiveBufferSize, Int32(MSG_DONTWAIT))
            if received < 0, Glibc.errno == EINTR { continue }
            if received <= 0 { return }
        }
    }
}

/// Builds one netlink batch (a transaction) message by message.
final class BatchBuilder {
    /// Every message is built here first. Messages stay far below this size: rules
    /// have at most 64 expressions and element lists are sent in chunks.
    static let scratchSize = 1 << 18
    static let elementsPerMessage = 1000

    private(set) var data: [UInt8] = []
    /// Sequence number → what the message does, for error reports.
    private(set) var operations: [UInt32: String] = [:]
    /// Sequence numbers of messages that ask for an acknowledgement.
    private(set) var acknowledged: [UInt32] = []
    /// Sequence number → position in the batch.
    private(set) var order: [UInt32: Int] = [:]
    private let socket: NetlinkSocket
    private let scratch: UnsafeMutableRawPointer
    private(set) var isEmpty = true

    init(socket: NetlinkSocket) {
        self.socket = socket
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.scratchSize, alignment: 8)
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: Self.scratchSize)
        let sequence = socket.nextSequence()
        operations[sequence] = "the start of the transaction"
        order[sequence] = 0
        append(nftnl_batch_begin(scratch.assumingMemoryBound(to: CChar.self), sequence))
    }

    deinit { scratch.deallocate() }

    /// Adds one nf_tables message (`type` is an NFT_MSG_* number) that is acknowledged.
    func add(
        _ type: UInt32, family: NFT.Family, flags: Int32, operation: String,
        payload: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) {
        let sequence = socket.nextSequence()
        let header = nftnl_nlmsg_build_hdr(
            scratch.assumingMemoryBound(to: CChar.self), UInt16(truncatingIfNeeded: type), UInt16(family.protocolNumber),
            UInt16(truncatingIfNeeded: flags | NLM_F_ACK), sequence)
        if let header { payload(header) }
        append(header)
        operations[sequence] = operation
        order[sequence] = order.count
        acknowledged.append(sequence)
        isEmpty = false
    }

    /// Closes the batch and returns the bytes to send.
    func finish() -> [UInt8] {
        let sequence = socket.nextSequence()
        operations[sequence] = "the end of the transaction"
        order[sequence] = order.count
        append(nftnl_batch_end(scratch.assumingMemoryBound(to: CChar.self), sequence))
        return data
    }

    private func append(_ header: UnsafeMutablePointer<nlmsghdr>?) {
        guard let header else { return }
        let length = min(Int(header.pointee.nlmsg_len), Self.scratchSize)
        let aligned = (length + 3) & ~3
        data += UnsafeRawBufferPointer(start: UnsafeRawPointer(header), count: length)
        data += [UInt8](repeating: 0, count: aligned - length)
    }
}

/// nf_tables message types (NFT_MSG_*), including those newer than the headers.
enum MessageType {
    static let newTable = NFT_MSG_NEWTABLE.rawValue
    static let getTable = NFT_MSG_GETTABLE.rawValue
    static let delTable = NFT_MSG_DELTABLE.rawValue
    static let newChain = NFT_MSG_NEWCHAIN.rawValue
    static let getChain = NFT_MSG_GETCHAIN.rawValue
    static let newRule = NFT_MSG_NEWRULE.rawValue
    static let getRule = NFT_MSG_GETRULE.rawValue
    static let newSet = NFT_MSG_NEWSET.rawValue
    static let getSet = NFT_MSG_GETSET.rawValue
    static let newSetElement = NFT_MSG_NEWSETELEM.rawValue
    static let getSetElement = NFT_MSG_GETSETELEM.rawValue
    static let delSetElement = NFT_MSG_DELSETELEM.rawValue
    static let getGeneration = NFT_MSG_GETGEN.rawValue
    /// NFT_MSG_DESTROYSETELEM (Linux 6.3+): delete, ignoring absent elements. Not in
    /// the installed (6.1) uapi headers.
    static let destroySetElement: UInt32 = 30

    /// The nf_tables subsystem in the high byte of nlmsg_type.
    static let subsystem: UInt16 = 10 << 8  // NFNL_SUBSYS_NFTABLES
}
