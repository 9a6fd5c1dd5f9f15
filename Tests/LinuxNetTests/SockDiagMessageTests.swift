import CNetlink
import Foundation
import NIOCore
import TestFixtures
import Testing

@testable import LinuxNet

/// Replies recorded from the real kernel (Linux 6.18) with `SockDiagClient.rawRoundTrip`
/// for loopback connections made by the test process (cgroup v2 root, id 1, uid 0).
enum Fixtures {
    static let sequence: UInt32 = 0x1234_5678

    /// Request for client 127.0.0.1:43622 -> 127.0.0.1:36803, sequence 0x12345678.
    static let requestV4 = bytes(hex: """
        48000000140001007856341200000000 02060000ffffffff aa668fc3 7f000001000000000000000000000000
        7f000001000000000000000000000000 00000000 ffffffffffffffff
        """)
    /// Found: AF_INET, ESTABLISHED, uid 0, inode 0x9260, attributes SHUTDOWN (8),
    /// SOCKOPT (15), CGROUP_ID (21) = 1, and type 22.
    static let foundV4 = bytes(hex: """
        7c00000014000000785634129d2a0000 02010000aa668fc37f00000100000000 00000000000000007f00000100000000
        00000000000000000000000001000000 00000000000000000000000000000000 0000000060920000
        0500080000000000 08000f0000000000 0c0015000100000000000000 0600160052000000
        """)
    /// Not found: NLMSG_ERROR -ENOENT echoing the request (client port changed to 1).
    static let notFoundV4 = bytes(hex: """
        5c00000002000000795634129d2a0000feffffff4800000014000100795634120000000002060000ffffffff00018fc3
        7f0000010000000000000000000000007f00000100000000000000000000000000000000ffffffffffffffff
        """)
    static let notFoundV4Sequence: UInt32 = 0x1234_5679

    /// Request for client [::1]:49794 -> [::1]:36807.
    static let requestV6 = bytes(hex: """
        480000001400010078563412000000000a060000ffffffffc2828fc7000000000000000000000000000000010000000000000000
        000000000000000100000000ffffffffffffffff
        """)
    /// Found: AF_INET6, ESTABLISHED, uid 0, idiag_if 1 (lo), inode 0x9263, cgroup id 1.
    static let foundV6 = bytes(hex: """
        7c00000014000000785634129d2a00000a010000c2828fc70000000000000000000000000000000100000000000000000000000000000001
        0000000002000000000000000000000000000000000000000000000063920000050008000000000008000f00000000000c0015000100000000000000
        0600160012000000
        """)
    static let notFoundV6 = bytes(hex: """
        5c00000002000000795634129d2a0000feffffff480000001400010079563412000000000a060000ffffffff00018fc7000000000000000000000000
        000000010000000000000000000000000000000100000000ffffffffffffffff
        """)

    static let allReplies: [(String, [UInt8], UInt32)] = [
        ("foundV4", foundV4, sequence), ("foundV6", foundV6, sequence),
        ("notFoundV4", notFoundV4, notFoundV4Sequence), ("notFoundV6", notFoundV6, notFoundV4Sequence),
    ]
}

private func withPatched(_ bytes: [UInt8], _ patch: (inout [UInt8]) -> Void) -> [UInt8] {
    var copy = bytes
    patch(&copy)
    return copy
}

private func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
    withUnsafeBytes(of: value) { raw in
        for (i, byte) in raw.enumerated() { bytes[offset + i] = byte }
    }
}

