import CNetlink
import Foundation
import Synchronization

/// A byte count written on one thread and read from anywhere.
public final class ByteCounter: Sendable {
    private let count = Atomic<UInt64>(0)

    public init() {}

    public func add(_ bytes: Int) {
        count.add(UInt64(bytes), ordering: .relaxed)
    }

    public var value: UInt64 { count.load(ordering: .relaxed) }
}

/// How a relayed connection ended.
public enum SpliceOutcome: Sendable, Equatable {
    /// Each side sent FIN and everything it sent was delivered.
    case finished
    /// A call on one of the sockets failed (a reset, a broken pipe): both were closed.
    case failed(errno: CInt)
    /// `abort()` or the splicer's shutdown closed it.
    case aborted
}

public enum KernelSpliceError: Error, Equatable, CustomStringConvertible {
    case cannotCreate(what: String, errno: CInt)
    case stopped

    public var description: String {
        switch self {
        case .cannotCreate(let what, let code):
            return "kernel splicing: cannot create \(what): \(String(cString: strerror(code))); connections are relayed by the event loops instead"
        case .stopped:
            return "kernel splicing has stopped (the agent is shutting down)"
        }
    }
}

/// Relays connected TCP sockets to each other inside the kernel: bytes move
/// from one socket through a pipe to the other with `splice(2)`, as page
/// references, never copied into user space. Relay threads (one per core by
/// default, as the event loops) each wait on their connections with
/// edge-triggered epoll; the event loops hand connections over and never
/// block on them.
///
/// The semantics are those of the event loops' splice: a side reads only while
/// its pipe is empty (the pipe is the only buffer, so a slow reader holds its
/// writer back), a FIN is passed on as a FIN once everything before it was
/// delivered, and a failed call on either socket closes both.
///
/// Pipes start at the kernel's default (64 KiB, 16 pages) and grow to
/// `bulkPipeCapacity` once a read fills half of one: a bulk transfer then
/// moves a megabyte per pair of calls, while an idle or interactive
/// connection keeps its small pipes.
public final class KernelSplicer: Sendable {
    private let threads: [RelayThread]
    private let next = Atomic<Int>(0)
    /// What a busy direction's pipe grows to.
    public let bulkPipeCapacity: Int

    /// Starts `threads` relay threads.
    public init(threads: Int = 1, bulkPipeCapacity: Int = 1 << 20) throws {
        var started: [RelayThread] = []
        do {
            for index in 0..<max(1, threads) {
                started.append(try RelayThread(name: "mesh-agent-splice-\(index)"))
            }
        } catch {
            for thread in started { thread.shutdown() }
            throw error
        }
        self.threads = started
        self.bulkPipeCapacity = bulkPipeCapacity
    }

    /// Connections being relayed now.
    public var openConnections: Int { threads.reduce(0) { $0 + $1.openConnections } }

    /// Relays `first` and `second` to each other until both have ended or one
    /// fails; `ended` is called once, on a relay thread, after both are closed.
    /// Bytes moved from `first` to `second` count into `counters.0`, the other
    /// way into `counters.1`.
    ///
    /// Both must be connected, non-blocking stream sockets. The splicer
    /// relays its own duplicates of them, so the caller closes its
    /// descriptors (at once: nothing else may read or write the sockets now).
    public func relay(
        duplicating first: CInt, _ second: CInt, counting counters: (ByteCounter, ByteCounter), ended: @escaping @Sendable (SpliceOutcome) -> Void
    ) throws -> SplicedConnection {
        var owned: [CInt] = []
        var pipes: [SplicePipe] = []
        do {
            for original in [first, second] {
                let duplicate = fcntl(original, F_DUPFD_CLOEXEC, 0)
                guard duplicate >= 0 else { throw KernelSpliceError.cannotCreate(what: "a duplicate of socket \(original)", errno: errno) }
                owned.append(duplicate)
            }
            for _ in 0..<2 { pipes.append(try SplicePipe(growingTo: bulkPipeCapacity)) }
            let thread = threads[next.wrappingAdd(1, ordering: .relaxed).oldValue % threads.count]
            let id = try thread.add(sockets: (owned[0], owned[1]), pipes: (pipes[0], pipes[1]), counters: counters, ended: ended)
            return SplicedConnection(id: id, thread: thread)
        } catch {
            for fd in owned { close(fd) }
            for pipe in pipes { pipe.close() }
            throw error
        }
    }

