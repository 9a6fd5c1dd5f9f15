/// Netlink replies as the fuzzer gives them: one datagram of messages, each a
/// 16-byte header (`nlmsg_len`, type, flags, sequence, port id, host order)
/// and a payload.
public enum NetlinkInput {
    /// The sequence number of the first message, which the parsers are asked
    /// for, so that recorded replies parse whatever sequence they carry.
    public static func firstSequence(_ bytes: [UInt8]) -> UInt32 {
        guard bytes.count >= 12 else { return 0 }
        return bytes[8..<12].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The bytes cut at each message's (aligned) end, as the kernel sends a
    /// reply of several datagrams; what does not parse as a message stays
    /// whole at the end. Read independently of the parsers under test.
    public static func datagrams(_ bytes: [UInt8]) -> [[UInt8]] {
        var datagrams: [[UInt8]] = []
        var offset = 0
        while bytes.count - offset >= 16 {
            let length = bytes[offset..<(offset + 4)].reversed().reduce(0) { $0 << 8 | Int($1) }
            let end = offset + ((length + 3) & ~3)
            guard length >= 16, end <= bytes.count else { break }
            datagrams.append(Array(bytes[offset..<end]))
            offset = end
        }
        if offset < bytes.count { datagrams.append(Array(bytes[offset...])) }
        return datagrams
    }
}
