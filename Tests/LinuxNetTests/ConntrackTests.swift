import CNetlink
import Foundation
import NIOCore
import TestFixtures
import Testing

@testable import LinuxNet

// MARK: - Kernel

/// A scratch network namespace `ma-ct-<random>` in which TCP to port 80 of
/// 10.77.31.0/24 (and fd77:31::/64) is redirected, as the agent's capture does,
/// to listeners inside it: 127.0.0.1 (IPv4), [::1] (IPv6), and a dual-stack [::]
/// listener for IPv4 to port 81. Deleted, with everything in it, on deinit.
final class RedirectingNamespace: Sendable {
    let name: String
    let namespace: NetworkNamespace
    let listener4: CInt
    let listener6: CInt
    let listenerDual: CInt
    /// The address the clients bind to (a fixed port, as a workload reusing it).
    static let client4 = "10.77.31.1"
    static let client6 = "fd77:31::1"

    init() throws {
        let name = "ma-ct-\(randomSuffix())"
        try run(["ip", "netns", "add", name])
        let namespace = NetworkNamespace(path: "/run/netns/\(name)")
        var listeners: [CInt] = []
        do {
            try run(["ip", "-n", name, "link", "set", "lo", "up"])
            try run(["ip", "-n", name, "link", "add", "ma0", "type", "veth", "peer", "name", "ma1"])
            try run(["ip", "-n", name, "link", "set", "ma0", "up"])
            try run(["ip", "-n", name, "link", "set", "ma1", "up"])
            try run(["ip", "-n", name, "addr", "add", "\(Self.client4)/24", "dev", "ma0"])
            try run(["ip", "-n", name, "-6", "addr", "add", "\(Self.client6)/64", "dev", "ma0", "nodad"])
            listeners = try namespace.run { [try listenTCP(host: "127.0.0.1"), try listenTCP(host: "::1"), try listenTCP(host: "::")] }
            let ports = try listeners.map { try address(of: $0).port ?? 0 }
            try run([
                "nsenter", "--net=/run/netns/\(name)", "nft",
                """
                add table inet ma_ct_test; \
                add chain inet ma_ct_test output { type nat hook output priority -100; policy accept; }; \
                add rule inet ma_ct_test output ip daddr 10.77.31.0/24 tcp dport 80 redirect to :\(ports[0]); \
                add rule inet ma_ct_test output ip6 daddr fd77:31::/64 tcp dport 80 redirect to :\(ports[1]); \
                add rule inet ma_ct_test output ip daddr 10.77.31.0/24 tcp dport 81 redirect to :\(ports[2])
                """,
            ])
        } catch {
            for fd in listeners { close(fd) }
            _ = try? run(["ip", "netns", "del", name], allowFailure: true)
            throw error
        }
        self.name = name
        self.namespace = namespace
        (listener4, listener6, listenerDual) = (listeners[0], listeners[1], listeners[2])
    }

    deinit {
        close(listener4)
        close(listener6)
        close(listenerDual)
        _ = try? run(["ip", "netns", "del", name], allowFailure: true)
    }

    /// A connection from `source` (bound, SO_REUSEADDR) to `destination`, made
    /// inside the namespace and accepted on `listener`.
    func connect(from source: SocketAddress, to destination: SocketAddress, acceptingOn listener: CInt) throws
        -> (client: CInt, accepted: CInt)
    {
        let client = try namespace.run { try connectTCP(from: source, to: destination) }
        do {
            return (client, try acceptTCP(listener))
        } catch {
            close(client)
            throw error
        }
    }
}

/// A blocking connect from a fixed local address. (`Glibc.` because, in a file
/// that imports CNetlink, a bare SOCK_STREAM here made the compiler lose it in
/// TestSupport.swift.)
private func connectTCP(from source: SocketAddress, to destination: SocketAddress) throws -> CInt {
    let fd = try check(socket(destination.protocol.rawValue, Int32(Glibc.SOCK_STREAM.rawValue) | Int32(Glibc.SOCK_CLOEXEC.rawValue), 0), "socket")
    do {
        var one: CInt = 1
        try check(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)), "SO_REUSEADDR")
        _ = try source.withSockAddr { try check(bind(fd, $0, socklen_t($1)), "bind \(source)") }
        _ = try destination.withSockAddr { try check(connect(fd, $0, socklen_t($1)), "connect \(destination)") }
    } catch {
        close(fd)
        throw error
    }
    return fd
}

/// Closes with a reset (SO_LINGER 0): the socket is gone at once, no TIME_WAIT,
/// while conntrack keeps the entry (state CLOSE) for a few seconds.
private func closeWithReset(_ fd: CInt) {
    var option = linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    close(fd)
}

/// Two connections from one client address and port to two destinations that
/// redirect to one listener: they would share a reply tuple (listener → client),
/// so NAT gives the second one another source port. `closeFirst`: the first
/// connection is reset before the second is made (a port reused while conntrack
/// still holds the old connection); otherwise both stay open (two sockets with
/// SO_REUSEADDR on one port, as colliding ephemeral ports).
private struct Clash: ~Copyable {
    let client: SocketAddress
    let destination: SocketAddress
    let secondClient: CInt
    let accepted: CInt
    private let firstPair: (CInt, CInt)?

