import LinuxNet
import NIOCore
import Policy

/// The client side of an inspected connection: reads requests from the
/// client's bytes (`HTTP1RequestReader`), has each one decided, passes allowed
/// ones to `HTTPUpstreamRelay` as the bytes they came as and answers the
/// others, and writes the workload's responses back in order, as received.
final class HTTPRequestGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    private let inspector: HTTPRequestInspector
    private let accessLog: AccessLogSink
    var relay: HTTPUpstreamRelay?
    private var context: ChannelHandlerContext?
    private var reader: HTTP1RequestReader
    /// The start of a head or a line that has not all arrived.
    private var unread: ByteBuffer?
    private var state = HTTPExchangeState()
    private var readPending = false
    private var requestCounters = ConnectionRequestCounters()
    /// The connection's byte counts: what came from the client, what went back.
    private let received: ByteCounter
    private let sent: ByteCounter

    init(inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, received: ByteCounter, sent: ByteCounter) {
        self.inspector = inspector
        self.accessLog = accessLog
        self.received = received
        self.sent = sent
        reader = HTTP1RequestReader(limit: limit)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        relay = nil
    }

    // MARK: Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if var held = unread {
            unread = nil
            held.writeBuffer(&buffer)
            buffer = held
        }
        readRequests(from: &buffer)
        if buffer.readableBytes > 0, !state.closing { unread = buffer }
    }

    private func readRequests(from buffer: inout ByteBuffer) {
        while !state.closing {
            let part: HTTP1RequestReader.Part?
            do {
                part = try reader.read(&buffer)
            } catch {
                return refuse(error)
            }
            switch part {
            case nil:
                return
            case .head(let request):
                let outcome = inspector.inspect(request.head, keepAlive: request.isKeepAlive)
                let action = state.requestHead(outcome)
                if action == .forward, case .forward(let forwarding, _) = outcome {
                    relay?.send(request.forwarded(forwarding), answersHEAD: request.head.method == "HEAD")
                } else {
                    perform(action)
                }
            case .body(.payload(let bytes)):
                received.add(bytes.readableBytes)
                if state.requestBodyPart(bytes: bytes.readableBytes) == .forward { relay?.send(bytes) }
            case .body(.framing(let bytes)):
                if state.requestBody == .forwarding { relay?.send(bytes) }
            case .body(.end):
                _ = state.requestEnded()
            }
        }
    }

    /// The reader refused the client's bytes: framing is lost, so this is the
    /// last answer the connection gets.
    private func refuse(_ refusal: RequestRefusal) {
        unread = nil
        let action = state.malformed(
            LocalResponse(status: refusal.responseStatus, body: "\(refusal.reason)\n", close: true), inspector.refusedEntry(refusal.reason))
        if action != .none { HTTPInspectionMetrics.malformed.increment() }
        perform(action)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        relay?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if state.mayRead && (relay?.isWritable ?? false) {
            context.read()
        } else {
            readPending = true
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            perform(state.clientInputEnded())
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        relay?.clientClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { relay?.clientBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Responses

    func upstreamResponse(_ part: HTTP1ResponseReader.Part) {
        guard let context else { return }
        switch part {
        case .head(let status, let bytes):
            let action = state.responseHead(status: status)
            guard action == .forward else { return perform(action) }
            context.write(wrapOutboundOut(bytes), promise: nil)
        case .body(.payload(let bytes)):
            sent.add(bytes.readableBytes)
            _ = state.responseBodyPart(bytes: bytes.readableBytes)
            context.write(wrapOutboundOut(bytes), promise: nil)
        case .body(.framing(let bytes)):
            context.write(wrapOutboundOut(bytes), promise: nil)
        case .body(.end):
            perform(state.responseEnded())
        }
    }

    func upstreamFlush() {
        context?.flush()
    }

    func upstreamClosed() {
        let action = state.upstreamClosed()
        if action == .abort { HTTPInspectionMetrics.upstreamReset.increment() }
        perform(action)
    }

    /// Carries out what the exchange state decided.
    private func perform(_ action: HTTPExchangeState.Action) {
        guard let context else { return }
        switch action {
        case .none, .forward:
            break
        case .answer(let owed):
            write(owed, context: context)
        case .completed(let entry, let owed):
            report(entry)
            write(owed, context: context)
        case .finish:
            finish(context)
        case .closeAfterWrites:
            context.whenWritesDrained { _ in context.close(promise: nil) }
        case .abort:
            context.close(promise: nil)
        }
    }

    /// Writes the answers the agent owes, logs each, and finishes the
    /// connection when that was the last thing owed.
    private func write(_ owed: HTTPExchangeState.LocalAnswers, context: ChannelHandlerContext) {
        for answer in owed.answers {
            context.write(wrapOutboundOut(answer.response.encoded()), promise: nil)
            sent.add(answer.response.body.utf8.count)
            report(answer.entry)
        }
        // Upstream responses are flushed when the read that brought them
        // completes; a flush per response would cost a TLS record and a write each.
        if !owed.answers.isEmpty { context.flush() }
        if owed.finish { finish(context) }
        resumeReading()
    }

    /// One line and one count per finished request.
    private func report(_ entry: AccessLogEntry) {
        requestCounters.record(entry)
        accessLog.record(entry)
    }

    /// Ends the client's side once everything owed is written: output is shut
    /// (FIN, or END_STREAM on a tunnel stream) so the answer is delivered, not
    /// cut off by a reset; a client that does not close its side in
    /// `lingerTime` is closed outright.
    private func finish(_ context: ChannelHandlerContext) {
        context.whenWritesDrained { [relay] _ in
            context.close(mode: .output, promise: nil)
            relay?.finish()
            // The channel, not this context: the handler may be gone by then.
            let channel = context.channel
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerTime) {
                channel.close(promise: nil)
            }
        }
    }

    static let lingerTime: TimeAmount = .seconds(5)

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func relayBecameWritable() {
        resumeReading()
    }

    private func resumeReading() {
        if readPending, state.mayRead, relay?.isWritable ?? false {
            readPending = false
            context?.read()
        }
    }
}
