import NIOCore
import NIOEmbedded
import NIOTLS
import Testing
@testable import TLS

/// A client and a server TLSHandler talking through memory (EmbeddedChannel):
/// the real OpenSSL handshake and records, with every byte under the test's control.
@Suite struct HandlerEmbeddedTests {
    @Test func handshakeVerifiesBothPeersAndAgreesOnH2() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()

        #expect(pair.clientRecorder.handshakeCompleted == .some("h2"))
        #expect(pair.serverRecorder.handshakeCompleted == .some("h2"))
        #expect(pair.clientTLS.negotiatedProtocol == "h2")
        #expect(pair.clientTLS.peerIdentity == (try SpiffeID(CLITestPKI.serverID)))
        #expect(pair.serverTLS.peerIdentity == (try SpiffeID(CLITestPKI.clientID)))
        #expect(pair.clientRecorder.identityEvent == TLSPeerIdentityEvent(peerIdentity: try SpiffeID(CLITestPKI.serverID), negotiatedProtocol: "h2"))
        #expect(pair.serverRecorder.identityEvent?.peerIdentity == (try SpiffeID(CLITestPKI.clientID)))
        #expect(pair.clientRecorder.errors.isEmpty && pair.serverRecorder.errors.isEmpty)
        #expect(pair.clientTLS.role == .client && pair.serverTLS.role == .server)
    }

    @Test func handshakeWithoutALPNOnEitherSide() throws {
        let pair = try EmbeddedTLSPair(clientALPN: [], serverALPN: [])
        try pair.activateAndHandshake()
        #expect(pair.clientRecorder.handshakeCompleted == .some(nil))
        #expect(pair.serverRecorder.handshakeCompleted == .some(nil))
    }

    @Test func handlerAddedToAnActiveChannelStartsAtOnce() throws {
        let pki = CLITestPKI.shared
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.pipeline.syncOperations.addHandler(TLSHandler(context: try pki.context(.client)))
        let hello = try channel.readOutbound(as: ByteBuffer.self)
        #expect(hello?.getInteger(at: 0, as: UInt8.self) == 0x16, "a TLS handshake record")
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test(arguments: [1, 100, 2047, 2048, 16_383, 16_384, 16_385, 65_536, 100_000, 1 << 20])
    func payloadsArriveWhole(size: Int) throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        let payload = testBytes(size, seed: UInt64(size))
        let written = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.writeAndFlush(payload, promise: written)
        try pair.shuttle()
        try written.futureResult.wait()
        #expect(pair.serverRecorder.received == payload)

        let reply = testBytes(size, seed: UInt64(size) + 1)
        pair.server.writeAndFlush(reply, promise: nil)
        try pair.shuttle()
        #expect(pair.clientRecorder.received == reply)
    }

    @Test func oneCiphertextWritePerFlushAndFullRecords() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        // 100 small writes in one flush: one ciphertext write, gathered into one record.
        for index in 0..<100 {
            pair.client.write(testBytes(10, seed: UInt64(index)), promise: nil)
        }
        pair.client.flush()
        let out = try pair.takeOutbound(pair.client)
        #expect(out.count == 1)
        #expect(out.first?.readableBytes == 1000 + TLSConnection.recordOverhead, "one record for 1000 bytes")

        // 1 MiB in one write and one flush: one ciphertext write of 64 full records.
        pair.client.writeAndFlush(testBytes(1 << 20), promise: nil)
        let big = try pair.takeOutbound(pair.client)
        #expect(big.count == 1)
        #expect(big.first?.readableBytes == (1 << 20) + 64 * TLSConnection.recordOverhead)
    }

    @Test func aFrameHeaderSharesItsPayloadsRecords() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        // How HTTP/2 writes bulk DATA: a 9-byte header, then 16 KiB of payload, four
        // times. Each header on a record of its own would make 8 records; sharing,
        // the 65,572 bytes fill 5.
        var sent = ByteBuffer()
        for index in 0..<4 {
            let header = testBytes(9, seed: UInt64(index))
            let payload = testBytes(16_384, seed: UInt64(index) + 100)
            pair.client.write(header, promise: nil)
            pair.client.write(payload, promise: nil)
            sent.writeImmutableBuffer(header)
            sent.writeImmutableBuffer(payload)
        }
        pair.client.flush()
        let out = try pair.takeOutbound(pair.client)
        #expect(out.count == 1)
        #expect(out.first?.readableBytes == 4 * (9 + 16_384) + 5 * TLSConnection.recordOverhead)
        for buffer in out { pair.server.pipeline.fireChannelRead(buffer) }
        try pair.shuttle()
        #expect(pair.serverRecorder.received == sent)
    }

    @Test func interleavedWritesAndFlushes() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        let writesBefore = pair.clientWrites
        let parts = (0..<4).map { testBytes(3000 + $0, seed: UInt64($0) + 7) }
        let promises = (0..<4).map { _ in pair.client.eventLoop.makePromise(of: Void.self) }
        pair.client.write(parts[0], promise: promises[0])
        pair.client.write(parts[1], promise: promises[1])
        pair.client.flush()
        pair.client.write(parts[2], promise: promises[2])
        pair.client.flush()
        pair.client.write(parts[3], promise: promises[3])
        try pair.shuttle()

        var expected = parts[0]
        expected.writeImmutableBuffer(parts[1])
        expected.writeImmutableBuffer(parts[2])
        #expect(pair.serverRecorder.received == expected, "the unflushed write stays behind")
        #expect(pair.clientWrites - writesBefore == 2, "one ciphertext write per flush")
        try promises[0].futureResult.wait()
        try promises[2].futureResult.wait()

        pair.client.flush()
        try pair.shuttle()
        expected.writeImmutableBuffer(parts[3])
        #expect(pair.serverRecorder.received == expected)
        try promises[3].futureResult.wait()
    }

    @Test func writesBeforeTheHandshakeAreSentAfterIt() throws {
        let pair = try EmbeddedTLSPair()
        let early = testBytes(5000, seed: 3)
        let promise = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.write(early, promise: promise)
        pair.client.flush()
        pair.client.write(testBytes(10, seed: 4), promise: nil)  // never flushed
        try pair.activateAndHandshake()
        try promise.futureResult.wait()
        #expect(pair.serverRecorder.received == early)
        #expect(pair.serverRecorder.readCount >= 1)
    }

    @Test func serverDataInTheSameReadAsTheClientFinished() throws {
        // The client's Finished and its first data reach the server in one read.
        let pair = try EmbeddedTLSPair()
        try pair.activate()
        let hello = try pair.takeOutbound(pair.client)
        for buffer in hello { try pair.server.writeInbound(buffer) }
        for buffer in try pair.takeOutbound(pair.server) { try pair.client.writeInbound(buffer) }
        #expect(pair.clientRecorder.didCompleteHandshake)
        pair.client.writeAndFlush(testBytes(777, seed: 9), promise: nil)
        var combined = ByteBufferAllocator().buffer(capacity: 0)
        for var buffer in try pair.takeOutbound(pair.client) { combined.writeBuffer(&buffer) }
        try pair.server.writeInbound(combined)
        #expect(pair.serverRecorder.didCompleteHandshake)
        #expect(pair.serverRecorder.received == testBytes(777, seed: 9))
    }

    @Test func bytesArrivingOneAtATime() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activate()
        // Handshake and a message, fed to each side a byte at a time.
        for _ in 0..<10 {
            for side in [(pair.client, pair.server), (pair.server, pair.client)] {
                for var buffer in try pair.takeOutbound(side.0) {
                    while let byte = buffer.readSlice(length: 1) { try side.1.writeInbound(byte) }
                }
            }
            if pair.serverRecorder.didCompleteHandshake { break }
        }
        pair.client.writeAndFlush(testBytes(40_000, seed: 5), promise: nil)
        for var buffer in try pair.takeOutbound(pair.client) {
            while let byte = buffer.readSlice(length: 1) { try pair.server.writeInbound(byte) }
        }
        #expect(pair.serverRecorder.received == testBytes(40_000, seed: 5))
    }

    @Test func clientHalfCloseThenServerReplies() throws {
        let pair = try EmbeddedTLSPair(allowHalfClosure: true)
        try pair.activateAndHandshake()
        pair.client.writeAndFlush(testBytes(1000, seed: 1), promise: nil)
        let closed = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.close(mode: .output, promise: closed)
        try closed.futureResult.wait()
        #expect(pair.clientShutdown.outputShutdowns == 1, "TCP output shut after close_notify")
        #expect(pair.clientRecorder.outputClosed)
        #expect(throws: TLSError.outputClosed) { try pair.client.writeAndFlush(testBytes(1)).wait() }

        try pair.shuttle()
        #expect(pair.serverRecorder.received == testBytes(1000, seed: 1))
        #expect(pair.serverRecorder.inputClosed, "close_notify passed up as inputClosed")
        #expect(pair.server.isActive)

        // The other direction still works.
        pair.server.writeAndFlush(testBytes(5000, seed: 2), promise: nil)
        try pair.shuttle()
        #expect(pair.clientRecorder.received == testBytes(5000, seed: 2))

        // The server finishes too: its close_notify ends the client's half-open connection.
        pair.server.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(!pair.server.isActive, "both directions done: closed")
        #expect(!pair.client.isActive, "the client got close_notify with its output already closed: closed")
        #expect(pair.clientRecorder.errors.isEmpty)
        #expect(pair.serverRecorder.errors.isEmpty)
        // The TCP FIN that follows close_notify is expected, not an error.
        #expect(pair.clientRecorder.inactive && pair.serverRecorder.inactive)
    }

    @Test func tcpFinAfterCloseNotifyIsNotAnError() throws {
        let pair = try EmbeddedTLSPair(allowHalfClosure: true)
        try pair.activateAndHandshake()
        pair.client.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(pair.serverRecorder.inputClosed)
        pair.server.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(pair.serverRecorder.errors.isEmpty)
        #expect(pair.server.isActive)
    }

    @Test func closeNotifyWithoutHalfClosureClosesBothSides() throws {
        let pair = try EmbeddedTLSPair(allowHalfClosure: false)
        try pair.activateAndHandshake()
        pair.client.writeAndFlush(testBytes(100), promise: nil)
        pair.client.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(pair.serverRecorder.received == testBytes(100))
        #expect(!pair.serverRecorder.inputClosed)
        #expect(!pair.server.isActive, "server answered close_notify and closed")
        #expect(!pair.client.isActive)
        #expect(pair.serverRecorder.errors.isEmpty && pair.clientRecorder.errors.isEmpty)
    }

    @Test func fullCloseSendsCloseNotify() throws {
        let pair = try EmbeddedTLSPair(allowHalfClosure: false)
        try pair.activateAndHandshake()
        try pair.client.close().wait()
        try pair.shuttle()
        #expect(!pair.server.isActive)
        #expect(pair.serverRecorder.errors.isEmpty, "a clean close is not an error")
    }

    @Test func outputCloseDuringTheHandshakeHappensAfterIt() throws {
        let pair = try EmbeddedTLSPair(allowHalfClosure: true)
        try pair.activate()
        let data = testBytes(3000, seed: 8)
        pair.client.writeAndFlush(data, promise: nil)
        let closed = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.close(mode: .output, promise: closed)
        #expect(pair.clientShutdown.outputShutdowns == 0)
        try pair.shuttle()
        try closed.futureResult.wait()
        #expect(pair.clientShutdown.outputShutdowns == 1)
        #expect(pair.serverRecorder.received == data)
        #expect(pair.serverRecorder.inputClosed)
    }

    @Test func abruptCloseIsUnexpectedEOF() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        pair.client.writeAndFlush(testBytes(100), promise: nil)
        try pair.shuttle()
        // TCP goes away without close_notify.
        pair.server.pipeline.fireChannelInactive()
        #expect(pair.serverRecorder.tlsErrors == [.unexpectedEOF])
        #expect(pair.serverRecorder.received == testBytes(100))
    }

    @Test func tcpFinWithoutCloseNotifyIsUnexpectedEOF() throws {
        let pair = try EmbeddedTLSPair(allowHalfClosure: true)
        try pair.activateAndHandshake()
        pair.server.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(pair.serverRecorder.tlsErrors == [.unexpectedEOF])
        #expect(!pair.serverRecorder.inputClosed, "truncation is not passed up as a clean end")
        #expect(!pair.server.isActive)
    }

    @Test func abruptCloseDuringTheHandshake() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activate()
        let early = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.writeAndFlush(testBytes(10), promise: early)
        pair.client.pipeline.fireChannelInactive()
        #expect(pair.clientRecorder.tlsErrors == [.unexpectedEOF])
        #expect(throws: ChannelError.ioOnClosedChannel) { try early.futureResult.wait() }
    }

    @Test func handshakeTimeout() throws {
        let pki = CLITestPKI.shared
        let pair = try EmbeddedTLSPair(
            clientContext: pki.context(.client, handshakeTimeout: .seconds(2)),
            serverContext: pki.context(.server, handshakeTimeout: .milliseconds(300)))
        try pair.activate()
        let held = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.writeAndFlush(testBytes(10), promise: held)
        // The ClientHello reaches the server, nothing goes back.
        for buffer in try pair.takeOutbound(pair.client) { try pair.server.writeInbound(buffer) }
        pair.loop.advanceTime(by: .milliseconds(299))
        #expect(pair.server.isActive)
        pair.loop.advanceTime(by: .milliseconds(1))
        #expect(pair.serverRecorder.tlsErrors == [.handshakeTimeout])
        #expect(!pair.server.isActive)
        #expect(pair.client.isActive)
        pair.loop.advanceTime(by: .seconds(2))
        #expect(pair.clientRecorder.tlsErrors == [.handshakeTimeout])
        #expect(!pair.client.isActive)
        #expect(throws: TLSError.handshakeTimeout) { try held.futureResult.wait() }
    }

    @Test func noTimeoutAfterACompletedHandshake() throws {
        let pki = CLITestPKI.shared
        let pair = try EmbeddedTLSPair(
            clientContext: pki.context(.client, handshakeTimeout: .milliseconds(100)),
            serverContext: pki.context(.server, handshakeTimeout: .milliseconds(100)))
        try pair.activateAndHandshake()
        pair.loop.advanceTime(by: .seconds(5))
        #expect(pair.client.isActive && pair.server.isActive)
        #expect(pair.clientRecorder.errors.isEmpty && pair.serverRecorder.errors.isEmpty)
    }

    @Test func damagedRecordIsAProtocolError() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        pair.client.writeAndFlush(testBytes(500), promise: nil)
        var record = try pair.takeOutbound(pair.client)[0]
        let index = record.readerIndex + 100
        record.setInteger(record.getInteger(at: index, as: UInt8.self)! ^ 0x01, at: index)
        try pair.server.writeInbound(record)
        guard case .protocolError(let failure) = pair.serverRecorder.tlsErrors.first else {
            Issue.record("expected a protocol error, got \(pair.serverRecorder.errors)")
            return
        }
        #expect(failure.reason == .malformedInput)
        #expect(pair.serverRecorder.received.readableBytes == 0, "nothing of a forged record is passed up")
        #expect(!pair.server.isActive)
        // The server told the client why (bad_record_mac alert).
        try pair.shuttle()
        #expect(!pair.client.isActive)
        #expect(pair.clientRecorder.errors.count == 1)
    }

    @Test func garbageInsteadOfAClientHello() throws {
        let pair = try EmbeddedTLSPair()
        try pair.server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try pair.server.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"))
        guard case .handshakeFailed(let failure) = pair.serverRecorder.tlsErrors.first else {
            Issue.record("expected a handshake failure, got \(pair.serverRecorder.errors)")
            return
        }
        #expect(failure.reason == .malformedInput)
        #expect(!pair.server.isActive)
    }

    @Test func truncatedClientHelloThenEOF() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activate()
        var hello = try pair.takeOutbound(pair.client)[0]
        try pair.server.writeInbound(hello.readSlice(length: hello.readableBytes / 2)!)
        #expect(pair.serverRecorder.errors.isEmpty, "waiting for the rest")
        pair.server.pipeline.fireChannelInactive()
        #expect(pair.serverRecorder.tlsErrors == [.unexpectedEOF])
    }

    @Test func readsArePassedUpAsOneBufferPerNetworkRead() throws {
        let pair = try EmbeddedTLSPair()
        try pair.activateAndHandshake()
        // 8 records in one network read: one plaintext read up the pipeline.
        pair.client.writeAndFlush(testBytes(8 * 16_384, seed: 11), promise: nil)
        try pair.shuttle()
        #expect(pair.serverRecorder.received == testBytes(8 * 16_384, seed: 11))
        #expect(pair.serverRecorder.readCount == 1)
    }
    // MARK: - Refusals, both sides in memory

    @Test func clientFromAnUnknownRoot() throws {
        let pair = try EmbeddedTLSPair(client: .rogue)
        try pair.activateAndHandshake()
        guard case .peerVerificationFailed(let error) = pair.serverRecorder.tlsErrors.first else {
            Issue.record("expected peerVerificationFailed, got \(pair.serverRecorder.errors)")
            return
        }
        #expect(error.reason == .unknownIssuer)
        #expect(!pair.serverRecorder.didCompleteHandshake)
        #expect(pair.serverTLS.peerIdentity == nil)
        // TLS 1.3: the client finished before the server judged it; the verdict
        // arrives as an alert, reported as a failed handshake.
        guard case .handshakeFailed(let failure) = pair.clientRecorder.tlsErrors.first else {
            Issue.record("expected handshakeFailed, got \(pair.clientRecorder.errors)")
            return
        }
        #expect(failure.reason == .certificateRejectedByPeer)
        #expect(!pair.client.isActive && !pair.server.isActive)
    }

    @Test func serverFromAnUnknownRoot() throws {
        let pair = try EmbeddedTLSPair(server: .rogue)
        try pair.activateAndHandshake()
        guard case .peerVerificationFailed(let error) = pair.clientRecorder.tlsErrors.first else {
            Issue.record("expected peerVerificationFailed, got \(pair.clientRecorder.errors)")
            return
        }
        #expect(error.reason == .unknownIssuer)
        #expect(!pair.clientRecorder.didCompleteHandshake)
        guard case .handshakeFailed(let failure) = pair.serverRecorder.tlsErrors.first else {
            Issue.record("expected handshakeFailed, got \(pair.serverRecorder.errors)")
            return
        }
        #expect(failure.reason == .certificateRejectedByPeer, "\(failure)")
    }

    @Test func alpnWithNothingInCommon() throws {
        let pair = try EmbeddedTLSPair(clientALPN: ["http/1.1"], serverALPN: ["h2"])
        try pair.activateAndHandshake()
        for recorder in [pair.serverRecorder, pair.clientRecorder] {
            guard case .handshakeFailed(let failure) = recorder.tlsErrors.first else {
                Issue.record("expected handshakeFailed, got \(recorder.errors)")
                continue
            }
            #expect(failure.reason == .noApplicationProtocol, "\(failure)")
            #expect(!recorder.didCompleteHandshake)
        }
    }

    @Test func clientOfferingNoALPNToAServerThatNeedsIt() throws {
        let pair = try EmbeddedTLSPair(clientALPN: [], serverALPN: ["h2"])
        try pair.activateAndHandshake()
        guard case .handshakeFailed(let failure) = pair.serverRecorder.tlsErrors.first else {
            Issue.record("expected handshakeFailed, got \(pair.serverRecorder.errors)")
            return
        }
        #expect(failure.reason == .noApplicationProtocol)
    }

    @Test func verifierThatRefusesEveryone() throws {
        struct Nobody: PeerCertificateVerifier {
            func verify(peerChain: [Certificate]) -> Result<SpiffeID, PeerVerificationError> {
                .failure(PeerVerificationError(.trustDomainNotAccepted, "leaf \(peerChain[0].uriSANs) refused in a test"))
            }
        }
        let pki = CLITestPKI.shared
        let pair = try EmbeddedTLSPair(
            clientContext: pki.context(.client),
            serverContext: pki.context(.server, verifier: Nobody()))
        try pair.activateAndHandshake()
        #expect(pair.serverRecorder.tlsErrors.first == .peerVerificationFailed(PeerVerificationError(
            .trustDomainNotAccepted, "leaf [\"\(CLITestPKI.clientID)\"] refused in a test")))
        #expect(pair.serverRecorder.tlsErrors.first?.reasonLabel == "trust_domain_not_accepted")
    }
}