    init(
        in scratch: RedirectingNamespace, client: SocketAddress, first: SocketAddress, second: SocketAddress,
        listener: CInt, closeFirst: Bool
    ) throws {
        let one = try scratch.connect(from: client, to: first, acceptingOn: listener)
        if closeFirst {
            closeWithReset(one.client)
            close(one.accepted)
        }
        let two: (client: CInt, accepted: CInt)
        do {
            two = try scratch.connect(from: client, to: second, acceptingOn: listener)
        } catch {
            if !closeFirst {
                close(one.client)
                close(one.accepted)
            }
            throw error
        }
        self.client = client
        self.destination = second
        self.secondClient = two.client
        self.accepted = two.accepted
        self.firstPair = closeFirst ? nil : one
    }

    deinit {
        close(secondClient)
        close(accepted)
        if let (client, accepted) = firstPair {
            close(client)
            close(accepted)
        }
    }
}

@Suite("conntrack on the real kernel", rootOnly)
struct KernelConntrackTests {
    /// The bug and its fix, end to end: the accepted peer port is NAT's, sock_diag
    /// does not find it, conntrack gives the client's real port, and sock_diag
    /// finds the client socket with it.
    @Test(arguments: [(false, true), (false, false), (true, true), (true, false)])
    func remappedSourcePortIsRecovered(ipv6: Bool, closeFirst: Bool) throws {
        let scratch = try RedirectingNamespace()
        let host = ipv6 ? RedirectingNamespace.client6 : RedirectingNamespace.client4
        let prefix = ipv6 ? "fd77:31::" : "10.77.31."
        let clash = try Clash(
            in: scratch, client: try SocketAddress(ipAddress: host, port: 40000),
            first: try SocketAddress(ipAddress: prefix + "2", port: 80),
            second: try SocketAddress(ipAddress: prefix + "3", port: 80),
            listener: ipv6 ? scratch.listener6 : scratch.listener4, closeFirst: closeFirst)

        let local = try address(of: clash.accepted)
        let peer = try address(of: clash.accepted, peer: true)
        #expect(local.ipAddress == (ipv6 ? "::1" : "127.0.0.1"))
        #expect(peer.ipAddress == clash.client.ipAddress)
        #expect(peer.port != 40000, "NAT did not remap the second connection's source port")
        #expect(try OriginalDestination.of(socket: clash.accepted) == clash.destination)

        let diag = try SockDiagClient(namespace: scratch.namespace)
        #expect(throws: SockDiagError.notFound) { try diag.lookup(source: peer, destination: clash.destination) }

        let conntrack = try ConntrackClient(namespace: scratch.namespace)
        let tuple = try conntrack.originalTuple(ofReplyFrom: local, to: peer)
        #expect(tuple == ConntrackTuple(source: clash.client, destination: clash.destination))
        let source = try conntrack.originalSource(ofReplyFrom: local, to: peer)
        #expect(source == clash.client)
        #expect(try diag.lookup(source: source, destination: clash.destination).inode == inode(of: clash.secondClient))

        // The host's conntrack table does not hold the namespace's connections.
        #expect(throws: ConntrackError.noEntry) { try ConntrackClient().originalSource(ofReplyFrom: local, to: peer) }
    }

    /// A dual-stack listener reports IPv4 as `::ffff:a.b.c.d`; the answer is IPv4.
    @Test func dualStackListenerGetsIPv4() throws {
        let scratch = try RedirectingNamespace()
        let clash = try Clash(
            in: scratch, client: try SocketAddress(ipAddress: RedirectingNamespace.client4, port: 40000),
            first: try SocketAddress(ipAddress: "10.77.31.2", port: 81),
            second: try SocketAddress(ipAddress: "10.77.31.3", port: 81),
            listener: scratch.listenerDual, closeFirst: true)
        let local = try address(of: clash.accepted)
        let peer = try address(of: clash.accepted, peer: true)
        #expect(local.ipAddress == "::ffff:127.0.0.1")
        #expect(peer.ipAddress == "::ffff:10.77.31.1")
        #expect(peer.port != 40000)
        let source = try ConntrackClient(namespace: scratch.namespace).originalSource(ofReplyFrom: local, to: peer)
        #expect(source == clash.client)
        guard case .v4 = source else {
            Issue.record("expected an IPv4 address, got \(source)")
            return
        }
    }

    /// Not remapped: the original source is the accepted peer itself.
    @Test func connectionWithoutClash() throws {
        let scratch = try RedirectingNamespace()
        let client = try SocketAddress(ipAddress: RedirectingNamespace.client4, port: 40001)
        let (fd, accepted) = try scratch.connect(
            from: client, to: try SocketAddress(ipAddress: "10.77.31.9", port: 80), acceptingOn: scratch.listener4)
        defer {
            close(fd)
            close(accepted)
        }
        let source = try ConntrackClient(namespace: scratch.namespace).originalSource(
            ofReplyFrom: try address(of: accepted), to: try address(of: accepted, peer: true))
        #expect(source == client)
    }