    /// Closes every relayed connection (each `ended` is told `.aborted`) and
    /// stops the threads; waits for them. Relaying afterwards throws.
    public func shutdown() {
        for thread in threads { thread.shutdown() }
    }
}

/// One relay thread: its epoll instance, the eventfd that wakes it for
/// requests from other threads, and the requests themselves.
final class RelayThread: Sendable {
    fileprivate enum Request: Sendable {
        case add(id: UInt64, sockets: (CInt, CInt), pipes: (SplicePipe, SplicePipe), counters: (ByteCounter, ByteCounter), ended: @Sendable (SpliceOutcome) -> Void)
        case abort(id: UInt64)
        case stop
    }

    private struct Inbox: ~Copyable {
        var requests: [Request] = []
        var nextID: UInt64 = 1
        var stopped = false
    }

    private let wakeup: CInt
    private let inbox = Mutex(Inbox())
    private let threadEnded = DispatchSemaphore(value: 0)
    private let open = Atomic<Int>(0)

    init(name: String) throws {
        let epoll = epoll_create1(CInt(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw KernelSpliceError.cannotCreate(what: "an epoll instance", errno: errno) }
        let wakeup = cnetlink_eventfd()
        guard wakeup >= 0 else {
            let code = errno
            close(epoll)
            throw KernelSpliceError.cannotCreate(what: "an eventfd", errno: code)
        }
        guard cnetlink_epoll_add(epoll, wakeup, cnetlink_epoll_in(), 0) == 0 else {
            let code = errno
            close(wakeup)
            close(epoll)
            throw KernelSpliceError.cannotCreate(what: "the eventfd's epoll registration", errno: code)
        }
        self.wakeup = wakeup
        let thread = Thread { [self] in
            var loop = RelayLoop(epoll: epoll)
            loop.run(take: { self.takeRequests() }, opened: { self.open.add($0, ordering: .relaxed) })
            close(wakeup)
            close(epoll)
            self.threadEnded.signal()
        }
        thread.name = name
        thread.start()
    }

    var openConnections: Int { open.load(ordering: .relaxed) }

    /// Queues a connection for the thread; it owns the sockets and pipes
    /// once this returns.
    func add(
        sockets: (CInt, CInt), pipes: (SplicePipe, SplicePipe), counters: (ByteCounter, ByteCounter),
        ended: @escaping @Sendable (SpliceOutcome) -> Void
    ) throws -> UInt64 {
        let id = inbox.withLock { inbox -> UInt64? in
            guard !inbox.stopped else { return nil }
            let id = inbox.nextID
            inbox.nextID += 1
            inbox.requests.append(.add(id: id, sockets: sockets, pipes: pipes, counters: counters, ended: ended))
            return id
        }
        guard let id else { throw KernelSpliceError.stopped }
        wake()
        return id
    }

    func shutdown() {
        let first = inbox.withLock { inbox -> Bool in
            guard !inbox.stopped else { return false }
            inbox.stopped = true
            inbox.requests.append(.stop)
            return true
        }
        guard first else { return }
        wake()
        threadEnded.wait()
    }

    func abort(_ id: UInt64) {
        let queued = inbox.withLock { inbox -> Bool in
            guard !inbox.stopped else { return false }
            inbox.requests.append(.abort(id: id))
            return true
        }
        if queued { wake() }
    }

    private func wake() {
        var one: UInt64 = 1
        // A full counter (EAGAIN) already means "wake up".
        _ = write(wakeup, &one, MemoryLayout<UInt64>.size)
    }

    private func takeRequests() -> [Request] {
        var drained: UInt64 = 0
        _ = read(wakeup, &drained, MemoryLayout<UInt64>.size)
        return inbox.withLock { inbox in
            let requests = inbox.requests
            inbox.requests.removeAll(keepingCapacity: true)
            return requests
        }
    }

    /// The thread's own state; only that thread touches it.
    private struct RelayLoop {
        let epoll: CInt
        var pairs: [UInt64: RelayedPair] = [:]

        init(epoll: CInt) {
            self.epoll = epoll
        }

        mutating func run(take: () -> [Request], opened: (Int) -> Void) {
            var data = [UInt64](repeating: 0, count: 64)
            var events = [UInt32](repeating: 0, count: 64)
            while true {
                let count = cnetlink_epoll_wait(epoll, &data, &events, 64, -1)
                if count < 0 {
                    if errno == EINTR { continue }
                    // Nothing can be waited on any more: every connection ends.
                    closeAll(opened: opened)
                    return
                }
                for index in 0..<Int(count) {
                    let key = data[index]
                    guard key != 0 else {
                        guard carryOut(take(), opened: opened) else { return }
                        continue
                    }
                    let id = key >> 1
                    guard var pair = pairs[id] else { continue }
                    let outcome = pair.handle(events[index], onSecond: key & 1 == 1)
                    if let outcome {
                        pairs[id] = nil
                        finish(pair, outcome, opened: opened)
                    } else {
                        pairs[id] = pair
                    }
                }
            }
        }

        /// Carries out requests from other threads; false once told to stop.
        private mutating func carryOut(_ requests: [Request], opened: (Int) -> Void) -> Bool {
            for request in requests {
                switch request {
                case .add(let id, let sockets, let pipes, let counters, let ended):
                    opened(1)
                    add(id: id, sockets: sockets, pipes: pipes, counters: counters, ended: ended, opened: opened)
                case .abort(let id):
                    if let pair = pairs.removeValue(forKey: id) {
                        finish(pair, .aborted, opened: opened)
                    }
                case .stop:
                    closeAll(opened: opened)
                    return false
                }
            }
            return true
        }

        private mutating func add(
            id: UInt64, sockets: (CInt, CInt), pipes: (SplicePipe, SplicePipe), counters: (ByteCounter, ByteCounter),
            ended: @escaping @Sendable (SpliceOutcome) -> Void, opened: (Int) -> Void
        ) {
            var pair = RelayedPair(sockets: sockets, pipes: pipes, counters: counters, ended: ended)
            let interest = cnetlink_epoll_in() | cnetlink_epoll_out() | cnetlink_epoll_rdhup() | cnetlink_epoll_et()
            guard cnetlink_epoll_add(epoll, sockets.0, interest, id << 1) == 0 else {
                finish(pair, .failed(errno: errno), opened: opened)
                return
            }
            guard cnetlink_epoll_add(epoll, sockets.1, interest, id << 1 | 1) == 0 else {
                finish(pair, .failed(errno: errno), opened: opened)
                return
            }
            // Bytes that arrived before the hand-over are already waiting.
            if let outcome = pair.pump(forward: true, backward: true) {
                finish(pair, outcome, opened: opened)
                return
            }
            pairs[id] = pair
        }

        private func finish(_ pair: RelayedPair, _ outcome: SpliceOutcome, opened: (Int) -> Void) {
            _ = cnetlink_epoll_delete(epoll, pair.sockets.0)
            _ = cnetlink_epoll_delete(epoll, pair.sockets.1)
            pair.close()
            opened(-1)
            pair.ended(outcome)
        }

        private mutating func closeAll(opened: (Int) -> Void) {
            let all = pairs
            pairs.removeAll()
            for pair in all.values { finish(pair, .aborted, opened: opened) }
        }
    }
}

/// A connection the splicer relays: what can be done to it from elsewhere.
public struct SplicedConnection: Sendable {
    fileprivate let id: UInt64
    fileprivate let thread: RelayThread

