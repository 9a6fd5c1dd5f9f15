import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Metrics
import NIOConcurrencyHelpers
import Proxy

/// Appends access-log lines to a file (or stdout for "-"). One `write(2)` per
/// line under a lock: lines from different event loops never interleave, and a
/// line is in the file by the time the connection is gone.
public final class AccessLogWriter: AccessLogSink {
    private let descriptor: NIOLockedValueBox<Int32>
    private let ownsDescriptor: Bool
    public let path: String
    private let writeFailures = Counter(label: "mesh_agent_access_log_write_failures_total")

    public init(path: String) throws {
        self.path = path
        if path == "-" {
            descriptor = NIOLockedValueBox(STDOUT_FILENO)
            ownsDescriptor = false
            return
        }
        descriptor = NIOLockedValueBox(try Self.open(path))
        ownsDescriptor = true
    }

    private static func open(_ path: String) throws -> Int32 {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        }
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw AgentError.accessLog(path: path, reason: String(cString: strerror(errno)))
        }
        return fd
    }

    /// Opens the path again, for log rotation (SIGUSR1 after logrotate moved the
    /// file away). Lines keep going to the old file until the new one is open;
    /// if it cannot be opened they keep going there, and the error says why.
    public func reopen() throws {
        guard ownsDescriptor else { return }
        let fresh = try Self.open(path)
        let old = descriptor.withLockedValue { fd in
            defer { fd = fresh }
            return fd
        }
        close(old)
    }

    public func record(_ entry: AccessLogEntry) {
        var line = entry.jsonLine()
        line.withUTF8 { bytes in
            guard let base = bytes.baseAddress else { return }
            descriptor.withLockedValue { fd in
                var offset = 0
                while offset < bytes.count {
                    let written = write(fd, base + offset, bytes.count - offset)
                    if written < 0 {
                        if errno == EINTR { continue }
                        writeFailures.increment()
                        return
                    }
                    offset += written
                }
            }
        }
    }

    deinit {
        if ownsDescriptor {
            descriptor.withLockedValue { _ = close($0) }
        }
    }
}
