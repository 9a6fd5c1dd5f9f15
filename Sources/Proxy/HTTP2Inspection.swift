import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Policy

/// HTTP/2 on an inspected connection (gRPC, or any client speaking HTTP/2 with
/// prior knowledge). The client's HTTP/2 connection ends at the agent; each of
/// its streams is decided by the same `HTTPRequestInspector` as an HTTP/1.1
/// request, and the allowed ones continue as streams of one HTTP/2 connection
/// that the agent opens to the workload on the upstream channel.
///
/// Memory stays bounded by flow control, stream by stream: a stream channel that
/// is not read sends no WINDOW_UPDATE, so its peer can have at most one window
/// of DATA waiting in it, and each side reads a stream only while the stream it
/// feeds is below its high-water mark. A stuck stream therefore holds at most one
/// window unread, plus one window and the high-water mark queued towards the
/// slow peer: 320 KiB per direction, 32 MiB for a connection with every stream
/// stuck, whatever the peers do.
enum HTTP2Inspection {
    /// The streams a client may have open at once on one connection.
    static let maximumConcurrentStreams = 100
    /// Each stream's receive window, on both connections.
    static let streamWindow = 128 * 1024
    /// The connection window: NIOHTTP2 opens it again as DATA arrives (the
    /// stream windows are what bound memory), so it is sized for throughput.
    static let connectionWindow = 4 * 1024 * 1024

    /// Puts HTTP/2 on both sides of an inspected connection: a server for the
    /// client, behind the sniffer that found the preface (which then hands it
    /// on), and a client, with prior knowledge, for the workload.
    static func install(
        client: Channel, upstream: Channel, inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit,
        received: ByteCounter, sent: ByteCounter
    ) throws {
        let connection = HTTP2ProxyConnection(
            inspector: inspector, accessLog: accessLog, limit: limit, received: received, sent: sent, eventLoop: client.eventLoop)
        let bound = NIOLoopBound(connection, eventLoop: client.eventLoop)

        // The workload's side first: the client's streams need somewhere to go.
        let upstreamOperations = upstream.pipeline.syncOperations
        try upstreamOperations.addHandler(HTTP2InputChunker())
        var workloadSettings = connectionConfiguration(limit: limit)
        workloadSettings.initialSettings.append(HTTP2Setting(parameter: .enablePush, value: 0))
        let multiplexer = try upstreamOperations.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: workloadSettings, streamConfiguration: streamConfiguration
        ) { stream in
            // Push is off; a stream the workload opens anyway has nowhere to go.
            stream.close()
        }
        let workloadWatcher = HTTP2ConnectionWatcher(side: .workload, connection: connection)
        try upstreamOperations.addHandler(workloadWatcher)
        connection.attachWorkload(multiplexer: multiplexer, watcher: workloadWatcher)