    /// Closes both sockets now; `ended` is told `.aborted` (if the connection
    /// had not ended already).
    public func abort() {
        thread.abort(id)
    }
}

/// A pipe between two sockets: the kernel's buffer for one direction.
struct SplicePipe: Sendable {
    let readEnd: CInt
    let writeEnd: CInt
    /// What the pipe holds at most now.
    private(set) var capacity = 65_536
    /// What it may grow to, and whether it was asked to already.
    let bulkCapacity: Int
    private(set) var grown = false

    init(growingTo bulkCapacity: Int) throws {
        var fds: [CInt] = [-1, -1]
        guard cnetlink_pipe(&fds) == 0 else { throw KernelSpliceError.cannotCreate(what: "a pipe", errno: errno) }
        readEnd = fds[0]
        writeEnd = fds[1]
        self.bulkCapacity = bulkCapacity
    }

    /// Grows the pipe for a bulk transfer, once. A refusal (over
    /// /proc/sys/fs/pipe-max-size, or over the user's pipe pages) keeps the
    /// size it has, which works as well.
    mutating func grow() {
        let granted = cnetlink_set_pipe_size(writeEnd, CInt(clamping: bulkCapacity))
        if granted > 0 { capacity = Int(granted) }
        grown = true
    }

    func close() {
        _ = Foundation.close(readEnd)
        _ = Foundation.close(writeEnd)
    }
}

/// One relayed connection: two sockets and a direction (`SpliceDirection`)
/// each way.
struct RelayedPair {
    let sockets: (CInt, CInt)
    let ended: @Sendable (SpliceOutcome) -> Void
    /// First to second, and second to first.
    private var forward: SpliceDirection
    private var backward: SpliceDirection

