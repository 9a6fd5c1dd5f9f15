import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// One HTTP/1.1 connection to an engine's Unix socket, used for one request
/// after another (keep-alive) and closed when the body of
/// `EngineConnection.with` returns. The engines' API speaks plain HTTP on the
/// socket; the host name is a formality.
struct EngineConnection {
    private var inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>
    let channel: Channel
    let socketPath: String
    /// Set when a deadline closed the connection, so that the end of the
    /// stream reads as a timeout and not as the engine hanging up.
    private let timedOut: NIOLockedValueBox<Bool>

    /// Connects, runs `body`, and closes the connection however `body` ends.
    /// Cancelling the task closes the connection, which ends any read.
    static func with<Result: Sendable>(
        socketPath: String, group: EventLoopGroup, _ body: (inout EngineConnection) async throws -> Result
    ) async throws -> Result {
        let asyncChannel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            asyncChannel = try await ClientBootstrap(group: group)
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw EngineAPIError.unreachable(socket: socketPath, reason: Self.describeConnectError(error))
        }
        let channel = asyncChannel.channel
        return try await withTaskCancellationHandler {
            try await asyncChannel.executeThenClose { inbound, outbound in
                var connection = EngineConnection(
                    inbound: inbound.makeAsyncIterator(), outbound: outbound, channel: channel, socketPath: socketPath,
                    timedOut: NIOLockedValueBox(false))
                return try await body(&connection)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    /// Sends `GET path` and returns the status and the whole body, at most
    /// `limit` bytes, within `timeout`.
    mutating func get(_ path: String, limit: Int, timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        let request = "GET \(path)"
        let deadline = arm(timeout)
        defer { deadline.cancel() }
        try await send(path, request: request)
        let head = try await readHead(request: request, timeout: timeout)
        return (Int(head.status.code), try await collectBody(request: request, limit: limit, timeout: timeout))
    }

    /// The rest of a body (an error's, after `openStream`), within `timeout`.
    mutating func readBody(request: String, limit: Int, timeout: Duration) async throws -> [UInt8] {
        let deadline = arm(timeout)
        defer { deadline.cancel() }
        return try await collectBody(request: request, limit: limit, timeout: timeout)
    }

    private mutating func collectBody(request: String, limit: Int, timeout: Duration) async throws -> [UInt8] {
        var body: [UInt8] = []
        while let part = try await nextBodyPart(request: request, timeout: timeout) {
            guard body.count + part.readableBytes <= limit else {
                throw EngineAPIError.responseTooLarge(request: request, limit: limit)
            }
            body.append(contentsOf: part.readableBytesView)
        }
        return body
    }

    /// Sends `GET path` for a streamed answer and returns its head once it
    /// arrives (within `timeout`); the body is then read with `nextBodyPart`.
    mutating func openStream(_ path: String, timeout: Duration) async throws -> HTTPResponseHead {
        let request = "GET \(path)"
        let deadline = arm(timeout)
        defer { deadline.cancel() }
        try await send(path, request: request)
        return try await readHead(request: request, timeout: timeout)
    }

    /// The next piece of the body, or nil at its end.
    mutating func nextBodyPart(request: String, timeout: Duration? = nil) async throws -> ByteBuffer? {
        switch try await next(request: request, timeout: timeout) {
        case .body(let buffer):
            return buffer
        case .end:
            return nil
        case .head:
            throw EngineAPIError.connection(request: request, reason: "a second response head arrived in the middle of the body")
        }
    }

    private func send(_ path: String, request: String) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "localhost")
        headers.add(name: "Accept", value: "application/json")
        do {
            try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)))
            try await outbound.write(.end(nil))
        } catch {
            throw EngineAPIError.connection(request: request, reason: "sending the request failed: \(error)")
        }
    }

    private mutating func readHead(request: String, timeout: Duration) async throws -> HTTPResponseHead {
        guard case .head(let head) = try await next(request: request, timeout: timeout) else {
            throw EngineAPIError.connection(request: request, reason: "the answer did not start with a response head")
        }
        return head
    }

    private mutating func next(request: String, timeout: Duration?) async throws -> HTTPClientResponsePart {
        let part: HTTPClientResponsePart?
        do {
            part = try await inbound.next()
        } catch {
            if timedOut.withLockedValue({ $0 }), let timeout {
                throw EngineAPIError.timeout(request: request, seconds: Int(timeout.components.seconds))
            }
            throw EngineAPIError.connection(request: request, reason: "\(error)")
        }
        guard let part else {
            if timedOut.withLockedValue({ $0 }), let timeout {
                throw EngineAPIError.timeout(request: request, seconds: Int(timeout.components.seconds))
            }
            try Task.checkCancellation()
            throw EngineAPIError.connection(request: request, reason: "the engine closed the connection before the answer was complete")
        }
        return part
    }

    /// Closes the connection when `timeout` passes: whatever read is waiting
    /// then ends, and `next` reports the timeout.
    private func arm(_ timeout: Duration) -> Scheduled<Void> {
        let channel = channel
        let timedOut = timedOut
        let nanoseconds = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
        return channel.eventLoop.scheduleTask(in: .nanoseconds(max(1, nanoseconds))) {
            timedOut.withLockedValue { $0 = true }
            channel.close(promise: nil)
        }
    }

    static func describeConnectError(_ error: Error) -> String {
        if let error = error as? IOError {
            switch error.errnoCode {
            case ENOENT: return "no such socket"
            case ECONNREFUSED: return "nothing listens on the socket"
            case EACCES, EPERM: return "permission denied (the agent needs to run as root, or in the socket's group)"
            case ENOTSOCK: return "the path is not a socket"
            default: return "\(error)"
            }
        }
        if let error = error as? SocketAddressError, case .unixDomainSocketPathTooLong = error {
            return "the socket path is longer than a Unix socket address can hold (107 bytes)"
        }
        return "\(error)"
    }
}
