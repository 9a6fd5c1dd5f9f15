import CNI
import CNIServer
import Foundation
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestFixtures
import Testing

@Suite("enrollment server")
struct EnrollmentServerTests {
    typealias Fixture = PluginBinaryTests.Fixture

    /// One exchange as any client could make it: bytes in, bytes until the
    /// server closes. Blocking, so on a thread of its own.
    static func exchange(_ path: String, _ bytes: [UInt8]) async throws -> String {
        try await onOwnThread { try blockingExchange(path, bytes) }
    }

    private static func blockingExchange(_ path: String, _ bytes: [UInt8]) throws -> String {
        // Generous: under a sanitizer, with every suite running at once on
        // two cores, an answer has taken over 10 s; a hang still fails.
        guard let socket = UnixStreamSocket.connect(to: path, timeout: 60) else {
            throw PluginBinaryTests.PluginTestError("cannot connect to \(path)")
        }
        if !bytes.isEmpty { try socket.send(bytes) }
        var received: [UInt8] = []
        while true {
            let chunk = try socket.receive().bytes
            if chunk.isEmpty { break }
            received += chunk
        }
        return String(decoding: received, as: UTF8.self)
    }

    static func mode(_ path: String) -> mode_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode : nil
    }

    @Test func socketIsRootOnlyAndRemovedOnStop() async throws {
        try await Fixture.with { fixture in
            try await fixture.start { _ in .captured }
            let mode = try #require(Self.mode(fixture.socket))
            #expect(mode & S_IFMT == S_IFSOCK)
            #expect(mode & 0o777 == 0o600)
            await fixture.stop()
            #expect(Self.mode(fixture.socket) == nil)
        }
    }

    @Test func staleSocketIsReplaced() async throws {
        try await Fixture.with { fixture in
            _ = try UnixStreamSocket.listen(at: fixture.socket)
            try await fixture.start { _ in .removed }
            let answer = try await Self.exchange(fixture.socket, EnrollmentProtocolTests.request.encoded())
            #expect(answer == #"{"ok":true,"version":1}"# + "\n")
        }
    }

    @Test func refusesAMissingDirectory() async throws {
        try await Fixture.with { fixture in
            let server = EnrollmentServer(
                path: "\(fixture.directory)/missing/cni.sock", group: fixture.group, logger: Logger(label: "cni-test"), handler: { _ in .captured })
            do {
                try await server.start()
                Issue.record("started without its directory")
            } catch {
                #expect("\(error)" == """
                    CNI enrollment socket \(fixture.directory)/missing/cni.sock: its directory \(fixture.directory)/missing does not exist; \
                    create it (mkdir -p -m 0755 \(fixture.directory)/missing) or set workloadSources.cni.socket to a path in an existing directory
                    """)
            }
        }
    }

    @Test func refusesAFileInTheWay() async throws {
        try await Fixture.with { fixture in
            #expect(FileManager.default.createFile(atPath: fixture.socket, contents: Data("keep".utf8)))
            do {
                try await fixture.start { _ in .captured }
                Issue.record("started over a regular file")
            } catch {
                #expect("\(error)".contains("a file that is not a socket is in the way"))
            }
            #expect(FileManager.default.contents(atPath: fixture.socket) == Data("keep".utf8))
        }
    }

    @Test func refusesAPathTooLongForASocket() async throws {
        try await Fixture.with { fixture in
            let path = "\(fixture.directory)/\(String(repeating: "s", count: 110))"
            let server = EnrollmentServer(path: path, group: fixture.group, logger: Logger(label: "cni-test"), handler: { _ in .captured })
            await #expect(throws: EnrollmentServerError.self) { try await server.start() }
        }
    }

    @Test func invalidRequestsAreAnswered() async throws {
        try await Fixture.with { fixture in
            try await fixture.start { _ in .captured }
            #expect(try await Self.exchange(fixture.socket, Array("hello\n".utf8)).contains(#""ok":false"#))
            let versionTwo = try await Self.exchange(fixture.socket, Array(#"{"version":2}"# .utf8) + [0x0A])
            #expect(versionTwo.contains("enrollment protocol version 2"))
            let oversized = try await Self.exchange(fixture.socket, Array(repeating: 0x20, count: EnrollmentProtocol.maximumRequestSize + 10))
            #expect(oversized.contains("longer than 65536 bytes"))
            #expect(fixture.requests.withLockedValue { $0 }.isEmpty)
            try await Task.sleep(for: .milliseconds(100))
            #expect(fixture.count("none", "invalid") == 3)
        }
    }

    @Test func slowClientsTimeOut() async throws {
        try await Fixture.with { fixture in
            try await fixture.start(limits: .init(readTimeout: .milliseconds(200))) { _ in .captured }
            let answer = try await Self.exchange(fixture.socket, Array("{\"version\":".utf8))
            #expect(answer == #"{"error":"no complete request within 200 ms","ok":false,"version":1}"# + "\n")
            try await Task.sleep(for: .milliseconds(100))
            #expect(fixture.count("none", "timed_out") == 1)
        }
    }

    /// Past the connection limit the server answers busy instead of queueing.
    @Test func connectionLimit() async throws {
        try await Fixture.with { fixture in
            let release = NIOLockedValueBox(false)
            try await fixture.start(limits: .init(maximumConnections: 1)) { _ in
                while !release.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
                return .captured
            }
            let first = Task { try await Self.exchange(fixture.socket, EnrollmentProtocolTests.request.encoded()) }
            while fixture.requests.withLockedValue({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(10)) }
            let second = try await Self.exchange(fixture.socket, EnrollmentProtocolTests.request.encoded())
            #expect(second.contains("the agent is at its limit of 1 enrollment connections at once"))
            release.withLockedValue { $0 = true }
            #expect(try await first.value == #"{"captured":true,"ok":true,"version":1}"# + "\n")
            // The busy one has closed: a new request is served.
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await Self.exchange(fixture.socket, EnrollmentProtocolTests.request.encoded()).contains(#""ok":true"#))
            #expect(fixture.count("none", "refused") == 1)
        }
    }

    /// Concurrent ADDs for different pods are handled side by side, as
    /// runtimes start pods in parallel.
    @Test func concurrentRequests() async throws {
        try await Fixture.with { fixture in
            // How many requests the handler holds at once, and the most it held.
            let inFlight = NIOLockedValueBox((now: 0, most: 0))
            try await fixture.start { _ in
                inFlight.withLockedValue { $0.now += 1; $0.most = max($0.most, $0.now) }
                try await Task.sleep(for: .milliseconds(300))
                inFlight.withLockedValue { $0.now -= 1 }
                return .captured
            }
            try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<8 {
                    var request = EnrollmentProtocolTests.request
                    request.containerID = "pod\(index)"
                    let bytes = request.encoded()
                    group.addTask { try await Self.exchange(fixture.socket, bytes) }
                }
                for try await answer in group {
                    #expect(answer.contains(#""captured":true"#))
                }
            }
            // Side by side, not one after another (a wall-clock bound would
            // measure how busy the machine is).
            #expect(inFlight.withLockedValue { $0.most } > 1)
            #expect(Set(fixture.requests.withLockedValue { $0 }.map(\.containerID)).count == 8)
        }
    }
}
