import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import TLS

/// GET requests to the API server over HTTP/1.1, one connection each (a
/// watch holds its connection for minutes anyway). The token and CA are read
/// again for every connection, so a rotated token or CA is picked up at the
/// next one.
struct APIServerClient: Sendable {
    /// What one connection authenticates with.
    struct Credentials {
        var token: String?
        var tls: TLSContext?
    }

    let endpoint: APIServerEndpoint
    let configuration: KubernetesSourceConfiguration
    let group: any EventLoopGroup

    /// Sends `GET target` (path and query) and hands each piece of a 200
    /// response's body to `body` as it arrives; returns when the response
    /// ends. Any other status throws `.http` with the `Status` the server
    /// sent.
    /// - Parameters:
    ///   - idleTimeout: the longest the response may go without a byte.
    ///   - onOK: called when a 200 response starts (a watch sends no body
    ///     until something happens).
    func get(_ target: String, idleTimeout: Duration, onOK: () -> Void, body: (ByteBuffer) async throws -> Void) async throws {
        let credentials = try self.credentials()
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(TimeAmount(configuration.connectTimeout))
                .channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
                .connect(host: endpoint.host, port: endpoint.port) { [endpoint] channel in
                    channel.eventLoop.makeCompletedFuture {
                        let operations = channel.pipeline.syncOperations
                        try operations.addHandler(IdleStateHandler(readTimeout: TimeAmount(idleTimeout)))
                        try operations.addHandler(IdleCloser(seconds: idleTimeout.components.seconds))
                        if let tls = credentials.tls {
                            try operations.addHandler(TLSHandler(context: tls, serverName: endpoint.serverName))
                        }
                        try operations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw KubernetesSourceError.connect(endpoint: endpoint.description, reason: Self.connectFailure(error))
        }
        let request = endpoint.basePath + target
        do {
            try await channel.executeThenClose { inbound, outbound in
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: endpoint.authority)
                headers.add(name: "Accept", value: "application/json")
                headers.add(name: "User-Agent", value: "mesh-agent")
                if let token = credentials.token {
                    headers.add(name: "Authorization", value: "Bearer \(token)")
                }
                // A write fails when the connection is already closed; why it
                // closed (a TLS refusal, say) is what the inbound side reports.
                var writeError: (any Error)?
                do {
                    try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: request, headers: headers)))
                    try await outbound.write(.end(nil))
                } catch {
                    writeError = error
                }
                do {
                    try await receive(inbound, request: target, onOK: onOK, body: body)
                } catch KubernetesSourceError.truncated(_, _) where writeError != nil {
                    throw KubernetesSourceError.truncated(request: target, reason: loggable("\(writeError.map { "\($0)" } ?? "")"))
                }
            }
        } catch let error as KubernetesSourceError {
            throw error
        } catch let error as IdleTimeout {
            throw KubernetesSourceError.idle(request: target, seconds: error.seconds)
        } catch let error as CancellationError {
            throw error
        } catch {
            throw KubernetesSourceError.truncated(request: target, reason: loggable("\(error)"))
        }
    }

    /// An error body is read up to this much, for its `Status`.
    static let maximumErrorBytes = 64 << 10

    private func receive(
        _ inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>, request: String, onOK: () -> Void,
        body: (ByteBuffer) async throws -> Void
    ) async throws {
        var status: HTTPResponseStatus?
        var errorBody = ByteBuffer()
        for try await part in inbound {
            switch part {
            case .head(let head):
                // 1xx answers are not the response.
                if head.status.code >= 200 { status = head.status }
                if status == .ok { onOK() }
            case .body(let buffer):
                if status == .ok {
                    try await body(buffer)
                } else if errorBody.readableBytes < Self.maximumErrorBytes {
                    var piece = buffer
                    errorBody.writeBuffer(&piece)
                }
            case .end:
                guard let status else { continue }
                guard status == .ok else {
                    throw KubernetesSourceError.http(
                        request: request, code: Int(status.code), status: KubernetesDecoder.status(errorBody.readableBytesView))
                }
                return
            }
        }
        throw KubernetesSourceError.truncated(request: request, reason: "the connection closed")
    }

    /// The token and TLS context for the next connection, read from their files now.
    func credentials() throws -> Credentials {
        var credentials = Credentials()
        let tokenPath = configuration.tokenFile
            ?? (FileManager.default.fileExists(atPath: KubernetesSourceConfiguration.inClusterTokenFile) ? KubernetesSourceConfiguration.inClusterTokenFile : nil)
        if let tokenPath {
            credentials.token = try Self.readToken(tokenPath)
        }
        if endpoint.scheme == .https {
            let caPath = configuration.caFile ?? KubernetesSourceConfiguration.inClusterCAFile
            let pem: String
            do {
                pem = try String(contentsOfFile: caPath, encoding: .utf8)
            } catch {
                throw KubernetesSourceError.caFile(path: caPath, reason: "cannot read it (\(Self.reason(error)))")
            }
            do {
                credentials.tls = try APIServerTLS.context(caPEM: pem, caFile: caPath, host: endpoint.host)
            } catch let error as KubernetesSourceError {
                throw error
            } catch {
                throw KubernetesSourceError.caFile(path: caPath, reason: "cannot set up TLS with it (\(error))")
            }
        }
        return credentials
    }

    /// Why a connection failed, as the system says it (`Connection refused`),
    /// without NIO's wrapping.
    static func connectFailure(_ error: any Error) -> String {
        var underlying = error
        if let connection = error as? NIOConnectionError {
            if let first = connection.connectionErrors.first {
                underlying = first.error
            } else if let resolution = connection.dnsAError ?? connection.dnsAAAAError {
                return loggable("cannot resolve \(connection.host): \(resolution)")
            }
        }
        if let io = underlying as? IOError {
            return String(cString: strerror(io.errnoCode))
        }
        if case ChannelError.connectTimeout(let timeout) = underlying {
            return "no answer within \(timeout.nanoseconds / 1_000_000_000) s"
        }
        return loggable("\(underlying)")
    }

    static func readToken(_ path: String) throws -> String {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw KubernetesSourceError.token(path: path, reason: "cannot read it (\(reason(error)))")
        }
        guard data.count <= 64 << 10 else {
            throw KubernetesSourceError.token(path: path, reason: "it is larger than 64 KiB, which no token is")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else {
            throw KubernetesSourceError.token(path: path, reason: "it is empty")
        }
        // It goes into a header line: nothing that could end or bend it.
        guard token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw KubernetesSourceError.token(path: path, reason: "it holds spaces, control characters or non-ASCII bytes, which no token has")
        }
        return token
    }

    private static func reason(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        return nsError.localizedDescription
    }
}

/// A response that went quiet for longer than its idle timeout.
struct IdleTimeout: Error {
    let seconds: Int64
}

/// Closes the connection, failing the response, when `IdleStateHandler` says
/// nothing was read for too long: a half-open TCP connection (the API server's
/// node gone without a reset) would otherwise hold a watch forever.
private final class IdleCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    let seconds: Int64

    init(seconds: Int64) {
        self.seconds = seconds
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.fireErrorCaught(IdleTimeout(seconds: seconds))
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