    @Test func absentTupleIsNoEntry() throws {
        let scratch = try RedirectingNamespace()
        let conntrack = try ConntrackClient(namespace: scratch.namespace)
        let listener = try SocketAddress(ipAddress: "127.0.0.1", port: 15001)
        for _ in 0..<3 {  // the socket stays usable after a "no entry" answer
            #expect(throws: ConntrackError.noEntry) {
                try conntrack.originalSource(ofReplyFrom: listener, to: try SocketAddress(ipAddress: "10.77.31.1", port: 1))
            }
        }
        #expect(throws: ConntrackError.noEntry) {
            try conntrack.originalSource(
                ofReplyFrom: try SocketAddress(ipAddress: "::1", port: 15001), to: try SocketAddress(ipAddress: "fd77:31::1", port: 1))
        }
    }

    /// A subsystem the kernel does not have answers EINVAL, as ctnetlink does
    /// when nf_conntrack_netlink is not loaded; the error says what to load.
    @Test func missingSubsystemIsExplained() throws {
        let conntrack = try ConntrackClient()
        var request = try ConntrackMessage.request(
            replySource: try SocketAddress(ipAddress: "127.0.0.1", port: 15001),
            replyDestination: try SocketAddress(ipAddress: "10.77.31.1", port: 1), sequence: 77)
        request[5] = 0x0F  // subsystem 15: none
        let reply = try conntrack.rawRoundTrip(request: request, sequence: 77)
        #expect(throws: ConntrackError.kernel(errno: EINVAL)) { try ConntrackMessage.parseReply(reply, sequence: 77) }
        #expect(ConntrackError.kernel(errno: EINVAL).description.contains("nf_conntrack_netlink"))
    }

    @Test func missingNamespaceIsReported() {
        #expect(throws: NetworkNamespaceError.self) {
            try ConntrackClient(namespace: NetworkNamespace(path: "/run/netns/ma-missing-\(randomSuffix())"))
        }
    }

    /// Records the request and reply bytes the pure tests use as fixtures
    /// (printed as hex), and checks that the kernel accepts our request.
    @Test(arguments: [false, true])
    func recordFixtures(ipv6: Bool) throws {
        let scratch = try RedirectingNamespace()
        let prefix = ipv6 ? "fd77:31::" : "10.77.31."
        let clash = try Clash(
            in: scratch, client: try SocketAddress(ipAddress: prefix + "1", port: 40000),
            first: try SocketAddress(ipAddress: prefix + "2", port: 80),
            second: try SocketAddress(ipAddress: prefix + "3", port: 80),
            listener: ipv6 ? scratch.listener6 : scratch.listener4, closeFirst: true)
        let local = try address(of: clash.accepted)
        let peer = try address(of: clash.accepted, peer: true)
        let conntrack = try ConntrackClient(namespace: scratch.namespace)
        let sequence = ConntrackFixtures.sequence
        let request = try ConntrackMessage.request(replySource: local, replyDestination: peer, sequence: sequence)
        let reply = try conntrack.rawRoundTrip(request: request, sequence: sequence)
        #expect(reply.count == 2)
        #expect(try ConntrackMessage.parseReply(reply, sequence: sequence).source == clash.client)
        let missing = try ConntrackMessage.request(
            replySource: local, replyDestination: try SocketAddress(ipAddress: prefix + "1", port: 1), sequence: sequence + 1)
        let noEntry = try conntrack.rawRoundTrip(request: missing, sequence: sequence + 1)
        #expect(throws: ConntrackError.noEntry) { try ConntrackMessage.parseReply(noEntry, sequence: sequence + 1) }
        let lines =
            ["conntrack fixture \(ipv6 ? "v6" : "v4"): \(local) -> \(peer)", "  request: \(hex(request))"]
            + reply.map { "  reply: \(hex($0))" } + ["  no-entry request: \(hex(missing))"]
            + noEntry.map { "  no-entry reply: \(hex($0))" }
        print(lines.joined(separator: "\n"))
    }
}

// MARK: - Pure

/// Requests and replies recorded from the real kernel (Linux 6.18) by
/// `KernelConntrackTests.recordFixtures`: in a scratch namespace, 10.77.31.1:40000
/// connected to 10.77.31.2:80 (reset at once), then to 10.77.31.3:80; both were
/// redirected to a listener, and NAT gave the second one another source port.
enum ConntrackFixtures {
    static let sequence: UInt32 = 0x1234_5678
    static let noEntrySequence: UInt32 = 0x1234_5679

