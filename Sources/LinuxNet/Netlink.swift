#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Errors

/// What the shared netlink code (`NetlinkSocket`, `NetlinkMessages`,
/// `NetlinkAttributes`) needs from a client's error type, so that every
/// failure reaches the caller in the client's own words.
package protocol NetlinkClientError: Error {
    /// A send did not complete within the socket's send timeout.
    static var timeout: Self { get }
    /// A system call on the netlink socket failed.
    static func system(operation: String, errno: Int32) -> Self
    /// Fewer bytes than a length or a type requires: a datagram larger than the
    /// receive buffer, or a message or field cut short.
    static func truncated(expected: Int, actual: Int) -> Self
    /// A reply that does not parse.
    static func malformed(_ why: String) -> Self
    /// `socket(2)` failed. A client overrides this to say what a missing
    /// protocol or privilege means for it; the default is `system`.
    static func cannotOpen(protocolName: String, errno: Int32) -> Self
    /// `sendto(2)` failed (other than by the send timeout); the default is `system`.
    static func cannotSend(errno: Int32) -> Self
}

extension NetlinkClientError {
    package static func cannotOpen(protocolName: String, errno: Int32) -> Self {
        system(operation: "socket(AF_NETLINK, \(protocolName))", errno: errno)
    }

    package static func cannotSend(errno: Int32) -> Self {
        system(operation: "sendto", errno: errno)
    }
}

// MARK: - Messages

/// One netlink message of a reply, copied out of the datagram after its
/// bounds were checked.
package struct NetlinkMessage: Hashable, Sendable {
    /// `nlmsg_type`: `NLMSG_ERROR`, `NLMSG_DONE`, or the protocol's own type.
    package var type: UInt16
    package var flags: UInt16
    package var sequence: UInt32
    /// What follows the 16-byte header.
    package var payload: [UInt8]

    package init(type: UInt16, flags: UInt16, sequence: UInt32, payload: [UInt8]) {
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.payload = payload
    }

    /// The messages packed in one datagram, in order. An empty datagram holds
    /// none; a header or a length that does not fit throws.
    package static func split<Failure: NetlinkClientError>(_ datagram: [UInt8], as _: Failure.Type) throws(Failure)
        -> [NetlinkMessage]
    {
        try datagram.withBytes { (bytes) throws(Failure) -> [NetlinkMessage] in try split(bytes, as: Failure.self) }
    }

    static func split<Failure: NetlinkClientError>(_ datagram: UnsafeRawBufferPointer, as _: Failure.Type) throws(Failure)
        -> [NetlinkMessage]
    {
        var messages: [NetlinkMessage] = []
        try NetlinkMessages.forEach(in: datagram, as: Failure.self) { (header, payload) throws(Failure) in
            messages.append(
                NetlinkMessage(type: header.type, flags: header.flags, sequence: header.sequence, payload: Array(payload)))
            return true
        }
        return messages
    }

    /// The kernel's answer an `NLMSG_ERROR` message carries. Throws for any
    /// other message type, and for an error code that does not parse.
    package func acknowledgement<Failure: NetlinkClientError>(as _: Failure.Type) throws(Failure) -> NetlinkAcknowledgement {
        guard type == NetlinkMessages.typeError else {
            throw Failure.malformed("message type \(type) read as an acknowledgement (NLMSG_ERROR)")
        }
        return try payload.withBytes { (bytes) throws(Failure) -> NetlinkAcknowledgement in
            try NetlinkMessages.acknowledgement(of: bytes, flags: flags, as: Failure.self)
        }
    }
}

/// The kernel's answer to one request message (an `NLMSG_ERROR` message):
/// success, or the errno of a refusal with the kernel's explanation when the
/// socket asked for extended acknowledgements.
package struct NetlinkAcknowledgement: Hashable, Sendable {
    /// 0 for success, else the (positive) errno of the refusal.
    package var errno: Int32
    /// The extended-ack text (`NLMSGERR_ATTR_MSG`), if the kernel sent one.
    package var message: String?

    package init(errno: Int32, message: String?) {
        self.errno = errno
        self.message = message
    }

    package var isSuccess: Bool { errno == 0 }
}

