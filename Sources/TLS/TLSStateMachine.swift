import NIOCore

/// The life of one TLS connection, as a value. Each event the handler sees goes
/// in here and an `Action` comes out, which the handler carries out; nothing in
/// here touches OpenSSL or the pipeline, so tests drive it without sockets.
///
/// ```
/// idle ─channelActive─▶ handshaking ─complete─▶ active ─peer close_notify─▶ inputClosed
///                            │                    │                            │
///                            │                    └─close(.output)─▶ outputClosed
///                            │                                              │  │
///        fail, timeout, EOF  │  close(.all), or both directions finished ──▶ closing
///                            ▼                                                 │
///                          closed ◀──────────────── channelInactive ◀─────────┘
/// ```
struct TLSStateMachine {
    enum State: Equatable {
        /// Added to a channel that is not active yet.
        case idle(PreHandshake)
        case handshaking(PreHandshake)
        /// Both directions open.
        case active
        /// The peer's close_notify arrived (and was passed up as `inputClosed`); we
        /// may still write.
        case inputClosed
        /// We sent close_notify and shut TCP output; the peer may still write.
        case outputClosed
        /// We asked the channel to close (after our close_notify, if any).
        case closing
        /// The connection failed or the channel went inactive.
        case closed
    }

    /// What was asked of the connection before the handshake let it happen.
    struct PreHandshake: Equatable {
        /// `close(mode: .output)` before the handshake completed: done right after,
        /// once the writes flushed meanwhile are encrypted and sent.
        var outputClose: OutputCloseRequest?
    }

    struct OutputCloseRequest: Equatable {
        var promise: EventLoopPromise<Void>?
    }

    /// Why a write or close is refused; the handler fails the promise accordingly.
    enum Refusal: Equatable {
        /// Our close_notify is out: `TLSError.outputClosed`.
        case outputClosed
        /// `ChannelError.ioOnClosedChannel`.
        case channelClosed
        /// `ChannelError.alreadyClosed`.
        case alreadyClosed
    }

    enum Action: Equatable {
        case none
        /// Arm the handshake timer and take the first handshake step.
        case startHandshake
        /// Hand the bytes to OpenSSL and take the next handshake step.
        case continueHandshake
        /// Hand the bytes to OpenSSL and decrypt what it can.
        case decrypt
        /// Drop the bytes: the peer has finished, or we are going away.
        case discardInput
        /// Cancel the timer, fire the peer identity and handshakeCompleted, encrypt
        /// the writes flushed during the handshake, decrypt whatever came with the
        /// last handshake message, then carry out a deferred `close(mode: .output)`.
        case completeHandshake(deferredOutputClose: OutputCloseRequest?)
        /// Send what OpenSSL has for the peer (an alert), fail the pending writes and
        /// any deferred close with the error, fire it, and close the channel.
        case failAndClose(TLSError, deferredOutputClose: OutputCloseRequest?)
        /// Keep the write until a flush (or the handshake) lets it go out.
        case queueWrite
        case refuseWrite(Refusal)
        /// Encrypt every flushed write and send the ciphertext as one write.
        case encryptAndFlush
        /// Remember the flush; the writes go out when the handshake completes.
        case holdFlush
        /// The peer's close_notify, passed up as `ChannelEvent.inputClosed`.
        case fireInputClosed
        /// Send close_notify, then shut down TCP output; reading goes on.
        case sendCloseNotifyAndCloseOutput(EventLoopPromise<Void>?)
        /// Send close_notify, then close the channel.
        case sendCloseNotifyAndClose(EventLoopPromise<Void>?)
        /// The peer has finished already: send close_notify, shut down TCP output
        /// (after the writes queued below us), then close the channel.
        case sendCloseNotifyAndFinish(EventLoopPromise<Void>?)
        /// The peer's close_notify after ours: pass `inputClosed` up if half-closure
        /// is allowed, and close the channel once our TCP output shutdown is done
        /// (closing earlier would drop writes still queued below us).
        case finishAfterOutputShutdown(fireInputClosed: Bool)
        /// Close the channel with nothing to tell the peer.
        case close(EventLoopPromise<Void>?, deferredOutputClose: OutputCloseRequest?)
        /// Not ours to handle: pass the close down unchanged.
        case forwardClose(CloseMode, EventLoopPromise<Void>?)
        case refuseClose(EventLoopPromise<Void>?, Refusal)
        /// The channel went away: fail the pending writes (and a deferred close), and
        /// fire `error` first when the connection ended badly.
        case channelClosed(error: TLSError?, deferredOutputClose: OutputCloseRequest?)
    }

    private(set) var state: State = .idle(PreHandshake())

    var isHandshaking: Bool {
        if case .handshaking = state { return true }
        return false
    }

    // MARK: - Channel lifecycle

    /// The channel became active, or we were added to one that already is.
    mutating func channelActive() -> Action {
        guard case .idle(let pre) = state else { return .none }
        state = .handshaking(pre)
        return .startHandshake
    }

