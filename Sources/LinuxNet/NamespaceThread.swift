import CNetlink
import Foundation

/// A network namespace held open: the agent keeps the file descriptor, so
/// the namespace it captures cannot be swapped for another one mounted at the
/// same path, and entering it is one `setns(2)`.
public final class NamespaceHandle: Sendable, CustomStringConvertible {
    /// What it was opened from (`/run/netns/NAME`, `/proc/PID/ns/net`).
    public let path: String
    /// The namespace's identity (device and inode of its nsfs file): two
    /// paths name the same namespace when these are equal.
    public let identity: NamespaceIdentity
    private let fd: CInt

    /// Opens the namespace named by `path`.
    public init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw NetworkNamespaceError.cannotOpen(path: path, errno: errno) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let code = errno
            close(fd)
            throw NetworkNamespaceError.cannotOpen(path: path, errno: code)
        }
        self.fd = fd
        self.path = path
        self.identity = NamespaceIdentity(device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
    }

    /// The namespace the calling thread is in.
    public static func current() throws -> NamespaceHandle {
        try NamespaceHandle(path: "/proc/thread-self/ns/net")
    }

    /// The namespace of the processes of `cgroup` (the first one found, in
    /// it or below it): where a workload with `PrivateNetwork=` or a pod lives.
    public static func of(cgroup: CgroupPath, mount: CgroupV2Mount) throws -> NamespaceHandle {
        for member in try mount.subtree(of: cgroup) {
            let procs = mount.directory(of: member.path) + "/cgroup.procs"
            guard let text = try? String(contentsOfFile: procs, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                guard let pid = Int32(line), pid > 0 else { continue }
                // A process may exit between the read and the open: try the next.
                if let handle = try? NamespaceHandle(path: "/proc/\(pid)/ns/net") { return handle }
            }
        }
        throw NetworkNamespaceError.noProcess(cgroup: cgroup.string)
    }

    /// Moves the calling thread into this namespace. Only for a thread that
    /// is dedicated to it (`NamespaceThread`): sockets made afterwards on it
    /// belong to this namespace.
    func enterOnCurrentThread() throws {
        guard setns(fd, cnetlink_clone_newnet()) == 0 else {
            throw NetworkNamespaceError.cannotEnter(path: path, errno: errno)
        }
    }

    public var description: String { "\(path) (\(identity))" }

    /// A path that names this very namespace for as long as the handle is
    /// open, whatever happens to the path it was opened from (for the
    /// netlink clients, which enter the namespace again for every socket
    /// they make).
    public var namespace: NetworkNamespace {
        NetworkNamespace(path: "/proc/self/fd/\(fd)")
    }

    deinit {
        close(fd)
    }
}

/// A network namespace's identity: the device and inode of its nsfs file,
/// what `ip netns identify` and `/proc/PID/ns/net` links compare.
public struct NamespaceIdentity: Hashable, Sendable, CustomStringConvertible {
    public let device: UInt64
    public let inode: UInt64

    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    public var description: String { "net:[\(inode)]" }
}

/// One thread that makes sockets in other network namespaces: it enters the
/// namespace a piece of work names, runs it, and returns to its own.
///
/// A socket belongs to the namespace it was made in and keeps working from any
/// thread afterwards, so only the `socket(2)` call has to happen here: event-loop
/// threads never change namespace. One thread serves every namespace; the
/// work on it is short (make a socket, bind it, read addresses).
public final class NamespaceThread: Sendable {
    private struct Work: Sendable {
        let namespace: NamespaceHandle
        let body: @Sendable () -> Void
        let failed: @Sendable (Error) -> Void
    }

    private let queue = WorkQueue<Work>()
    private let home: NamespaceHandle

    /// Starts the thread, in the namespace of the caller.
    public init() throws {
        home = try NamespaceHandle.current()
        let queue = self.queue
        let home = self.home
        let thread = Thread {
            while let work = queue.next() {
                do {
                    try work.namespace.enterOnCurrentThread()
                } catch {
                    work.failed(error)
                    continue
                }
                work.body()
                // A thread that cannot go home would make the next sockets in the
                // wrong namespace: it stops, and every later request fails.
                do {
                    try home.enterOnCurrentThread()
                } catch {
                    queue.stop(because: "the namespace thread could not return to \(home.path): \(error)")
                }
            }
        }
        thread.name = "mesh-agent-netns"
        thread.start()
    }

    /// Runs `body` in `namespace` on the thread and hands its result to
    /// `completion` there.
    public func run<T: Sendable>(
        in namespace: NamespaceHandle, _ body: @escaping @Sendable () throws -> T, completion: @escaping @Sendable (Result<T, Error>) -> Void
    ) {
        let work = Work(
            namespace: namespace, body: { completion(Result { try body() }) }, failed: { completion(.failure($0)) })
        if let reason = queue.add(work) {
            completion(.failure(NetworkNamespaceError.threadStopped(reason: reason)))
        }
    }

    /// Runs `body` in `namespace` and waits for it. Blocking: never on an event loop.
    public func runAndWait<T: Sendable>(in namespace: NamespaceHandle, _ body: @escaping @Sendable () throws -> T) throws -> T {
        let box = ResultBox<T>()
        run(in: namespace, body) { result in
            box.result = result
            box.done.signal()
        }
        box.done.wait()
        guard let result = box.result else { throw NetworkNamespaceError.threadStopped(reason: "no result") }
        return try result.get()
    }

    /// Ends the thread once the work already queued is done.
    public func stop() {
        queue.stop(because: "the agent is stopping")
    }
}

/// The semaphore orders the write on the namespace thread before the read.
private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, Error>?
    let done = DispatchSemaphore(value: 0)
}

/// A first-in first-out queue one thread takes from.
private final class WorkQueue<Element: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [Element] = []
    private var head = 0
    private var stopped: String?

    /// Queues `item`, or says why it cannot be.
    func add(_ item: Element) -> String? {
        condition.lock()
        defer { condition.unlock() }
        if let stopped { return stopped }
        items.append(item)
        condition.signal()
        return nil
    }

    /// The next item, waiting for one; nil once stopped and drained.
    func next() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while head == items.count && stopped == nil { condition.wait() }
        guard head < items.count else { return nil }
        let item = items[head]
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        return item
    }

    func stop(because reason: String) {
        condition.lock()
        defer { condition.unlock() }
        if stopped == nil { stopped = reason }
        condition.broadcast()
    }
}

/// Where the agent makes the sockets of one workload in a namespace of its own:
/// the namespace, and the thread that enters it.
public struct SocketNamespace: Sendable, CustomStringConvertible {
    public let handle: NamespaceHandle
    public let thread: NamespaceThread

    public init(handle: NamespaceHandle, thread: NamespaceThread) {
        self.handle = handle
        self.thread = thread
    }

    /// Runs `body` in the namespace and waits for it. Blocking: never on an event loop.
    public func runAndWait<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        try thread.runAndWait(in: handle, body)
    }

    public var description: String { handle.description }
}