    /// Reply tuple 127.0.0.1:38649 -> 10.77.31.1:26744 (the remapped port).
    static let requestV4 = bytes(hex: """
        48000000010105007856341200000000 02000000
        34000280 14000180 080001007f000001 080002000a4d1f01
                 1c000280 0500010006000000 0600020096f90000 0600030068780000
        """)
    /// The entry: CTA_TUPLE_ORIG 10.77.31.1:40000 -> 10.77.31.3:80, CTA_TUPLE_REPLY
    /// as asked, STATUS, MARK, ID, USE, TIMEOUT, PROTOINFO.
    static let entryV4 = bytes(hex: """
        d40000000001020078563412f82f0000 02000000
        34000180 14000180 080001000a4d1f01 080002000a4d1f03
                 1c000280 0500010006000000 060002009c400000 0600030000500000
        34000280 14000180 080001007f000001 080002000a4d1f01
                 1c000280 0500010006000000 0600020096f90000 0600030068780000
        08000300000001be 0800080000000000 08000c0094c381d7 08000b0000000002 080007000006977f
        300004802c0001800500010003000000050002000a000000050003000a00000006000400230000000600050023000000
        """)
    /// The acknowledgement (NLMSG_ERROR 0, NLM_F_CAPPED: the request's header only).
    static let ackV4 = bytes(hex: "240000000200000178563412f82f0000 00000000 48000000010105007856341200000000")
    /// No entry: NLMSG_ERROR -ENOENT echoing the request (reply destination port 1).
    static let noEntryV4 = bytes(hex: """
        5c0000000200000079563412f82f0000 feffffff
        48000000010105007956341200000000020000003400028014000180080001007f000001080002000a4d1f01
        1c00028005000100060000000600020096f900000600030000010000
        """)

    /// Reply tuple [::1]:35759 -> [fd77:31::1]:42611.
    static let requestV6 = bytes(hex: """
        600000000101050078563412000000000a000000
        4c000280 2c000180 1400030000000000000000000000000000000001 14000400fd770031000000000000000000000001
                 1c000280 0500010006000000 060002008baf0000 06000300a6730000
        """)
    /// CTA_TUPLE_ORIG [fd77:31::1]:40000 -> [fd77:31::3]:80.
    static let entryV6 = bytes(hex: """
        040100000001020078563412f82f0000 0a000000
        4c000180 2c000180 14000300fd770031000000000000000000000001 14000400fd770031000000000000000000000003
                 1c000280 0500010006000000 060002009c400000 0600030000500000
        4c000280 2c000180 1400030000000000000000000000000000000001 14000400fd770031000000000000000000000001
                 1c000280 0500010006000000 060002008baf0000 06000300a6730000
        08000300000001be 0800080000000000 08000c0099b6eb8d 08000b0000000002 0800070000069780
        300004802c0001800500010003000000050002000a000000050003000a00000006000400230000000600050023000000
        """)
    static let ackV6 = bytes(hex: "240000000200000178563412f82f0000 00000000 60000000010105007856341200000000")
    static let noEntryV6 = bytes(hex: """
        740000000200000079563412f82f0000 feffffff
        600000000101050079563412000000000a0000004c0002802c00018014000300000000000000000000000000000000011400
        0400fd7700310000000000000000000000011c0002800500010006000000060002008baf00000600030000010000
        """)

    static let originalV4 = ConntrackTuple(
        source: address("10.77.31.1", 40000), destination: address("10.77.31.3", 80))
    static let originalV6 = ConntrackTuple(
        source: address("fd77:31::1", 40000), destination: address("fd77:31::3", 80))

    /// Every recorded reply: its datagrams and sequence.
    static let allReplies: [(name: String, datagrams: [[UInt8]], sequence: UInt32)] = [
        ("foundV4", [entryV4, ackV4], sequence), ("foundV6", [entryV6, ackV6], sequence),
        ("noEntryV4", [noEntryV4], noEntrySequence), ("noEntryV6", [noEntryV6], noEntrySequence),
    ]

    /// Offsets in `entryV4`: the attributes of CTA_TUPLE_ORIG.
    static let originalIPOffset = 24  // CTA_TUPLE_IP header
    static let originalSourceOffset = 28  // CTA_IP_V4_SRC header
    static let originalProtocolOffset = 44  // CTA_TUPLE_PROTO header
    static let protocolNumberOffset = 48  // CTA_PROTO_NUM header
    static let sourcePortOffset = 56  // CTA_PROTO_SRC_PORT header
}

private func address(_ host: String, _ port: Int) -> SocketAddress {
    do {
        return try SocketAddress(ipAddress: host, port: port)
    } catch {
        fatalError("bad test address \(host): \(error)")
    }
}

/// A copy of `bytes` with `value` written (host order) at `offset`.
private func patched<T: FixedWidthInteger>(_ bytes: [UInt8], _ value: T, at offset: Int) -> [UInt8] {
    var copy = bytes
    withUnsafeBytes(of: value) { copy.replaceSubrange(offset..<(offset + $0.count), with: $0) }
    return copy
}

private func parse(_ datagrams: [UInt8]..., sequence: UInt32 = ConntrackFixtures.sequence) throws -> ConntrackTuple {
    try ConntrackMessage.parseReply(datagrams, sequence: sequence)
}

