import Foundation
import Synchronization
import Testing

@testable import LinuxNet

/// How one relayed connection ended, as the splicer reports it from its thread.
private final class SpliceEnd: Sendable {
    private let outcome = Mutex<SpliceOutcome?>(nil)
    private let ended = DispatchSemaphore(value: 0)

    /// What the splicer calls.
    var record: @Sendable (SpliceOutcome) -> Void {
        { [self] outcome in
            self.outcome.withLock { $0 = outcome }
            ended.signal()
        }
    }

    func wait() -> SpliceOutcome? {
        guard ended.wait(timeout: .now() + 10) == .success else { return nil }
        return outcome.withLock { $0 }
    }

    var hasEnded: Bool { outcome.withLock { $0 != nil } }
}

/// A client, a server, and the two sockets between them that a proxy would
/// hold (the accepted one and the one it dialled), made non-blocking for the
/// splicer: client ⇄ accepted … dialled ⇄ server.
private final class ProxiedPair: Sendable {
    let client: CInt
    let accepted: CInt
    let dialled: CInt
    let server: CInt
    let toServer = ByteCounter()
    let toClient = ByteCounter()
    let end = SpliceEnd()

    init() throws {
        let front = try LoopbackConnection(host: "127.0.0.1")
        let back = try LoopbackConnection(host: "127.0.0.1")
        // The connections' own deinit closes what they hold: keep duplicates.
        client = try check(dup(front.client), "dup")
        accepted = try check(dup(front.server), "dup")
        dialled = try check(dup(back.client), "dup")
        server = try check(dup(back.server), "dup")
        for fd in [accepted, dialled] {
            try check(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), "fcntl")
        }
        // Replies must not wait for ever when a test is wrong.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        for fd in [client, server] {
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Hands the proxy's two sockets to `splicer` and closes its own copies.
    func relay(on splicer: KernelSplicer) throws -> SplicedConnection {
        let connection = try splicer.relay(duplicating: accepted, dialled, counting: (toServer, toClient), ended: end.record)
        close(accepted)
        close(dialled)
        return connection
    }

    deinit {
        close(client)
        close(server)
    }
}

private func send(_ bytes: [UInt8], to fd: CInt) throws {
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written > 0 else { throw TestSocketError.call("write", errno) }
        offset += written
    }
}

/// Reads until EOF (or `limit` bytes).
private func receive(from fd: CInt, limit: Int = .max) throws -> [UInt8] {
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while received.count < limit {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, limit - received.count)) }
        if count == 0 { break }
        guard count > 0 else { throw TestSocketError.call("read", errno) }
        received += chunk[..<count]
    }
    return received
}

private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 >> 11) }
}

/// Runs `body` on another thread; the result is read after `wait`.
private final class Background<T: Sendable>: Sendable {
    private let result = Mutex<Result<T, Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread { [self] in
            let outcome = Result { try body() }
            result.withLock { $0 = outcome }
            done.signal()
        }.start()
    }

    func wait() throws -> T {
        guard done.wait(timeout: .now() + 20) == .success, let outcome = result.withLock({ $0 }) else {
            throw TestSocketError.call("background work did not finish", ETIMEDOUT)
        }
        return try outcome.get()
    }
}

@Suite("Kernel splicing between loopback sockets")
struct KernelSplicerTests {
    @Test(arguments: [65_536, 1 << 20])
    func bothDirectionsArriveWhole(bulkPipeCapacity: Int) throws {
        let splicer = try KernelSplicer(bulkPipeCapacity: bulkPipeCapacity)
        defer { splicer.shutdown() }
        let pair = try ProxiedPair()
        _ = try pair.relay(on: splicer)
        // Over a megabyte each way: the pipes grow to their bulk size on the way.
        let request = pattern(3 << 20, seed: 1)
        let response = pattern(5 << 20 + 17, seed: 2)
        let (client, server) = (pair.client, pair.server)
        // Each end writes while the other reads, both ways at once.
        let clientWrites = Background { try send(request, to: client); shutdown(client, CInt(SHUT_WR)) }
        let serverWrites = Background { try send(response, to: server); shutdown(server, CInt(SHUT_WR)) }
        let atServer = try receive(from: server)
        let atClient = try receive(from: client)
        try clientWrites.wait()
        try serverWrites.wait()
        #expect(atServer == request)
        #expect(atClient == response)
        #expect(pair.end.wait() == .finished)
        #expect(pair.toServer.value == UInt64(request.count))
        #expect(pair.toClient.value == UInt64(response.count))
        #expect(splicer.openConnections == 0)
    }

    /// A FIN from one side goes through once its bytes have, and the other
    /// direction keeps working until that side finishes too.
    @Test func halfCloseKeepsTheOtherDirectionOpen() throws {
        let splicer = try KernelSplicer()
        defer { splicer.shutdown() }
        let pair = try ProxiedPair()
        _ = try pair.relay(on: splicer)
        try send(Array("last words".utf8), to: pair.client)
        shutdown(pair.client, CInt(SHUT_WR))
        #expect(try receive(from: pair.server) == Array("last words".utf8))
        #expect(!pair.end.hasEnded)
        try send(Array("the answer".utf8), to: pair.server)
        shutdown(pair.server, CInt(SHUT_WR))
        #expect(try receive(from: pair.client) == Array("the answer".utf8))
        #expect(pair.end.wait() == .finished)
    }

