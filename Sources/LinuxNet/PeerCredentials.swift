import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum PeerCredentialsError: Error, Equatable, CustomStringConvertible {
    /// The channel does not give access to socket options (not a socket channel).
    case unsupportedChannel
    /// The kernel holds no credentials for the peer: the socket is not a
    /// connected Unix socket.
    case noCredentials
    /// getsockopt failed.
    case system(errno: Int32)

    public var description: String {
        switch self {
        case .unsupportedChannel:
            return "the channel does not support socket options, so its peer's credentials cannot be read"
        case .noCredentials:
            return "the kernel has no credentials for the peer (the socket is not a connected Unix socket)"
        case .system(let code):
            return "reading the peer's credentials (SO_PEERCRED) failed: \(String(cString: strerror(code)))"
        }
    }
}

/// The process at the other end of a connected Unix socket, as the kernel
/// recorded it when that process called connect(2) (`SO_PEERCRED`). The peer
/// cannot choose these values, so they can decide access.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    /// 0 when the peer runs in a PID namespace this process cannot see.
    public var pid: pid_t
    /// The peer's effective uid when it connected.
    public var uid: uid_t
    /// The peer's effective gid when it connected.
    public var gid: gid_t

    public init(pid: pid_t, uid: uid_t, gid: gid_t) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "uid \(uid) (gid \(gid), pid \(pid))" }

    /// `struct ucred` (pid, uid, gid: three 32-bit integers). Glibc declares it
    /// only under _GNU_SOURCE, which Swift's Glibc module does not set; a tuple
    /// of one element type is laid out like a C array, so it matches byte for byte.
    typealias Ucred = (UInt32, UInt32, UInt32)

    /// The kernel writes the whole struct or fails, so every field read here
    /// is its answer. It reports uid and gid -1 for a socket without peer
    /// credentials; that must never pass as a real user.
    init(_ raw: Ucred) throws {
        let invalid = UInt32.max
        guard raw.1 != invalid, raw.2 != invalid else { throw PeerCredentialsError.noCredentials }
        self.init(pid: pid_t(bitPattern: raw.0), uid: uid_t(raw.1), gid: gid_t(raw.2))
    }

    /// The peer of `channel`, an accepted or connected Unix socket channel.
    /// Safe to call from any thread; completes on the channel's event loop.
    public static func of(_ channel: Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(PeerCredentialsError.unsupportedChannel)
        }
        return of(provider: provider)
    }

    /// The query itself, separated from `Channel` so it can be driven by any
    /// `SocketOptionProvider`.
    static func of(provider: SocketOptionProvider) -> EventLoopFuture<PeerCredentials> {
        let raw: EventLoopFuture<Ucred> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return raw
            .flatMapThrowing { try PeerCredentials($0) }
            .flatMapErrorThrowing { error in
                if let error = error as? IOError { throw PeerCredentialsError.system(errno: error.errnoCode) }
                throw error
            }
    }

    /// The peer of the connected Unix socket `fd` (for sockets that are not
    /// NIO channels).
    public static func of(socket fd: CInt) throws -> PeerCredentials {
        var raw: Ucred = (0, 0, 0)
        var length = socklen_t(MemoryLayout<Ucred>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &raw, &length) == 0 else {
            throw PeerCredentialsError.system(errno: errno)
        }
        guard length == MemoryLayout<Ucred>.size else { throw PeerCredentialsError.noCredentials }
        return try PeerCredentials(raw)
    }
}