@Suite("conntrack request bytes (pure)")
struct ConntrackRequestTests {
    @Test func constantsMatchTheHeaders() {
        #expect(MemoryLayout<nlmsghdr>.size == NetlinkMessages.headerLength)
        #expect(MemoryLayout<nfgenmsg>.size == ConntrackMessage.nfgenmsgLength)
        #expect(Int(ConntrackMessage.typeGet) == Int(NFNL_SUBSYS_CTNETLINK) << 8 | Int(IPCTNL_MSG_CT_GET.rawValue))
        #expect(Int(ConntrackMessage.typeNew) == Int(NFNL_SUBSYS_CTNETLINK) << 8 | Int(IPCTNL_MSG_CT_NEW.rawValue))
        #expect(Int(NetlinkMessages.typeError) == Int(NLMSG_ERROR))
        #expect(Int(NetlinkMessages.typeDone) == Int(NLMSG_DONE))
        #expect(Int(ConntrackMessage.flagRequest) == Int(NLM_F_REQUEST))
        #expect(Int(ConntrackMessage.flagAck) == Int(NLM_F_ACK))
        #expect(Int(NetlinkAttributes.nestedFlag) == Int(NLA_F_NESTED))
        #expect(NetlinkAttributes.typeMask == ~UInt16(NLA_F_NESTED | NLA_F_NET_BYTEORDER))
        #expect(Int(ConntrackMessage.version) == Int(NFNETLINK_V0))
        #expect(UInt32(ConntrackMessage.tupleOriginal) == CTA_TUPLE_ORIG.rawValue)
        #expect(UInt32(ConntrackMessage.tupleReply) == CTA_TUPLE_REPLY.rawValue)
        #expect(UInt32(ConntrackMessage.tupleIP) == CTA_TUPLE_IP.rawValue)
        #expect(UInt32(ConntrackMessage.tupleProtocol) == CTA_TUPLE_PROTO.rawValue)
        #expect(UInt32(ConntrackMessage.ipV4Source) == CTA_IP_V4_SRC.rawValue)
        #expect(UInt32(ConntrackMessage.ipV4Destination) == CTA_IP_V4_DST.rawValue)
        #expect(UInt32(ConntrackMessage.ipV6Source) == CTA_IP_V6_SRC.rawValue)
        #expect(UInt32(ConntrackMessage.ipV6Destination) == CTA_IP_V6_DST.rawValue)
        #expect(UInt32(ConntrackMessage.protocolNumber) == CTA_PROTO_NUM.rawValue)
        #expect(UInt32(ConntrackMessage.protocolSourcePort) == CTA_PROTO_SRC_PORT.rawValue)
        #expect(UInt32(ConntrackMessage.protocolDestinationPort) == CTA_PROTO_DST_PORT.rawValue)
        #expect(Int(ConntrackMessage.protocolTCP) == Int(IPPROTO_TCP))
        #expect(Int(ConntrackMessage.familyINET) == Int(AF_INET))
        #expect(Int(ConntrackMessage.familyINET6) == Int(AF_INET6))
    }

