import Metrics
import NIOCore
import NIOHTTP1
import Policy

/// Decides one inbound HTTP request: framing and target checks, the request's
/// token, then L7 policy. Pure apart from the policy snapshot it reads.
struct HTTPRequestInspector: Sendable {
    enum Outcome {
        /// Send `head` (the target normalized, consumed tokens removed) upstream.
        case forward(HTTPRequestHead, AccessLogEntry)
        /// Answer locally; `close` when the connection cannot carry another request.
        case respond(LocalResponse, AccessLogEntry)
    }

    let workload: Workload
    let connection: ConnectionAttributes
    let authorizer: InboundAuthorizer
    /// The connection's log entry, which each request's entry starts from.
    let connectionEntry: AccessLogEntry

    /// A new request's log line, starting from the connection's.
    func requestEntry() -> AccessLogEntry {
        var entry = connectionEntry
        entry.time = wallClock()
        entry.protocol = "http"
        entry.bytesSent = 0
        entry.bytesReceived = 0
        return entry
    }

    /// The log line of a request refused before policy saw it: malformed or
    /// ambiguous, so that no rule decided.
    func refusedEntry(_ reason: String, method: String? = nil) -> AccessLogEntry {
        var entry = requestEntry()
        entry.method = method
        entry.action = .deny
        entry.policy = nil
        entry.reason = "refused request: \(reason)"
        return entry
    }

    func inspect(_ head: HTTPRequestHead) -> Outcome {
        let validated: ValidatedRequestHead
        switch HTTPRequestValidation.validate(head) {
        case .failure(let refusal):
            return .respond(
                LocalResponse(status: refusal.status, body: "\(refusal.reason)\n", close: true), refusedEntry(refusal.reason, method: head.method.rawValue))
        case .success(let value):
            validated = value
        }
        var entry = requestEntry()
        entry.method = head.method.rawValue
        entry.path = validated.target.path
        let headers = head.headers.map { HTTPField(name: $0.name, value: $0.value) }
        // One snapshot decides the whole request: token rules and policy of one generation.
        let policy = authorizer.snapshot.policy(for: workload)
        var forwarded = validated.head
        var identity: RequestIdentity?
        switch policy.authenticator.authenticate(headers: headers, query: validated.target.query.map { Substring($0) }, now: wallClock()) {
        case .noToken:
            break
        case .authenticated(let verified):
            identity = verified
            entry.requestPrincipal = verified.principal
            for name in policy.authenticator.tokenHeadersToRemove(from: headers, issuer: verified.issuer) {
                forwarded.headers.remove(name: name)
            }
        case .rejected(let reason):
            authorizer.recordUnauthenticated()
            entry.action = .deny
            entry.policy = nil
            entry.reason = "request authentication failed: \(reason)"
            return .respond(LocalResponse(status: .unauthorized, body: "Jwt verification fails", close: !head.isKeepAlive), entry)
        }
        let attributes = HTTPRequestAttributes(
            method: head.method.rawValue, path: validated.target.path, host: validated.host ?? "", headers: headers, identity: identity)
        let decision = authorizer.authorize(connection, request: attributes, under: policy)
        entry.record(decision)
        guard decision.outcome == .allow else {
            return .respond(LocalResponse(status: .forbidden, body: "RBAC: access denied", close: !head.isKeepAlive), entry)
        }
        return .forward(forwarded, entry)
    }
}

/// A response the agent writes itself (403, 400, …).
struct LocalResponse: Equatable {
    var status: HTTPResponseStatus
    var body: String
    var close: Bool
}

/// Where an inspected connection stands: requests that went upstream wait for
/// their responses in order, and a locally answered request takes its turn in
/// that order, so pipelined responses never overtake each other.
struct HTTPExchangeState {
    enum Turn {
        case upstream(AccessLogEntry, started: NIODeadline)
        case local(LocalResponse, AccessLogEntry)
    }

    enum RequestBody {
        /// Between requests.
        case none
        case forwarding
        /// The request was answered locally; its body is read and dropped.
        case discarding
    }

    private(set) var turns: [Turn] = []
    private(set) var requestBody = RequestBody.none
    /// No further request is read: one was refused with the connection's close.
    private(set) var closing = false
    private(set) var clientEnded = false

    /// The most requests one connection may have waiting for responses.
    static let maximumPipelined = 64

    var mayRead: Bool { turns.count < Self.maximumPipelined }

    /// Whether a request head should be looked at (not after a closing refusal).
    var acceptsRequests: Bool { !closing }

    mutating func forwarded(_ entry: AccessLogEntry) {
        turns.append(.upstream(entry, started: .now()))
        requestBody = .forwarding
    }

    mutating func answeredLocally(_ response: LocalResponse, _ entry: AccessLogEntry) {
        turns.append(.local(response, entry))
        requestBody = .discarding
        if response.close { closing = true }
    }

    /// A refusal found in the request's bytes, not its head: framing is lost.
    mutating func malformed(_ response: LocalResponse, _ entry: AccessLogEntry) {
        turns.append(.local(response, entry))
        requestBody = .none
        closing = true
    }

    mutating func requestEnded() {
        requestBody = .none
    }

    mutating func clientFinished() {
        clientEnded = true
    }

