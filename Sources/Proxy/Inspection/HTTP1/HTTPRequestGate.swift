import LinuxNet
import NIOCore
import NIOHTTP1
import Policy

/// The client side of an inspected connection: decodes requests, has each one
/// decided, sends allowed ones to `HTTPUpstreamRelay` and answers the others,
/// and writes the workload's responses back in order.
final class HTTPRequestGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = Never
    typealias OutboundOut = HTTPServerResponsePart

    private let inspector: HTTPRequestInspector
    private let accessLog: AccessLogSink
    private let limit: HTTPHeadSizeLimit
    var relay: HTTPUpstreamRelay?
    private var context: ChannelHandlerContext?
    private var state = HTTPExchangeState()
    private var readPending = false
    /// The last response end written: once it completes, everything before it
    /// has gone out too, and output may be shut without dropping anything.
    private var lastEnd: EventLoopFuture<Void>?
    private var requestCounters = ConnectionRequestCounters()
    /// The connection's byte counts: what came from the client, what went back.
    private let received: ByteCounter
    private let sent: ByteCounter

    init(inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, received: ByteCounter, sent: ByteCounter) {
        self.inspector = inspector
        self.accessLog = accessLog
        self.limit = limit
        self.received = received
        self.sent = sent
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
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard !state.closing else { return }
            let outcome = inspector.inspect(head)
            let action = state.requestHead(outcome)
            if action == .forward, case .forward(let forwarded, _) = outcome {
                relay?.send(.head(forwarded))
            } else {
                perform(action)
            }
        case .body(let buffer):
            received.add(buffer.readableBytes)
            if state.requestBodyPart(bytes: buffer.readableBytes) == .forward {
                relay?.send(.body(.byteBuffer(buffer)))
            }
        case .end(let trailers):
            if state.requestEnded() == .forward {
                relay?.send(.end(trailers))
            }
        }
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
        guard error is HTTPParserError || HTTPHeadSizeLimit.isExceeded(by: error) || error is ByteToMessageDecoderError else {
            context.close(promise: nil)
            return
        }
        let refusal = RequestRefusal(decoderError: error, limit: limit)
        let action = state.malformed(LocalResponse(status: refusal.responseStatus, body: "\(refusal.reason)\n", close: true), inspector.refusedEntry(refusal.reason))
        if action != .none { HTTPInspectionMetrics.malformed.increment() }
        perform(action)
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

    func upstreamResponse(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        switch part {
        case .head(let head):
            let action = state.responseHead(status: Int(head.status.code))
            guard action == .forward else { return perform(action) }
            context.write(wrapOutboundOut(.head(head)), promise: nil)
        case .body(let buffer):
            sent.add(buffer.readableBytes)
            _ = state.responseBodyPart(bytes: buffer.readableBytes)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end(let trailers):
            writeEnd(trailers, context: context)
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
            afterWrites(context) { context.close(promise: nil) }
        case .abort:
            context.close(promise: nil)
        }
    }

    /// Writes the answers the agent owes, logs each, and finishes the
    /// connection when that was the last thing owed.
    private func write(_ owed: HTTPExchangeState.LocalAnswers, context: ChannelHandlerContext) {
        for answer in owed.answers {
            let response = answer.response
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/plain")
            headers.add(name: "content-length", value: String(response.body.utf8.count))
            if response.close { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil)
            writeEnd(nil, context: context)
            sent.add(response.body.utf8.count)
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

    private func writeEnd(_ trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(.end(trailers)), promise: promise)
        lastEnd = promise.futureResult
    }

    /// Runs `body` once everything written so far has gone out.
    private func afterWrites(_ context: ChannelHandlerContext, _ body: @escaping () -> Void) {
        context.flush()
        guard let lastEnd else {
            body()
            return
        }
        lastEnd.assumeIsolated().whenComplete { _ in body() }
    }

    /// Ends the client's side once everything owed is written: output is shut
    /// (FIN, or END_STREAM on a tunnel stream) so the answer is delivered, not
    /// cut off by a reset; a client that does not close its side in
    /// `lingerTime` is closed outright.
    private func finish(_ context: ChannelHandlerContext) {
        afterWrites(context) { [relay] in
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
