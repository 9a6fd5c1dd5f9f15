import CNI

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Every system call of the plugin, in one place: stdin, stdout, stderr, the
/// environment and one exchange on the agent's Unix socket. Blocking calls
/// are fine here: the process does one thing and exits.
enum POSIX {
    struct Failure: Error {
        let reason: String
    }

    static func environment() -> [String: String] {
        var variables: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") {
                variables[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        return variables
    }

    /// Reads stdin to its end, or to `limit` bytes (the decoder refuses a
    /// config that long, so more is not needed to say so).
    static func readStandardInput(limit: Int) -> Result<[UInt8], Failure> {
        readAll(STDIN_FILENO, limit: limit).mapError { Failure(reason: describe($0.code)) }
    }

    /// A failed system call's errno.
    struct Errno: Error {
        let code: Int32
    }

    /// Reads `fd` to its end, or to `limit` bytes.
    static func readAll(_ fd: Int32, limit: Int) -> Result<[UInt8], Errno> {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while bytes.count < limit {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, limit - bytes.count)) }
            if count > 0 {
                bytes.append(contentsOf: chunk[0..<count])
            } else if count == 0 {
                break
            } else if errno != EINTR {
                return .failure(Errno(code: errno))
            }
        }
        return .success(bytes)
    }

    /// Prints the output, logs to stderr, exits.
    static func finish(_ output: PluginOutput) -> Never {
        for line in output.log {
            writeAll(STDERR_FILENO, Array("mesh-agent-cni: \(line)\n".utf8))
        }
        writeAll(STDOUT_FILENO, output.stdout)
        exit(output.exitCode)
    }

    /// Connects to the agent's socket, sends `request` and reads one response
    /// line, all within `timeoutMilliseconds`. Without a request, only connects.
    static func exchange(socketPath: String, request: [UInt8]?, timeoutMilliseconds: Int, responseLimit: Int) -> AgentExchange {
        let deadline = now() + timeoutMilliseconds
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failed("making a socket failed: \(describe(errno))") }
        defer { close(fd) }

        // A connect to a listener whose backlog is full blocks; the send
        // timeout bounds it (Linux applies SO_SNDTIMEO to connect on Unix sockets).
        setTimeout(fd, SO_SNDTIMEO, milliseconds: max(1, deadline - now()))
        let connected = withAddress(socketPath) { connect(fd, $0, $1) }
        if connected != 0 {
            let code = errno
            switch code {
            case ENOENT: return .unreachable("no socket at \(socketPath)")
            case ECONNREFUSED: return .unreachable("nothing listens on \(socketPath)")
            case EAGAIN, EINPROGRESS, ETIMEDOUT: return .failed("connecting timed out after \(timeoutMilliseconds) ms")
            default: return .failed("connecting to \(socketPath) failed: \(describe(code))")
            }
        }
        guard let request else { return .connected }

        var sent = 0
        while sent < request.count {
            let count = request.withUnsafeBytes { send(fd, $0.baseAddress.map { $0 + sent }, request.count - sent, Int32(MSG_NOSIGNAL)) }
            if count > 0 {
                sent += count
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return .failed("sending the request timed out after \(timeoutMilliseconds) ms")
            } else {
                return .failed("sending the request failed: \(describe(errno))")
            }
        }

        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            switch EnrollmentFrame(received, limit: responseLimit) {
            case .line(let line): return .answered(line)
            case .tooLong: return .failed("the answer is longer than \(responseLimit) bytes without a newline")
            case .incomplete: break
            }
            let remaining = deadline - now()
            guard remaining > 0 else { return .failed("no answer within \(timeoutMilliseconds) ms") }
            var waiting = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&waiting, 1, Int32(clamping: remaining))
            if ready < 0 && errno == EINTR { continue }
            guard ready >= 0 else { return .failed("waiting for the answer failed: \(describe(errno))") }
            if ready == 0 { continue }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                received.append(contentsOf: chunk[0..<count])
            } else if count == 0 {
                return .failed("the agent closed the connection after \(received.count) bytes, before a complete answer")
            } else if errno != EINTR && errno != EAGAIN {
                return .failed("reading the answer failed: \(describe(errno))")
            }
        }
    }

    /// One line on stdout, for the installer's report.
    static func say(_ line: String) {
        writeAll(STDOUT_FILENO, Array("\(line)\n".utf8))
    }

    static func fail(_ message: String, status: Int32) -> Never {
        writeAll(STDERR_FILENO, Array("\(message)\n".utf8))
        exit(status)
    }

    /// Writes all of `bytes`; nil when done, else why not.
    @discardableResult
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Errno? {
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress.map { $0 + written }, bytes.count - written) }
            if count > 0 {
                written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                return Errno(code: count < 0 ? errno : EIO)
            }
        }
        return nil
    }

    /// Milliseconds on the monotonic clock.
    private static func now() -> Int {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return time.tv_sec * 1000 + time.tv_nsec / 1_000_000
    }

    private static func setTimeout(_ fd: Int32, _ option: Int32, milliseconds: Int) {
        var value = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The path was checked to fit `sun_path` (`Names.socketPathProblem`).
    private static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8.prefix(MemoryLayout.size(ofValue: address.sun_path) - 1))
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    private static func describe(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}