@Suite("sock_diag request bytes (pure)")
struct SockDiagRequestTests {
    @Test func layoutsMatchTheHeaders() {
        #expect(MemoryLayout<nlmsghdr>.size == SockDiagMessage.netlinkHeaderLength)
        #expect(MemoryLayout<inet_diag_req_v2>.size == SockDiagMessage.requestBodyLength)
        #expect(MemoryLayout<inet_diag_msg>.size == SockDiagMessage.diagMessageLength)
        #expect(MemoryLayout<inet_diag_msg>.offset(of: \.idiag_uid) == 64)
        #expect(MemoryLayout<inet_diag_msg>.offset(of: \.idiag_inode) == 68)
        #expect(MemoryLayout<inet_diag_req_v2>.offset(of: \.idiag_states) == 4)
        #expect(MemoryLayout<inet_diag_req_v2>.offset(of: \.id) == 8)
        #expect(SockDiagMessage.requestLength == 16 + 56)
        #expect(Int(SockDiagMessage.typeSockDiagByFamily) == Int(SOCK_DIAG_BY_FAMILY))
        #expect(Int(SockDiagMessage.typeError) == Int(NLMSG_ERROR))
        #expect(Int(SockDiagMessage.typeDone) == Int(NLMSG_DONE))
        #expect(Int(SockDiagMessage.flagRequest) == Int(NLM_F_REQUEST))
        #expect(Int(SockDiagMessage.attributeCgroupID) == Int(INET_DIAG_CGROUP_ID))
        #expect(SockDiagMessage.noCookie == UInt32(truncatingIfNeeded: INET_DIAG_NOCOOKIE))
    }

    /// Decodes request bytes through the C structs of linux/netlink.h and linux/inet_diag.h.
    private func decode(_ bytes: [UInt8]) -> (nlmsghdr, inet_diag_req_v2) {
        #expect(bytes.count == 72)
        return bytes.withUnsafeBytes { raw in
            (raw.loadUnaligned(as: nlmsghdr.self), raw.loadUnaligned(fromByteOffset: 16, as: inet_diag_req_v2.self))
        }
    }

    private func checkCommon(_ header: nlmsghdr, _ request: inet_diag_req_v2, sequence: UInt32) {
        #expect(header.nlmsg_len == 72)
        #expect(header.nlmsg_type == UInt16(SOCK_DIAG_BY_FAMILY))
        #expect(header.nlmsg_flags == UInt16(NLM_F_REQUEST))  // exact lookup: no NLM_F_DUMP, no ACK
        #expect(header.nlmsg_seq == sequence)
        #expect(header.nlmsg_pid == 0)
        #expect(request.sdiag_protocol == UInt8(IPPROTO_TCP))
        #expect(request.idiag_ext == 0)
        #expect(request.pad == 0)
        #expect(request.idiag_states == 0xFFFF_FFFF)
        #expect(request.id.idiag_if == 0)
        #expect(request.id.idiag_cookie.0 == UInt32(truncatingIfNeeded: INET_DIAG_NOCOOKIE))
        #expect(request.id.idiag_cookie.1 == UInt32(truncatingIfNeeded: INET_DIAG_NOCOOKIE))
    }

    @Test func ipv4() throws {
        let bytes = try SockDiagMessage.request(
            source: try SocketAddress(ipAddress: "10.77.0.5", port: 43622),
            destination: try SocketAddress(ipAddress: "10.77.200.1", port: 8080), sequence: 0xA1B2_C3D4)
        let (header, request) = decode(bytes)
        checkCommon(header, request, sequence: 0xA1B2_C3D4)
        #expect(request.sdiag_family == UInt8(AF_INET))
        #expect(UInt16(bigEndian: request.id.idiag_sport) == 43622)
        #expect(UInt16(bigEndian: request.id.idiag_dport) == 8080)
        #expect(Array(bytes[24..<28]) == [0xAA, 0x66, 0x1F, 0x90])  // big-endian on the wire
        // IPv4 in the first word, network order; the other three words zero.
        #expect(Array(bytes[28..<44]) == [10, 77, 0, 5] + Array(repeating: 0, count: 12))
        #expect(Array(bytes[44..<60]) == [10, 77, 200, 1] + Array(repeating: 0, count: 12))
        #expect(UInt32(bigEndian: request.id.idiag_src.0) == 0x0A4D_0005)
        #expect(UInt32(bigEndian: request.id.idiag_dst.0) == 0x0A4D_C801)
    }

