import CNI
import Foundation
import LinuxNet
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The agent's end of the enrollment protocol: a Unix-socket server at
/// `workloadSources.cni.socket` that `mesh-agent-cni` asks to enroll, check
/// and remove pods. One request per connection (`EnrollmentConnection`); the
/// agent's `handler` decides and acts, and ADD is answered only when it
/// returns, so a pod starts only once its capture is installed.
///
/// Only root and the agent's own user may talk to it: the socket file is mode
/// 0600, and each connection's peer is checked from the kernel's record
/// (SO_PEERCRED). Bounded: request size, read timeout, open connections.
public final class EnrollmentServer: Sendable {
    public typealias Handler = @Sendable (EnrollmentRequest) async throws -> EnrollmentOutcome

    public struct Limits: Sendable {
        public var maximumRequestSize: Int
        /// Connections open at once; more are answered "busy" (the plugin
        /// fails and the runtime retries).
        public var maximumConnections: Int
        /// From accept to a complete request line. The handler's own time is
        /// not bounded here: the plugin waits as long as its config says.
        public var readTimeout: TimeAmount

        public init(
            maximumRequestSize: Int = EnrollmentProtocol.maximumRequestSize, maximumConnections: Int = 64, readTimeout: TimeAmount = .seconds(5)
        ) {
            self.maximumRequestSize = maximumRequestSize
            self.maximumConnections = maximumConnections
            self.readTimeout = readTimeout
        }
    }

    public let path: String
    private let limits: Limits
    private let group: any EventLoopGroup
    private let logger: Logger
    private let handler: Handler
    private let metrics: EnrollmentMetrics
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)
    private let openConnections = NIOLockedValueBox(0)
    /// The socket file this server made (device, inode), so that stopping
    /// removes it only if no other agent has made its own since.
    private let socketFile = NIOLockedValueBox<(dev_t, ino_t)?>(nil)

    /// `metrics`: where `mesh_agent_cni_requests_total` goes (the process's
    /// bootstrapped factory unless a test gives its own).
    public init(
        path: String, limits: Limits = Limits(), group: any EventLoopGroup, logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory,
        handler: @escaping Handler
    ) {
        self.path = path
        self.metrics = EnrollmentMetrics(factory: metrics)
        self.limits = limits
        self.group = group
        self.logger = logger
        self.handler = handler
    }

    public func start() async throws {
        try Self.prepare(path)
        let connection = ConnectionContext(
            limits: limits, handler: handler, metrics: metrics, logger: logger, openConnections: openConnections, agentUID: geteuid())
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 128)
            .childChannelInitializer { channel in connection.initialize(channel) }
        let bound: any Channel
        do {
            bound = try await bootstrap.bind(unixDomainSocketPath: path).get()
        } catch {
            throw EnrollmentServerError(path: path, reason: "binding failed: \(error)")
        }
        // The socket starts with the umask's mode; only root (and the agent's
        // user) may enroll pods.
        guard chmod(path, 0o600) == 0 else {
            let reason = String(cString: strerror(errno))
            try? await bound.close()
            throw EnrollmentServerError(path: path, reason: "chmod 0600 failed: \(reason)")
        }
        var info = stat()
        if lstat(path, &info) == 0 { socketFile.withLockedValue { $0 = (info.st_dev, info.st_ino) } }
        channel.withLockedValue { $0 = bound }
        logger.info("CNI enrollment socket listening on \(path)")
    }

    /// Stops accepting; requests being handled finish and are answered.
    public func stop() async {
        if let bound = channel.withLockedValue({ channel in defer { channel = nil }; return channel }) {
            try? await bound.close()
        }
        if let made = socketFile.withLockedValue({ file in defer { file = nil }; return file }) {
            var info = stat()
            if lstat(path, &info) == 0, info.st_dev == made.0, info.st_ino == made.1 {
                unlink(path)
            }
        }
    }

    /// Checks the path before binding: its directory exists (the agent does
    /// not make directories for a socket the CNI plugin must find at a
    /// configured place), it fits a socket address, and whatever is there is
    /// a socket an earlier agent left (removed) and nothing else.
    static func prepare(_ path: String) throws {
        if let problem = Names.socketPathProblem(path) {
            throw EnrollmentServerError(path: path, reason: "\(problem); set workloadSources.cni.socket to a shorter absolute path")
        }
        let directory = (path as NSString).deletingLastPathComponent
        var info = stat()
        guard stat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw EnrollmentServerError(
                path: path,
                reason: "its directory \(directory) does not exist; create it (mkdir -p -m 0755 \(directory)) or set workloadSources.cni.socket to a path in an existing directory")
        }
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw EnrollmentServerError(path: path, reason: "a file that is not a socket is in the way; move it or set workloadSources.cni.socket to another path")
        }
        unlink(path)
    }
}

