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
    /// Output is being ended; the workload's side closing is expected now.
    private var finishing = false
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
            guard state.acceptsRequests else { return }
            switch inspector.inspect(head) {
            case .forward(let forwarded, let entry):
                state.forwarded(entry)
                relay?.send(.head(forwarded))
            case .respond(let response, let entry):
                state.answeredLocally(response, entry)
                writeLocalResponses()
            }
        case .body(let buffer):
            received.add(buffer.readableBytes)
            if state.requestBody == .forwarding {
                state.requestBodyBytes(buffer.readableBytes)
                relay?.send(.body(.byteBuffer(buffer)))
            }
        case .end(let trailers):
            if state.requestBody == .forwarding {
                relay?.send(.end(trailers))
            }
            state.requestEnded()
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
            state.clientFinished()
            finishIfDone()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is HTTPParserError || HTTPHeadSizeLimit.isExceeded(by: error) || error is ByteToMessageDecoderError else {
            context.close(promise: nil)
            return
        }
        guard state.acceptsRequests else { return }
        let refusal = RequestRefusal(decoderError: error, limit: limit)
        HTTPInspectionMetrics.malformed.increment()
        state.malformed(LocalResponse(status: refusal.responseStatus, body: "\(refusal.reason)\n", close: true), inspector.refusedEntry(refusal.reason))
        writeLocalResponses()
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

    /// Writes the answers the agent owes, as long as they are next in line.
    private func writeLocalResponses() {
        guard let context else { return }
        var wrote = false
        while let (response, _) = state.nextLocal {
            wrote = true
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/plain")
            headers.add(name: "content-length", value: String(response.body.utf8.count))
            if response.close { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil)
            writeEnd(nil, context: context)
            sent.add(response.body.utf8.count)
            if let entry = state.completeTurn() { report(entry) }
        }
        // Upstream responses are flushed when the read that brought them
        // completes; a flush per response would cost a TLS record and a write each.
        if wrote { context.flush() }
        finishIfDone()
        resumeReading()
    }

    func upstreamResponse(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        switch part {
        case .head(let head):
            // An interim response (100 Continue) is passed on; the final one follows.
            if head.status.code >= 100 && head.status.code < 200 {
                if head.status == .switchingProtocols {
                    // The request carried no upgrade the gate allows; nothing sane follows.
                    context.close(promise: nil)
                    return
                }
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                return
            }
            state.record(status: Int(head.status.code))
            context.write(wrapOutboundOut(.head(head)), promise: nil)
        case .body(let buffer):
            sent.add(buffer.readableBytes)
            state.record(status: 0, bodyBytes: buffer.readableBytes)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end(let trailers):
            writeEnd(trailers, context: context)
            if let entry = state.completeTurn() { report(entry) }
            writeLocalResponses()
        }
    }

    func upstreamFlush() {
        context?.flush()
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

    /// The workload closed its connection: whatever was answered is delivered,
    /// then the client's connection ends too. A request still waiting for its
    /// answer gets none; its connection is closed outright.
    func upstreamClosed() {
        guard let context, !finishing else { return }
        guard state.awaitedUpstream == nil else {
            HTTPInspectionMetrics.upstreamReset.increment()
            context.close(promise: nil)
            return
        }
        afterWrites(context) {
            context.close(promise: nil)
        }
    }

    /// Ends the client's side once everything owed is written: output is shut
    /// (FIN, or END_STREAM on a tunnel stream) so the answer is delivered, not
    /// cut off by a reset; a client that does not close its side in
    /// `lingerTime` is closed outright.
    private func finishIfDone() {
        guard let context, state.finished, !finishing else { return }
        finishing = true
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