    @Test func ipv6() throws {
        let bytes = try SockDiagMessage.request(
            source: try SocketAddress(ipAddress: "fd77::5", port: 1),
            destination: try SocketAddress(ipAddress: "fd77::1:2", port: 65535), sequence: 7)
        let (header, request) = decode(bytes)
        checkCommon(header, request, sequence: 7)
        #expect(request.sdiag_family == UInt8(AF_INET6))
        #expect(UInt16(bigEndian: request.id.idiag_sport) == 1)
        #expect(UInt16(bigEndian: request.id.idiag_dport) == 65535)
        #expect(Array(bytes[28..<44]) == [0xFD, 0x77] + Array(repeating: 0, count: 13) + [5])
        #expect(Array(bytes[44..<60]) == [0xFD, 0x77] + Array(repeating: 0, count: 11) + [1, 0, 2])
    }

    @Test func matchesTheRecordedRequests() throws {
        #expect(
            try SockDiagMessage.request(
                source: try SocketAddress(ipAddress: "127.0.0.1", port: 43622),
                destination: try SocketAddress(ipAddress: "127.0.0.1", port: 36803), sequence: Fixtures.sequence)
                == Fixtures.requestV4)
        #expect(
            try SockDiagMessage.request(
                source: try SocketAddress(ipAddress: "::1", port: 49794),
                destination: try SocketAddress(ipAddress: "::1", port: 36807), sequence: Fixtures.sequence)
                == Fixtures.requestV6)
    }

    @Test func ipv4MappedBecomesIPv4() throws {
        let plain = try SockDiagMessage.request(
            source: try SocketAddress(ipAddress: "10.77.0.5", port: 1000),
            destination: try SocketAddress(ipAddress: "10.77.200.1", port: 80), sequence: 1)
        let bothMapped = try SockDiagMessage.request(
            source: try SocketAddress(ipAddress: "::ffff:10.77.0.5", port: 1000),
            destination: try SocketAddress(ipAddress: "::ffff:10.77.200.1", port: 80), sequence: 1)
        let oneMapped = try SockDiagMessage.request(
            source: try SocketAddress(ipAddress: "::ffff:10.77.0.5", port: 1000),
            destination: try SocketAddress(ipAddress: "10.77.200.1", port: 80), sequence: 1)
        #expect(bothMapped == plain)
        #expect(oneMapped == plain)
    }

    @Test func mixedFamiliesAreRefused() throws {
        let v4 = try SocketAddress(ipAddress: "10.77.0.5", port: 1)
        let v6 = try SocketAddress(ipAddress: "fd77::1", port: 2)
        let mapped = try SocketAddress(ipAddress: "::ffff:10.77.0.5", port: 1)
        let unix = try SocketAddress(unixDomainSocketPath: "/tmp/x.sock")
        for (source, destination) in [(v4, v6), (v6, v4), (mapped, v6), (unix, v4), (v4, unix), (unix, unix)] {
            #expect(throws: SockDiagError.self) {
                try SockDiagMessage.request(source: source, destination: destination, sequence: 1)
            }
        }
    }
}

@Suite("sock_diag reply parsing (pure, recorded kernel replies)")
struct SockDiagReplyTests {
    @Test func foundIPv4() throws {
        let reply = try SockDiagMessage.parseReply(Fixtures.foundV4, sequence: Fixtures.sequence)
        #expect(reply == SockDiagReply(family: 2, state: 1, uid: 0, inode: 0x9260, cgroupID: CgroupID(1)))
    }

    @Test func foundIPv6() throws {
        let reply = try SockDiagMessage.parseReply(Fixtures.foundV6, sequence: Fixtures.sequence)
        #expect(reply == SockDiagReply(family: 10, state: 1, uid: 0, inode: 0x9263, cgroupID: CgroupID(1)))
    }

