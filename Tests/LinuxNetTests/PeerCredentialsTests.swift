import Foundation
import NIOCore
import Testing

@testable import LinuxNet

/// A listening Unix stream socket at a fresh path in a directory of its own
/// (mode 0755, so another user can reach the socket when its mode allows);
/// removed on deinit.
final class UnixListener: Sendable {
    let directory: String
    let path: String
    let fd: CInt

    init() throws {
        let directory = "/tmp/ma-peercred-\(randomSuffix())"
        try check(mkdir(directory, 0o700), "mkdir")
        let path = directory + "/test.sock"
        let fd: CInt
        do {
            try check(chmod(directory, 0o755), "chmod")
            fd = try check(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket")
        } catch {
            rmdir(directory)
            throw error
        }
        do {
            let address = try SocketAddress(unixDomainSocketPath: path)
            _ = try address.withSockAddr { try check(bind(fd, $0, socklen_t($1)), "bind") }
            try check(listen(fd, 4), "listen")
        } catch {
            close(fd)
            unlink(path)
            rmdir(directory)
            throw error
        }
        self.directory = directory
        self.path = path
        self.fd = fd
    }

    /// The next connection, or an error if none arrives within `timeout`
    /// milliseconds (so a client that failed to start does not hang the test).
    func nextConnection(timeout: Int32 = 20_000) throws -> CInt {
        var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard try check(poll(&ready, 1, timeout), "poll") == 1 else { throw TestSocketError.call("accept (timed out)", ETIMEDOUT) }
        return try check(accept(fd, nil, nil), "accept")
    }

    /// A blocking connect from this process.
    func connectFromHere() throws -> CInt {
        let client = try check(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket")
        do {
            let address = try SocketAddress(unixDomainSocketPath: path)
            _ = try address.withSockAddr { try check(connect(client, $0, socklen_t($1)), "connect") }
        } catch {
            close(client)
            throw error
        }
        return client
    }

    deinit {
        close(fd)
        unlink(path)
        rmdir(directory)
    }
}

private var ownCredentials: PeerCredentials { PeerCredentials(pid: getpid(), uid: geteuid(), gid: getegid()) }

@Suite("peer credentials (SO_PEERCRED)")
struct PeerCredentialsTests {
    @Test func aSocketPairReportsThisProcess() async throws {
        var ends: [CInt] = [-1, -1]
        try check(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends), "socketpair")
        defer {
            close(ends[0])
            close(ends[1])
        }
        #expect(try PeerCredentials.of(socket: ends[0]) == ownCredentials)
        #expect(try PeerCredentials.of(socket: ends[1]) == ownCredentials)
    }

    /// What the admin server does: the accepted end of a connection to a
    /// listening socket names the process that connected, through the same
    /// `SocketOptionProvider` call a NIO channel answers.
    @Test func anAcceptedConnectionReportsTheConnectingProcess() async throws {
        let listener = try UnixListener()
        let client = try listener.connectFromHere()
        defer { close(client) }
        let server = try listener.nextConnection()
        defer { close(server) }

        #expect(try PeerCredentials.of(socket: server) == ownCredentials)
        let provider = DescriptorSocketOptions(fd: server)
        #expect(try await PeerCredentials.of(provider: provider).get() == ownCredentials)
        let asked = provider.asked.withLock { $0 }
        #expect(asked.count == 1)
        #expect(asked.first?.0 == SocketOptionLevel(SOL_SOCKET))
        #expect(asked.first?.1 == 17)  // SO_PEERCRED
    }

    /// A TCP socket has no peer credentials; the kernel answers uid -1, which
    /// must be an error rather than a user.
    @Test func aTCPSocketHasNone() async throws {
        let connection = try LoopbackConnection(host: "127.0.0.1")
        #expect(throws: PeerCredentialsError.noCredentials) { try PeerCredentials.of(socket: connection.server) }
        await #expect(throws: PeerCredentialsError.noCredentials) {
            try await PeerCredentials.of(provider: DescriptorSocketOptions(fd: connection.server)).get()
        }
    }

    @Test func aFailedReadIsAnError() async throws {
        #expect(throws: PeerCredentialsError.system(errno: EBADF)) { try PeerCredentials.of(socket: -1) }
        await #expect(throws: PeerCredentialsError.system(errno: EBADF)) {
            try await PeerCredentials.of(provider: DescriptorSocketOptions(fd: -1)).get()
        }
    }

    @Test func theRawStructIsPidUidGid() throws {
        #expect(try PeerCredentials((1234, 1000, 100)) == PeerCredentials(pid: 1234, uid: 1000, gid: 100))
        #expect(try PeerCredentials((0, 0, 0)) == PeerCredentials(pid: 0, uid: 0, gid: 0))
        #expect(throws: PeerCredentialsError.noCredentials) { try PeerCredentials((0, UInt32.max, UInt32.max)) }
        #expect(PeerCredentials(pid: 7, uid: 65534, gid: 65534).description == "uid 65534 (gid 65534, pid 7)")
    }
}

@Suite("peer credentials of another user", rootOnly)
struct OtherUserPeerCredentialsTests {
    /// A process that dropped to nobody connects; the accepted socket names it,
    /// not this (root) process.
    @Test func aConnectionFromNobodyReportsNobody() async throws {
        let listener = try UnixListener()
        try check(chmod(listener.path, 0o666), "chmod")
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        child.arguments = [
            "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(1)",
            listener.path,
        ]
        try child.run()
        defer {
            if child.isRunning { child.terminate() }
            child.waitUntilExit()
        }
        let server = try listener.nextConnection()
        defer { close(server) }
        #expect(try PeerCredentials.of(socket: server) == PeerCredentials(pid: child.processIdentifier, uid: 65534, gid: 65534))
    }
}
