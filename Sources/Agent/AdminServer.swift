import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The admin API: JSON over HTTP/1.1 on a Unix socket that only root may open
/// (mode 0600). `agentctl` is its client. Read-only views of the agent's state;
/// nothing it returns ever contains private key material.
public final class AdminServer: Sendable {
    public typealias Route = @Sendable () throws -> Data

    private let path: String
    private let routes: [String: Route]
    private let group: EventLoopGroup
    private let logger: Logger
    private let channel = NIOLockedValueBox<Channel?>(nil)

    public init(path: String, routes: [String: Route], group: EventLoopGroup, logger: Logger) {
        self.path = path
        self.routes = routes
        self.group = group
        self.logger = logger
    }

    public func start() async throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try removeStaleSocket()
        let routes = self.routes
        let logger = self.logger
        let bound: Channel
        do {
            bound = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler(routes: routes, logger: logger))
                    }
                }
                .bind(unixDomainSocketPath: path)
                .get()
        } catch {
            throw AgentError.adminSocket(path: path, reason: "\(error)")
        }
        // The socket starts with the umask's mode, which already denies other
        // users write (connect) access; narrow it to root alone.
        guard chmod(path, 0o600) == 0 else {
            let reason = String(cString: strerror(errno))
            try? await bound.close()
            throw AgentError.adminSocket(path: path, reason: "chmod 0600: \(reason)")
        }
        channel.withLockedValue { $0 = bound }
        logger.info("admin API listening on \(path)")
    }

    public func stop() async {
        if let bound = channel.withLockedValue({ channel in defer { channel = nil }; return channel }) {
            try? await bound.close()
        }
        unlink(path)
    }

    /// A socket file left by an earlier agent that did not exit cleanly; anything
    /// else at that path is not ours to delete.
    private func removeStaleSocket() throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw AgentError.adminSocket(path: path, reason: "a file that is not a socket is in the way; move it or set adminSocket to another path")
        }
        unlink(path)
    }
}

private final class AdminHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: [String: AdminServer.Route]
    private let logger: Logger
    private var request: HTTPRequestHead?

    init(routes: [String: AdminServer.Route], logger: Logger) {
        self.routes = routes
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            respond(context: context, to: head)
        }
    }

    private func respond(context: ChannelHandlerContext, to head: HTTPRequestHead) {
        let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
        let status: HTTPResponseStatus
        let body: Data
        if head.method != .GET && head.method != .POST {
            status = .methodNotAllowed
            body = Self.errorBody("method \(head.method) is not supported")
        } else if let route = routes[path] {
            do {
                body = try route()
                status = .ok
            } catch {
                logger.warning("admin API \(path) failed: \(error)")
                status = .internalServerError
                body = Self.errorBody("\(error)")
            }
        } else {
            status = .notFound
            body = Self.errorBody("no such endpoint \(path); known: \(routes.keys.sorted().joined(separator: ", "))")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    static func errorBody(_ message: String) -> Data {
        (try? JSONSerialization.data(withJSONObject: ["error": message])) ?? Data()
    }
}