    init(sockets: (CInt, CInt), pipes: (SplicePipe, SplicePipe), counters: (ByteCounter, ByteCounter), ended: @escaping @Sendable (SpliceOutcome) -> Void) {
        self.sockets = sockets
        self.ended = ended
        forward = SpliceDirection(source: sockets.0, destination: sockets.1, pipe: pipes.0, counter: counters.0)
        backward = SpliceDirection(source: sockets.1, destination: sockets.0, pipe: pipes.1, counter: counters.1)
    }

    /// Moves what `events` on one socket made possible; returns how the
    /// connection ended, if it did.
    mutating func handle(_ events: UInt32, onSecond: Bool) -> SpliceOutcome? {
        let readable = events & (cnetlink_epoll_in() | cnetlink_epoll_rdhup() | cnetlink_epoll_hup() | cnetlink_epoll_err()) != 0
        let writable = events & (cnetlink_epoll_out() | cnetlink_epoll_hup() | cnetlink_epoll_err()) != 0
        // Readable feeds the direction that starts at this socket, writable
        // drains the one that ends there.
        return onSecond ? pump(forward: writable, backward: readable) : pump(forward: readable, backward: writable)
    }

    /// Moves what it can in the directions asked; returns how the connection
    /// ended, if it did.
    mutating func pump(forward pumpsForward: Bool, backward pumpsBackward: Bool) -> SpliceOutcome? {
        if pumpsForward, let code = forward.pump() { return .failed(errno: code) }
        if pumpsBackward, let code = backward.pump() { return .failed(errno: code) }
        return forward.isDone && backward.isDone ? .finished : nil
    }

    func close() {
        forward.pipe.close()
        backward.pipe.close()
        _ = Foundation.close(sockets.0)
        _ = Foundation.close(sockets.1)
    }
}

/// One direction of a relayed connection: from `source` into the pipe, and
/// from the pipe to `destination`.
struct SpliceDirection {
    let source: CInt
    let destination: CInt
    private(set) var pipe: SplicePipe
    let counter: ByteCounter
    /// Bytes read from the source that the destination has not taken yet.
    private(set) var inPipe = 0
    private(set) var sourceEnded = false
    private(set) var destinationShut = false

    init(source: CInt, destination: CInt, pipe: SplicePipe, counter: ByteCounter) {
        self.source = source
        self.destination = destination
        self.pipe = pipe
        self.counter = counter
    }

    /// FIN came in and went out, and nothing is left between them.
    var isDone: Bool { sourceEnded && inPipe == 0 && destinationShut }

    /// Moves bytes until a socket would block; returns the errno of a call
    /// that failed.
    mutating func pump() -> CInt? {
        while true {
            if inPipe > 0 {
                let moved = cnetlink_splice(pipe.readEnd, destination, UInt(inPipe))
                if moved > 0 {
                    inPipe -= moved
                    continue
                }
                let code = errno
                if moved < 0, code == EINTR { continue }
                if moved < 0, code == EAGAIN { return nil }
                return moved == 0 ? EPIPE : code
            }
            if sourceEnded {
                if !destinationShut {
                    destinationShut = true
                    if shutdown(destination, CInt(SHUT_WR)) != 0, errno != ENOTCONN { return errno }
                }
                return nil
            }
            // The pipe is empty: read only now, so that it is the only buffer.
            let moved = cnetlink_splice(source, pipe.writeEnd, UInt(pipe.capacity))
            if moved > 0 {
                inPipe = moved
                counter.add(moved)
                if !pipe.grown, moved >= pipe.capacity / 2 { pipe.grow() }
                continue
            }
            if moved == 0 {
                sourceEnded = true
                continue
            }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN { return nil }
            return code
        }
    }
}