public struct EnrollmentServerError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String

    public var description: String { "CNI enrollment socket \(path): \(reason)" }
}

/// What every connection's handler shares.
private struct ConnectionContext: Sendable {
    let limits: EnrollmentServer.Limits
    let handler: EnrollmentServer.Handler
    let metrics: EnrollmentMetrics
    let logger: Logger
    let openConnections: NIOLockedValueBox<Int>
    let agentUID: uid_t

    func initialize(_ channel: any Channel) -> EventLoopFuture<Void> {
        let open = openConnections.withLockedValue { count in
            count += 1
            return count
        }
        let openConnections = self.openConnections
        channel.closeFuture.whenComplete { _ in openConnections.withLockedValue { $0 -= 1 } }
        let busy = open > limits.maximumConnections
        return PeerCredentials.of(channel)
            .map { Result<PeerCredentials, any Error>.success($0) }
            .recover { .failure($0) }
            .flatMapThrowing { credentials in
                let refused = busy ? "the agent is at its limit of \(limits.maximumConnections) enrollment connections at once; the runtime retries" : refusal(of: credentials)
                let machine = EnrollmentConnection(maximumRequestSize: limits.maximumRequestSize, refusal: refused)
                try channel.pipeline.syncOperations.addHandler(EnrollmentChannelHandler(machine: machine, context: self))
            }
    }

    /// Root and the agent's own user may enroll pods; anyone else, or a
    /// peer whose credentials cannot be read, is refused.
    private func refusal(of credentials: Result<PeerCredentials, any Error>) -> String? {
        switch credentials {
        case .success(let peer) where peer.uid == 0 || peer.uid == agentUID:
            return nil
        case .success(let peer):
            return "only root may enroll pods with the mesh agent; refused \(peer)"
        case .failure(let error):
            return "the agent could not tell who connected (\(error)), so it refused the request"
        }
    }
}

private final class EnrollmentChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: EnrollmentConnection
    private let shared: ConnectionContext
    private var timeout: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    private var started = NIODeadline.now()

    init(machine: EnrollmentConnection, context: ConnectionContext) {
        self.machine = machine
        self.shared = context
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        started = .now()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let limit = shared.limits.readTimeout
        timeout = context.eventLoop.scheduleTask(in: limit) {
            let handler = bound.value
            handler.act(handler.machine.timedOut(after: "\(limit.nanoseconds / 1_000_000) ms"))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
        act(machine.received(bytes))
    }

    func channelInactive(context: ChannelHandlerContext) {
        act(machine.inputClosed())
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            act(machine.inputClosed())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        shared.logger.debug("CNI enrollment connection failed: \(error)")
        context.close(promise: nil)
    }

    private func act(_ action: EnrollmentConnection.Action) {
        switch action {
        case .wait:
            return
        case .handle(let request):
            timeout?.cancel()
            pending = request
            guard let context else { return }
            call(request, on: context.eventLoop)
        case .respond(let response, let result, let command):
            timeout?.cancel()
            record(result, command: command, response: response)
            guard let context else { return }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: response.encoded()))).whenComplete { _ in
                channel.close(promise: nil)
            }
        case .close(let result, let reason):
            timeout?.cancel()
            record(result, command: nil, response: reason.map { .failure($0) })
            context?.close(promise: nil)
        }
    }

    private func call(_ request: EnrollmentRequest, on eventLoop: any EventLoop) {
        let handler = shared.handler
        let logger = shared.logger
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        logger.debug("CNI \(request.command.rawValue) \(request.podDescription): netns \(request.netns ?? "none"), addresses \(request.addresses)")
        Task {
            let result: Result<EnrollmentOutcome, any Error>
            do {
                result = .success(try await handler(request))
            } catch {
                result = .failure(error)
            }
            eventLoop.execute {
                let handler = bound.value
                handler.act(handler.machine.handled(result))
            }
        }
    }

    /// The request being answered, for the log line.
    private var pending: EnrollmentRequest?

    private func record(_ result: EnrollmentResult, command: EnrollmentRequest.Command?, response: EnrollmentResponse?) {
        shared.metrics.record(result, command: command)
        let elapsed = (NIODeadline.now() - started).nanoseconds / 1_000_000
        let subject = pending.map { "CNI \($0.command.rawValue) \($0.podDescription)" } ?? "CNI enrollment request"
        let logger = shared.logger
        switch result {
        case .captured, .notCaptured, .removed:
            let detail = response?.reason.map { ": \($0)" } ?? ""
            logger.info("\(subject): \(result.rawValue)\(detail) in \(elapsed) ms")
        case .failed:
            logger.warning("\(subject) failed after \(elapsed) ms: \(response?.error ?? "")")
        case .invalid, .timedOut, .refused:
            logger.warning("\(subject) refused: \(response?.error ?? result.rawValue)")
        case .probe:
            logger.trace("CNI enrollment socket probed")
        }
    }
}
