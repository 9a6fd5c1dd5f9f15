import CNetlink
import Foundation
import NIOCore
import Testing

@testable import LinuxNet

/// A netlink header in host byte order.
private func header(length: Int, type: UInt16, flags: UInt16 = 0, sequence: UInt32 = 1) -> [UInt8] {
    host(UInt32(length)) + host(type) + host(flags) + host(sequence) + host(UInt32(0))
}

private func host<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

/// An attribute with its padding.
private func attribute(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
    host(UInt16(4 + value.count)) + host(type) + value + [UInt8](repeating: 0, count: (4 - value.count % 4) % 4)
}

/// An NLMSG_ERROR message: the code, the request's header (and payload unless
/// capped), then extended-ack attributes.
private func errorMessage(code: Int32, flags: UInt16, request: [UInt8] = header(length: 16, type: 20), tail: [UInt8]) -> [UInt8] {
    let body = host(code) + request + tail
    return header(length: 16 + body.count, type: UInt16(NLMSG_ERROR), flags: flags) + body
}

@Suite("netlink messages and attributes (pure)")
struct NetlinkMessageTests {
    typealias Failure = SockDiagError

    @Test func datagramsSplitIntoBoundsCheckedMessages() throws {
        #expect(try NetlinkMessage.split([], as: Failure.self).isEmpty)
        let two = try NetlinkMessage.split(
            header(length: 20, type: 0x0a06, flags: 2) + [1, 2, 3, 4] + header(length: 17, type: 3, sequence: 9) + [7, 0, 0, 0],
            as: Failure.self)
        #expect(two == [
            NetlinkMessage(type: 0x0a06, flags: 2, sequence: 1, payload: [1, 2, 3, 4]),
            NetlinkMessage(type: 3, flags: 0, sequence: 9, payload: [7]),
        ])
        #expect(throws: Failure.truncated(expected: 16, actual: 3)) { try NetlinkMessage.split([1, 2, 3], as: Failure.self) }
        #expect(throws: Failure.malformed("nlmsg_len 8 is smaller than the netlink header")) {
            try NetlinkMessage.split(header(length: 8, type: 3), as: Failure.self)
        }
        #expect(throws: Failure.truncated(expected: 64, actual: 16)) {
            try NetlinkMessage.split(header(length: 64, type: 3), as: Failure.self)
        }
        #expect(throws: Failure.truncated(expected: 16, actual: 2)) {
            try NetlinkMessage.split(header(length: 16, type: 3) + [0, 0], as: Failure.self)
        }
    }

    @Test func acknowledgementsCarryTheExtendedAckText() throws {
        let text = attribute(1, Array("no such set".utf8) + [0])
        // Not capped: the request's payload comes before the attributes.
        let request = header(length: 24, type: 20) + [9, 9, 9, 9, 9, 9, 9, 9]
        let full = try NetlinkMessage.split(errorMessage(code: -ENOENT, flags: 0x200, request: request, tail: text), as: Failure.self)
        #expect(try full[0].acknowledgement(as: Failure.self) == NetlinkAcknowledgement(errno: ENOENT, message: "no such set"))
        // Capped: only the request's header; other attributes are skipped.
        let capped = errorMessage(code: -EINVAL, flags: 0x300, tail: attribute(2, [0, 0, 0, 0]) + text)
        #expect(try NetlinkMessage.split(capped, as: Failure.self)[0].acknowledgement(as: Failure.self)
            == NetlinkAcknowledgement(errno: EINVAL, message: "no such set"))
        // Without NLM_F_ACK_TLVS the attributes are not read.
        let plain = errorMessage(code: 0, flags: 0x100, tail: text)
        let success = try NetlinkMessage.split(plain, as: Failure.self)[0].acknowledgement(as: Failure.self)
        #expect(success == NetlinkAcknowledgement(errno: 0, message: nil))
        #expect(success.isSuccess)
    }

    @Test func acknowledgementsAreReadWithinBounds() throws {
        let short = try NetlinkMessage.split(header(length: 18, type: UInt16(NLMSG_ERROR)) + [0xff, 0xff, 0, 0], as: Failure.self)
        #expect(throws: Failure.truncated(expected: 4, actual: 2)) { try short[0].acknowledgement(as: Failure.self) }
        // An attribute claiming more bytes than there are is ignored, not read.
        let overrun = errorMessage(code: -EINVAL, flags: 0x300, tail: host(UInt16(200)) + host(UInt16(1)))
        #expect(try NetlinkMessage.split(overrun, as: Failure.self)[0].acknowledgement(as: Failure.self)
            == NetlinkAcknowledgement(errno: EINVAL, message: nil))
        // A request length past the end leaves no room for attributes.
        let huge = errorMessage(code: -EINVAL, flags: 0x200, request: header(length: 0x7fff_fff0, type: 20), tail: [])
        #expect(try NetlinkMessage.split(huge, as: Failure.self)[0].acknowledgement(as: Failure.self)
            == NetlinkAcknowledgement(errno: EINVAL, message: nil))
        // Codes that are not 0 or a negated errno, and messages of other types.
        for code in [Int32(1), Int32.min] {
            let message = try NetlinkMessage.split(errorMessage(code: code, flags: 0, tail: []), as: Failure.self)
            #expect(throws: Failure.malformed("NLMSG_ERROR with error code \(code)")) { try message[0].acknowledgement(as: Failure.self) }
        }
        let done = NetlinkMessage(type: UInt16(NLMSG_DONE), flags: 0, sequence: 1, payload: [0, 0, 0, 0])
        #expect(throws: Failure.self) { try done.acknowledgement(as: Failure.self) }
    }

    @Test func attributesAreListedWithinBounds() throws {
        let bytes = attribute(3 | 0x8000, [1, 2]) + attribute(0x4005, [])
        #expect(try NetlinkAttributes.list(in: bytes, as: Failure.self) == [
            NetlinkAttribute(type: 3, value: [1, 2]), NetlinkAttribute(type: 5, value: []),
        ])
        #expect(try NetlinkAttributes.list(in: [], as: Failure.self).isEmpty)
        #expect(throws: Failure.malformed("2 stray bytes after the last attribute")) {
            try NetlinkAttributes.list(in: bytes + [0, 0], as: Failure.self)
        }
        #expect(throws: Failure.malformed("attribute length 2 is smaller than its header")) {
            try NetlinkAttributes.list(in: host(UInt16(2)) + host(UInt16(1)), as: Failure.self)
        }
        #expect(throws: Failure.malformed("attribute 1 of 9 bytes runs past the end of its container (8 left)")) {
            try NetlinkAttributes.list(in: host(UInt16(9)) + host(UInt16(1)) + [0, 0, 0, 0], as: Failure.self)
        }
    }
}