    @Test func notFound() {
        #expect(throws: SockDiagError.notFound) {
            try SockDiagMessage.parseReply(Fixtures.notFoundV4, sequence: Fixtures.notFoundV4Sequence)
        }
        #expect(throws: SockDiagError.notFound) {
            try SockDiagMessage.parseReply(Fixtures.notFoundV6, sequence: Fixtures.notFoundV4Sequence)
        }
    }

    @Test func otherKernelError() {
        let eperm = withPatched(Fixtures.notFoundV4) { put(Int32(-EPERM), at: 16, in: &$0) }
        #expect(throws: SockDiagError.kernel(errno: EPERM)) {
            try SockDiagMessage.parseReply(eperm, sequence: Fixtures.notFoundV4Sequence)
        }
        let ack = withPatched(Fixtures.notFoundV4) { put(Int32(0), at: 16, in: &$0) }
        #expect(throws: SockDiagError.malformed("unexpected acknowledgement (NLMSG_ERROR 0)")) {
            try SockDiagMessage.parseReply(ack, sequence: Fixtures.notFoundV4Sequence)
        }
        for weird in [Int32(5), Int32.min] {
            let bad = withPatched(Fixtures.notFoundV4) { put(weird, at: 16, in: &$0) }
            #expect(throws: SockDiagError.self) { try SockDiagMessage.parseReply(bad, sequence: Fixtures.notFoundV4Sequence) }
        }
    }

    @Test func noCgroupAttribute() throws {
        // Turn the INET_DIAG_CGROUP_ID attribute (at 16 + 72 + 8 + 8) into type 99.
        let patched = withPatched(Fixtures.foundV4) { put(UInt16(99), at: 104 + 2, in: &$0) }
        let reply = try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
        #expect(reply.cgroupID == nil)
        // Flag bits in the attribute type are ignored.
        let flagged = withPatched(Fixtures.foundV4) { put(UInt16(21 | 0x8000), at: 104 + 2, in: &$0) }
        #expect(try SockDiagMessage.parseReply(flagged, sequence: Fixtures.sequence).cgroupID == CgroupID(1))
    }

    @Test func largeCgroupID() throws {
        let patched = withPatched(Fixtures.foundV4) { put(UInt64(0x0123_4567_89AB_CDEF), at: 108, in: &$0) }
        #expect(try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence).cgroupID == CgroupID(0x0123_4567_89AB_CDEF))
    }

    @Test func wrongSequenceIsRefused() {
        for (name, reply, sequence) in Fixtures.allReplies {
            #expect(throws: SockDiagError.self, "\(name)") { try SockDiagMessage.parseReply(reply, sequence: sequence &+ 1) }
            #expect(throws: SockDiagError.self, "\(name)") { try SockDiagMessage.parseReply(reply, sequence: 0) }
        }
    }

    @Test func strayRepliesAreSkipped() throws {
        // A late reply to another request, then ours, in one buffer.
        let stray = withPatched(Fixtures.foundV6) { put(UInt32(0xDEAD), at: 8, in: &$0) }
        let both = stray + Fixtures.foundV4
        #expect(try SockDiagMessage.parseReply(both, sequence: Fixtures.sequence).family == 2)
        let onlyStray = try stray.withUnsafeBytes { try SockDiagMessage.parseDatagram($0, sequence: Fixtures.sequence) }
        #expect(onlyStray == nil)
    }

    @Test func everyTruncatedPrefixThrows() {
        for (name, reply, sequence) in Fixtures.allReplies {
            for length in 0..<reply.count {
                #expect(throws: SockDiagError.self, "\(name) prefix \(length)") {
                    try SockDiagMessage.parseReply(Array(reply.prefix(length)), sequence: sequence)
                }
            }
        }
    }

    @Test func nlmsgLenLargerThanBuffer() {
        let patched = withPatched(Fixtures.foundV4) { put(UInt32(125), at: 0, in: &$0) }
        #expect(throws: SockDiagError.truncated(expected: 125, actual: 124)) {
            try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
        }
        let huge = withPatched(Fixtures.foundV4) { put(UInt32.max, at: 0, in: &$0) }
        #expect(throws: SockDiagError.self) { try SockDiagMessage.parseReply(huge, sequence: Fixtures.sequence) }
    }

    @Test func nlmsgLenSmallerThanHeader() {
        for length in [UInt32(0), 1, 15] {
            let patched = withPatched(Fixtures.foundV4) { put(length, at: 0, in: &$0) }
            #expect(throws: SockDiagError.malformed("nlmsg_len \(length) is smaller than the netlink header")) {
                try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
            }
        }
    }

    @Test func messageTooShortForInetDiagMsg() {
        // A SOCK_DIAG_BY_FAMILY message whose nlmsg_len leaves < 72 payload bytes.
        let patched = withPatched(Fixtures.foundV4) { put(UInt32(16 + 71), at: 0, in: &$0) }
        #expect(throws: SockDiagError.truncated(expected: 72, actual: 71)) {
            try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
        }
    }

    @Test func attributeLengthOverflow() {
        for length in [UInt16(13), 0xFF, 0xFFFF] {
            let patched = withPatched(Fixtures.foundV4) { put(length, at: 104, in: &$0) }
            #expect(throws: SockDiagError.self, "length \(length)") {
                try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
            }
        }
        // Last attribute (at 116, 6 bytes + pad) claiming 9 bytes: runs past the end.
        let last = withPatched(Fixtures.foundV4) { put(UInt16(9), at: 116, in: &$0) }
        #expect(throws: SockDiagError.self) { try SockDiagMessage.parseReply(last, sequence: Fixtures.sequence) }
    }

    @Test func zeroAndShortAttributeLengthsDoNotLoop() {
        for offset in [88, 96, 104, 116] {
            for length in [UInt16(0), 1, 2, 3] {
                let patched = withPatched(Fixtures.foundV4) { put(length, at: offset, in: &$0) }
                #expect(throws: SockDiagError.self, "attribute at \(offset) length \(length)") {
                    try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
                }
            }
        }
    }

    @Test func cgroupAttributeOfWrongSize() {
        let patched = withPatched(Fixtures.foundV4) { put(UInt16(8), at: 104, in: &$0) }
        #expect(throws: SockDiagError.malformed("INET_DIAG_CGROUP_ID of 4 bytes, expected 8")) {
            try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
        }
    }

    @Test func unexpectedTypesAndFamilies() {
        for type in [UInt16(3), 1, 16, 0xFFFF] {
            let patched = withPatched(Fixtures.foundV4) { put(type, at: 4, in: &$0) }
            #expect(throws: SockDiagError.self, "type \(type)") {
                try SockDiagMessage.parseReply(patched, sequence: Fixtures.sequence)
            }
        }
        let family = withPatched(Fixtures.foundV4) { $0[16] = 1 }
        #expect(throws: SockDiagError.self) { try SockDiagMessage.parseReply(family, sequence: Fixtures.sequence) }
    }

    @Test func randomCorruptionNeverCrashes() {
        let seed = SeededRandom.seed(default: 0x50C_D1A6)
        var generator = SeededRandom(seed: seed)
        var outcomes = (parsed: 0, thrown: 0)
        for _ in 0..<20_000 {
            guard let (_, base, sequence) = Fixtures.allReplies.randomElement(using: &generator) else { continue }
            let bytes = randomlyCorrupted(base, using: &generator)
            do {
                _ = try SockDiagMessage.parseReply(bytes, sequence: sequence)
                outcomes.parsed += 1
            } catch is SockDiagError {
                outcomes.thrown += 1
            } catch {
                Issue.record("unexpected error type \(error) (TEST_SEED=\(seed) replays it)")
            }
        }
        // Corruption must both break replies and leave some whole (an appended
        // tail, a changed value), or the loop tested one path only.
        #expect(outcomes.thrown > 1000 && outcomes.parsed > 100, "outcomes \(outcomes) with TEST_SEED=\(seed)")
    }
}
