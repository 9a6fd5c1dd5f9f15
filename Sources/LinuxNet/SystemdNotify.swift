import CNetlink

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// systemd's notify protocol (sd_notify(3)), spoken without libsystemd: one
/// datagram of `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET`.
/// Under `Type=notify` the service counts as started only after `READY=1`, and
/// with `WatchdogSec=` it is restarted when `WATCHDOG=1` stops coming.
public struct SystemdNotifier: Sendable {
    /// What the environment asks of the service.
    public struct Settings: Equatable, Sendable {
        /// The socket path; a leading `@` names an abstract socket.
        public var socketPath: String
        /// How often to send `WATCHDOG=1` (half the watchdog timeout), if the
        /// watchdog is on and meant for this process.
        public var watchdogInterval: Duration?

        /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. Nil when
        /// the service is not run under systemd's notify protocol.
        public static func from(notifySocket: String?, watchdogMicroseconds: String?, watchdogPID: String?, ownPID: Int32) -> Settings? {
            guard let notifySocket, notifySocket.hasPrefix("/") || notifySocket.hasPrefix("@"), notifySocket.utf8.count > 1 else {
                return nil
            }
            var interval: Duration?
            if let text = watchdogMicroseconds, let microseconds = Int64(text), microseconds > 0,
               watchdogPID.map({ Int32($0) == ownPID }) ?? true {
                interval = .microseconds(microseconds / 2)
            }
            return Settings(socketPath: notifySocket, watchdogInterval: interval)
        }
    }

    public let settings: Settings?

    /// The notifier for this process's environment (a no-op outside systemd).
    public init() {
        func variable(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        self.settings = Settings.from(
            notifySocket: variable("NOTIFY_SOCKET"), watchdogMicroseconds: variable("WATCHDOG_USEC"),
            watchdogPID: variable("WATCHDOG_PID"), ownPID: getpid())
    }

    public init(settings: Settings?) {
        self.settings = settings
    }

    public var watchdogInterval: Duration? { settings?.watchdogInterval }

    /// Sends `fields` (e.g. `["READY=1", "STATUS=…"]`) as one message, with
    /// `descriptors` attached (for `FDSTORE=1`). Does nothing outside
    /// systemd; a failure to send is returned, never fatal.
    @discardableResult
    public func notify(_ fields: [String], descriptors: [CInt] = []) -> SystemdNotifyError? {
        guard let settings else { return nil }
        let message = fields.map { $0.replacingNewlines() }.joined(separator: "\n")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return SystemdNotifyError(socketPath: settings.socketPath, operation: "socket", errno: errno) }
        defer { close(fd) }
        do {
            try DescriptorPassing.send(Array(message.utf8), descriptors: descriptors, on: fd, to: settings.socketPath)
        } catch let error as DescriptorPassingError {
            return SystemdNotifyError(socketPath: settings.socketPath, operation: error.operation, errno: error.errno)
        } catch {
            return SystemdNotifyError(socketPath: settings.socketPath, operation: "\(error)", errno: EIO)
        }
        return nil
    }
}

public struct SystemdNotifyError: Error, Equatable, CustomStringConvertible {
    public let socketPath: String
    public let operation: String
    public let errno: Int32

    public var description: String {
        "cannot notify systemd on \(socketPath) (\(operation): \(String(cString: strerror(errno)))); systemd will not see the agent as ready or alive"
    }
}

extension String {
    /// A field value must stay on its line: the protocol is one field per line.
    fileprivate func replacingNewlines() -> String {
        String(unicodeScalars.map { $0 == "\n" || $0 == "\r" ? " " : Character($0) })
    }
}
