import CNetlink
import Foundation

/// A network namespace, named by a file that refers to it (`/run/netns/NAME`,
/// `/proc/PID/ns/net`).
///
/// Sockets belong to the namespace they were created in, so the agent makes the
/// sockets it needs in a workload's namespace on a short-lived thread that entered
/// it with `setns(2)`. Event-loop threads never change namespace.
public struct NetworkNamespace: Hashable, Sendable, CustomStringConvertible {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    public var description: String { path }

    /// Runs `body` on a new thread that has entered this namespace, and returns its
    /// result. The calling thread's namespace is never changed.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let path = self.path
        let result = NamespaceThreadResult<T>()
        let thread = Thread {
            result.value = Result {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    throw NetworkNamespaceError.cannotOpen(path: path, errno: errno)
                }
                defer { close(fd) }
                guard setns(fd, cnetlink_clone_newnet()) == 0 else {
                    throw NetworkNamespaceError.cannotEnter(path: path, errno: errno)
                }
                return try body()
            }
            result.done.signal()
        }
        thread.start()
        result.done.wait()
        guard let outcome = result.value else {
            throw NetworkNamespaceError.cannotEnter(path: path, errno: 0)
        }
        return try outcome.get()
    }
}

/// Hands a value from the namespace thread to the waiting caller; the semaphore
/// orders the write before the read.
private final class NamespaceThreadResult<T>: @unchecked Sendable {
    var value: Result<T, Error>?
    let done = DispatchSemaphore(value: 0)
}

public enum NetworkNamespaceError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, errno: Int32)
    case cannotEnter(path: String, errno: Int32)
    case noProcess(cgroup: String)
    case threadStopped(reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let code):
            return "cannot open network namespace \(path): \(String(cString: strerror(code))); check that it exists (ip netns list)"
        case .cannotEnter(let path, let code):
            return "cannot enter network namespace \(path): \(String(cString: strerror(code))); entering a namespace needs CAP_SYS_ADMIN"
        case .noProcess(let cgroup):
            return "no process runs in cgroup \(cgroup), so its network namespace cannot be found; it is captured once one starts (or give its netns path)"
        case .threadStopped(let reason):
            return "cannot make sockets in other network namespaces: \(reason)"
        }
    }
}