@Suite("netlink sockets on the real kernel", rootOnly)
struct KernelNetlinkSocketTests {
    typealias Socket = NetlinkSocket<SockDiagError>

    static func socket() throws -> Socket {
        try Socket(
            protocol: NETLINK_SOCK_DIAG, name: "NETLINK_SOCK_DIAG", namespace: nil,
            options: .init(receiveBufferSize: 1 << 16, sendTimeout: .seconds(1), kernelBufferSize: 1 << 20, extendedAcknowledgements: true))
    }

    /// An exact sock_diag lookup, acknowledged when `ack`.
    static func lookup(_ source: SocketAddress, _ destination: SocketAddress, sequence: UInt32, ack: Bool) throws -> [UInt8] {
        var request = try SockDiagMessage.request(source: source, destination: destination, sequence: sequence)
        if ack { request[6] |= UInt8(NLM_F_ACK) }
        return request
    }

    @Test func aDumpIsReadUpToItsEnd() throws {
        let connection = try LoopbackConnection(host: "127.0.0.1")
        var request = try Self.lookup(connection.clientAddress, connection.serverAddress, sequence: 41, ack: false)
        request[6] |= UInt8(NLM_F_DUMP & 0xff)
        request[7] |= UInt8(NLM_F_DUMP >> 8)
        request.replaceSubrange(24..<28, with: [0, 0, 0, 0])  // no port filter: every TCP socket
        guard case .complete(let messages) = try Self.socket().request(request, sequence: 41, timeout: .seconds(1)) else {
            Issue.record("the dump of TCP sockets should complete")
            return
        }
        #expect(messages.count >= 3)  // the listener and both ends of the connection
        #expect(messages.allSatisfy { $0.type == SockDiagMessage.typeSockDiagByFamily && $0.sequence == 41 })
    }

    @Test func aRefusalIsAnAnswerNotAnError() throws {
        let nowhere = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        let request = try Self.lookup(nowhere, nowhere, sequence: 7, ack: false)
        #expect(try Self.socket().request(request, sequence: 7, timeout: .seconds(1)) == .refused(NetlinkAcknowledgement(errno: ENOENT, message: nil)))
    }

    @Test func aBatchCollectsEveryAcknowledgement() throws {
        let connection = try LoopbackConnection(host: "127.0.0.1")
        let nowhere = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        let found = try Self.lookup(connection.clientAddress, connection.serverAddress, sequence: 100, ack: true)
        let missing = try Self.lookup(nowhere, nowhere, sequence: 101, ack: true)
        let reply = try Self.socket().sendBatch(
            found + missing, sequences: [100, 101], awaited: [100, 101], timeout: .seconds(1), afterRefusal: .milliseconds(50))
        #expect(reply.refusals == [101: NetlinkAcknowledgement(errno: ENOENT, message: nil)])
        #expect(reply.unacknowledged.isEmpty)
    }

    @Test func receiveWaitsOnlyUntilTheTimeout() throws {
        let socket = try Self.socket()
        let start = ContinuousClock.now
        #expect(try socket.receive(timeout: .milliseconds(30)) == nil)
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(30) && waited < .seconds(1))
    }

    @Test func openingFailuresAreTheClientsErrors() {
        #expect(throws: SockDiagError.system(operation: "socket(AF_NETLINK, NETLINK_32)", errno: EPROTONOSUPPORT)) {
            _ = try Socket(protocol: 32, name: "NETLINK_32", namespace: nil, options: .init(receiveBufferSize: 64))
        }
        #expect(throws: NetworkNamespaceError.self) {
            _ = try Socket(
                protocol: NETLINK_SOCK_DIAG, name: "NETLINK_SOCK_DIAG",
                namespace: NetworkNamespace(path: "/run/netns/ma-netlink-does-not-exist"), options: .init(receiveBufferSize: 64))
        }
    }
}