        let clientOperations = client.pipeline.syncOperations
        try clientOperations.addHandler(HTTP2InputChunker())
        _ = try clientOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connectionConfiguration(limit: limit), streamConfiguration: streamConfiguration
        ) { stream in
            // The multiplexer keeps its stream events to itself, so the client's
            // streams are counted here, where they are made: a GOAWAY must name
            // the last of them, or it cancels them.
            if let id = try? stream.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID) {
                bound.value.streamCreated(id)
            }
            return stream.eventLoop.makeCompletedFuture {
                // Reads are gated by the handler (back-pressure), as on a socket.
                try stream.syncOptions?.setOption(.autoRead, value: true)
                try stream.pipeline.syncOperations.addHandler(HTTP2RequestStream(connection: bound.value))
            }
        }
        let clientWatcher = HTTP2ConnectionWatcher(side: .client, connection: connection)
        try clientOperations.addHandler(clientWatcher)
        connection.attachClient(watcher: clientWatcher)
    }

    static func connectionConfiguration(limit: HTTPHeadSizeLimit) -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maximumConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
            // HPACK counts 32 bytes per field on top of its name and value.
            HTTP2Setting(parameter: .maxHeaderListSize, value: limit.maximumBytes + 32 * limit.maximumFields),
        ]
        configuration.targetWindowSize = connectionWindow
        return configuration
    }

    static var streamConfiguration: NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = streamWindow
        // What a stream queues for a peer whose window is shut before the other
        // side stops being read: little, so that the windows are what bound it.
        configuration.outboundBufferSizeHighWatermark = 64 * 1024
        configuration.outboundBufferSizeLowWatermark = 16 * 1024
        return configuration
    }

    /// The answer the agent gives a stream itself (403, 400, 502): plain text,
    /// which gRPC clients turn into a status from the HTTP one (403 becomes
    /// PERMISSION_DENIED).
    static func localResponse(_ response: LocalResponse) -> (HPACKHeaders, ByteBuffer) {
        let body = ByteBuffer(string: response.body)
        let headers: HPACKHeaders = [
            ":status": String(response.status.code),
            "content-type": "text/plain",
            "content-length": String(body.readableBytes),
        ]
        return (headers, body)
    }

    /// RFC 9113's name for an error code, for logs.
    static func name(of code: HTTP2ErrorCode) -> String {
        switch code {
        case .noError: return "NO_ERROR"
        case .protocolError: return "PROTOCOL_ERROR"
        case .internalError: return "INTERNAL_ERROR"
        case .flowControlError: return "FLOW_CONTROL_ERROR"
        case .settingsTimeout: return "SETTINGS_TIMEOUT"
        case .streamClosed: return "STREAM_CLOSED"
        case .frameSizeError: return "FRAME_SIZE_ERROR"
        case .refusedStream: return "REFUSED_STREAM"
        case .cancel: return "CANCEL"
        case .compressionError: return "COMPRESSION_ERROR"
        case .connectError: return "CONNECT_ERROR"
        case .enhanceYourCalm: return "ENHANCE_YOUR_CALM"
        case .inadequateSecurity: return "INADEQUATE_SECURITY"
        case .http11Required: return "HTTP_1_1_REQUIRED"
        default: return "0x" + String(code.networkCode, radix: 16)
        }
    }
}

// MARK: - Requests

/// The request of one HTTP/2 stream, read from its header block: the HTTP/1.1
/// request head the inspector decides (`:authority` as Host, the regular
/// fields after it), and what forwarding needs besides.
///
/// What HTTP/2 forbids is refused here even where NIOHTTP2 refuses it first
/// (pseudo-header rules, connection-specific fields): the guarantee that a
/// malformed request never reaches a workload should not rest on one
/// dependency's defaults.
struct HTTP2Request: Equatable {
    var head: HTTPRequestHead
    var scheme: String
    /// `:authority`, or Host when the client sent only that.
    var authority: String
    /// Fields the client asked never to be put in a compression table
    /// (credentials); they go to the workload the same way.
    var neverIndexed: Set<HTTPField>

    static func parse(_ block: HPACKHeaders, limit: HTTPHeadSizeLimit) -> Result<HTTP2Request, HTTPRequestRefusal> {
        let size = block.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count }
        guard block.count <= limit.maximumFields, size <= limit.maximumBytes else {
            return .failure(HTTPRequestRefusal(.requestHeaderFieldsTooLarge, "request head is over \(limit.maximumBytes) bytes or \(limit.maximumFields) fields"))
        }
        var method: String?
        var scheme: String?
        var authority: String?
        var path: String?
        var hosts: [String] = []
        var fields: [(String, String)] = []
        var neverIndexed = Set<HTTPField>()
        var regularSeen = false

        for (name, value, indexing) in block {
            if let first = value.utf8.first, let last = value.utf8.last, isWhitespace(first) || isWhitespace(last) {
                return .failure(HTTPRequestRefusal(.badRequest, "header \(name.prefix(64)) has whitespace at the start or end of its value"))
            }
            if name.hasPrefix(":") {
                guard !regularSeen else {
                    return .failure(HTTPRequestRefusal(.badRequest, "pseudo-header \(name.prefix(64)) comes after a regular header field"))
                }
                let once = HTTPRequestRefusal(.badRequest, "request has \(name.prefix(64)) more than once")
                switch name {
                case ":method":
                    guard method == nil else { return .failure(once) }
                    method = value
                case ":scheme":
                    guard scheme == nil else { return .failure(once) }
                    scheme = value
                case ":authority":
                    guard authority == nil else { return .failure(once) }
                    authority = value
                case ":path":
                    guard path == nil else { return .failure(once) }
                    path = value
                case ":protocol":
                    return .failure(HTTPRequestRefusal(.notImplemented, "extended CONNECT (:protocol) is not forwarded to workloads"))
                default:
                    return .failure(HTTPRequestRefusal(.badRequest, "request has the unknown pseudo-header \(name.prefix(64))"))
                }
                continue
            }
            regularSeen = true
            if name.utf8.contains(where: { (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }) {
                return .failure(HTTPRequestRefusal(.badRequest, "header field name \(name.prefix(64)) is not lowercase, as HTTP/2 requires"))
            }
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
                return .failure(HTTPRequestRefusal(.badRequest, "connection-specific header \(name) is not allowed in HTTP/2"))
            case "te" where value != "trailers":
                return .failure(HTTPRequestRefusal(.badRequest, "TE other than \"trailers\" is not allowed in HTTP/2"))
            case "host":
                hosts.append(value)
            default:
                fields.append((name, value))
            }
            if indexing == .neverIndexed {
                neverIndexed.insert(HTTPField(name: name, value: value))
            }
        }

