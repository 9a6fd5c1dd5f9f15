import COpenSSL
import Dispatch
import Foundation
import NIOCore
import NIOPosix
import NIOTLS
import Testing
@testable import TLS

/// Numbers, not checks: mutual P-256 handshakes per second over loopback (a new
/// TCP connection and a full handshake each time) and bulk throughput of one
/// connection. Run only with MESH_TLS_MEASURE=1, in a release build:
///
///     MESH_TLS_MEASURE=1 swift test -c release -Xswiftc -enable-testing \
///         --scratch-path .build-tls-release --filter HandlerMeasureTests
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["MESH_TLS_MEASURE"] == "1"))
struct HandlerMeasureTests {
    let pki = CLITestPKI.shared
    static let seconds = Double(ProcessInfo.processInfo.environment["MESH_TLS_MEASURE_SECONDS"] ?? "5") ?? 5

    /// An OSSL_LIB_CTX of our own, kept for the whole process (SSL objects still
    /// closing on the event loops must not outlive it).
    final class LibraryContext: @unchecked Sendable {
        let pointer = OSSL_LIB_CTX_new()
    }
    static let ownLibraryContext = LibraryContext()

    /// Counts the handshakes a server completed.
    final class HandshakeCounter: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let completed: LockedBox<Int>
        let failed: LockedBox<Int>
        init(completed: LockedBox<Int>, failed: LockedBox<Int>) {
            self.completed = completed
            self.failed = failed
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
                completed.withLock { $0 += 1 }
            }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            failed.withLock { $0 += 1 }
            context.close(promise: nil)
        }
    }

    /// Completes a promise when the client's handshake completes (or fails).
    final class HandshakeWaiter: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let done: EventLoopPromise<Void>
        init(done: EventLoopPromise<Void>) { self.done = done }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted = event { done.succeed(()) }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { done.fail(error) }
        func channelInactive(context: ChannelHandlerContext) { done.fail(ChannelError.ioOnClosedChannel) }
    }

    enum ContextUse: String {
        case shared = "one SSL_CTX per identity, reused"
        case perConnection = "a new SSL_CTX for every connection"
        case ownLibraryContext = "one SSL_CTX on its own OSSL_LIB_CTX"
    }

    /// Connections opened one after another (per worker) for `seconds`; returns
    /// handshakes per second, counted on the server.
    private func handshakeRate(workers: Int, use: ContextUse) throws -> (rate: Double, count: Int, failed: Int, latencyMs: Double, cpuMs: Double) {
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer {
            try? clientGroup.syncShutdownGracefully()
            try? serverGroup.syncShutdownGracefully()
        }
        let completed = LockedBox(0)
        let failed = LockedBox(0)
        let libraryContext = use == .ownLibraryContext ? Self.ownLibraryContext.pointer : nil

        let serverConfiguration = try pki.context(.server).configuration
        let clientConfiguration = try pki.context(.client).configuration
        let sharedServer = try TLSContext(configuration: serverConfiguration, libraryContext: libraryContext)
        let sharedClient = try TLSContext(configuration: clientConfiguration, libraryContext: libraryContext)
        let perConnection = use == .perConnection

        let server = try ServerBootstrap(group: serverGroup)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let context = perConnection ? try TLSContext(configuration: serverConfiguration) : sharedServer
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context))
                    try channel.pipeline.syncOperations.addHandler(HandshakeCounter(completed: completed, failed: failed))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? server.close().wait() }
        let port = server.localAddress!.port!

        let clientFailures = LockedBox(0)
        let cpuBefore = Self.cpuSeconds()
        let started = DispatchTime.now()
        let deadline = started.uptimeNanoseconds + UInt64(Self.seconds * 1e9)
        let attempts = LockedBox(0)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while DispatchTime.now().uptimeNanoseconds < deadline {
                do {
                    let done = clientGroup.next().makePromise(of: Void.self)
                    let channel = try ClientBootstrap(group: clientGroup)
                        .channelInitializer { channel in
                            channel.eventLoop.makeCompletedFuture {
                                let context = perConnection ? try TLSContext(configuration: clientConfiguration) : sharedClient
                                try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context))
                                try channel.pipeline.syncOperations.addHandler(HandshakeWaiter(done: done))
                            }
                        }
                        .connect(host: "127.0.0.1", port: port).wait()
                    try done.futureResult.wait()
                    try channel.close().wait()
                    attempts.withLock { $0 += 1 }
                } catch {
                    clientFailures.withLock { $0 += 1 }
                }
            }
        }
        // Let the server finish the last handshakes.
        _ = waitUntil(timeout: 2) { completed.current + failed.current >= attempts.current }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e9
        let count = completed.current
        let cpuMs = (Self.cpuSeconds() - cpuBefore) * 1000 / Double(max(count, 1))
        return (Double(count) / elapsed, count, failed.current + clientFailures.current, elapsed * 1000 * Double(workers) / Double(max(count, 1)), cpuMs)
    }

    /// User + system CPU time of this process so far.
    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    @Test func handshakesPerSecond() throws {
        print("MEASURE handshakes: mutual TLS 1.3, P-256 certificates (leaf + intermediate sent each way), SpiffeVerifier both sides, new TCP connection each, \(Self.seconds) s per row, \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
        for (workers, use) in [(1, ContextUse.shared), (8, .shared), (1, .perConnection), (8, .perConnection), (1, .ownLibraryContext), (8, .ownLibraryContext)] {
            let result = try handshakeRate(workers: workers, use: use)
            print(String(format: "MEASURE handshakes: %d in flight, %@: %.0f/s (%d done, %d failed, %.2f ms each, %.2f ms CPU each for client + server)",
                         workers, use.rawValue, result.rate, result.count, result.failed, result.latencyMs, result.cpuMs))
        }
    }

    /// Sends `total` bytes in 1 MiB writes, keeping the channel busy but within its
    /// high-water mark.
    final class Producer: ChannelDuplexHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let total: Int
        let chunk: ByteBuffer
        var sent = 0
        var started = false
        init(total: Int, chunkSize: Int) {
            self.total = total
            self.chunk = testBytes(chunkSize, seed: 3)
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
                started = true
                pump(context: context)
            }
        }
        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if started { pump(context: context) }
        }
        private func pump(context: ChannelHandlerContext) {
            while sent < total && context.channel.isWritable {
                context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
                sent += chunk.readableBytes
            }
        }
    }

    final class Sink: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let total: Int
        let done: EventLoopPromise<(Int, UInt64)>
        var received = 0
        var firstAt: UInt64 = 0
        var reads = 0
        init(total: Int, done: EventLoopPromise<(Int, UInt64)>) {
            self.total = total
            self.done = done
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted = event { firstAt = DispatchTime.now().uptimeNanoseconds }
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytes
            reads += 1
            if received >= total { done.succeed((reads, DispatchTime.now().uptimeNanoseconds - firstAt)) }
        }
    }

    @Test func bulkThroughput() throws {
        let total = Int(ProcessInfo.processInfo.environment["MESH_TLS_MEASURE_BYTES"] ?? "") ?? (2 << 30)
        for chunkSize in [16 << 10, 1 << 20] {
            let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            defer {
                try? clientGroup.syncShutdownGracefully()
                try? serverGroup.syncShutdownGracefully()
            }
            let done = serverGroup.next().makePromise(of: (Int, UInt64).self)
            let server = try SocketHarness.startServer(group: serverGroup, context: try pki.context(.server)) {
                [Sink(total: total, done: done)]
            }
            defer { try? server.close().wait() }
            let client = try SocketHarness.connect(group: clientGroup, port: server.localAddress!.port!, context: try pki.context(.client)) {
                [Producer(total: total, chunkSize: chunkSize)]
            }.wait(seconds: 10)
            let (reads, nanoseconds) = try done.futureResult.wait(seconds: 600)
            try client.close().wait()
            let seconds = Double(nanoseconds) / 1e9
            print(String(format: "MEASURE bulk: %d MiB client→server in %d KiB writes: %.2f s, %.0f MB/s (%.0f MiB/s), %d plaintext reads (avg %d KiB)",
                         total >> 20, chunkSize >> 10, seconds, Double(total) / seconds / 1e6, Double(total) / seconds / 1048576,
                         reads, total / max(reads, 1) / 1024))
        }
    }
    /// Resident memory of this process, from /proc/self/statm.
    static func residentBytes() -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
        let pages = text.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    @Test func idleConnectionMemory() throws {
        let count = 1000
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer {
            try? clientGroup.syncShutdownGracefully()
            try? serverGroup.syncShutdownGracefully()
        }
        let serverContext = try pki.context(.server)
        let clientContext = try pki.context(.client)
        let completed = LockedBox(0)
        let failed = LockedBox(0)
        let server = try SocketHarness.startServer(group: serverGroup, context: serverContext) {
            [HandshakeCounter(completed: completed, failed: failed)]
        }
        defer { try? server.close().wait() }
        // Warm up allocator and caches, then measure.
        var channels: [Channel] = []
        func open(_ n: Int) throws {
            for _ in 0..<n {
                let done = clientGroup.next().makePromise(of: Void.self)
                let channel = try SocketHarness.connect(group: clientGroup, port: server.localAddress!.port!, context: clientContext) {
                    [HandshakeWaiter(done: done)]
                }.wait(seconds: 10)
                try done.futureResult.wait(seconds: 10)
                channels.append(channel)
            }
        }
        try open(50)
        let before = Self.residentBytes()
        try open(count)
        _ = waitUntil { completed.current == count + 50 }
        let after = Self.residentBytes()
        print(String(format: "MEASURE idle memory: %d established mutual-TLS connections (client and server side, both in this process, after a handshake each): %.1f KiB resident per connection pair",
                     count, Double(after - before) / 1024 / Double(count)))
        for channel in channels { channel.close(promise: nil) }
    }
}
