import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import TestFixtures
import Testing
@testable import TLS

/// Hostile bytes on real sockets: the server fails that one connection cleanly
/// (a typed error, the socket closed) and goes on serving everyone else.
@Suite struct HandlerBadInputTests {
    let pki = CLITestPKI.shared

    /// The first bytes a real client of ours sends (its ClientHello record).
    private func realClientHello() throws -> ByteBuffer {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(TLSHandler(context: try pki.context(.client)))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let hello = try channel.readOutbound(as: ByteBuffer.self)!
        _ = try? channel.finish(acceptAlreadyClosed: true)
        return hello
    }

    /// Starts a server whose connections report into `reports`.
    private func server(group: EventLoopGroup, timeout: TimeAmount = .seconds(10), reports: LockedBox<[PeerReport]>) throws -> Channel {
        try SocketHarness.startServer(group: group, context: try pki.context(.server, handshakeTimeout: timeout)) {
            [ReportingHandler(echo: true, onClose: { report in reports.withLock { $0.append(report) } })]
        }
    }

    /// A good client still gets through: handshake, echo, clean close.
    private func goodClientWorks(group: EventLoopGroup, port: Int) throws {
        let report = group.next().makePromise(of: PeerReport.self)
        let got = LockedBox(0)
        let client = try SocketHarness.connect(group: group, port: port, context: try pki.context(.client)) {
            [ReportingHandler(report: report, greeting: ByteBuffer(string: "still here"), onRead: { count in got.withLock { $0 = count } })]
        }.wait(seconds: 10)
        #expect(waitUntil { got.current == 10 })
        try client.close().wait()
        let seen = try report.futureResult.wait(seconds: 10)
        #expect(seen.handshakeCompleted && seen.errors.isEmpty, "\(seen.errors)")
        #expect(seen.receivedText == "still here")
    }

    private func sendRaw(_ bytes: ByteBuffer, group: EventLoopGroup, port: Int, thenClose: Bool) throws -> EventLoopFuture<Void> {
        let raw = try SocketHarness.connectRaw(group: group, port: port, closed: {}).wait(seconds: 10)
        try raw.writeAndFlush(bytes).wait(seconds: 10)
        if thenClose { try raw.close().wait(seconds: 10) }
        return raw.closeFuture
    }

    @Test func garbageIsAHandshakeFailure() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let reports = LockedBox<[PeerReport]>([])
        let server = try server(group: group, reports: reports)
        defer { try? server.close().wait() }
        let port = server.localAddress!.port!

        var generator = SeededRandom(seed: SeededRandom.seed(default: 0x6A4B))
        var garbage = ByteBufferAllocator().buffer(capacity: 4096)
        for _ in 0..<4096 { garbage.writeInteger(UInt8.random(in: 0...255, using: &generator)) }
        garbage.setInteger(UInt8(0x16), at: 0)  // looks like a handshake record at first
        let closed = try sendRaw(garbage, group: group, port: port, thenClose: false)
        try closed.wait(seconds: 10)  // the server hung up on us

        #expect(waitUntil { reports.current.count == 1 })
        let seen = reports.current[0]
        guard case .handshakeFailed(let failure) = seen.errors.first else {
            Issue.record("expected handshakeFailed, got \(seen.errors)")
            return
        }
        #expect(failure.reason == .malformedInput, "\(failure)")
        #expect(seen.errors.count == 1)
        try goodClientWorks(group: group, port: port)
    }

    @Test func plainHTTPIsAHandshakeFailure() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let reports = LockedBox<[PeerReport]>([])
        let server = try server(group: group, reports: reports)
        defer { try? server.close().wait() }
        let closed = try sendRaw(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), group: group, port: server.localAddress!.port!, thenClose: false)
        try closed.wait(seconds: 10)
        #expect(waitUntil { reports.current.count == 1 })
        guard case .handshakeFailed(let failure) = reports.current[0].errors.first else {
            Issue.record("expected handshakeFailed, got \(reports.current[0].errors)")
            return
        }
        #expect(failure.reason == .malformedInput)
    }

    @Test func truncatedClientHelloThenCloseIsUnexpectedEOF() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let reports = LockedBox<[PeerReport]>([])
        let server = try server(group: group, reports: reports)
        defer { try? server.close().wait() }
        let port = server.localAddress!.port!

        var hello = try realClientHello()
        _ = try sendRaw(hello.readSlice(length: hello.readableBytes - 10)!, group: group, port: port, thenClose: true)
        #expect(waitUntil { reports.current.count == 1 })
        #expect(reports.current.first?.errors == [.unexpectedEOF])
        try goodClientWorks(group: group, port: port)
    }

    @Test func oversizedRecordHeaderIsRefused() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let reports = LockedBox<[PeerReport]>([])
        let server = try server(group: group, reports: reports)
        defer { try? server.close().wait() }
        // A handshake record claiming 65535 bytes (more than TLS allows).
        var header = ByteBufferAllocator().buffer(capacity: 5)
        header.writeBytes([0x16, 0x03, 0x01, 0xFF, 0xFF])
        let closed = try sendRaw(header, group: group, port: server.localAddress!.port!, thenClose: false)
        try closed.wait(seconds: 10)
        #expect(waitUntil { reports.current.count == 1 })
        guard case .handshakeFailed(let failure) = reports.current[0].errors.first else {
            Issue.record("expected handshakeFailed, got \(reports.current[0].errors)")
            return
        }
        #expect(failure.reason == .malformedInput, "\(failure)")
    }

    @Test func floodOfStalledHandshakesIsCutByTheTimeout() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let reports = LockedBox<[PeerReport]>([])
        let server = try server(group: group, timeout: .milliseconds(300), reports: reports)
        defer { try? server.close().wait() }
        let port = server.localAddress!.port!

        var hello = try realClientHello()
        let partial = hello.readSlice(length: 50)!
        let count = 200
        let cut = LockedBox(0)
        var raws: [Channel] = []
        let started = Date()
        for _ in 0..<count {
            let raw = try SocketHarness.connectRaw(group: group, port: port, closed: { cut.withLock { $0 += 1 } }).wait(seconds: 10)
            raw.writeAndFlush(partial, promise: nil)
            raws.append(raw)
        }
        defer { for raw in raws { raw.close(promise: nil) } }

        // The server hangs up on every one of them once the timeout passes.
        #expect(waitUntil(timeout: 15) { cut.current == count }, "\(cut.current) of \(count) cut")
        let elapsed = Date().timeIntervalSince(started)
        #expect(waitUntil { reports.current.count == count })
        let timeouts = reports.current.filter { $0.errors == [.handshakeTimeout] }.count
        #expect(timeouts == count)
        #expect(elapsed < 10, "cut after \(elapsed) s")

        try goodClientWorks(group: group, port: port)
    }
}
