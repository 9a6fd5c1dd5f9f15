import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Proxy

/// The agent's small HTTP/1.1 servers. Routes keyed by a path answer GET;
/// routes keyed "POST /path" are actions. The admin API: JSON on a Unix socket
/// that only root may open (mode 0600), with `agentctl` as its client, read-only
/// views that never contain private key material. The same server answers
/// Prometheus (`/metrics` on 15020) and the readiness probe (15021) on TCP.
public final class AdminServer: Sendable {
    public struct Response: Sendable {
        public var status: HTTPResponseStatus
        public var contentType: String
        public var body: Data

        public init(status: HTTPResponseStatus = .ok, contentType: String = "application/json", body: Data) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    public typealias Route = @Sendable () throws -> Response
    /// A read that takes parameters from the query string, in order, decoded.
    public typealias QueryRoute = @Sendable (_ parameters: [(name: String, value: String)]) throws -> Response

    public enum Binding: Sendable {
        case unixSocket(path: String)
        /// Every address (IPv6 dual-stack, or IPv4 alone on a host without IPv6).
        case tcp(port: UInt16)
    }

    private let binding: Binding
    private let routes: [String: Route]
    private let queryRoutes: [String: QueryRoute]
    private let group: EventLoopGroup
    private let logger: Logger
    private let channel = NIOLockedValueBox<Channel?>(nil)

    public convenience init(path: String, routes: [String: Route], queryRoutes: [String: QueryRoute] = [:], group: EventLoopGroup, logger: Logger) {
        self.init(binding: .unixSocket(path: path), routes: routes, queryRoutes: queryRoutes, group: group, logger: logger)
    }

    public init(binding: Binding, routes: [String: Route], queryRoutes: [String: QueryRoute] = [:], group: EventLoopGroup, logger: Logger) {
        self.binding = binding
        self.routes = routes
        self.queryRoutes = queryRoutes
        self.group = group
        self.logger = logger
    }

    public func start() async throws {
        let routes = self.routes
        let queryRoutes = self.queryRoutes
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler(routes: routes, queryRoutes: queryRoutes, logger: logger))
                }
            }
        switch binding {
        case .unixSocket(let path):
            try await startUnix(bootstrap, path: path)
        case .tcp(let port):
            let bound: Channel
            do {
                bound = try await bootstrap.bind(host: "::", port: Int(port)).get()
            } catch {
                do {
                    bound = try await bootstrap.bind(host: "0.0.0.0", port: Int(port)).get()
                } catch {
                    throw ProxyError.cannotListen(address: "0.0.0.0", port: port, underlying: "\(error)")
                }
            }
            channel.withLockedValue { $0 = bound }
            logger.info("serving \(routes.keys.sorted().joined(separator: ", ")) on port \(port)")
        }
    }

    private func startUnix(_ bootstrap: ServerBootstrap, path: String) async throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try removeStaleSocket(path)
        let bound: Channel
        do {
            bound = try await bootstrap.bind(unixDomainSocketPath: path).get()
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
        if case .unixSocket(let path) = binding {
            unlink(path)
        }
    }

    /// A socket file left by an earlier agent that did not exit cleanly; anything
    /// else at that path is not ours to delete.
    private func removeStaleSocket(_ path: String) throws {
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
    private let queryRoutes: [String: AdminServer.QueryRoute]
    private let logger: Logger
    private var request: HTTPRequestHead?

    init(routes: [String: AdminServer.Route], queryRoutes: [String: AdminServer.QueryRoute], logger: Logger) {
        self.routes = routes
        self.queryRoutes = queryRoutes
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
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(parts.first ?? "")
        let response: AdminServer.Response
        // A plain path is a read (GET); actions are registered as "POST /path".
        let route = head.method == .GET ? routes[path] : routes["\(head.method) \(path)"]
        if head.method == .GET, let queryRoute = queryRoutes[path] {
            do {
                response = try queryRoute(Self.parameters(parts.count > 1 ? parts[1] : ""))
            } catch {
                response = Self.error(.badRequest, "\(error)")
            }
        } else if route == nil && (routes[path] != nil || routes["POST \(path)"] != nil) {
            response = Self.error(.methodNotAllowed, "\(head.method) is not allowed on \(path)")
        } else if let route {
            do {
                response = try route()
            } catch {
                logger.warning("admin API \(path) failed: \(error)")
                response = Self.error(.internalServerError, "\(error)")
            }
        } else {
            response = Self.error(.notFound, "no such endpoint \(path); known: \(routes.keys.sorted().joined(separator: ", "))")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    /// `a=1&b=x%20y` → [("a", "1"), ("b", "x y")]; `+` is a space, as forms write it.
    static func parameters(_ query: Substring) -> [(name: String, value: String)] {
        query.split(separator: "&").map { pair in
            let halves = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                let spaced = text.replacingOccurrences(of: "+", with: " ")
                return spaced.removingPercentEncoding ?? spaced
            }
            return (decode(halves[0]), halves.count > 1 ? decode(halves[1]) : "")
        }
    }

    static func error(_ status: HTTPResponseStatus, _ message: String) -> AdminServer.Response {
        AdminServer.Response(status: status, body: (try? JSONSerialization.data(withJSONObject: ["error": message])) ?? Data())
    }
}
