import NIOCore
import NIOEmbedded
import Testing
@testable import TLS

/// The connection's life as a value: events in, actions out, no sockets.
@Suite struct HandlerStateMachineTests {
    typealias Machine = TLSStateMachine

    private func active() -> Machine {
        var machine = Machine()
        _ = machine.channelActive()
        _ = machine.handshakeStepped(.complete)
        return machine
    }

    @Test func handshakeStartsOnceOnActivation() {
        var machine = Machine()
        #expect(machine.state == .idle(.init()))
        #expect(machine.bytesReceived() == .discardInput)
        #expect(machine.channelActive() == .startHandshake)
        #expect(machine.channelActive() == .none, "a second activation (handlerAdded + channelActive) starts nothing")
        #expect(machine.isHandshaking)
        #expect(machine.bytesReceived() == .continueHandshake)
        #expect(machine.handshakeStepped(.wantRead) == .none)
        #expect(machine.handshakeStepped(.complete) == .completeHandshake(deferredOutputClose: nil))
        #expect(machine.state == .active)
        #expect(machine.bytesReceived() == .decrypt)
    }

    @Test func writesWaitForTheHandshakeAndFlushesAreHeld() {
        var machine = Machine()
        #expect(machine.write() == .queueWrite)
        #expect(machine.flush() == .holdFlush)
        _ = machine.channelActive()
        #expect(machine.write() == .queueWrite)
        #expect(machine.flush() == .holdFlush)
        _ = machine.handshakeStepped(.complete)
        #expect(machine.write() == .queueWrite)
        #expect(machine.flush() == .encryptAndFlush)
    }

    @Test func handshakeFailureClosesAndIsFinal() {
        var machine = Machine()
        _ = machine.channelActive()
        let error = TLSError.handshakeFailed(TLSFailure(.protocolVersion, details: []))
        #expect(machine.handshakeStepped(.failed(error)) == .failAndClose(error, deferredOutputClose: nil))
        #expect(machine.state == .closed)
        #expect(machine.bytesReceived() == .discardInput)
        #expect(machine.write() == .refuseWrite(.channelClosed))
        #expect(machine.handshakeTimedOut() == .none)
        #expect(machine.channelInactive() == .channelClosed(error: nil, deferredOutputClose: nil))
    }

    @Test func timeoutOnlyCountsDuringTheHandshake() {
        var machine = Machine()
        #expect(machine.handshakeTimedOut() == .none)
        _ = machine.channelActive()
        #expect(machine.handshakeTimedOut() == .failAndClose(.handshakeTimeout, deferredOutputClose: nil))
        var done = active()
        #expect(done.handshakeTimedOut() == .none)
        #expect(done.state == .active)
    }

    @Test func endOfTCPWithoutCloseNotifyIsUnexpectedEOF() {
        var handshaking = Machine()
        _ = handshaking.channelActive()
        #expect(handshaking.channelInactive() == .channelClosed(error: .unexpectedEOF, deferredOutputClose: nil))

        var open = active()
        #expect(open.channelInactive() == .channelClosed(error: .unexpectedEOF, deferredOutputClose: nil))

        var halfOpen = active()
        #expect(halfOpen.tcpInputClosed() == .failAndClose(.unexpectedEOF, deferredOutputClose: nil))

        var outputDone = active()
        _ = outputDone.closeRequested(mode: .output, promise: nil)
        #expect(outputDone.tcpInputClosed() == .failAndClose(.unexpectedEOF, deferredOutputClose: nil))
    }

    @Test func peerCloseNotifyWithHalfClosure() {
        var machine = active()
        #expect(machine.closeNotifyReceived(allowRemoteHalfClosure: true) == .fireInputClosed)
        #expect(machine.state == .inputClosed)
        #expect(machine.bytesReceived() == .discardInput)
        #expect(machine.tcpInputClosed() == .none, "FIN after close_notify is expected")
        #expect(machine.write() == .queueWrite, "we may still write")
        #expect(machine.flush() == .encryptAndFlush)
        #expect(machine.closeRequested(mode: .output, promise: nil) == .sendCloseNotifyAndFinish(nil), "both sides done")
        #expect(machine.state == .closing)
        #expect(machine.channelInactive() == .channelClosed(error: nil, deferredOutputClose: nil))
    }

