import NIOCore
import NIOTLS

/// Fired up the pipeline when the handshake completes, just before
/// `TLSUserEvent.handshakeCompleted`: who the verifier said the peer is.
public struct TLSPeerIdentityEvent: Sendable, Hashable {
    public let peerIdentity: SpiffeID
    public let negotiatedProtocol: String?

    public init(peerIdentity: SpiffeID, negotiatedProtocol: String?) {
        self.peerIdentity = peerIdentity
        self.negotiatedProtocol = negotiatedProtocol
    }
}

/// Mutual TLS 1.3 over a NIO channel: ciphertext below, plaintext `ByteBuffer`s
/// above. The role (client or server) and everything else about the session comes
/// from the `TLSContext`.
///
/// - The handshake starts when the channel becomes active (or at once when added to
///   an active channel) and must finish within the context's handshake timeout.
///   Writes made meanwhile are held and sent when it completes. On completion it
///   fires `TLSPeerIdentityEvent` and then `TLSUserEvent.handshakeCompleted`.
///   (In TLS 1.3 a client completes before the server has judged the client's
///   certificate; a refusal then arrives as `TLSError.handshakeFailed` on read.)
/// - Each flush encrypts every flushed write and sends the ciphertext as one write.
/// - `close(mode: .output)` sends close_notify and shuts TCP output, reading goes
///   on; the peer's close_notify is passed up as `ChannelEvent.inputClosed` when the
///   channel allows remote half-closure, otherwise it closes the channel.
/// - Failures are fired as `TLSError` and close the channel; TCP ending without
///   the peer's close_notify is `TLSError.unexpectedEOF`.
///
/// Everything runs on the channel's event loop.
public final class TLSHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let tlsContext: TLSContext
    private let serverName: String?
    private var connection: TLSConnection?
    private var stateMachine = TLSStateMachine()
    private var pendingWrites = MarkedCircularBuffer<PendingWrite>(initialCapacity: 4)
    private var handshakeTimer: Scheduled<Void>?
    /// Completes when TCP output has been shut down after our close_notify.
    private var outputShutdown: EventLoopFuture<Void>?
    /// A read was asked for and no plaintext has been passed up since.
    private var readPending = false

    /// The peer's SPIFFE ID, as the verifier accepted it; nil until the handshake completes.
    public private(set) var peerIdentity: SpiffeID?
    /// The ALPN protocol agreed on; nil until the handshake completes (or if none was configured).
    public private(set) var negotiatedProtocol: String?

    public var role: TLSConfiguration.Role { tlsContext.role }

    private struct PendingWrite {
        var data: ByteBuffer
        var promise: EventLoopPromise<Void>?
    }

    /// `serverName` is sent as SNI by a client; servers ignore it.
    public init(context: TLSContext, serverName: String? = nil) {
        self.tlsContext = context
        self.serverName = serverName
    }

    // MARK: - Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        do {
            connection = try TLSConnection(context: tlsContext, serverName: serverName, allocator: context.channel.allocator)
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        if context.channel.isActive {
            perform(stateMachine.channelActive(), context: context)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        cancelHandshakeTimer()
        failPendingWrites(ChannelError.ioOnClosedChannel)
        connection = nil
    }

    public func channelActive(context: ChannelHandlerContext) {
        perform(stateMachine.channelActive(), context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        perform(stateMachine.channelInactive(), context: context)
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // TCP FIN. Ours to interpret: after the peer's close_notify it is
            // expected (and was passed up already); before it, truncation.
            perform(stateMachine.tcpInputClosed(), context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let action = stateMachine.bytesReceived()
        switch action {
        case .continueHandshake, .decrypt:
            connection?.receive(unwrapInboundIn(data))
        default:
            break
        }
        perform(action, context: context)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        // The handshake is ours to drive, whatever the application asked for (it
        // may have turned autoRead off). After it, ciphertext that made no
        // plaintext (a partial record) does not satisfy a read the application
        // asked for: ask for more.
        if stateMachine.isHandshaking || (readPending && isReading) {
            context.read()
        }
        context.fireChannelReadComplete()
    }

    public func read(context: ChannelHandlerContext) {
        readPending = true
        context.read()
    }

    // MARK: - Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch stateMachine.write() {
        case .queueWrite:
            pendingWrites.append(PendingWrite(data: unwrapOutboundIn(data), promise: promise))
        case .refuseWrite(let refusal):
            promise?.fail(refusal.error)
        default:
            preconditionFailure("write() returned an action it never returns")
        }
    }

    public func flush(context: ChannelHandlerContext) {
        pendingWrites.mark()
        perform(stateMachine.flush(), context: context)
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        perform(stateMachine.closeRequested(mode: mode, promise: promise), context: context)
    }

    // MARK: - Carrying out actions

    private func perform(_ action: TLSStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none, .queueWrite, .holdFlush:
            break

        case .discardInput:
            connection?.discardInbound()

        case .startHandshake:
            let timeout = tlsContext.configuration.handshakeTimeout
            handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                perform(stateMachine.handshakeTimedOut(), context: context)
            }
            driveHandshake(context: context)
            context.read()

        case .continueHandshake:
            driveHandshake(context: context)

        case .decrypt:
            decrypt(context: context)

        case .completeHandshake(let deferredOutputClose):
            completeHandshake(deferredOutputClose: deferredOutputClose, context: context)

        case .failAndClose(let error, let deferredOutputClose):
            cancelHandshakeTimer()
            // An alert OpenSSL wrote for the peer goes out before we close.
            sendPendingCiphertext(context: context)
            connection?.discardInbound()
            failPendingWrites(error)
            deferredOutputClose?.promise?.fail(error)
            context.fireErrorCaught(error)
            context.close(promise: nil)

        case .refuseWrite(let refusal):
            // Only `write()` produces this, and it fails the promise itself.
            assertionFailure("unexpected refuseWrite(\(refusal)) from the state machine")

        case .encryptAndFlush:
            encryptFlushedWrites(context: context)

        case .fireInputClosed:
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)

        case .sendCloseNotifyAndCloseOutput(let promise):
            closeOutput(promise: promise, context: context)

        case .sendCloseNotifyAndFinish(let promise):
            closeOutput(promise: promise, context: context)
            closeWhenOutputIsShut(context: context)

        case .finishAfterOutputShutdown(let fireInputClosed):
            if fireInputClosed {
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
            closeWhenOutputIsShut(context: context)

        case .sendCloseNotifyAndClose(let promise):
            failUnflushedWrites(ChannelError.ioOnClosedChannel)
            sendCloseNotify(context: context)
            context.close(mode: .all, promise: promise)

        case .close(let promise, let deferredOutputClose):
            cancelHandshakeTimer()
            if let deferred = deferredOutputClose?.promise {
                if let promise {
                    promise.futureResult.cascade(to: deferred)
                } else {
                    deferred.fail(ChannelError.alreadyClosed)
                }
            }
            context.close(mode: .all, promise: promise)

        case .forwardClose(let mode, let promise):
            context.close(mode: mode, promise: promise)

        case .refuseClose(let promise, let refusal):
            promise?.fail(refusal.error)

        case .channelClosed(let error, let deferredOutputClose):
            cancelHandshakeTimer()
            connection?.discardInbound()
            if let error {
                context.fireErrorCaught(error)
            }
            failPendingWrites(ChannelError.ioOnClosedChannel)
            deferredOutputClose?.promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    // MARK: - Handshake

    private func driveHandshake(context: ChannelHandlerContext) {
        guard let connection else { return }
        let step: TLSStateMachine.HandshakeStep
        switch connection.doHandshake() {
        case .complete:
            if let problem = connection.checkCompletedHandshake() {
                step = .failed(problem)
            } else {
                step = .complete
            }
        case .wantRead:
            step = .wantRead
        case .failed(let error):
            step = .failed(error)
        }
        if case .failed = step {
            // failAndClose sends the alert.
        } else {
            sendPendingCiphertext(context: context)
        }
        perform(stateMachine.handshakeStepped(step), context: context)
    }

    private func completeHandshake(deferredOutputClose: TLSStateMachine.OutputCloseRequest?, context: ChannelHandlerContext) {
        cancelHandshakeTimer()
        guard let connection, let identity = connection.peerIdentity else { return }
        peerIdentity = identity
        negotiatedProtocol = connection.negotiatedProtocol

        // Writes flushed during the handshake go first, then a deferred close_notify.
        encryptFlushedWrites(context: context)
        if let deferredOutputClose {
            closeOutput(promise: deferredOutputClose.promise, context: context)
        }

        context.fireUserInboundEventTriggered(TLSPeerIdentityEvent(peerIdentity: identity, negotiatedProtocol: negotiatedProtocol))
        context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: negotiatedProtocol))

        // Application data may have come in the same read as the last handshake
        // message (unless the events above closed the channel).
        if isReading {
            decrypt(context: context)
        }
    }

    /// Whether decrypted data is still wanted (the peer has not finished, and we
    /// are not closing or failed).
    private var isReading: Bool {
        switch stateMachine.state {
        case .active, .outputClosed:
            return true
        case .idle, .handshaking, .inputClosed, .closing, .closed:
            return false
        }
    }

    private func cancelHandshakeTimer() {
        handshakeTimer?.cancel()
        handshakeTimer = nil
    }

    // MARK: - Application data

    private func decrypt(context: ChannelHandlerContext) {
        guard let connection, connection.hasBufferedInput else { return }
        // One buffer per read from the network: plaintext is never more than the
        // ciphertext that came in plus a record OpenSSL may hold from before.
        var plaintext = context.channel.allocator.buffer(capacity: connection.inboundBytes + 1024)
        var outcome: TLSConnection.ReadResult
        repeat {
            if plaintext.writableBytes == 0 {
                readPending = false
                context.fireChannelRead(wrapInboundOut(plaintext))
                // The application may have closed the channel in that read.
                guard isReading else { return }
                plaintext = context.channel.allocator.buffer(capacity: TLSConnection.maximumRecordSize)
            }
            outcome = connection.read(into: &plaintext)
        } while outcome == .bytes
        if plaintext.readableBytes > 0 {
            readPending = false
            context.fireChannelRead(wrapInboundOut(plaintext))
        }
        // Post-handshake messages (KeyUpdate) can ask OpenSSL to answer.
        sendPendingCiphertext(context: context)

        switch outcome {
        case .bytes, .wantRead:
            break
        case .closeNotify:
            connection.discardInbound()
            let allowHalfClosure = (try? context.channel.syncOptions?.getOption(ChannelOptions.allowRemoteHalfClosure)) ?? false
            perform(stateMachine.closeNotifyReceived(allowRemoteHalfClosure: allowHalfClosure), context: context)
        case .failed(let error):
            perform(stateMachine.connectionFailed(error), context: context)
        }
    }

    /// Encrypts every flushed write into records and sends the ciphertext as one
    /// write; its promise completes the plaintext writes' promises.
    private func encryptFlushedWrites(context: ChannelHandlerContext) {
        guard let connection, pendingWrites.hasMark else { return }
        let flushed = pendingWrites[pendingWrites.startIndex...pendingWrites.markedElementIndex!]
        let count = flushed.count
        connection.reserveOutbound(plaintextBytes: flushed.reduce(0) { $0 + $1.data.readableBytes })

        var promise: EventLoopPromise<Void>?
        var morePromises: [EventLoopPromise<Void>] = []
        var failure: TLSError?
        while pendingWrites.hasMark {
            let write = pendingWrites.removeFirst()
            if failure == nil, case .failed(let error) = connection.encrypt(write.data, gather: count > 1) {
                failure = error
            }
            if let writePromise = write.promise {
                if failure != nil {
                    writePromise.fail(failure!)
                } else if promise == nil {
                    promise = writePromise
                } else {
                    morePromises.append(writePromise)
                }
            }
        }
        if failure == nil, case .failed(let error) = connection.finishEncrypting() {
            failure = error
        }
        connection.releaseStaging()
        if let failure {
            promise?.fail(failure)
            morePromises.forEach { $0.fail(failure) }
            perform(stateMachine.connectionFailed(failure), context: context)
            return
        }

        if !morePromises.isEmpty, let first = promise {
            let combined = context.eventLoop.makePromise(of: Void.self)
            let others = morePromises
            combined.futureResult.whenComplete { result in
                first.completeWith(result)
                for other in others { other.completeWith(result) }
            }
            promise = combined
        }
        let ciphertext = connection.takeOutbound() ?? context.channel.allocator.buffer(capacity: 0)
        context.write(wrapOutboundOut(ciphertext), promise: promise)
        context.flush()
    }

    // MARK: - Closing

    private func closeOutput(promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        failUnflushedWrites(TLSError.outputClosed)
        sendCloseNotify(context: context)
        // NIO shuts TCP output only after the writes queued before it are written.
        let shutdown = context.eventLoop.makePromise(of: Void.self)
        if let promise {
            shutdown.futureResult.cascade(to: promise)
        }
        outputShutdown = shutdown.futureResult
        context.close(mode: .output, promise: shutdown)
    }

    /// Both directions are finished: close the channel, but not before TCP output
    /// has been shut down, or the writes still queued below us would be dropped.
    private func closeWhenOutputIsShut(context: ChannelHandlerContext) {
        guard let outputShutdown else {
            context.close(promise: nil)
            return
        }
        outputShutdown.assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func sendCloseNotify(context: ChannelHandlerContext) {
        guard let connection else { return }
        if case .failed(let error) = connection.sendCloseNotify() {
            // Nothing more to say to this peer; close reports the rest.
            context.fireErrorCaught(error)
        }
        sendPendingCiphertext(context: context)
    }

    /// Writes and flushes whatever OpenSSL has produced for the peer.
    private func sendPendingCiphertext(context: ChannelHandlerContext) {
        guard let ciphertext = connection?.takeOutbound(), ciphertext.readableBytes > 0 else { return }
        context.write(wrapOutboundOut(ciphertext), promise: nil)
        context.flush()
    }

    private func failPendingWrites(_ error: any Error) {
        while let write = pendingWrites.popFirst() {
            write.promise?.fail(error)
        }
    }

    /// Fails the writes after the last flush (before closing, as NIO does).
    private func failUnflushedWrites(_ error: any Error) {
        var kept = MarkedCircularBuffer<PendingWrite>(initialCapacity: pendingWrites.count)
        while pendingWrites.hasMark {
            kept.append(pendingWrites.removeFirst())
        }
        if !kept.isEmpty { kept.mark() }
        failPendingWrites(error)
        pendingWrites = kept
    }
}

@available(*, unavailable)
extension TLSHandler: Sendable {}

extension TLSStateMachine.Refusal {
    var error: any Error {
        switch self {
        case .outputClosed: return TLSError.outputClosed
        case .channelClosed: return ChannelError.ioOnClosedChannel
        case .alreadyClosed: return ChannelError.alreadyClosed
        }
    }
}