        guard let method else {
            return .failure(HTTPRequestRefusal(.badRequest, "request has no :method"))
        }
        if method == "CONNECT" {
            return .failure(HTTPRequestRefusal(.notImplemented, "CONNECT is not forwarded to workloads"))
        }
        guard let scheme else {
            return .failure(HTTPRequestRefusal(.badRequest, "request has no :scheme"))
        }
        guard scheme == "http" || scheme == "https" else {
            return .failure(HTTPRequestRefusal(.badRequest, ":scheme is neither http nor https"))
        }
        guard let path, !path.isEmpty else {
            return .failure(HTTPRequestRefusal(.badRequest, "request has no :path"))
        }
        guard hosts.count <= 1 else {
            return .failure(HTTPRequestRefusal(.badRequest, "request has \(hosts.count) host fields"))
        }
        let target: String
        switch (authority, hosts.first) {
        case (let authority?, let host?):
            // Two names for the request's target: policy could check one while the workload serves the other.
            guard authority.lowercased() == host.lowercased() else {
                return .failure(HTTPRequestRefusal(.badRequest, ":authority and host name different targets"))
            }
            target = authority
        case (let authority?, nil):
            target = authority
        case (nil, let host?):
            target = host
        case (nil, nil):
            return .failure(HTTPRequestRefusal(.badRequest, "request has neither :authority nor host"))
        }

        let headers = HTTPHeaders([("host", target)] + fields)
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path, headers: headers)
        return .success(HTTP2Request(head: head, scheme: scheme, authority: target, neverIndexed: neverIndexed))
    }

    /// The header block that asks the workload for `forwarded`, the head the
    /// inspector allowed: its (normalized) path and fields, this request's
    /// scheme and authority.
    func workloadHeaders(for forwarded: HTTPRequestHead) -> HPACKHeaders {
        var block = HPACKHeaders()
        block.add(name: ":method", value: forwarded.method.rawValue)
        block.add(name: ":scheme", value: scheme)
        block.add(name: ":authority", value: authority)
        block.add(name: ":path", value: forwarded.uri)
        for (name, value) in forwarded.headers {
            let lowercased = name.lowercased()
            guard lowercased != "host" else { continue }
            let indexing: HPACKIndexing = neverIndexed.contains(HTTPField(name: lowercased, value: value)) ? .neverIndexed : .indexable
            block.add(name: lowercased, value: value, indexing: indexing)
        }
        return block
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
    }
}

// MARK: - One stream

/// Where one stream stands, from its request's HEADERS until both directions
/// have ended. An allowed request is relayed between the client's stream and a
/// stream to the workload; a reset on either is passed to the other; a side
/// that goes away without both END_STREAMs resets the other, or, when the
/// workload had not answered yet, is answered for by the agent.
struct HTTP2StreamExchange {
    enum Request: Equatable {
        case awaitingHeaders
        /// Allowed: relayed to a stream of the workload's connection.
        case forwarded
        /// Answered by the agent; whatever else the client sends is dropped.
        case answered
    }

    enum Side: String, Equatable {
        case client
        case workload
    }

    struct Reset: Equatable {
        var by: Side
        var code: HTTP2ErrorCode
    }

    /// What to do with a frame from the client.
    enum RequestFrameAction: Equatable {
        /// The request's header block: decide it.
        case inspect
        case forward
        case drop
        /// Not a request HTTP/2 allows (DATA before HEADERS): reset the stream.
        case refuse
    }

