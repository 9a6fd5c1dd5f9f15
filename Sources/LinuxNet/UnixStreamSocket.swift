import CNetlink

#if canImport(Glibc)
import Glibc
#endif

/// A Unix stream socket that can carry descriptors: the agent's handover
/// channel. Blocking: for a thread of its own, never an event loop.
public final class UnixStreamSocket: @unchecked Sendable {
    // @unchecked: the descriptor is only closed once (`close`), and blocking
    // calls on one socket from two threads are what shutdown(2) is for.
    private let fd: CInt

    private init(fd: CInt) {
        self.fd = fd
    }

    deinit {
        Glibc.close(fd)
    }

    /// A listening socket at `path`, mode 0600, replacing a stale socket file
    /// (anything else at the path is refused).
    public static func listen(at path: String, backlog: Int32 = 4) throws -> UnixStreamSocket {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw UnixSocketError(path: path, operation: "replace", errno: EEXIST)
            }
            unlink(path)
        }
        let socket = try make(path)
        let bound = withAddress(path) { bind(socket.fd, $0, $1) }
        guard bound == 0 else { throw UnixSocketError(path: path, operation: "bind", errno: errno) }
        guard chmod(path, 0o600) == 0 else { throw UnixSocketError(path: path, operation: "chmod 0600", errno: errno) }
        guard Glibc.listen(socket.fd, backlog) == 0 else { throw UnixSocketError(path: path, operation: "listen", errno: errno) }
        return socket
    }

    /// Connects to `path`; nil when nothing listens there.
    public static func connect(to path: String, timeout seconds: Int) -> UnixStreamSocket? {
        guard let socket = try? make(path) else { return nil }
        socket.setReceiveTimeout(seconds: seconds)
        let connected = withAddress(path) { Glibc.connect(socket.fd, $0, $1) }
        return connected == 0 ? socket : nil
    }

    /// The next connection; nil once the socket was shut down.
    public func accept() -> UnixStreamSocket? {
        while true {
            let accepted = Glibc.accept(fd, nil, nil)
            if accepted >= 0 {
                _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
                return UnixStreamSocket(fd: accepted)
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    public func setReceiveTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    public func send(_ bytes: [UInt8], descriptors: [CInt] = []) throws {
        try DescriptorPassing.send(bytes, descriptors: descriptors, on: fd)
    }

    public func receive(capacity: Int = 64 * 1024) throws -> (bytes: [UInt8], descriptors: [CInt]) {
        try DescriptorPassing.receive(on: fd, capacity: capacity)
    }

    /// Wakes a thread blocked in `accept` or `receive` on this socket.
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    private static func make(_ path: String) throws -> UnixStreamSocket {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UnixSocketError(path: path, operation: "socket", errno: errno) }
        return UnixStreamSocket(fd: fd)
    }

    private static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8.prefix(MemoryLayout.size(ofValue: address.sun_path) - 1))
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}

public struct UnixSocketError: Error, CustomStringConvertible {
    public let path: String
    public let operation: String
    public let errno: Int32

    public var description: String {
        let hint = operation == "replace" ? "; something that is not a socket is in the way: move it, or set adminSocket to another path" : ""
        return "\(operation) \(path): \(String(cString: strerror(errno)))\(hint)"
    }
}
