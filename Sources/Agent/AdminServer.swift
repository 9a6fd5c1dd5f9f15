import Foundation
import LinuxNet
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Proxy

/// The agent's small HTTP/1.1 servers. Routes keyed by a path answer GET;
/// routes keyed "POST /path" are actions. The admin API: JSON on a Unix socket
/// that only root may open (mode 0600, and checked again per connection from the
/// kernel's record of who connected), with `agentctl` as its client, read-only
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
        /// Every address (0.0.0.0 and, where the host has IPv6, ::), with
        /// sockets from `sockets` under `name`, so they can be handed over.
        case tcp(name: String, port: UInt16, sockets: ListeningSockets)
    }

    private let binding: Binding
    private let routes: [String: Route]
    private let queryRoutes: [String: QueryRoute]
    private let group: EventLoopGroup
    private let logger: Logger
    /// On the Unix socket only: who may talk to the admin API, whatever the
    /// socket file's mode says.
    private let peerAccess: AdminPeerAccess?
    private let channel = NIOLockedValueBox<Channel?>(nil)
    private let tcpListeners = NIOLockedValueBox<ListenerSet?>(nil)
    /// The admin socket file this server made (device and inode), so that
    /// stopping removes it only if no other agent has made its own since.
    private let socketFile = NIOLockedValueBox<(dev_t, ino_t)?>(nil)

    public convenience init(path: String, routes: [String: Route], queryRoutes: [String: QueryRoute] = [:], group: EventLoopGroup, logger: Logger) {
        self.init(binding: .unixSocket(path: path), routes: routes, queryRoutes: queryRoutes, group: group, logger: logger)
    }

    public init(binding: Binding, routes: [String: Route], queryRoutes: [String: QueryRoute] = [:], group: EventLoopGroup, logger: Logger) {
        self.binding = binding
        self.routes = routes
        self.queryRoutes = queryRoutes
        self.group = group
        self.logger = logger
        if case .unixSocket(let path) = binding {
            peerAccess = AdminPeerAccess(socketPath: path, agentUID: geteuid(), logger: logger)
        } else {
            peerAccess = nil
        }
    }

    public func start() async throws {
        let routes = self.routes
        let queryRoutes = self.queryRoutes
        let logger = self.logger
        let peerAccess = self.peerAccess
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let access = peerAccess?.check(channel) ?? channel.eventLoop.makeSucceededFuture(.allowed)
                return access.flatMapThrowing { access in
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        AdminHTTPHandler(routes: routes, queryRoutes: queryRoutes, access: access, logger: logger))
                }
            }
        switch binding {
        case .unixSocket(let path):
            try await startUnix(bootstrap, path: path)
        case .tcp(let name, let port, let sockets):
            let listeners = ListenerSet(name: name, sockets: sockets)
            try await listeners.bind(addresses: ["0.0.0.0", "::"], port: port, logger: logger) { bootstrap }
            tcpListeners.withLockedValue { $0 = listeners }
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
        var info = stat()
        if lstat(path, &info) == 0 { socketFile.withLockedValue { $0 = (info.st_dev, info.st_ino) } }
        channel.withLockedValue { $0 = bound }
        logger.info("admin API listening on \(path)")
    }

    public func stop() async {
        if let bound = channel.withLockedValue({ channel in defer { channel = nil }; return channel }) {
            try? await bound.close()
        }
        await tcpListeners.withLockedValue({ listeners in defer { listeners = nil }; return listeners })?.close()
        // An agent that took over made its own socket at this path.
        if case .unixSocket(let path) = binding, let made = socketFile.withLockedValue({ $0 }) {
            var info = stat()
            if lstat(path, &info) == 0, info.st_dev == made.0, info.st_ino == made.1 {
                unlink(path)
            }
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

/// Whether a connection may reach the routes.
enum AdminAccess: Equatable, Sendable {
    case allowed
    /// Every request on the connection is answered 403 with this message.
    case refused(String)
}

/// Who may use the admin API on its Unix socket: root and the agent's own
/// user, as the kernel recorded the connecting process (SO_PEERCRED). The
/// socket file's mode keeps others out too, but a mode can be loosened by
/// mistake or the directory shared; this check does not depend on either.
final class AdminPeerAccess: Sendable {
    private let socketPath: String
    private let agentUID: uid_t
    private let logger: Logger
    private let refusals = Counter(label: "mesh_agent_admin_refused_total")
    /// When each refused peer last got a warning; later refusals within
    /// `warningInterval` are logged at debug, so a script retrying in a loop
    /// cannot flood the log.
    private let lastWarning = NIOLockedValueBox<[Peer: NIODeadline]>([:])
    static let warningInterval = TimeAmount.minutes(1)

    private enum Peer: Hashable {
        case user(uid_t)
        /// Its credentials could not be read.
        case unknown
    }

    init(socketPath: String, agentUID: uid_t, logger: Logger) {
        self.socketPath = socketPath
        self.agentUID = agentUID
        self.logger = logger
    }

    /// Reads the peer's credentials and decides; a refusal is logged and
    /// counted. Completes on the channel's event loop.
    func check(_ channel: Channel) -> EventLoopFuture<AdminAccess> {
        PeerCredentials.of(channel)
            .map { Result<PeerCredentials, Error>.success($0) }
            .recover { .failure($0) }
            .map { credentials in
                let access = Self.decide(credentials, agentUID: self.agentUID)
                if case .refused = access {
                    self.recordRefusal(of: credentials)
                }
                return access
            }
    }

    /// The whole decision, with the answer the refused client gets. A peer
    /// whose credentials cannot be read is refused: not knowing who connected
    /// is no reason to let them in.
    static func decide(_ credentials: Result<PeerCredentials, Error>, agentUID: uid_t) -> AdminAccess {
        switch credentials {
        case .success(let peer) where peer.uid == 0 || peer.uid == agentUID:
            return .allowed
        case .success(let peer):
            let remedy = agentUID == 0 ? "run agentctl as root (sudo agentctl …)" : "run agentctl as root (sudo agentctl …) or as uid \(agentUID)"
            return .refused("\(allowedUsers(agentUID: agentUID)) may use the agent's admin API; it refused \(peer): \(remedy)")
        case .failure(let error):
            return .refused("the agent could not tell who connected to its admin API (\(error)), so it refused the connection; the agent's log has the details")
        }
    }

    private static func allowedUsers(agentUID: uid_t) -> String {
        agentUID == 0 ? "only root" : "only root and uid \(agentUID) (the agent's own user)"
    }

    private func recordRefusal(of credentials: Result<PeerCredentials, Error>) {
        refusals.increment()
        let peer: Peer
        let message: String
        switch credentials {
        case .success(let credentials):
            peer = .user(credentials.uid)
            message = "admin API refused \(credentials) on \(socketPath): \(Self.allowedUsers(agentUID: agentUID)) may use it\(socketModeNote())"
        case .failure(let error):
            peer = .unknown
            message = "admin API refused a connection on \(socketPath): the peer's credentials could not be read: \(error)"
        }
        let now = NIODeadline.now()
        let warn = lastWarning.withLockedValue { lastWarning in
            // Forget peers whose quiet period is over, so the table stays small.
            lastWarning = lastWarning.filter { now - $0.value < Self.warningInterval }
            guard lastWarning[peer] == nil else { return false }
            lastWarning[peer] = now
            return true
        }
        if warn {
            logger.warning("\(message) (more refusals of the same user within a minute are logged at debug)")
        } else {
            logger.debug("\(message)")
        }
    }

    /// A user other than root can only have connected if the socket file let
    /// them; say so when its mode is wider than the 0600 the agent set.
    private func socketModeNote() -> String {
        var info = stat()
        guard lstat(socketPath, &info) == 0, info.st_mode & 0o077 != 0 else { return "" }
        let mode = String(info.st_mode & 0o777, radix: 8)
        return "; the socket file is mode \(mode), not the 0600 the agent set: chmod 600 \(socketPath), and find what changed it"
    }
}

private final class AdminHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: [String: AdminServer.Route]
    private let queryRoutes: [String: AdminServer.QueryRoute]
    private let access: AdminAccess
    private let logger: Logger
    private var request: HTTPRequestHead?

    init(routes: [String: AdminServer.Route], queryRoutes: [String: AdminServer.QueryRoute], access: AdminAccess, logger: Logger) {
        self.routes = routes
        self.queryRoutes = queryRoutes
        self.access = access
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
        // Routes may block (reading the nftables table back is several netlink
        // round trips): they run on the thread pool, never on the event loop
        // that also carries workload traffic.
        let answer = Self.answer
        let (routes, queryRoutes, access, logger) = (self.routes, self.queryRoutes, self.access, self.logger)
        let response = NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) {
            answer(head, routes, queryRoutes, access, logger)
        }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        response.whenComplete { result in
            let response = (try? result.get()) ?? Self.error(.serviceUnavailable, "the agent is shutting down")
            Self.write(response, version: head.version, context: bound.value)
        }
    }

    private static func answer(
        _ head: HTTPRequestHead, _ routes: [String: AdminServer.Route], _ queryRoutes: [String: AdminServer.QueryRoute], _ access: AdminAccess,
        _ logger: Logger
    ) -> AdminServer.Response {
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(parts.first ?? "")
        // A plain path is a read (GET); actions are registered as "POST /path".
        let route = head.method == .GET ? routes[path] : routes["\(head.method) \(path)"]
        // A refused peer is answered after its request is read, not before: a
        // Unix socket closed with unread data resets the connection, and the
        // client would see that instead of the reason.
        if case .refused(let message) = access {
            return error(.forbidden, message)
        } else if head.method == .GET, let queryRoute = queryRoutes[path] {
            do {
                return try queryRoute(parameters(parts.count > 1 ? parts[1] : ""))
            } catch {
                return Self.error(.badRequest, "\(error)")
            }
        } else if route == nil && (routes[path] != nil || routes["POST \(path)"] != nil) {
            return error(.methodNotAllowed, "\(head.method) is not allowed on \(path)")
        } else if let route {
            do {
                return try route()
            } catch {
                logger.warning("admin API \(path) failed: \(error)")
                return Self.error(.internalServerError, "\(error)")
            }
        }
        let known = (Array(routes.keys) + Array(queryRoutes.keys)).sorted().joined(separator: ", ")
        return error(.notFound, "no such endpoint \(path); known: \(known)")
    }

    private static func write(_ response: AdminServer.Response, version: HTTPVersion, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Connection", value: "close")
        let handler = NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: response.status, headers: headers)))
        context.write(handler, promise: nil)
        context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in channel.close(promise: nil) }
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