    /// What to do to the other side.
    enum Action: Equatable {
        case none
        case resetWorkload(HTTP2ErrorCode)
        /// Reset the client's stream; with NO_ERROR only once what was queued for
        /// it has gone out (it then means "stop sending", not "abort").
        case resetClient(HTTP2ErrorCode)
        /// The workload's stream failed before its response began: answer 502 for it.
        case answerBadGateway
    }

    private(set) var request = Request.awaitingHeaders
    /// The client's END_STREAM arrived.
    private(set) var requestEnded = false
    /// The final status the client was sent.
    private(set) var status: Int?
    /// The client's stream has (or will have, once queued frames go) its END_STREAM.
    private(set) var responseEnded = false
    private(set) var reset: Reset?

    /// Both directions ended normally; a later reset (the workload's NO_ERROR
    /// after a complete response) takes nothing away.
    var completed: Bool { requestEnded && responseEnded }

    mutating func clientSent(headers: Bool, endStream: Bool) -> RequestFrameAction {
        defer { if endStream { requestEnded = true } }
        switch request {
        case .awaitingHeaders: return headers ? .inspect : .refuse
        case .forwarded: return reset == nil ? .forward : .drop
        case .answered: return .drop
        }
    }

    mutating func forwarded() {
        request = .forwarded
    }

    mutating func answered(_ response: LocalResponse) {
        request = .answered
        status = Int(response.status.code)
        responseEnded = true
    }

    /// The agent's own answer has gone out: a client still sending its request
    /// is asked to stop, without error (RFC 9113 §8.1).
    func answerWritten() -> Action {
        requestEnded || reset != nil ? .none : .resetClient(.noError)
    }

    /// A frame of the response arrived from the workload (`status` for a header
    /// block that has one); whether to pass it to the client.
    mutating func workloadSent(status: Int?, endStream: Bool) -> Bool {
        guard request == .forwarded, reset == nil, !responseEnded else { return false }
        if let status, status >= 200 { self.status = status }
        if endStream { responseEnded = true }
        return true
    }

    mutating func clientReset(_ code: HTTP2ErrorCode) -> Action {
        guard reset == nil else { return .none }
        reset = Reset(by: .client, code: code)
        return request == .forwarded ? .resetWorkload(code) : .none
    }

    mutating func workloadReset(_ code: HTTP2ErrorCode) -> Action {
        guard reset == nil, request == .forwarded else { return .none }
        reset = Reset(by: .workload, code: code)
        return .resetClient(code)
    }

    /// The client's stream closed (after any reset it carried was reported).
    mutating func clientClosed() -> Action {
        guard reset == nil, !completed else { return .none }
        reset = Reset(by: .client, code: .cancel)
        return request == .forwarded ? .resetWorkload(.cancel) : .none
    }

