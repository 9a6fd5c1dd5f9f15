import CNetlink
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Listening TCP sockets made here rather than by the event-loop library, so
/// that the agent holds their descriptors: it can keep them in systemd's file
/// descriptor store and hand them to the agent that takes over from it, and
/// a socket that outlives one process never refuses a connection.
public enum ListeningSocket {
    /// How many connections may wait to be accepted.
    public static let backlog: Int32 = 4096

    /// A non-blocking, close-on-exec TCP socket bound to `address`:`port` and
    /// listening. IPv6 sockets are IPv6-only, so `0.0.0.0` and `::` can both be
    /// bound and IPv4 peers keep IPv4 addresses.
    public static func open(address: String, port: UInt16) throws -> CInt {
        let socketAddress: SocketAddress
        do {
            socketAddress = try SocketAddress(ipAddress: address, port: Int(port))
        } catch {
            throw ListeningSocketError(address: address, port: port, operation: "parse the address", errno: EINVAL)
        }
        let family = socketAddress.protocol.rawValue
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListeningSocketError(address: address, port: port, operation: "socket", errno: errno) }
        func fail(_ operation: String) -> ListeningSocketError {
            let error = ListeningSocketError(address: address, port: port, operation: operation, errno: errno)
            close(fd)
            return error
        }
        var on: Int32 = 1
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else { throw fail("SO_REUSEADDR") }
        if family == AF_INET6 {
            guard setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else { throw fail("IPV6_V6ONLY") }
        }
        let bound = socketAddress.withSockAddr { pointer, length in bind(fd, pointer, socklen_t(length)) }
        guard bound == 0 else { throw fail("bind") }
        guard listen(fd, backlog) == 0 else { throw fail("listen") }
        return fd
    }

    /// Sets the backlog again (the event-loop library listens with its own when
    /// it adopts a socket).
    public static func restoreBacklog(_ fd: CInt) {
        _ = listen(fd, backlog)
    }

    /// Whether `fd` is a listening TCP socket bound to `address`:`port`: an
    /// inherited descriptor is checked before it is trusted.
    public static func isListening(_ fd: CInt, address: String, port: UInt16) -> Bool {
        var accepting: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0, accepting == 1 else { return false }
        guard let expected = try? SocketAddress(ipAddress: address, port: Int(port)), let bound = boundAddress(fd) else { return false }
        return bound == expected
    }

    /// The address `fd` is bound to.
    public static func boundAddress(_ fd: CInt) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        return withUnsafePointer(to: &storage) { pointer -> SocketAddress? in
            switch Int32(pointer.pointee.ss_family) {
            case AF_INET:
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: "") }
            case AF_INET6:
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: "") }
            default:
                return nil
            }
        }
    }
}

public struct ListeningSocketError: Error, CustomStringConvertible {
    public let address: String
    public let port: UInt16
    public let operation: String
    public let errno: Int32

    public init(address: String, port: UInt16, operation: String, errno: Int32) {
        self.address = address
        self.port = port
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        let endpoint = address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
        let hint = errno == EADDRINUSE ? "; is another process (or another mesh-agent that is not handing over) using the port?" : ""
        return "cannot listen on \(endpoint) (\(operation): \(String(cString: strerror(errno))))\(hint)"
    }
}

/// Descriptors passed over a Unix socket (SCM_RIGHTS).
public enum DescriptorPassing {
    public static let maximumPerMessage = 64