    /// TCP closed (channelInactive).
    mutating func channelInactive() -> Action {
        let previous = state
        state = .closed
        switch previous {
        case .idle(let pre):
            return .channelClosed(error: nil, deferredOutputClose: pre.outputClose)
        case .handshaking(let pre):
            return .channelClosed(error: .unexpectedEOF, deferredOutputClose: pre.outputClose)
        case .active, .outputClosed:
            // No close_notify from the peer: what we read may be truncated.
            return .channelClosed(error: .unexpectedEOF, deferredOutputClose: nil)
        case .inputClosed, .closing, .closed:
            return .channelClosed(error: nil, deferredOutputClose: nil)
        }
    }

    /// TCP input ended (ChannelEvent.inputClosed from below, with half-closure on).
    mutating func tcpInputClosed() -> Action {
        switch state {
        case .handshaking(let pre), .idle(let pre):
            state = .closed
            return .failAndClose(.unexpectedEOF, deferredOutputClose: pre.outputClose)
        case .active, .outputClosed:
            state = .closed
            return .failAndClose(.unexpectedEOF, deferredOutputClose: nil)
        case .inputClosed, .closing, .closed:
            // The close_notify came first (and was passed up already), or we are
            // going away anyway.
            return .none
        }
    }

    mutating func handshakeTimedOut() -> Action {
        guard case .handshaking(let pre) = state else { return .none }
        state = .closed
        return .failAndClose(.handshakeTimeout, deferredOutputClose: pre.outputClose)
    }

    // MARK: - Inbound

    mutating func bytesReceived() -> Action {
        switch state {
        case .handshaking:
            return .continueHandshake
        case .active, .outputClosed:
            return .decrypt
        case .idle, .inputClosed, .closing, .closed:
            return .discardInput
        }
    }

    enum HandshakeStep: Equatable {
        case complete
        case wantRead
        case failed(TLSError)
    }

    /// The outcome of one handshake step (with our own post-handshake checks
    /// already folded into `.failed`).
    mutating func handshakeStepped(_ step: HandshakeStep) -> Action {
        guard case .handshaking(let pre) = state else { return .none }
        switch step {
        case .wantRead:
            return .none
        case .complete:
            state = pre.outputClose == nil ? .active : .outputClosed
            return .completeHandshake(deferredOutputClose: pre.outputClose)
        case .failed(let error):
            state = .closed
            return .failAndClose(error, deferredOutputClose: pre.outputClose)
        }
    }

    /// The peer's close_notify arrived.
    mutating func closeNotifyReceived(allowRemoteHalfClosure: Bool) -> Action {
        switch state {
        case .active:
            if allowRemoteHalfClosure {
                state = .inputClosed
                return .fireInputClosed
            }
            state = .closing
            return .sendCloseNotifyAndClose(nil)
        case .outputClosed:
            // Both directions are now finished.
            state = .closing
            return .finishAfterOutputShutdown(fireInputClosed: allowRemoteHalfClosure)
        case .idle, .handshaking, .inputClosed, .closing, .closed:
            return .none
        }
    }

    /// Decrypting (or encrypting) failed after the handshake.
    mutating func connectionFailed(_ error: TLSError) -> Action {
        switch state {
        case .active, .inputClosed, .outputClosed:
            state = .closed
            return .failAndClose(error, deferredOutputClose: nil)
        case .idle(let pre), .handshaking(let pre):
            state = .closed
            return .failAndClose(error, deferredOutputClose: pre.outputClose)
        case .closing, .closed:
            return .none
        }
    }

    // MARK: - Outbound

    mutating func write() -> Action {
        switch state {
        case .idle, .handshaking, .active, .inputClosed:
            return .queueWrite
        case .outputClosed:
            return .refuseWrite(.outputClosed)
        case .closing, .closed:
            return .refuseWrite(.channelClosed)
        }
    }

    mutating func flush() -> Action {
        switch state {
        case .idle, .handshaking:
            return .holdFlush
        case .active, .inputClosed:
            return .encryptAndFlush
        case .outputClosed, .closing, .closed:
            return .none
        }
    }

    mutating func closeRequested(mode: CloseMode, promise: EventLoopPromise<Void>?) -> Action {
        switch mode {
        case .input:
            return .forwardClose(.input, promise)
        case .all:
            switch state {
            case .idle(let pre), .handshaking(let pre):
                state = .closing
                return .close(promise, deferredOutputClose: pre.outputClose)
            case .active, .inputClosed:
                state = .closing
                return .sendCloseNotifyAndClose(promise)
            case .outputClosed:
                state = .closing
                return .close(promise, deferredOutputClose: nil)
            case .closing, .closed:
                return .forwardClose(.all, promise)
            }
        case .output:
            switch state {
            case .idle(var pre):
                guard pre.outputClose == nil else { return .refuseClose(promise, .outputClosed) }
                pre.outputClose = OutputCloseRequest(promise: promise)
                state = .idle(pre)
                return .none
            case .handshaking(var pre):
                guard pre.outputClose == nil else { return .refuseClose(promise, .outputClosed) }
                pre.outputClose = OutputCloseRequest(promise: promise)
                state = .handshaking(pre)
                return .none
            case .active:
                state = .outputClosed
                return .sendCloseNotifyAndCloseOutput(promise)
            case .inputClosed:
                // The peer finished already: closing our side finishes both.
                state = .closing
                return .sendCloseNotifyAndFinish(promise)
            case .outputClosed:
                return .refuseClose(promise, .outputClosed)
            case .closing, .closed:
                return .refuseClose(promise, .alreadyClosed)
            }
        }
    }
}
