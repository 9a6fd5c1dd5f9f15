import CNetlink
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum OriginalDestinationError: Error, Equatable, CustomStringConvertible {
    /// The connection was not redirected by netfilter (the kernel answered ENOENT,
    /// or ENOPROTOOPT when conntrack is not loaded): someone connected to the
    /// capture port directly.
    case notRedirected
    /// The channel does not give access to socket options (not a socket channel).
    case unsupportedChannel
    /// The channel has no IP local address (closed, or a Unix socket).
    case noLocalAddress
    /// The kernel answered with an address of an unexpected family.
    case unexpectedFamily(Int32)
    /// getsockopt failed for another reason.
    case system(errno: Int32)

    public var description: String {
        switch self {
        case .notRedirected:
            return "the connection has no original destination: it was not redirected by netfilter (a direct connection to a capture port)"
        case .unsupportedChannel:
            return "the channel does not support socket options, so its original destination cannot be read"
        case .noLocalAddress:
            return "the channel has no IPv4 or IPv6 local address"
        case .unexpectedFamily(let family):
            return "the kernel returned an original destination of address family \(family)"
        case .system(let code):
            return "reading the original destination failed: \(String(cString: strerror(code)))"
        }
    }
}

/// Where a redirected connection was going before netfilter's REDIRECT sent it
/// to the agent: `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) on the
/// accepted socket.
public enum OriginalDestination {
    /// Which getsockopt to use for a socket whose local address is `local`.
    enum Query: Equatable {
        /// SOL_IP / SO_ORIGINAL_DST, returns sockaddr_in. Also used for IPv4
        /// connections on a dual-stack IPv6 socket (local address ::ffff:a.b.c.d).
        case v4
        /// SOL_IPV6 / IP6T_SO_ORIGINAL_DST, returns sockaddr_in6.
        case v6

        init?(local: SocketAddress) {
            switch local {
            case .v4: self = .v4
            case .v6(let v6):
                let raw = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
                self = SockDiagMessage.unmapIPv4(raw) == nil ? .v6 : .v4
            case .unixDomainSocket: return nil
            }
        }

        var level: CInt { self == .v4 ? CInt(SOL_IP) : CInt(SOL_IPV6) }
        var name: CInt { self == .v4 ? cnetlink_so_original_dst() : cnetlink_ip6t_so_original_dst() }
    }

    /// The original destination of an accepted connection. Fails with
    /// `OriginalDestinationError.notRedirected` if the connection was not
    /// redirected (no NAT entry, or one that leads to the listener itself). Safe to call from any thread; completes on the channel's loop.
    public static func of(_ channel: Channel) -> EventLoopFuture<SocketAddress> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(OriginalDestinationError.unsupportedChannel)
        }
        return of(provider: provider, localAddress: channel.localAddress)
    }

    /// The query itself, separated from `Channel` so it can be driven by any
    /// `SocketOptionProvider`.
    static func of(provider: SocketOptionProvider, localAddress: SocketAddress?) -> EventLoopFuture<SocketAddress> {
        guard let localAddress, let query = Query(local: localAddress) else {
            return provider.eventLoop.makeFailedFuture(OriginalDestinationError.noLocalAddress)
        }
        let level = SocketOptionLevel(query.level)
        let name = SocketOptionName(query.name)
        let result: EventLoopFuture<SocketAddress>
        switch query {
        case .v4:
            let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(level: level, name: name)
            result = future.flatMapThrowing { try address(from: $0) }
        case .v6:
            let future: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(level: level, name: name)
            result = future.flatMapThrowing { try address(from: $0) }
        }
        return result.flatMapErrorThrowing { error in throw mapError(error) }.flatMapThrowing { try redirected($0, local: localAddress) }
    }

    /// Conntrack answers for any connection it tracks once some NAT table
    /// exists in the namespace (a container engine's, a CNI's), so a direct
    /// connection comes back with its own destination: the listener itself.
    static func redirected(_ original: SocketAddress, local: SocketAddress) throws -> SocketAddress {
        guard original.ipAddress != local.ipAddress || original.port != local.port else {
            throw OriginalDestinationError.notRedirected
        }
        return original
    }

    /// The original destination of the connected socket `fd` (blocking
    /// getsockopt, for sockets that are not NIO channels).
    public static func of(socket fd: CInt) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard ok == 0 else { throw OriginalDestinationError.system(errno: errno) }
        let local: SocketAddress
        switch CInt(storage.ss_family) {
        case AF_INET:
            local = withUnsafeBytes(of: storage) { SocketAddress($0.loadUnaligned(as: sockaddr_in.self)) }
        case AF_INET6:
            local = withUnsafeBytes(of: storage) { SocketAddress($0.loadUnaligned(as: sockaddr_in6.self)) }
        default:
            throw OriginalDestinationError.noLocalAddress
        }
        guard let query = Query(local: local) else { throw OriginalDestinationError.noLocalAddress }
        switch query {
        case .v4: return try redirected(try address(from: try getOption(fd, query, as: sockaddr_in.self)), local: local)
        case .v6: return try redirected(try address(from: try getOption(fd, query, as: sockaddr_in6.self)), local: local)
        }
    }

    private static func getOption<T>(_ fd: CInt, _ query: Query, as: T.Type) throws -> T {
        try withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { buffer in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            var length = socklen_t(MemoryLayout<T>.size)
            guard getsockopt(fd, query.level, query.name, raw.baseAddress, &length) == 0 else {
                let code = errno
                throw mapErrno(code)
            }
            return raw.loadUnaligned(as: T.self)
        }
    }

    static func address(from raw: sockaddr_in) throws -> SocketAddress {
        guard CInt(raw.sin_family) == AF_INET else { throw OriginalDestinationError.unexpectedFamily(CInt(raw.sin_family)) }
        return SocketAddress(raw)
    }

    static func address(from raw: sockaddr_in6) throws -> SocketAddress {
        guard CInt(raw.sin6_family) == AF_INET6 else { throw OriginalDestinationError.unexpectedFamily(CInt(raw.sin6_family)) }
        return SocketAddress(raw)
    }

    static func mapError(_ error: Error) -> Error {
        if let error = error as? OriginalDestinationError { return error }
        if let error = error as? IOError {
            return mapErrno(error.errnoCode)
        }
        return error
    }

    /// ENOENT: conntrack has no NAT entry for the connection. ENOPROTOOPT: conntrack
    /// is not even loaded for this family, so nothing can have been redirected.
    static func mapErrno(_ code: Int32) -> OriginalDestinationError {
        code == ENOENT || code == ENOPROTOOPT ? .notRedirected : .system(errno: code)
    }
}