    /// Byte for byte what the kernel accepted (and answered) in the recording.
    @Test func matchesTheRecordedRequests() throws {
        #expect(
            try ConntrackMessage.request(
                replySource: address("127.0.0.1", 38649), replyDestination: address("10.77.31.1", 26744),
                sequence: ConntrackFixtures.sequence) == ConntrackFixtures.requestV4)
        #expect(
            try ConntrackMessage.request(
                replySource: address("::1", 35759), replyDestination: address("fd77:31::1", 42611),
                sequence: ConntrackFixtures.sequence) == ConntrackFixtures.requestV6)
    }

    /// Decodes the header through the C structs and walks the attributes.
    @Test func layout() throws {
        let bytes = try ConntrackMessage.request(
            replySource: address("127.0.0.1", 15001), replyDestination: address("10.77.0.5", 43622), sequence: 0xA1B2_C3D4)
        let (header, family) = bytes.withUnsafeBytes {
            ($0.loadUnaligned(as: nlmsghdr.self), $0.loadUnaligned(fromByteOffset: 16, as: nfgenmsg.self))
        }
        #expect(Int(header.nlmsg_len) == bytes.count)
        #expect(bytes.count == 72)
        #expect(header.nlmsg_type == UInt16(NFNL_SUBSYS_CTNETLINK << 8) | UInt16(IPCTNL_MSG_CT_GET.rawValue))
        #expect(header.nlmsg_flags == UInt16(NLM_F_REQUEST | NLM_F_ACK))
        #expect(header.nlmsg_seq == 0xA1B2_C3D4)
        #expect(header.nlmsg_pid == 0)
        #expect(family.nfgen_family == UInt8(AF_INET))
        #expect(family.version == UInt8(NFNETLINK_V0))
        #expect(family.res_id == 0)
        // CTA_TUPLE_REPLY (nested) { CTA_TUPLE_IP (nested), CTA_TUPLE_PROTO (nested) }
        #expect(Array(bytes[20..<24]) == [0x34, 0x00, 0x02, 0x80])
        #expect(Array(bytes[24..<28]) == [0x14, 0x00, 0x01, 0x80])
        #expect(Array(bytes[28..<36]) == [8, 0, 1, 0, 127, 0, 0, 1])  // CTA_IP_V4_SRC = the listener
        #expect(Array(bytes[36..<44]) == [8, 0, 2, 0, 10, 77, 0, 5])  // CTA_IP_V4_DST = the client
        #expect(Array(bytes[44..<48]) == [0x1C, 0x00, 0x02, 0x80])
        #expect(Array(bytes[48..<56]) == [5, 0, 1, 0, 6, 0, 0, 0])  // CTA_PROTO_NUM = TCP, padded
        #expect(Array(bytes[56..<64]) == [6, 0, 2, 0, 0x3A, 0x99, 0, 0])  // CTA_PROTO_SRC_PORT 15001, big-endian
        #expect(Array(bytes[64..<72]) == [6, 0, 3, 0, 0xAA, 0x66, 0, 0])  // CTA_PROTO_DST_PORT 43622
    }

    @Test func ipv6Layout() throws {
        let bytes = try ConntrackMessage.request(
            replySource: address("::1", 1), replyDestination: address("fd77::1:2", 65535), sequence: 7)
        #expect(bytes.count == 96)
        #expect(bytes[16] == UInt8(AF_INET6))
        #expect(Array(bytes[28..<32]) == [20, 0, 3, 0])  // CTA_IP_V6_SRC
        #expect(Array(bytes[32..<48]) == Array(repeating: 0, count: 15) + [1])
        #expect(Array(bytes[48..<52]) == [20, 0, 4, 0])  // CTA_IP_V6_DST
        #expect(Array(bytes[52..<68]) == [0xFD, 0x77] + Array(repeating: 0, count: 11) + [1, 0, 2])
        #expect(Array(bytes[80..<88]) == [6, 0, 2, 0, 0, 1, 0, 0])
        #expect(Array(bytes[88..<96]) == [6, 0, 3, 0, 0xFF, 0xFF, 0, 0])
    }

    @Test func ipv4MappedBecomesIPv4() throws {
        let plain = try ConntrackMessage.request(
            replySource: address("127.0.0.1", 15001), replyDestination: address("10.77.0.5", 1000), sequence: 1)
        let bothMapped = try ConntrackMessage.request(
            replySource: address("::ffff:127.0.0.1", 15001), replyDestination: address("::ffff:10.77.0.5", 1000),
            sequence: 1)
        let oneMapped = try ConntrackMessage.request(
            replySource: address("::ffff:127.0.0.1", 15001), replyDestination: address("10.77.0.5", 1000), sequence: 1)
        #expect(bothMapped == plain)
        #expect(oneMapped == plain)
    }

    @Test func mixedFamiliesAreRefused() throws {
        let v4 = address("127.0.0.1", 15001)
        let v6 = address("fd77::1", 2)
        let mapped = address("::ffff:10.77.0.5", 1)
        let unix = try SocketAddress(unixDomainSocketPath: "/tmp/x.sock")
        for (source, destination) in [(v4, v6), (v6, v4), (mapped, v6), (unix, v4), (v4, unix)] {
            #expect(throws: ConntrackError.self) {
                try ConntrackMessage.request(replySource: source, replyDestination: destination, sequence: 1)
            }
        }
        #expect(
            throws: ConntrackError.unsupportedAddress(
                "\(v4) -> \(v6): an IPv4 and an IPv6 address cannot describe one TCP connection")
        ) {
            try ConntrackMessage.request(replySource: v4, replyDestination: v6, sequence: 1)
        }
    }
}

@Suite("conntrack reply parsing (pure, recorded kernel replies)")
struct ConntrackReplyTests {
    @Test func foundIPv4() throws {
        #expect(try parse(ConntrackFixtures.entryV4, ConntrackFixtures.ackV4) == ConntrackFixtures.originalV4)
    }

    @Test func foundIPv6() throws {
        #expect(try parse(ConntrackFixtures.entryV6, ConntrackFixtures.ackV6) == ConntrackFixtures.originalV6)
    }

    /// The entry and the acknowledgement in one buffer parse the same.
    @Test func entryAndAckInOneDatagram() throws {
        #expect(try parse(ConntrackFixtures.entryV4 + ConntrackFixtures.ackV4) == ConntrackFixtures.originalV4)
    }

