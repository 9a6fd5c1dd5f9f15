import NIOCore
import NIOPosix
import Testing
@testable import TLS

/// TLSHandler on real TCP sockets over 127.0.0.1 (NIOPosix, several threads).
@Suite struct HandlerSocketTests {
    let pki = CLITestPKI.shared

    @Test(arguments: [1, 100_000, 64 << 20])
    func bulkBothWaysWithHalfClose(size: Int) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let serverReport = group.next().makePromise(of: PeerReport.self)
        let clientReport = group.next().makePromise(of: PeerReport.self)
        let server = try SocketHarness.startServer(group: group, context: try pki.context(.server)) {
            [BulkPeer(sendBytes: size, initiator: false, report: serverReport)]
        }
        defer { try? server.close().wait() }
        _ = try SocketHarness.connect(group: group, port: server.localAddress!.port!, context: try pki.context(.client)) {
            [BulkPeer(sendBytes: size, initiator: true, report: clientReport)]
        }.wait(seconds: 10)

        let client = try clientReport.futureResult.wait(seconds: 120)
        let served = try serverReport.futureResult.wait(seconds: 120)
        #expect(client.errors.isEmpty && client.otherErrors.isEmpty, "client: \(client.errors) \(client.otherErrors)")
        #expect(served.errors.isEmpty && served.otherErrors.isEmpty, "server: \(served.errors) \(served.otherErrors)")
        #expect(client.peerIdentity == (try SpiffeID(CLITestPKI.serverID)))
        #expect(served.peerIdentity == (try SpiffeID(CLITestPKI.clientID)))
        #expect(client.negotiatedProtocol == "h2" && served.negotiatedProtocol == "h2")
        #expect(served.inputClosed, "the client's close_notify was passed up as inputClosed")
        #expect(client.sentBytes == size && served.receivedBytes == size)
        #expect(served.receivedDigest == client.sentDigest)
        #expect(served.sentBytes == size && client.receivedBytes == size)
        #expect(client.receivedDigest == served.sentDigest)
    }

    @Test(arguments: [true, false])
    func abruptCloseAfterTheHandshakeIsUnexpectedEOF(allowHalfClosure: Bool) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let serverReport = group.next().makePromise(of: PeerReport.self)
        let serverGot = LockedBox(0)
        let server = try SocketHarness.startServer(
            group: group, context: try pki.context(.server), allowHalfClosure: allowHalfClosure
        ) { [ReportingHandler(report: serverReport, onRead: { count in serverGot.withLock { $0 = count } })] }
        defer { try? server.close().wait() }

        let clientReport = group.next().makePromise(of: PeerReport.self)
        let client = try SocketHarness.connect(
            group: group, port: server.localAddress!.port!, context: try pki.context(.client),
            below: { [RawCloser()] },
            above: { [ReportingHandler(report: clientReport, greeting: ByteBuffer(string: "hello"))] }
        ).wait(seconds: 10)
        // Once the server has the greeting, cut TCP under the client's TLS.
        #expect(waitUntil { serverGot.current == 5 })
        try client.eventLoop.submit {
            try client.pipeline.syncOperations.handler(type: RawCloser.self).closeTCP()
        }.wait()

        let served = try serverReport.futureResult.wait(seconds: 10)
        #expect(served.handshakeCompleted)
        #expect(served.receivedBytes == 5)
        #expect(served.errors == [.unexpectedEOF])
        _ = try clientReport.futureResult.wait(seconds: 10)
    }
    @Test func handshakeProceedsWithoutAutoRead() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let serverGot = LockedBox(0)
        let server = try SocketHarness.startServer(group: group, context: try pki.context(.server), autoRead: false) {
            let handler = ReportingHandler(onRead: { count in serverGot.withLock { $0 = count } })
            handler.readOnHandshake = true
            return [handler]
        }
        defer { try? server.close().wait() }
        let clientReport = group.next().makePromise(of: PeerReport.self)
        let client = try SocketHarness.connect(group: group, port: server.localAddress!.port!, context: try pki.context(.client)) {
            [ReportingHandler(report: clientReport, greeting: ByteBuffer(string: "no autoRead"))]
        }.wait(seconds: 10)
        // The server application never reads before the handshake: TLSHandler
        // drives it; the one read asked for afterwards brings the greeting.
        #expect(waitUntil { serverGot.current == 11 })
        try client.close().wait()
        let seen = try clientReport.futureResult.wait(seconds: 10)
        #expect(seen.handshakeCompleted && seen.errors.isEmpty)
    }
}