    /// Sends `bytes` with `descriptors` on a connected socket, or to `path` on
    /// a datagram socket (a leading `@` names an abstract socket).
    public static func send(_ bytes: [UInt8], descriptors: [CInt], on socket: CInt, to path: String? = nil) throws {
        guard descriptors.count <= maximumPerMessage else {
            throw DescriptorPassingError(operation: "send \(descriptors.count) descriptors in one message", errno: E2BIG)
        }
        let sent: Int
        if let path {
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            var raw = Array(path.utf8)
            if raw.first == UInt8(ascii: "@") { raw[0] = 0 }
            guard raw.count < MemoryLayout.size(ofValue: address.sun_path) else {
                throw DescriptorPassingError(operation: "address \(path)", errno: ENAMETOOLONG)
            }
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: raw) }
            let length = MemoryLayout<sa_family_t>.size + raw.count + (raw.first == 0 ? 0 : 1)
            sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { to in
                    bytes.withUnsafeBytes { data in
                        descriptors.withUnsafeBufferPointer { fds in
                            cnetlink_send_fds(socket, to, UInt32(length), data.baseAddress, UInt(data.count), fds.baseAddress, Int32(fds.count))
                        }
                    }
                }
            }
        } else {
            sent = bytes.withUnsafeBytes { data in
                descriptors.withUnsafeBufferPointer { fds in
                    cnetlink_send_fds(socket, nil, 0, data.baseAddress, UInt(data.count), fds.baseAddress, Int32(fds.count))
                }
            }
        }
        guard sent == bytes.count else { throw DescriptorPassingError(operation: "sendmsg", errno: sent < 0 ? errno : EMSGSIZE) }
    }

    /// One message (at most `capacity` bytes) and the descriptors that came
    /// with it; an empty message means the peer closed.
    public static func receive(on socket: CInt, capacity: Int = 64 * 1024) throws -> (bytes: [UInt8], descriptors: [CInt]) {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var descriptors = [CInt](repeating: -1, count: maximumPerMessage)
        var received: Int32 = 0
        let got = bytes.withUnsafeMutableBytes { data in
            descriptors.withUnsafeMutableBufferPointer { fds in
                cnetlink_recv_fds(socket, data.baseAddress, UInt(data.count), fds.baseAddress, Int32(fds.count), &received)
            }
        }
        let kept = Array(descriptors.prefix(Int(received)))
        guard got >= 0 else {
            for fd in kept { close(fd) }
            throw DescriptorPassingError(operation: got == -2 ? "recvmsg (descriptors cut off)" : "recvmsg", errno: got == -2 ? EMSGSIZE : errno)
        }
        return (Array(bytes.prefix(got)), kept)
    }
}

public struct DescriptorPassingError: Error, CustomStringConvertible {
    public let operation: String
    public let errno: Int32
    public var description: String { "\(operation) failed: \(String(cString: strerror(errno)))" }
}

/// The listening sockets systemd passed in (`LISTEN_FDS`, `LISTEN_FDNAMES`,
/// `LISTEN_PID`, sd_listen_fds(3)): after a restart, those the previous
/// process kept in the file descriptor store.
public enum SystemdListenFDs {
    public enum Passed: Equatable {
        /// No LISTEN_FDS: started without stored descriptors.
        case none
        /// The descriptors by name, from 3 on.
        case descriptors([Named])
        /// Meant for another process (LISTEN_PID differs) or unreadable; the
        /// reason says which.
        case ignored(String)

        public var descriptors: [Named] {
            if case .descriptors(let named) = self { return named }
            return []
        }
    }

    public struct Named: Equatable, Sendable {
        public let name: String
        public let fd: CInt
    }

    /// What systemd passed. The variables are unset so that children do not
    /// see them.
    public static func take() -> Passed {
        func variable(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        return parse(listenPID: variable("LISTEN_PID"), listenFDs: variable("LISTEN_FDS"), names: variable("LISTEN_FDNAMES"), ownPID: getpid())
    }

    /// sd_listen_fds(3)'s rules: LISTEN_PID must be this process, LISTEN_FDS
    /// counts descriptors from 3, LISTEN_FDNAMES names them, ':'-separated.
    public static func parse(listenPID: String?, listenFDs: String?, names: String?, ownPID: Int32) -> Passed {
        guard let listenFDs else { return .none }
        guard let count = Int32(listenFDs), count >= 0, count < 4096 else {
            return .ignored("LISTEN_FDS=\(listenFDs) is not a count of descriptors")
        }
        guard let listenPID, Int32(listenPID) == ownPID else {
            return .ignored("LISTEN_PID=\(listenPID ?? "(unset)") is not this process (\(ownPID))")
        }
        let given = names.map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        return .descriptors((0..<count).map { index in
            Named(name: Int(index) < given.count ? given[Int(index)] : "unknown", fd: 3 + index)
        })
    }
}