    @Test func peerCloseNotifyWithoutHalfClosureClosesBothWays() {
        var machine = active()
        #expect(machine.closeNotifyReceived(allowRemoteHalfClosure: false) == .sendCloseNotifyAndClose(nil))
        #expect(machine.state == .closing)
        #expect(machine.channelInactive() == .channelClosed(error: nil, deferredOutputClose: nil))
    }

    @Test func ourHalfCloseKeepsReading() {
        let loop = EmbeddedEventLoop()
        let promise = loop.makePromise(of: Void.self)
        var machine = active()
        #expect(machine.closeRequested(mode: .output, promise: promise) == .sendCloseNotifyAndCloseOutput(promise))
        #expect(machine.state == .outputClosed)
        #expect(machine.bytesReceived() == .decrypt)
        #expect(machine.write() == .refuseWrite(.outputClosed))
        #expect(machine.flush() == .none)
        #expect(machine.closeRequested(mode: .output, promise: nil) == .refuseClose(nil, .outputClosed))
        #expect(machine.closeNotifyReceived(allowRemoteHalfClosure: true) == .finishAfterOutputShutdown(fireInputClosed: true))
        #expect(machine.state == .closing)
        promise.succeed(())
    }

    @Test func outputCloseDuringTheHandshakeWaitsForIt() {
        let loop = EmbeddedEventLoop()
        let promise = loop.makePromise(of: Void.self)
        var machine = Machine()
        _ = machine.channelActive()
        #expect(machine.closeRequested(mode: .output, promise: promise) == .none)
        #expect(machine.closeRequested(mode: .output, promise: nil) == .refuseClose(nil, .outputClosed))
        #expect(machine.write() == .queueWrite, "writes before the close still count")
        let request = Machine.OutputCloseRequest(promise: promise)
        #expect(machine.handshakeStepped(.complete) == .completeHandshake(deferredOutputClose: request))
        #expect(machine.state == .outputClosed)
        promise.succeed(())
    }

    @Test func deferredOutputCloseFailsWithTheHandshake() {
        let loop = EmbeddedEventLoop()
        let promise = loop.makePromise(of: Void.self)
        var machine = Machine()
        _ = machine.channelActive()
        _ = machine.closeRequested(mode: .output, promise: promise)
        let request = Machine.OutputCloseRequest(promise: promise)
        #expect(machine.handshakeTimedOut() == .failAndClose(.handshakeTimeout, deferredOutputClose: request))
        promise.fail(TLSError.handshakeTimeout)
    }

    @Test func fullCloseSaysGoodbyeOnlyWithASession() {
        var idle = Machine()
        #expect(idle.closeRequested(mode: .all, promise: nil) == .close(nil, deferredOutputClose: nil))

        var handshaking = Machine()
        _ = handshaking.channelActive()
        #expect(handshaking.closeRequested(mode: .all, promise: nil) == .close(nil, deferredOutputClose: nil))
        #expect(handshaking.channelInactive() == .channelClosed(error: nil, deferredOutputClose: nil), "we closed: no error")

        var open = active()
        #expect(open.closeRequested(mode: .all, promise: nil) == .sendCloseNotifyAndClose(nil))
        #expect(open.closeRequested(mode: .all, promise: nil) == .forwardClose(.all, nil))
        #expect(open.write() == .refuseWrite(.channelClosed))
        #expect(open.closeRequested(mode: .output, promise: nil) == .refuseClose(nil, .alreadyClosed))

        var halfClosed = active()
        _ = halfClosed.closeRequested(mode: .output, promise: nil)
        #expect(halfClosed.closeRequested(mode: .all, promise: nil) == .close(nil, deferredOutputClose: nil))
    }

    @Test func closeInputIsPassedDown() {
        var machine = active()
        #expect(machine.closeRequested(mode: .input, promise: nil) == .forwardClose(.input, nil))
        #expect(machine.state == .active)
    }

    @Test func failuresAfterTheHandshakeClose() {
        let error = TLSError.protocolError(TLSFailure(.malformedInput, details: ["bad record mac"]))
        var machine = active()
        #expect(machine.connectionFailed(error) == .failAndClose(error, deferredOutputClose: nil))
        #expect(machine.connectionFailed(error) == .none, "reported once")
        #expect(machine.closeNotifyReceived(allowRemoteHalfClosure: true) == .none)
    }
}
