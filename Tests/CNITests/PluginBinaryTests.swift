import CNI
import CNIServer
import Foundation
import LinuxNet
import Logging
import MetricsTestKit
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestFixtures
import Testing

/// The built `mesh-agent-cni` run as a runtime runs it (CNI_* environment,
/// config on stdin), against the agent's `EnrollmentServer` with a handler
/// that stands in for the agent.
@Suite("mesh-agent-cni binary against the enrollment server")
struct PluginBinaryTests {
    /// Next to the test bundle in the build directory (`swift build
    /// --build-tests` builds it), or where MESH_AGENT_BIN says.
    static func pluginPath() throws -> String {
        let directory =
            ProcessInfo.processInfo.environment["MESH_AGENT_BIN"]
            ?? URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
            .deletingLastPathComponent().path
        let path = "\(directory)/mesh-agent-cni"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw PluginTestError("no mesh-agent-cni at \(path): build it first (swift build --build-tests, or swift build --product mesh-agent-cni)")
        }
        return path
    }

    struct PluginTestError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    struct Run {
        var status: Int32
        var stdout: [UInt8]
        var stderr: String

        var json: JSONValue? { try? JSONValue.parse(stdout) }
    }

    /// Runs the plugin; a hung plugin fails the test instead of hanging it.
    static func run(_ environment: [String: String], stdin: [UInt8], timeout: Double = 90) async throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try pluginPath())
        process.environment = environment.merging(["PATH": "/usr/bin:/bin"]) { current, _ in current }
        let input = Pipe()
        let output = Pipe()
        let errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        try input.fileHandleForWriting.write(contentsOf: stdin)
        try input.fileHandleForWriting.close()
        // Read while it runs (a full pipe would block it), on threads of
        // their own: blocking reads on the concurrency pool would starve the
        // server the plugin talks to.
        async let out = onOwnThread { output.fileHandleForReading.readDataToEndOfFile() }
        async let err = onOwnThread { errors.fileHandleForReading.readDataToEndOfFile() }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                process.terminate()
                throw PluginTestError("mesh-agent-cni did not exit within \(timeout) s")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return Run(status: process.terminationStatus, stdout: Array(try await out), stderr: String(decoding: try await err, as: UTF8.self))
    }

    /// A socket directory of the test's own, short enough for `sun_path`.
    final class Fixture: Sendable {
        let directory: String
        let socket: String
        let requests = NIOLockedValueBox<[EnrollmentRequest]>([])
        let metrics = TestMetrics()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        private let server = NIOLockedValueBox<EnrollmentServer?>(nil)

        init() throws {
            directory = "/tmp/cni-test-\(UUID().uuidString.prefix(8).lowercased())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            socket = "\(directory)/cni.sock"
        }

        func start(
            limits: EnrollmentServer.Limits = .init(), _ handler: @escaping @Sendable (EnrollmentRequest) async throws -> EnrollmentOutcome
        ) async throws {
            let requests = self.requests
            let server = EnrollmentServer(
                path: socket, limits: limits, group: group, logger: Logger(label: "cni-test"), metrics: metrics,
                handler: { request in
                    requests.withLockedValue { $0.append(request) }
                    return try await handler(request)
                })
            try await server.start()
            self.server.withLockedValue { $0 = server }
        }

        /// Runs `body` with a fixture, and cleans up after it, also when it throws.
        static func with(_ body: (Fixture) async throws -> Void) async throws {
            let fixture = try Fixture()
            do {
                try await body(fixture)
            } catch {
                await fixture.stop()
                throw error
            }
            await fixture.stop()
        }

        func stop() async {
            await server.withLockedValue { $0 }?.stop()
            try? await group.shutdownGracefully()
            try? FileManager.default.removeItem(atPath: directory)
        }

        func count(_ command: String, _ result: String) -> Int64 {
            (try? metrics.expectCounter("mesh_agent_cni_requests_total", [("command", command), ("result", result)]).totalValue) ?? 0
        }

        func config(_ example: String = SpecExamples.addPortmap, _ settings: [String: JSONValue] = [:]) -> [UInt8] {
            var all = settings
            all["agentSocket"] = all["agentSocket"] ?? .string(socket)
            // The fixture's server answers on the concurrency pool, which the
            // suite's blocking kernel tests can hold for seconds (longer under
            // the sanitizers): the plugin waits for it longer than its default
            // 10 s. A test of the timeout sets its own.
            all["timeoutSeconds"] = all["timeoutSeconds"] ?? .integer(60)
            return SpecExamples.asMeshAgentCNI(example, settings: all)
        }
    }

    static func environment(_ command: String) -> [String: String] {
        [
            "CNI_COMMAND": command, "CNI_CONTAINERID": "4f3a9c", "CNI_NETNS": "/var/run/netns/blue", "CNI_IFNAME": "eth0",
            "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=8e2b6f1c", "CNI_PATH": "/usr/lib/cni",
        ]
    }

    static func expectedResult(_ stdin: [UInt8]) -> JSONValue? {
        guard case .object(var members)? = (try? JSONValue.parse(stdin))?["prevResult"] else { return nil }
        members["cniVersion"] = .string("1.0.0")
        return .object(members)
    }

    @Test func addPassesPrevResultThroughOnceCaptured() async throws {
        try await Fixture.with { fixture in
            try await fixture.start { _ in .captured }
            let stdin = fixture.config()
            let run = try await Self.run(Self.environment("ADD"), stdin: stdin)
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.json == Self.expectedResult(stdin))
            #expect(run.stderr.contains("mesh-agent-cni: ADD shop/web-0 (container 4f3a9c): captured"))
            let requests = fixture.requests.withLockedValue { $0 }
            #expect(requests == [EnrollmentRequest(
                command: .add, containerID: "4f3a9c", netns: "/var/run/netns/blue", ifName: "eth0", network: "dbnet", podNamespace: "shop",
                podName: "web-0", podUID: "8e2b6f1c", addresses: ["10.1.0.5"], cniVersion: "1.0.0")])
            #expect(fixture.count("ADD", "captured") == 1)
        }
    }

    @Test func addWithoutAgentFails() async throws {
        try await Fixture.with { fixture in
            let run = try await Self.run(Self.environment("ADD"), stdin: fixture.config())
            #expect(run.status != 0)
            #expect(run.json?["code"] == .integer(11))
            #expect(run.json?["cniVersion"] == .string("1.0.0"))
            #expect(run.json?["msg"] == .string("ADD shop/web-0 (container 4f3a9c): the mesh agent is not running"))
            #expect(run.json?["details"]?.stringValue?.hasPrefix("no socket at \(fixture.socket)") == true)
            #expect(run.stderr.contains("error 11"))
        }
    }

    /// A socket file left by an agent that is gone: nothing listens.
    @Test func addWithStaleSocketFails() async throws {
        try await Fixture.with { fixture in
            _ = try UnixStreamSocket.listen(at: fixture.socket)
            let run = try await Self.run(Self.environment("ADD"), stdin: fixture.config())
            #expect(run.status != 0)
            #expect(run.json?["details"]?.stringValue?.hasPrefix("nothing listens on \(fixture.socket)") == true)
        }
    }

    @Test func addFailsWhenTheHandlerFails() async throws {
        struct CaptureFailed: Error, CustomStringConvertible {
            var description: String { "entering /var/run/netns/blue failed: no such file" }
        }
        try await Fixture.with { fixture in
            try await fixture.start { _ in throw CaptureFailed() }
            let run = try await Self.run(Self.environment("ADD"), stdin: fixture.config())
            #expect(run.status != 0)
            #expect(run.json?["code"] == .integer(100))
            #expect(run.json?["msg"] == .string("ADD shop/web-0 (container 4f3a9c): the mesh agent could not enroll the pod"))
            #expect(run.json?["details"] == .string("entering /var/run/netns/blue failed: no such file"))
            #expect(fixture.count("ADD", "failed") == 1)
        }
    }

    @Test func addTimesOutOnASlowAgent() async throws {
        try await Fixture.with { fixture in
            let finished = NIOLockedValueBox(false)
            try await fixture.start { _ in
                try await Task.sleep(for: .milliseconds(1500))
                finished.withLockedValue { $0 = true }
                return .captured
            }
            let run = try await Self.run(Self.environment("ADD"), stdin: fixture.config(SpecExamples.addPortmap, ["timeoutSeconds": .number("0.5")]))
            // The plugin's own clock says it gave up (a wall-clock bound here
            // would measure how busy the machine is, not the plugin).
            #expect(run.status != 0)
            #expect(run.json?["code"] == .integer(11))
            #expect(run.json?["details"]?.stringValue?.hasPrefix("no answer within 500 ms") == true)
            // The agent finishes what it started; its answer finds no one.
            while !finished.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(20)) }
            try await Task.sleep(for: .milliseconds(100))
            #expect(fixture.count("ADD", "captured") == 1)
        }
    }

    @Test func addNotEnrolled() async throws {
        try await Fixture.with { fixture in
            try await fixture.start { _ in .notCaptured(reason: "neither the pod nor its namespace is labelled istio.io/dataplane-mode=ambient") }
            let stdin = fixture.config()
            let run = try await Self.run(Self.environment("ADD"), stdin: stdin)
            #expect(run.status == 0)
            #expect(run.json == Self.expectedResult(stdin))
            #expect(run.stderr.contains("not captured: neither the pod nor its namespace"))
            #expect(fixture.count("ADD", "not_captured") == 1)
        }
    }

    @Test func delWithoutAgentSucceeds() async throws {
        try await Fixture.with { fixture in
            let run = try await Self.run(Self.environment("DEL"), stdin: fixture.config())
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stdout.isEmpty)
            #expect(run.stderr.contains("the agent is not running"))
        }
    }

    @Test func delAndCheckReachTheAgent() async throws {
        try await Fixture.with { fixture in
            try await fixture.start { request in request.command == .del ? .removed : .captured }
            var environment = Self.environment("DEL")
            environment["CNI_NETNS"] = nil
            let del = try await Self.run(environment, stdin: fixture.config())
            #expect(del.status == 0, "\(del.stderr)")
            #expect(del.stdout.isEmpty)
            let check = try await Self.run(Self.environment("CHECK"), stdin: fixture.config(SpecExamples.checkBridge))
            #expect(check.status == 0, "\(check.stderr)")
            #expect(check.stdout.isEmpty)
            let requests = fixture.requests.withLockedValue { $0 }
            #expect(requests.map(\.command) == [.del, .check])
            #expect(requests.first?.netns == nil)
            #expect(fixture.count("DEL", "removed") == 1)
            #expect(fixture.count("CHECK", "captured") == 1)
        }
    }

    @Test func version() async throws {
        let run = try await Self.run(["CNI_COMMAND": "VERSION"], stdin: Array(#"{"cniVersion":"1.0.0"}"#.utf8))
        #expect(run.status == 0)
        #expect(String(decoding: run.stdout, as: UTF8.self) == #"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#)
    }

    @Test func status() async throws {
        try await Fixture.with { fixture in
            let stdin = Array(#"{"cniVersion":"1.1.0","name":"pods","type":"mesh-agent-cni","agentSocket":"\#(fixture.socket)"}"#.utf8)
            let down = try await Self.run(["CNI_COMMAND": "STATUS"], stdin: stdin)
            #expect(down.status != 0)
            #expect(down.json?["code"] == .integer(50))
            try await fixture.start { _ in .captured }
            let up = try await Self.run(["CNI_COMMAND": "STATUS"], stdin: stdin)
            #expect(up.status == 0, "\(up.stderr)")
            #expect(fixture.requests.withLockedValue { $0 }.isEmpty)
            try await Task.sleep(for: .milliseconds(100))
            #expect(fixture.count("none", "probe") == 1)
        }
    }

    @Test func badInputNeverReachesTheAgent() async throws {
        try await Fixture.with { fixture in
            try await fixture.start { _ in .captured }
            let garbage = try await Self.run(Self.environment("ADD"), stdin: Array("{\"cniVersion\":".utf8))
            #expect(garbage.status != 0)
            #expect(garbage.json?["code"] == .integer(6))
            var environment = Self.environment("ADD")
            environment["CNI_IFNAME"] = "eth0:bad"
            let badName = try await Self.run(environment, stdin: fixture.config())
            #expect(badName.json?["code"] == .integer(4))
            let noCommand = try await Self.run([:], stdin: [])
            #expect(noCommand.json?["msg"] == .string("CNI_COMMAND is not set"))
            #expect(fixture.requests.withLockedValue { $0 }.isEmpty)
        }
    }
}