    /// The response at the head of the queue, when it is one the agent writes.
    var nextLocal: (LocalResponse, AccessLogEntry)? {
        guard case .local(let response, let entry)? = turns.first else { return nil }
        return (response, entry)
    }

    /// The request whose response is coming from upstream.
    var awaitedUpstream: AccessLogEntry? {
        guard case .upstream(let entry, _)? = turns.first else { return nil }
        return entry
    }

    mutating func record(status: Int, bodyBytes: Int = 0) {
        guard case .upstream(var entry, let started)? = turns.first else { return }
        if status > 0 { entry.status = status }
        entry.bytesSent += UInt64(bodyBytes)
        turns[0] = .upstream(entry, started: started)
    }

    mutating func requestBodyBytes(_ count: Int) {
        guard let index = turns.indices.last, case .upstream(var entry, let started) = turns[index] else { return }
        entry.bytesReceived += UInt64(count)
        turns[index] = .upstream(entry, started: started)
    }

    /// The first turn is done; returns its finished log entry.
    mutating func completeTurn() -> AccessLogEntry? {
        guard !turns.isEmpty else { return nil }
        switch turns.removeFirst() {
        case .upstream(var entry, let started):
            entry.durationMilliseconds = milliseconds(since: started)
            return entry
        case .local(let response, var entry):
            entry.status = Int(response.status.code)
            return entry
        }
    }

    /// Nothing more will be asked or answered: the client ended and every
    /// turn is done, or a closing refusal has been written.
    var finished: Bool { turns.isEmpty && (clientEnded || closing) }
}

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
    fileprivate var relay: HTTPUpstreamRelay?
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
        let refusal = HTTPRequestRefusal(decoderError: error, limit: limit)
        HTTPInspectionMetrics.malformed.increment()
        state.malformed(LocalResponse(status: refusal.status, body: "\(refusal.reason)\n", close: true), inspector.refusedEntry(refusal.reason))
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

    fileprivate func upstreamResponse(_ part: HTTPClientResponsePart) {
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

    fileprivate func upstreamFlush() {
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
    fileprivate func upstreamClosed() {
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

    fileprivate var isWritable: Bool { context?.channel.isWritable ?? false }

    fileprivate func relayBecameWritable() {
        resumeReading()
    }

    private func resumeReading() {
        if readPending, state.mayRead, relay?.isWritable ?? false {
            readPending = false
            context?.read()
        }
    }
}

/// The workload side of an inspected connection: sends the requests the gate
/// allowed, and hands every response part back to it.
final class HTTPUpstreamRelay: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Never
    typealias OutboundOut = HTTPClientRequestPart

    fileprivate var gate: HTTPRequestGate?
    private var context: ChannelHandlerContext?
    private var readPending = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        gate = nil
    }

    static func pair(
        inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, received: ByteCounter, sent: ByteCounter
    ) -> (HTTPRequestGate, HTTPUpstreamRelay) {
        let gate = HTTPRequestGate(inspector: inspector, accessLog: accessLog, limit: limit, received: received, sent: sent)
        let relay = HTTPUpstreamRelay()
        gate.relay = relay
        relay.gate = gate
        return (gate, relay)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        gate?.upstreamResponse(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        gate?.upstreamFlush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if gate?.isWritable ?? false {
            context.read()
        } else {
            readPending = true
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            gate?.upstreamClosed()
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        gate?.upstreamClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A malformed response or a reset: the exchange cannot continue.
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { gate?.relayBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    fileprivate func send(_ part: HTTPClientRequestPart) {
        context?.write(wrapOutboundOut(part), promise: nil)
    }

    fileprivate func flush() {
        context?.flush()
    }

    fileprivate var isWritable: Bool { context?.channel.isWritable ?? false }

    fileprivate func clientBecameWritable() {
        if readPending {
            readPending = false
            context?.read()
        }
    }

    fileprivate func clientClosed() {
        context?.close(promise: nil)
    }

    /// Every exchange is done and the client has gone: close the workload's side.
    fileprivate func finish() {
        context?.close(promise: nil)
    }
}

enum HTTPInspectionMetrics {
    static let malformed = Counter(label: "mesh_agent_http_requests_refused_total", dimensions: [("reason", "malformed")])
    static let upstreamReset = Counter(label: "mesh_agent_http_upstream_resets_total")

    static func labels(_ entry: AccessLogEntry) -> [(String, String)] {
        var labels = IstioTCPMetrics.labels(entry)
        for index in labels.indices where labels[index].0 == "request_protocol" {
            labels[index].1 = "http"
        }
        return labels
    }

    static func counter(_ labels: [(String, String)], status: Int) -> Counter {
        Counter(label: "istio_requests_total", dimensions: labels + [("response_code", String(status))])
    }
}

/// `istio_requests_total` for one connection: its labels are fixed but for the
/// status, so each status's counter is looked up once, not per request.
struct ConnectionRequestCounters {
    private var labels: [(String, String)]?
    private var counters: [Int: Counter] = [:]

    mutating func record(_ entry: AccessLogEntry) {
        let status = entry.status ?? 0
        if let counter = counters[status] {
            counter.increment()
            return
        }
        let labels = self.labels ?? HTTPInspectionMetrics.labels(entry)
        self.labels = labels
        let counter = HTTPInspectionMetrics.counter(labels, status: status)
        counters[status] = counter
        counter.increment()
    }
}