    /// The workload's stream closed (after any reset it carried was reported).
    mutating func workloadClosed() -> Action {
        guard reset == nil, request == .forwarded else { return .none }
        if responseEnded {
            guard !requestEnded else { return .none }
            // The response is whole; the rest of the request has nowhere to go.
            reset = Reset(by: .workload, code: .noError)
            return .resetClient(.noError)
        }
        guard status != nil else { return .answerBadGateway }
        // Half a response: only a reset can tell the client it is not all.
        reset = Reset(by: .workload, code: .internalError)
        return .resetClient(.internalError)
    }
}

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
            answer(LocalResponse(status: refusal.status, body: "\(refusal.reason)\n", close: false))
            return
        case .success(let parsed):
            request = parsed
        }
        switch connection.inspector.inspect(request.head) {
        case .respond(let response, let entry):
            self.entry = entry
            answer(response)
        case .forward(let head, let entry):
            self.entry = entry
            exchange.forwarded()
            guard let workload = connection.openWorkloadStream(for: self) else {
                // It never reached the workload: the client may safely retry elsewhere.
                failure = "stream refused: the workload's connection is closing"
                apply(exchange.workloadReset(.refusedStream))
                return
            }
            self.workload = workload
            workload.send(.headers(.init(headers: request.workloadHeaders(for: head), endStream: endStream)))
        }
    }

    // MARK: From the workload

    fileprivate func workloadSent(_ payload: HTTP2Frame.FramePayload) {
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

    fileprivate func workloadFlushed() {
        context?.flush()
    }

    fileprivate func workloadClosed(failure: String?) {
        let action = exchange.workloadClosed()
        if action == .answerBadGateway || action == .resetClient(.internalError) {
            self.failure = failure ?? "the workload closed the stream before it answered"
        }
        apply(action)
    }

    fileprivate var isWritable: Bool { context?.channel.isWritable ?? false }

    fileprivate func workloadBecameWritable() {
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

/// The workload's side of one stream: sends what the client's side relays, and
/// hands everything the workload answers back to it. Made before its stream
/// channel exists; frames sent meanwhile wait here (one read's worth at most:
/// the client's side reads no more until this side is writable).
final class HTTP2WorkloadStream: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var client: HTTP2RequestStream?
    private var context: ChannelHandlerContext?
    private var queued: [HTTP2Frame.FramePayload] = []
    private var flushQueued = false
    /// Reset before its channel existed (it closes as soon as it does), or
    /// closed: nothing more is sent.
    private var abandoned = false
    private var readPending = false
    private var failure: String?
    private var lastWrite: EventLoopFuture<Void>?

    fileprivate init(client: HTTP2RequestStream) {
        self.client = client
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if abandoned {
            queued = []
            context.close(promise: nil)
            return
        }
        for payload in queued {
            write(payload, context: context)
        }
        queued = []
        if flushQueued {
            flushQueued = false
            context.flush()
        }
        // The client's side held its reads until this stream could take them.
        if context.channel.isWritable { client?.workloadBecameWritable() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        client = nil
        abandoned = true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client?.workloadSent(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        client?.workloadFlushed()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if let client, !client.isWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed {
            // Closed with a reset not seen as a frame: NIOHTTP2 refusing the
            // stream for the workload (after its GOAWAY, REFUSED_STREAM), or
            // resetting it for a failure reported before, or ours.
            if failure == nil { client?.workloadSent(.rstStream(closed.errorCode)) }
            return
        }
        // NIOHTTP2 refused the workload's response (a malformed header block, say) and reset the stream.
        failure = "the workload's response was malformed (\(String(describing: type(of: error))))"
    }

    func channelInactive(context: ChannelHandlerContext) {
        abandoned = true
        let client = self.client
        self.client = nil
        client?.workloadClosed(failure: failure)
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { client?.workloadBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    /// The stream could not be made (the workload's connection failed meanwhile).
    fileprivate func creationFailed(_ error: Error) {
        let client = self.client
        self.client = nil
        client?.workloadClosed(failure: "cannot open a stream to the workload: \(error)")
    }

    // MARK: From the client's side

    fileprivate func send(_ payload: HTTP2Frame.FramePayload) {
        guard let context else {
            if !abandoned { queued.append(payload) }
            return
        }
        write(payload, context: context)
    }

    fileprivate func flush() {
        guard let context else {
            flushQueued = true
            return
        }
        context.flush()
    }

    fileprivate var isWritable: Bool { context?.channel.isWritable ?? false }

    fileprivate func clientBecameWritable() {
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    fileprivate func reset(_ code: HTTP2ErrorCode) {
        guard let context else {
            abandoned = true
            queued = []
            return
        }
        resetStream(context, code, after: lastWrite)
    }

    private func write(_ payload: HTTP2Frame.FramePayload, context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(payload), promise: promise)
        lastWrite = promise.futureResult
    }
}

// MARK: - The two connections

/// When the two HTTP/2 connections of an inspected connection end. The
/// workload's going away (GOAWAY, or its connection closing) sends the client
/// a GOAWAY, so that new requests go to a new connection while open streams
/// finish; the client's ending its side waits for its streams as well. Once
/// nothing is open, both connections close.
struct HTTP2ConnectionLifecycle {
    enum Action: Equatable {
        case none
        case sendGoAway(lastStreamID: HTTP2StreamID)
        case sendGoAwayThenFinish(lastStreamID: HTTP2StreamID)
        /// Close both connections; the client's only on its output when its input has ended.
        case finish
        /// The client's connection closed: close the workload's.
        case closeWorkload
    }

    private(set) var openStreams = 0
    /// The highest stream the client opened: GOAWAY lets it finish.
    private(set) var lastStreamID = HTTP2StreamID.rootStream
    private(set) var clientEnded = false
    private(set) var workloadGone = false
    private(set) var finished = false

    mutating func streamCreated(_ id: HTTP2StreamID) {
        lastStreamID = max(lastStreamID, id)
    }

    mutating func streamOpened() {
        openStreams += 1
    }

    mutating func streamClosed() -> Action {
        openStreams = max(0, openStreams - 1)
        return finishIfIdle()
    }

    /// The client ended its side of the connection (TCP FIN, or END_STREAM of a tunnel stream).
    mutating func clientInputEnded() -> Action {
        clientEnded = true
        return finishIfIdle()
    }

    mutating func workloadGoingAway() -> Action {
        guard !workloadGone, !finished else { return .none }
        workloadGone = true
        guard openStreams == 0 else { return .sendGoAway(lastStreamID: lastStreamID) }
        finished = true
        return .sendGoAwayThenFinish(lastStreamID: lastStreamID)
    }

    mutating func clientClosed() -> Action {
        guard !finished else { return .none }
        finished = true
        return .closeWorkload
    }

    private mutating func finishIfIdle() -> Action {
        guard !finished, openStreams == 0, clientEnded || workloadGone else { return .none }
        finished = true
        return .finish
    }
}

/// What the streams of one inspected HTTP/2 connection share: the inspector,
/// the log, the byte counters, the workload's connection to open streams on,
/// and the lifecycle of both connections.
final class HTTP2ProxyConnection {
    let inspector: HTTPRequestInspector
    let accessLog: AccessLogSink
    let limit: HTTPHeadSizeLimit
    let received: ByteCounter
    let sent: ByteCounter
    let eventLoop: EventLoop
    private var lifecycle = HTTP2ConnectionLifecycle()
    private var multiplexer: NIOHTTP2Handler.StreamMultiplexer?
    private var clientWatcher: HTTP2ConnectionWatcher?
    private var workloadWatcher: HTTP2ConnectionWatcher?
    private var requestCounters = ConnectionRequestCounters()

    init(
        inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, received: ByteCounter, sent: ByteCounter,
        eventLoop: EventLoop
    ) {
        self.inspector = inspector
        self.accessLog = accessLog
        self.limit = limit
        self.received = received
        self.sent = sent
        self.eventLoop = eventLoop
    }

    /// One line and one count per finished request.
    fileprivate func report(_ entry: AccessLogEntry) {
        requestCounters.record(entry)
        accessLog.record(entry)
    }

    fileprivate func attachWorkload(multiplexer: NIOHTTP2Handler.StreamMultiplexer, watcher: HTTP2ConnectionWatcher) {
        self.multiplexer = multiplexer
        workloadWatcher = watcher
    }

    fileprivate func attachClient(watcher: HTTP2ConnectionWatcher) {
        clientWatcher = watcher
    }

    /// A stream to the workload for `client`'s request, or nil when the
    /// workload's connection is going away.
    fileprivate func openWorkloadStream(for client: HTTP2RequestStream) -> HTTP2WorkloadStream? {
        guard let multiplexer, !lifecycle.workloadGone, !lifecycle.finished else { return nil }
        let stream = HTTP2WorkloadStream(client: client)
        let bound = NIOLoopBound(stream, eventLoop: eventLoop)
        let created = eventLoop.makePromise(of: Channel.self)
        multiplexer.createStreamChannel(promise: created) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.syncOptions?.setOption(.autoRead, value: true)
                try channel.pipeline.syncOperations.addHandler(bound.value)
            }
        }
        created.futureResult.assumeIsolated().whenFailure { error in
            stream.creationFailed(error)
        }
        return stream
    }

    fileprivate func streamOpened() {
        lifecycle.streamOpened()
    }

    fileprivate func streamClosed() {
        perform(lifecycle.streamClosed())
    }

    fileprivate func streamCreated(_ id: HTTP2StreamID) {
        lifecycle.streamCreated(id)
    }

    fileprivate func clientInputEnded() {
        perform(lifecycle.clientInputEnded())
    }

    fileprivate func clientClosed() {
        perform(lifecycle.clientClosed())
        clientWatcher = nil
    }

    fileprivate func workloadGoingAway() {
        perform(lifecycle.workloadGoingAway())
    }

    fileprivate func workloadClosed() {
        perform(lifecycle.workloadGoingAway())
        workloadWatcher = nil
        multiplexer = nil
    }

    private func perform(_ action: HTTP2ConnectionLifecycle.Action) {
        switch action {
        case .none:
            break
        case .sendGoAway(let lastStreamID):
            clientWatcher?.sendGoAway(lastStreamID: lastStreamID)
        case .sendGoAwayThenFinish(let lastStreamID):
            clientWatcher?.sendGoAway(lastStreamID: lastStreamID)
            finish()
        case .finish:
            finish()
        case .closeWorkload:
            workloadWatcher?.close()
        }
    }

    private func finish() {
        clientWatcher?.finish(outputOnly: lifecycle.clientEnded)
        workloadWatcher?.close()
    }
}

/// Sits behind the HTTP/2 handler of one of the two connections and tells the
/// shared `HTTP2ProxyConnection` what happens to it; closes it when told.
final class HTTP2ConnectionWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    enum Side {
        case client
        case workload
    }

    private let side: Side
    private var connection: HTTP2ProxyConnection?
    private var context: ChannelHandlerContext?
    private var lastWrite: EventLoopFuture<Void>?

    init(side: Side, connection: HTTP2ProxyConnection) {
        self.side = side
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        connection = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Connection-level frames; NIOHTTP2 answers SETTINGS and PING itself.
        if side == .workload, case .goAway = unwrapInboundIn(data).payload {
            connection?.workloadGoingAway()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            switch side {
            case .client: connection?.clientInputEnded()
            // An HTTP/2 server that stops sending can answer nothing more.
            case .workload: context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is any NIOHTTP2Error else {
            // The socket (or tunnel stream) failed.
            context.close(promise: nil)
            return
        }
        // NIOHTTP2 has already answered it: a stream error resets that stream,
        // a connection error sends GOAWAY and closes the connection.
        guard side == .client, Self.isMalformedHeaderBlock(error) else { return }
        HTTPInspectionMetrics.malformed.increment()
        connection?.refusedHeaderBlock(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let connection = self.connection
        self.connection = nil
        switch side {
        case .client: connection?.clientClosed()
        case .workload: connection?.workloadClosed()
        }
        context.fireChannelInactive()
    }

    fileprivate func sendGoAway(lastStreamID: HTTP2StreamID) {
        guard let context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        let frame = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(wrapOutboundOut(frame), promise: promise)
        lastWrite = promise.futureResult
    }

    /// Closes the connection once what was written to it (a GOAWAY) has gone.
    fileprivate func finish(outputOnly: Bool) {
        guard let context else { return }
        let close = {
            // After the client's own end, closing output completes the close
            // cleanly (a tunnel stream ends with END_STREAM instead of a reset).
            context.close(mode: outputOnly ? .output : .all, promise: nil)
        }
        if let lastWrite {
            lastWrite.assumeIsolated().whenComplete { _ in close() }
        } else {
            close()
        }
    }

    fileprivate func close() {
        context?.close(promise: nil)
    }

    /// The errors of NIOHTTP2's header-block checks: a request refused by one
    /// of them never becomes a stream the agent sees.
    private static func isMalformedHeaderBlock(_ error: Error) -> Bool {
        error is NIOHTTP2Errors.DuplicatePseudoHeader || error is NIOHTTP2Errors.PseudoHeaderAfterRegularHeader
            || error is NIOHTTP2Errors.UnknownPseudoHeader || error is NIOHTTP2Errors.UnsupportedPseudoHeader
            || error is NIOHTTP2Errors.InvalidPseudoHeaders || error is NIOHTTP2Errors.EmptyPathHeader
            || error is NIOHTTP2Errors.InvalidHTTP2HeaderFieldName || error is NIOHTTP2Errors.InvalidHTTP2HeaderFieldValue
            || error is NIOHTTP2Errors.ForbiddenHeaderField || error is NIOHTTP2Errors.InvalidPseudoHeaderValue
    }
}

extension HTTP2ProxyConnection {
    /// Logs a request NIOHTTP2 refused for its header block (with RST_STREAM
    /// PROTOCOL_ERROR, as RFC 9113 asks); it never became a stream, so this
    /// is its only line.
    fileprivate func refusedHeaderBlock(_ error: Error) {
        accessLog.record(inspector.refusedEntry("malformed HTTP/2 header block (\(String(describing: type(of: error))))"))
    }
}

/// Resets a stream. A NO_ERROR reset ("nothing more is needed from you") waits
/// for what was written before it: sent at once, it would discard it.
private func resetStream(_ context: ChannelHandlerContext, _ code: HTTP2ErrorCode, after lastWrite: EventLoopFuture<Void>?) {
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
