import NIOCore
import NIOHPACK
import NIOHTTP2
import Policy

/// The client's side of one stream: decides its request, answers it or opens a
/// stream to the workload for it, relays frames both ways with back-pressure,
/// and writes the stream's access-log line when it closes.
final class HTTP2RequestStream: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let connection: HTTP2ProxyConnection
    private var context: ChannelHandlerContext?
    private var exchange = HTTP2StreamExchange()
    private var workload: HTTP2WorkloadStream?
    private var entry: AccessLogEntry?
    /// When the request's HEADERS arrived (the stream channel is made for them).
    private let started = NIODeadline.now()
    /// Why the stream failed, when the agent knows better than a reset code.
    private var failure: String?
    private var readPending = false
    private var counted = false
    /// The last frame written to the client: a NO_ERROR reset waits for it.
    private var lastWrite: EventLoopFuture<Void>?

    init(connection: HTTP2ProxyConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { opened() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        workload = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        opened()
        context.fireChannelActive()
    }

    private func opened() {
        guard !counted else { return }
        counted = true
        connection.streamOpened()
    }

    // MARK: From the client

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        switch payload {
        case .headers(let headers):
            switch exchange.clientSent(headers: true, endStream: headers.endStream) {
            case .inspect:
                inspect(headers.headers, endStream: headers.endStream, context: context)
            case .forward:
                // Trailers.
                workload?.send(.headers(.init(headers: headers.headers, endStream: headers.endStream)))
            case .drop:
                break
            case .refuse:
                resetClient(.protocolError)
            }
        case .data(let data):
            let count = data.data.readableBytes
            connection.received.add(count)
            switch exchange.clientSent(headers: false, endStream: data.endStream) {
            case .forward:
                entry?.bytesReceived += UInt64(count)
                workload?.send(.data(.init(data: data.data, endStream: data.endStream)))
            case .drop:
                break
            case .inspect, .refuse:
                resetClient(.protocolError)
            }
        case .rstStream(let code):
            apply(exchange.clientReset(code))
        default:
            // WINDOW_UPDATE, PRIORITY: the connection's business, not the stream's.
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        workload?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if exchange.request == .forwarded, exchange.reset == nil, !(workload?.isWritable ?? false) {
            readPending = true
        } else {
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed {
            // The stream closed with a reset: the client's (also seen as a
            // frame, first), ours, or NIOHTTP2's for a failure reported before.
            if failure == nil { apply(exchange.clientReset(closed.errorCode)) }
            return
        }
        // NIOHTTP2 found the rest of the request malformed (its length, say) and reset the stream.
        failure = "stream reset by the agent: malformed HTTP/2 request (\(String(describing: type(of: error))))"
        HTTPInspectionMetrics.malformed.increment()
    }

    func channelInactive(context: ChannelHandlerContext) {
        apply(exchange.clientClosed())
        logFinished()
        if counted {
            counted = false
            connection.streamClosed()
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { workload?.clientBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    private func inspect(_ block: HPACKHeaders, endStream: Bool, context: ChannelHandlerContext) {
        let request: HTTP2Request
        switch HTTP2Request.parse(block, limit: connection.limit) {
        case .failure(let refusal):
            entry = connection.inspector.refusedEntry(refusal.reason, method: block.first(name: ":method").map { String($0.prefix(64)) })
            answer(LocalResponse(status: refusal.responseStatus, body: "\(refusal.reason)\n", close: false))
            return
        case .success(let parsed):
            request = parsed
        }
        switch connection.inspector.inspect(RequestHead(request.head), keepAlive: true) {
        case .respond(let response, let entry):
            self.entry = entry
            answer(response)
        case .forward(let forwarding, let entry):
            self.entry = entry
            exchange.forwarded()
            guard let workload = connection.openWorkloadStream(for: self) else {
                // It never reached the workload: the client may safely retry elsewhere.
                failure = "stream refused: the workload's connection is closing"
                apply(exchange.workloadReset(.refusedStream))
                return
            }
            self.workload = workload
            workload.send(.headers(.init(headers: request.workloadHeaders(for: forwarding), endStream: endStream)))
        }
    }

    // MARK: From the workload

    func workloadSent(_ payload: HTTP2Frame.FramePayload) {
        switch payload {
        case .headers(let headers):
            let status = headers.headers.first(name: ":status").flatMap { Int($0) }
            guard exchange.workloadSent(status: status, endStream: headers.endStream) else { return }
            write(.headers(.init(headers: headers.headers, endStream: headers.endStream)))
        case .data(let data):
            guard exchange.workloadSent(status: nil, endStream: data.endStream) else { return }
            let count = data.data.readableBytes
            connection.sent.add(count)
            entry?.bytesSent += UInt64(count)
            write(.data(.init(data: data.data, endStream: data.endStream)))
        case .rstStream(let code):
            apply(exchange.workloadReset(code))
        default:
            break
        }
    }

    func workloadFlushed() {
        context?.flush()
    }

    func workloadClosed(failure: String?) {
        let action = exchange.workloadClosed()
        if action == .answerBadGateway || action == .resetClient(.internalError) {
            self.failure = failure ?? "the workload closed the stream before it answered"
        }
        apply(action)
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func workloadBecameWritable() {
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    // MARK: Acting

    private func apply(_ action: HTTP2StreamExchange.Action) {
        switch action {
        case .none:
            break
        case .resetWorkload(let code):
            workload?.reset(code)
        case .resetClient(let code):
            resetClient(code)
        case .answerBadGateway:
            let reason = failure ?? "the workload closed the stream before it answered"
            answer(LocalResponse(status: .badGateway, body: "\(reason)\n", close: false))
        }
    }

    /// Answers the stream on the workload's behalf (or instead of it).
    private func answer(_ response: LocalResponse) {
        guard let context else { return }
        exchange.answered(response)
        let (headers, body) = HTTP2Inspection.localResponse(response)
        connection.sent.add(body.readableBytes)
        write(.headers(.init(headers: headers)))
        let written = write(.data(.init(data: .byteBuffer(body), endStream: true)))
        context.flush()
        written.assumeIsolated().whenSuccess { [self] in
            apply(exchange.answerWritten())
        }
    }

    @discardableResult
    private func write(_ payload: HTTP2Frame.FramePayload) -> EventLoopFuture<Void> {
        guard let context else {
            return connection.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(payload), promise: promise)
        lastWrite = promise.futureResult
        return promise.futureResult
    }

    private func resetClient(_ code: HTTP2ErrorCode) {
        guard let context else { return }
        resetStream(context, code, after: lastWrite)
    }

    private func logFinished() {
        guard var entry else { return }
        self.entry = nil
        entry.status = exchange.status
        entry.durationMilliseconds = milliseconds(since: started)
        // A refused request keeps the reason it was refused for.
        if entry.action == .allow && (exchange.request == .forwarded || failure != nil) {
            if let failure {
                entry.reason = failure
            } else if let reset = exchange.reset, !exchange.completed {
                entry.reason = "stream reset by the \(reset.by.rawValue) (\(HTTP2Inspection.name(of: reset.code)))"
            }
        }
        connection.report(entry)
    }
}

/// Resets a stream. A NO_ERROR reset ("nothing more is needed from you") waits
/// for what was written before it: sent at once, it would discard it.
func resetStream(_ context: ChannelHandlerContext, _ code: HTTP2ErrorCode, after lastWrite: EventLoopFuture<Void>?) {
    let send = {
        context.writeAndFlush(NIOAny(HTTP2Frame.FramePayload.rstStream(code)), promise: nil)
    }
    if code == .noError, let lastWrite {
        context.flush()
        lastWrite.assumeIsolated().whenComplete { _ in send() }
    } else {
        send()
    }
}
