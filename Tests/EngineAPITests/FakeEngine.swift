import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A stand-in Engine API on a Unix socket: answers GETs with bytes the test
/// chooses (recorded ones), streams event lines to whoever follows
/// `/events`, and hangs up when told to.
final class FakeEngine: Sendable {
    struct Answer: Sendable {
        var status: HTTPResponseStatus
        var body: [UInt8]
    }

    private struct State {
        var answers: [String: Answer] = [:]
        var requests: [String] = []
        var streams: [Channel] = []
        var streamsOpened = 0
    }

    let socketPath: String
    let eventsPath: String
    private let state = NIOLockedValueBox(State())
    private let serverChannel: NIOLockedValueBox<Channel?> = NIOLockedValueBox(nil)

    init(socketPath: String, eventsPath: String) {
        self.socketPath = socketPath
        self.eventsPath = eventsPath
    }

    func start() async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(engine: self))
                }
            }
            .bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true)
            .get()
        serverChannel.withLockedValue { $0 = channel }
    }

    /// Stops listening and hangs up on every event stream.
    func stop() async throws {
        closeEventStreams()
        try await serverChannel.withLockedValue { $0 }?.close()
        unlink(socketPath)
    }

    func answer(_ path: String, _ body: [UInt8]) {
        answer([path: body])
    }

    /// Several answers at once, so that no listing sees some old, some new.
    func answer(_ bodies: [String: [UInt8]]) {
        state.withLockedValue { state in
            for (path, body) in bodies { state.answers[path] = Answer(status: .ok, body: body) }
        }
    }

    var requests: [String] { state.withLockedValue { $0.requests } }
    var streamsOpened: Int { state.withLockedValue { $0.streamsOpened } }

    /// Writes `bytes` as one chunk to every open event stream.
    func sendEvents(_ bytes: [UInt8]) {
        for channel in state.withLockedValue({ $0.streams }) {
            channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: bytes))), promise: nil)
        }
    }

    /// Ends every event stream properly (the last chunk), as an engine that
    /// shuts down cleanly does.
    func endEventStreams() {
        for channel in takeStreams() {
            channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Hangs up on every event stream in the middle of the body.
    func closeEventStreams() {
        for channel in takeStreams() { channel.close(promise: nil) }
    }

    private func takeStreams() -> [Channel] {
        state.withLockedValue { state in
            defer { state.streams = [] }
            return state.streams
        }
    }

    fileprivate func received(_ uri: String, on channel: Channel) -> Answer? {
        state.withLockedValue { state in
            state.requests.append(uri)
            if uri == eventsPath {
                state.streams.append(channel)
                state.streamsOpened += 1
                return nil
            }
            return state.answers[uri] ?? Answer(status: .notFound, body: Array(#"{"cause":"no such thing","message":"not recorded","response":404}"#.utf8))
        }
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let engine: FakeEngine
        var uri = ""

        init(engine: FakeEngine) {
            self.engine = engine
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                uri = head.uri
            case .body:
                break
            case .end:
                if let answer = engine.received(uri, on: context.channel) {
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Content-Length", value: "\(answer.body.count)")
                    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: answer.status, headers: headers))), promise: nil)
                    context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: answer.body)))), promise: nil)
                    context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                } else {
                    // As Podman answers /events: chunked, one event per chunk, no end.
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Transfer-Encoding", value: "chunked")
                    context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                }
            }
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(
    timeout: Duration = .seconds(30), _ what: @autoclosure () -> String, _ condition: @autoclosure () -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else {
            throw TimedOut(what: what())
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct TimedOut: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

/// A directory of its own for a test's sockets, removed afterwards.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = NSTemporaryDirectory() + "engine-api-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}