    @Test func readerWaitsForTheAcknowledgement() throws {
        var reader = ConntrackMessage.ReplyReader(sequence: ConntrackFixtures.sequence)
        #expect(try ConntrackFixtures.entryV4.withUnsafeBytes { try reader.read($0) } == nil)
        #expect(reader.original == ConntrackFixtures.originalV4)
        #expect(try ConntrackFixtures.ackV4.withUnsafeBytes { try reader.read($0) } == ConntrackFixtures.originalV4)
        #expect(throws: ConntrackError.malformed("the reply ends before the kernel's acknowledgement")) {
            try parse(ConntrackFixtures.entryV4)
        }
    }

    @Test func noEntry() {
        for reply in [ConntrackFixtures.noEntryV4, ConntrackFixtures.noEntryV6] {
            #expect(throws: ConntrackError.noEntry) { try parse(reply, sequence: ConntrackFixtures.noEntrySequence) }
        }
    }

    @Test func otherKernelErrors() {
        let sequence = ConntrackFixtures.noEntrySequence
        for code in [EPERM, EINVAL, EOPNOTSUPP] {
            let reply = patched(ConntrackFixtures.noEntryV4, Int32(-code), at: 16)
            #expect(throws: ConntrackError.kernel(errno: code)) { try parse(reply, sequence: sequence) }
        }
        #expect(ConntrackError.kernel(errno: EPERM).description.contains("CAP_NET_ADMIN"))
        #expect(ConntrackError.kernel(errno: EINVAL).description.contains("modprobe nf_conntrack_netlink"))
        #expect(ConntrackError.system(operation: "socket", errno: EPROTONOSUPPORT).description.contains("CONFIG_NETFILTER_NETLINK"))
        for weird in [Int32(5), Int32.min] {
            #expect(throws: ConntrackError.self) {
                try parse(patched(ConntrackFixtures.noEntryV4, weird, at: 16), sequence: sequence)
            }
        }
        // An acknowledgement with no entry before it.
        #expect(throws: ConntrackError.malformed("acknowledgement (NLMSG_ERROR 0) without a conntrack entry")) {
            try parse(ConntrackFixtures.ackV4)
        }
    }

    @Test func secondEntryIsRefused() {
        #expect(throws: ConntrackError.malformed("a second conntrack entry in the reply to an exact lookup")) {
            try parse(ConntrackFixtures.entryV4, ConntrackFixtures.entryV4, ConntrackFixtures.ackV4)
        }
    }

    @Test func strayRepliesAreSkipped() throws {
        let stray = patched(ConntrackFixtures.entryV6, UInt32(0xDEAD), at: 8)
        #expect(try parse(stray + ConntrackFixtures.entryV4, ConntrackFixtures.ackV4) == ConntrackFixtures.originalV4)
        #expect(try parse(stray, ConntrackFixtures.entryV4, stray, ConntrackFixtures.ackV4) == ConntrackFixtures.originalV4)
        var reader = ConntrackMessage.ReplyReader(sequence: ConntrackFixtures.sequence)
        #expect(try stray.withUnsafeBytes { try reader.read($0) } == nil)
        #expect(reader.original == nil)
    }

    @Test func wrongSequenceIsRefused() {
        for (name, datagrams, sequence) in ConntrackFixtures.allReplies {
            for other in [sequence &+ 1, 0] {
                #expect(throws: ConntrackError.self, "\(name)") { try ConntrackMessage.parseReply(datagrams, sequence: other) }
            }
        }
    }

    @Test func everyTruncationThrows() {
        for (name, datagrams, sequence) in ConntrackFixtures.allReplies {
            for (index, datagram) in datagrams.enumerated() {
                for length in 0..<datagram.count {
                    var cut = datagrams
                    cut[index] = Array(datagram.prefix(length))
                    #expect(throws: ConntrackError.self, "\(name) datagram \(index) prefix \(length)") {
                        try ConntrackMessage.parseReply(cut, sequence: sequence)
                    }
                }
            }
        }
    }

    @Test func nlmsgLengths() {
        let count = ConntrackFixtures.entryV4.count
        #expect(throws: ConntrackError.truncated(expected: count + 1, actual: count)) {
            try parse(patched(ConntrackFixtures.entryV4, UInt32(count + 1), at: 0), ConntrackFixtures.ackV4)
        }
        #expect(throws: ConntrackError.self) { try parse(patched(ConntrackFixtures.entryV4, UInt32.max, at: 0), ConntrackFixtures.ackV4) }
        for length in [UInt32(0), 1, 15] {
            #expect(throws: ConntrackError.malformed("nlmsg_len \(length) is smaller than the netlink header")) {
                try parse(patched(ConntrackFixtures.entryV4, length, at: 0), ConntrackFixtures.ackV4)
            }
        }
        // An entry message too short for its nfgenmsg.
        #expect(throws: ConntrackError.truncated(expected: 4, actual: 3)) {
            try parse(patched(ConntrackFixtures.entryV4, UInt32(16 + 3), at: 0))
        }
    }

    @Test func unexpectedTypesAndFamilies() {
        for type in [NetlinkMessages.typeDone, ConntrackMessage.typeGet, 1, 16, 0x0200, 0xFFFF] {
            #expect(throws: ConntrackError.self, "type \(type)") {
                try parse(patched(ConntrackFixtures.entryV4, type, at: 4), ConntrackFixtures.ackV4)
            }
        }
        for family in [UInt8(0), 1, 7, 255] {
            #expect(throws: ConntrackError.malformed("address family \(family) is neither AF_INET nor AF_INET6")) {
                try parse(patched(ConntrackFixtures.entryV4, family, at: 16), ConntrackFixtures.ackV4)
            }
        }
        // An IPv4 entry that claims to be IPv6 has the wrong address attributes.
        #expect(throws: ConntrackError.self) {
            try parse(patched(ConntrackFixtures.entryV4, ConntrackMessage.familyINET6, at: 16), ConntrackFixtures.ackV4)
        }
    }

    @Test func attributeLengthsThatDoNotFit() {
        // Attribute headers at every nesting level of CTA_TUPLE_ORIG, and a top-level one.
        for offset in [20, ConntrackFixtures.originalIPOffset, ConntrackFixtures.originalSourceOffset,
                       ConntrackFixtures.originalProtocolOffset, ConntrackFixtures.sourcePortOffset, 72, 164] {
            for length in [UInt16(0), 1, 3, 0xFF, 0xFFFF] {
                #expect(throws: ConntrackError.self, "attribute at \(offset) length \(length)") {
                    try parse(patched(ConntrackFixtures.entryV4, length, at: offset), ConntrackFixtures.ackV4)
                }
            }
        }
    }

    @Test func missingOrWrongAttributes() {
        let entry = ConntrackFixtures.entryV4
        let ack = ConntrackFixtures.ackV4
        // No CTA_TUPLE_ORIG (turned into an unknown type 99, which is skipped).
        #expect(throws: ConntrackError.malformed("the entry has no original tuple (CTA_TUPLE_ORIG)")) {
            try parse(patched(entry, UInt16(99 | 0x8000), at: 22), ack)
        }
        // No source address: CTA_IP_V4_SRC turned into an unknown type.
        #expect(throws: ConntrackError.malformed("the original tuple lacks its IPv4 addresses")) {
            try parse(patched(entry, UInt16(9), at: ConntrackFixtures.originalSourceOffset + 2), ack)
        }
        // An IPv6 address attribute in an IPv4 entry.
        #expect(throws: ConntrackError.malformed("address attribute CTA_IP 3 in an entry of family AF_INET")) {
            try parse(patched(entry, UInt16(3), at: ConntrackFixtures.originalSourceOffset + 2), ack)
        }
        // UDP instead of TCP.
        #expect(throws: ConntrackError.malformed("the original tuple is of protocol 17, not TCP")) {
            try parse(patched(entry, UInt8(17), at: ConntrackFixtures.protocolNumberOffset + 4), ack)
        }
        // No protocol number, no source port.
        #expect(throws: ConntrackError.malformed("the original tuple has no protocol (CTA_PROTO_NUM)")) {
            try parse(patched(entry, UInt16(99), at: ConntrackFixtures.protocolNumberOffset + 2), ack)
        }
        #expect(throws: ConntrackError.malformed("the original tuple lacks its ports")) {
            try parse(patched(entry, UInt16(99), at: ConntrackFixtures.sourcePortOffset + 2), ack)
        }
        // A port of 3 bytes (the length covers one padding byte).
        #expect(throws: ConntrackError.malformed("CTA_PROTO_SRC_PORT has 3 bytes, expected 2")) {
            try parse(patched(entry, UInt16(7), at: ConntrackFixtures.sourcePortOffset), ack)
        }
        // An address of 3 bytes.
        #expect(throws: ConntrackError.malformed("the source address has 3 bytes, expected 4")) {
            try parse(patched(entry, UInt16(7), at: ConntrackFixtures.originalSourceOffset), ack)
        }
    }

    @Test func flagsAndUnknownAttributesAreIgnored() throws {
        let entry = ConntrackFixtures.entryV4
        let ack = ConntrackFixtures.ackV4
        // Without NLA_F_NESTED, or with NLA_F_NET_BYTEORDER, the types still match.
        #expect(try parse(patched(entry, UInt16(1), at: 22), ack) == ConntrackFixtures.originalV4)
        #expect(try parse(patched(entry, UInt16(0x4000 | 2), at: ConntrackFixtures.sourcePortOffset + 2), ack) == ConntrackFixtures.originalV4)
        // A CTA_TUPLE_ZONE (type 3, u16) at the end of CTA_TUPLE_ORIG is skipped.
        var zoned = entry
        zoned.insert(contentsOf: [6, 0, 3, 0, 0, 7, 0, 0], at: 72)
        zoned = patched(patched(zoned, UInt32(entry.count + 8), at: 0), UInt16(52 + 8), at: 20)
        #expect(try parse(zoned, ack) == ConntrackFixtures.originalV4)
    }

    @Test func randomCorruptionNeverCrashes() {
        let seed = SeededRandom.seed(default: 0xC0_77_A7)
        var generator = SeededRandom(seed: seed)
        var outcomes = (parsed: 0, thrown: 0)
        for _ in 0..<20_000 {
            guard let (_, datagrams, sequence) = ConntrackFixtures.allReplies.randomElement(using: &generator) else { continue }
            var damaged = datagrams
            let index = Int.random(in: 0..<damaged.count, using: &generator)
            damaged[index] = randomlyCorrupted(damaged[index], using: &generator)
            do {
                _ = try ConntrackMessage.parseReply(damaged, sequence: sequence)
                outcomes.parsed += 1
            } catch is ConntrackError {
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