/// Netlink messages (`struct nlmsghdr` and payload, each aligned to 4 bytes)
/// packed in one datagram. Generic over the client's error type, so that every
/// netlink parser can walk messages the same way.
enum NetlinkMessages {
    static let headerLength = 16  // sizeof(struct nlmsghdr)
    static let typeNoop: UInt16 = 1  // NLMSG_NOOP
    static let typeError: UInt16 = 2  // NLMSG_ERROR
    static let typeDone: UInt16 = 3  // NLMSG_DONE
    static let typeOverrun: UInt16 = 4  // NLMSG_OVERRUN
    static let flagDumpInterrupted: UInt16 = 0x10  // NLM_F_DUMP_INTR
    static let flagCapped: UInt16 = 0x100  // NLM_F_CAPPED: the error omits the request's payload
    static let flagAckTLVs: UInt16 = 0x200  // NLM_F_ACK_TLVS: extended-ack attributes follow
    static let attributeMessage: UInt16 = 1  // NLMSGERR_ATTR_MSG

    /// The header fields a parser reads.
    struct Header {
        var type: UInt16
        var flags: UInt16
        var sequence: UInt32
    }

    /// Calls `body` with the header and payload of each message in `bytes`, in
    /// order, until it returns false. Throws `Failure.truncated` or `.malformed`
    /// for a header or length that does not fit.
    static func forEach<Failure: NetlinkClientError>(
        in bytes: UnsafeRawBufferPointer, as _: Failure.Type,
        _ body: (Header, UnsafeRawBufferPointer) throws(Failure) -> Bool
    ) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let remaining = bytes.count - offset
            guard remaining >= headerLength else { throw Failure.truncated(expected: headerLength, actual: remaining) }
            let length = Int(load(UInt32.self, bytes, offset))
            guard length >= headerLength else {
                throw Failure.malformed("nlmsg_len \(length) is smaller than the netlink header")
            }
            guard length <= remaining else { throw Failure.truncated(expected: length, actual: remaining) }
            let header = Header(
                type: load(UInt16.self, bytes, offset + 4), flags: load(UInt16.self, bytes, offset + 6),
                sequence: load(UInt32.self, bytes, offset + 8))
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + headerLength)..<(offset + length)])
            guard try body(header, payload) else { return }
            offset += min((length + 3) & ~3, remaining)  // NLMSG_ALIGN, clamped to the end
        }
    }

    /// Calls `body` with the type and payload of each message of `sequence` in
    /// `bytes`, in order, until it returns a result; messages of other sequences
    /// (stray, late replies) are skipped. Returns nil if no call gave a result.
    /// Throws `Failure.truncated` or `.malformed` for an empty datagram or a
    /// header or length that does not fit.
    static func first<T, Failure: NetlinkClientError>(
        in bytes: UnsafeRawBufferPointer, sequence: UInt32, as _: Failure.Type,
        _ body: (UInt16, UnsafeRawBufferPointer) throws(Failure) -> T?
    ) throws(Failure) -> T? {
        if bytes.isEmpty { throw Failure.truncated(expected: headerLength, actual: 0) }
        var result: T?
        try forEach(in: bytes, as: Failure.self) { (header, payload) throws(Failure) in
            guard header.sequence == sequence else { return true }
            result = try body(header.type, payload)
            return result == nil
        }
        return result
    }

    /// The errno of an `NLMSG_ERROR` message's payload (`struct nlmsgerr`),
    /// positive; 0 for an acknowledgement. Throws for a payload too short for
    /// the code, or a code that is not 0 or a negated errno.
    static func errorCode<Failure: NetlinkClientError>(of payload: UnsafeRawBufferPointer, as _: Failure.Type)
        throws(Failure) -> Int32
    {
        guard payload.count >= 4 else { throw Failure.truncated(expected: 4, actual: payload.count) }
        let code = load(Int32.self, payload, 0)
        guard code <= 0, code != Int32.min else { throw Failure.malformed("NLMSG_ERROR with error code \(code)") }
        return -code
    }

    /// The code of an `NLMSG_ERROR` message's payload and, with `NLM_F_ACK_TLVS`,
    /// the kernel's extended-ack text. The text follows `struct nlmsgerr`: the
    /// error code, the request's header, and (unless `NLM_F_CAPPED`) the
    /// request's payload.
    static func acknowledgement<Failure: NetlinkClientError>(
        of payload: UnsafeRawBufferPointer, flags: UInt16, as _: Failure.Type
    ) throws(Failure) -> NetlinkAcknowledgement {
        let code = try errorCode(of: payload, as: Failure.self)
        guard flags & flagAckTLVs != 0, payload.count >= 4 + headerLength else {
            return NetlinkAcknowledgement(errno: code, message: nil)
        }
        var offset = 4 + headerLength
        if flags & flagCapped == 0 {
            let request = Int(load(UInt32.self, payload, 4))
            offset = 4 + ((request + 3) & ~3)
        }
        guard offset <= payload.count else { return NetlinkAcknowledgement(errno: code, message: nil) }
        var message: String?
        // The text only explains a code already read: attributes that do not
        // fit lose the explanation, not the answer.
        try? NetlinkAttributes.forEach(in: UnsafeRawBufferPointer(rebasing: payload[offset...]), as: Failure.self) {
            (type, value) throws(Failure) in
            if type == attributeMessage { message = String(decoding: value.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return NetlinkAcknowledgement(errno: code, message: message)
    }
}

// MARK: - Attributes

/// One netlink attribute of a reply, copied out after its bounds were checked.
package struct NetlinkAttribute: Hashable, Sendable {
    /// The type, without the `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` bits.
    package var type: UInt16
    package var value: [UInt8]

    package init(type: UInt16, value: [UInt8]) {
        self.type = type
        self.value = value
    }
}

/// Netlink attributes (`struct nlattr`: len u16 | type u16 | payload, padded to 4).
package enum NetlinkAttributes {
    static let nestedFlag: UInt16 = 0x8000  // NLA_F_NESTED
    static let typeMask: UInt16 = 0x3FFF  // NLA_TYPE_MASK: ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

    /// Calls `body` with the type (flag bits cleared) and the payload of each
    /// attribute packed in `bytes`, in order. Throws `Failure.malformed` for a
    /// header or a length that does not fit.
    static func forEach<Failure: NetlinkClientError>(
        in bytes: UnsafeRawBufferPointer, as _: Failure.Type,
        _ body: (UInt16, UnsafeRawBufferPointer) throws(Failure) -> Void
    ) throws(Failure) {
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

    /// The attributes packed in `bytes`, in order. Throws `Failure.malformed`
    /// for a header or a length that does not fit.
    package static func list<Failure: NetlinkClientError>(in bytes: [UInt8], as _: Failure.Type) throws(Failure)
        -> [NetlinkAttribute]
    {
        try bytes.withBytes { (raw) throws(Failure) -> [NetlinkAttribute] in
            var attributes: [NetlinkAttribute] = []
            try forEach(in: raw, as: Failure.self) { (type, value) throws(Failure) in
                attributes.append(NetlinkAttribute(type: type, value: Array(value)))
            }
            return attributes
        }
    }
}

extension [UInt8] {
    /// `withUnsafeBytes` that keeps the body's error type (the standard one
    /// only rethrows `any Error`).
    func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try withUnsafeBufferPointer { (buffer) throws(E) -> R in try body(UnsafeRawBufferPointer(buffer)) }
    }
}

/// Host-order load; callers check bounds first.
@inline(__always)
private func load<T: FixedWidthInteger>(_: T.Type, _ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
    precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count)
    return bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
}