    /// Bytes sent before the hand-over, still in the kernel, are relayed.
    @Test func bytesWaitingBeforeTheHandOverAreDelivered() throws {
        let splicer = try KernelSplicer()
        defer { splicer.shutdown() }
        let pair = try ProxiedPair()
        try send(Array("early".utf8), to: pair.client)
        try send(Array("banner".utf8), to: pair.server)
        _ = try pair.relay(on: splicer)
        #expect(try receive(from: pair.server, limit: 5) == Array("early".utf8))
        #expect(try receive(from: pair.client, limit: 6) == Array("banner".utf8))
    }

    /// A reader that stops holds its writer back: the relay keeps at most one
    /// pipe's worth beyond what the sockets buffer, and loses nothing.
    @Test func aSlowReaderHoldsTheWriterBack() throws {
        let splicer = try KernelSplicer(bulkPipeCapacity: 65_536)
        defer { splicer.shutdown() }
        let pair = try ProxiedPair()
        // Small fixed socket buffers, so that what the sockets may hold is known.
        var size: CInt = 65_536
        for fd in [pair.client, pair.accepted, pair.dialled, pair.server] {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<CInt>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<CInt>.size))
        }
        _ = try pair.relay(on: splicer)
        let total = 8 << 20
        let data = pattern(total, seed: 3)
        let client = pair.client
        let writer = Background { try send(data, to: client); shutdown(client, CInt(SHUT_WR)) }
        // Let the writer fill everything between it and the stopped server.
        var last: UInt64 = 0
        for _ in 0..<50 {
            Thread.sleep(forTimeInterval: 0.02)
            let now = pair.toServer.value
            if now == last, now > 0 { break }
            last = now
        }
        let relayed = pair.toServer.value
        #expect(relayed > 0)
        // The pipe (64 KiB) and the dialled and server sockets' buffers (the
        // kernel doubles each 64 KiB asked) are all that may hold bytes.
        #expect(relayed < 1 << 20, "the relay read \(relayed) of \(total) bytes from a writer whose reader had stopped")
        #expect(try receive(from: pair.server) == data)
        try writer.wait()
    }

    @Test func aResetEndsBothSides() throws {
        let splicer = try KernelSplicer()
        defer { splicer.shutdown() }
        let pair = try ProxiedPair()
        _ = try pair.relay(on: splicer)
        try send(Array("hello".utf8), to: pair.client)
        #expect(try receive(from: pair.server, limit: 5) == Array("hello".utf8))
        // The server resets: its socket closes with a zero linger. (Closed by
        // putting /dev/null in its place, so that the pair closes that.)
        var linger = linger(l_onoff: 1, l_linger: 0)
        setsockopt(pair.server, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<linger>.size))
        let null = try check(open("/dev/null", O_RDONLY | O_CLOEXEC), "open")
        try check(dup2(null, pair.server), "dup2")
        close(null)
        guard case .failed = pair.end.wait() else {
            Issue.record("a reset must fail the relayed connection")
            return
        }
        // The client's side was closed: it reads the end (or a reset).
        var byte: UInt8 = 0
        #expect(read(pair.client, &byte, 1) <= 0)
    }

    @Test func abortClosesBothSides() throws {
        let splicer = try KernelSplicer()
        defer { splicer.shutdown() }
        let pair = try ProxiedPair()
        let connection = try pair.relay(on: splicer)
        connection.abort()
        #expect(pair.end.wait() == .aborted)
        #expect(try receive(from: pair.client).isEmpty)
        #expect(try receive(from: pair.server).isEmpty)
        // Aborting again, after the end, does nothing.
        connection.abort()
    }

    @Test func shutdownAbortsOpenConnectionsAndRefusesNewOnes() throws {
        // Connections spread over both threads; shutdown ends them all.
        let splicer = try KernelSplicer(threads: 2)
        let pairs = try (0..<3).map { _ in try ProxiedPair() }
        for pair in pairs { _ = try pair.relay(on: splicer) }
        // Each was taken (its end will be reported) before shutdown runs.
        splicer.shutdown()
        for pair in pairs {
            #expect(pair.end.wait() == .aborted)
            #expect(try receive(from: pair.client).isEmpty)
        }
        #expect(splicer.openConnections == 0)
        let late = try ProxiedPair()
        #expect(throws: KernelSpliceError.stopped) {
            try splicer.relay(duplicating: late.accepted, late.dialled, counting: (late.toServer, late.toClient)) { _ in }
        }
        splicer.shutdown()
    }

    /// A descriptor epoll cannot watch (a regular file) ends the connection
    /// at once, and it is not counted as open.
    @Test func aDescriptorEpollRefusesEndsTheConnection() throws {
        let splicer = try KernelSplicer()
        defer { splicer.shutdown() }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("splice-\(UUID().uuidString)").path
        let file = try check(open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600), "open")
        defer {
            close(file)
            unlink(path)
        }
        let end = SpliceEnd()
        _ = try splicer.relay(duplicating: file, file, counting: (ByteCounter(), ByteCounter()), ended: end.record)
        #expect(end.wait() == .failed(errno: EPERM))
        // The thread has finished with that request once it has ended a
        // later connection: only then is its count final.
        let later = try ProxiedPair()
        try later.relay(on: splicer).abort()
        #expect(later.end.wait() == .aborted)
        #expect(splicer.openConnections == 0)
    }

    @Test func aDescriptorThatIsNotOpenIsRefused() throws {
        let splicer = try KernelSplicer()
        defer { splicer.shutdown() }
        let counters = (ByteCounter(), ByteCounter())
        #expect(throws: KernelSpliceError.self) {
            try splicer.relay(duplicating: -1, -1, counting: counters) { _ in }
        }
    }
}
