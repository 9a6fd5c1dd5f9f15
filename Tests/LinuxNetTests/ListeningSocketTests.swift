import Glibc
import NIOCore
import Testing
@testable import LinuxNet

/// A loopback listening socket on a free port, and the port.
private func listeningOnLoopback(_ address: String = "127.0.0.1") throws -> (fd: CInt, port: UInt16) {
    let fd = try ListeningSocket.open(address: address, port: 0)
    let port = try #require(ListeningSocket.boundAddress(fd)?.port)
    return (fd, UInt16(port))
}

@Suite struct ListeningSocketTests {
    @Test func anOpenedSocketListensWhereItWasAskedTo() throws {
        let (fd, port) = try listeningOnLoopback()
        defer { close(fd) }
        #expect(ListeningSocket.isListening(fd, address: "127.0.0.1", port: port))
        #expect(!ListeningSocket.isListening(fd, address: "127.0.0.1", port: port &+ 1), "another port")
        #expect(!ListeningSocket.isListening(fd, address: "0.0.0.0", port: port), "another address")
        #expect(!ListeningSocket.isListening(fd, address: "::1", port: port), "another family")
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0, "not inherited by children the agent starts")
        #expect(fcntl(fd, F_GETFL) & O_NONBLOCK != 0)
    }

    @Test func aDescriptorThatIsNotAListeningSocketIsNotTrusted() throws {
        let unbound = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(unbound) }
        #expect(!ListeningSocket.isListening(unbound, address: "0.0.0.0", port: 0))
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        #expect(!ListeningSocket.isListening(ends[0], address: "0.0.0.0", port: 0))
        #expect(!ListeningSocket.isListening(-1, address: "0.0.0.0", port: 0))
    }

    @Test func aPortInUseIsRefusedWithTheAddressAndAHint() throws {
        let (fd, port) = try listeningOnLoopback()
        defer { close(fd) }
        let error = #expect(throws: ListeningSocketError.self) { try ListeningSocket.open(address: "127.0.0.1", port: port) }
        #expect(error?.errno == EADDRINUSE)
        #expect(error?.description.contains("127.0.0.1:\(port)") == true)
        #expect(error?.description.contains("another process") == true)
        let bad = #expect(throws: ListeningSocketError.self) { try ListeningSocket.open(address: "not-an-address", port: 1) }
        #expect(bad?.description.contains("parse the address") == true)
    }
}

@Suite struct SystemdListenFDsTests {
    @Test func descriptorsFromThreeOnWithTheirNames() {
        let passed = SystemdListenFDs.parse(listenPID: "42", listenFDs: "3", names: "tunnel@0.0.0.0_15008:tunnel@[__]_15008:outbound@127.0.0.1_15001", ownPID: 42)
        #expect(passed == .descriptors([
            .init(name: "tunnel@0.0.0.0_15008", fd: 3), .init(name: "tunnel@[__]_15008", fd: 4), .init(name: "outbound@127.0.0.1_15001", fd: 5),
        ]))
        let unnamed = SystemdListenFDs.parse(listenPID: "42", listenFDs: "2", names: nil, ownPID: 42)
        #expect(unnamed.descriptors.map(\.name) == ["unknown", "unknown"])
    }

    @Test func descriptorsMeantForAnotherProcessOrUnreadableAreIgnoredWithAReason() {
        #expect(SystemdListenFDs.parse(listenPID: nil, listenFDs: nil, names: nil, ownPID: 42) == .none)
        guard case .ignored(let reason) = SystemdListenFDs.parse(listenPID: "41", listenFDs: "2", names: "a:b", ownPID: 42) else {
            Issue.record("another process's descriptors were taken")
            return
        }
        #expect(reason.contains("LISTEN_PID=41"))
        #expect(SystemdListenFDs.parse(listenPID: nil, listenFDs: "2", names: nil, ownPID: 42).descriptors.isEmpty)
        for bad in ["-1", "many", "100000"] {
            guard case .ignored(let reason) = SystemdListenFDs.parse(listenPID: "42", listenFDs: bad, names: nil, ownPID: 42) else {
                Issue.record("LISTEN_FDS=\(bad) was read as a count")
                continue
            }
            #expect(reason.contains(bad))
        }
        #expect(SystemdListenFDs.parse(listenPID: "42", listenFDs: "0", names: nil, ownPID: 42) == .descriptors([]))
    }
}

@Suite struct DescriptorPassingTests {
    @Test func aListeningSocketCrossesAUnixSocketAndStillListens() throws {
        let path = "/tmp/mesh-agent-handover-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let server = try UnixStreamSocket.listen(at: path)
        defer { unlink(path) }
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600, "only root may ask for the agent's sockets")
        let client = try #require(UnixStreamSocket.connect(to: path, timeout: 5))
        let accepted = try #require(server.accept())

        let (listening, port) = try listeningOnLoopback()
        defer { close(listening) }
        try accepted.send(Array("SOCKETS\nlistener\n".utf8), descriptors: [listening])
        let (bytes, descriptors) = try client.receive()
        #expect(String(decoding: bytes, as: UTF8.self) == "SOCKETS\nlistener\n")
        #expect(descriptors.count == 1)
        for fd in descriptors {
            defer { close(fd) }
            #expect(fd != listening, "a new descriptor of the same socket")
            #expect(ListeningSocket.isListening(fd, address: "127.0.0.1", port: port))
            #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
        }
    }

    @Test func aClosedPeerReadsAsAnEmptyMessageAndShutdownWakesAnAccept() throws {
        let path = "/tmp/mesh-agent-handover-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let server = try UnixStreamSocket.listen(at: path)
        defer { unlink(path) }
        var client = UnixStreamSocket.connect(to: path, timeout: 5)
        let accepted = try #require(server.accept())
        client = nil
        #expect(client == nil)
        let (bytes, descriptors) = try accepted.receive()
        #expect(bytes.isEmpty && descriptors.isEmpty)
        server.shutdown()
        #expect(server.accept() == nil)
    }

    @Test func nothingListeningMeansNoConnectionAndAFileInTheWayIsLeftAlone() throws {
        let path = "/tmp/mesh-agent-handover-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        #expect(UnixStreamSocket.connect(to: path, timeout: 1) == nil)
        #expect(FileManagerless.write("keep me", to: path))
        defer { unlink(path) }
        let error = #expect(throws: UnixSocketError.self) { try UnixStreamSocket.listen(at: path) }
        #expect(error?.description.contains("not a socket") == true)
        #expect(FileManagerless.read(path) == "keep me")
    }

    @Test func tooManyDescriptorsForOneMessageAreRefusedBeforeSending() {
        let error = #expect(throws: DescriptorPassingError.self) {
            try DescriptorPassing.send([1], descriptors: Array(repeating: 0, count: DescriptorPassing.maximumPerMessage + 1), on: -1)
        }
        #expect(error?.errno == E2BIG)
    }
}

/// Small file helpers without Foundation.
private enum FileManagerless {
    static func write(_ text: String, to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        return Glibc.write(fd, bytes, bytes.count) == bytes.count
    }

    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = Glibc.read(fd, &buffer, buffer.count)
        return count >= 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
    }
}
