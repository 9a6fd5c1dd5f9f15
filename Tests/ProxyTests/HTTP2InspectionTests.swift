import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Policy
import Synchronization
import TLS
import Testing
@testable import Proxy
import Workloads

extension HTTP2InspectionTests {
    @Suite struct Sniff {
        static let preface = ProtocolSniff.http2Preface

        @Test func thePrefaceInOnePieceIsHTTP2() {
            var sniff = ProtocolSniff()
            #expect(step { sniff.next(Self.preface + Array("\u{0}\u{0}\u{0}\u{4}".utf8)) } == .http2)
        }

        @Test func aSplitPrefaceIsDecidedAtItsLastByte() {
            var sniff = ProtocolSniff()
            for byte in Self.preface.dropLast() {
                #expect(step { sniff.next([byte]) } == nil)
            }
            #expect(sniff.matched == 23)
            #expect(step { sniff.next([Self.preface[23]]) } == .http2)
        }

        @Test(arguments: ["GET / HTTP/1.1\r\n", "PRI * HTTP/1.1\r\n", "PRI * HTTP/2.0\r\n\r\nSX", "\u{16}\u{3}\u{1}", "pri * HTTP/2.0"])
        func anythingElseIsHTTP1AtTheFirstByteThatDiffers(text: String) {
            var sniff = ProtocolSniff()
            let bytes = Array(text.utf8)
            let differs = zip(bytes, Self.preface).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? bytes.count
            #expect(step { sniff.next(bytes[..<differs]) } == nil)
            #expect(step { sniff.next(bytes[differs...]) } == .http1)
        }

        @Test func aClientThatStopsEarlyGoesToHTTP1() {
            var silent = ProtocolSniff()
            #expect(step { silent.ended() } == .http1)
            var partial = ProtocolSniff()
            #expect(step { partial.next(Self.preface.prefix(10)) } == nil)
            #expect(step { partial.ended() } == .http1, "half a preface is malformed HTTP/1.1, which that path answers with 400")
        }
    }
}

extension HTTP2InspectionTests {
    @Suite struct Sniffer {
        final class Decisions {
            var found: [InspectedProtocol] = []
            var abandoned = false
        }

        func sniffer(on channel: EmbeddedChannel, _ decisions: Decisions) throws {
            try channel.pipeline.syncOperations.addHandler(ProtocolSniffer(
                install: { decisions.found.append($0) },
                abandoned: { decisions.abandoned = true }))
        }

        @Test func aPrefaceInPiecesIsHeldThenHandedOnWhole() throws {
            let channel = EmbeddedChannel()
            let decisions = Decisions()
            try sniffer(on: channel, decisions)
            let preface = ProtocolSniff.http2Preface
            try channel.writeInbound(ByteBuffer(bytes: preface[0..<3]))
            try channel.writeInbound(ByteBuffer(bytes: preface[3..<20]))
            #expect(decisions.found.isEmpty)
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil, "nothing is passed on before the protocol is known")
            try channel.writeInbound(ByteBuffer(bytes: preface[20...] + [0, 0, 0, 4]))
            #expect(decisions.found == [.http2])
            #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: preface + [0, 0, 0, 4]))
            #expect(throws: (any Error).self, "the sniffer leaves once it has decided") {
                try channel.pipeline.syncOperations.context(handlerType: ProtocolSniffer.self)
            }
            try channel.writeInbound(ByteBuffer(string: "after"))
            #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "after"))
        }

        @Test func http1IsDecidedAtOnce() throws {
            let channel = EmbeddedChannel()
            let decisions = Decisions()
            try sniffer(on: channel, decisions)
            try channel.writeInbound(ByteBuffer(string: "G"))
            #expect(decisions.found == [.http1])
            #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "G"))
        }

        @Test func shortInputThenEndGoesToHTTP1WithTheEndAfterTheBytes() throws {
            let channel = EmbeddedChannel()
            let decisions = Decisions()
            try sniffer(on: channel, decisions)
            try channel.writeInbound(ByteBuffer(string: "PRI * HT"))
            #expect(decisions.found.isEmpty)
            channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            #expect(decisions.found == [.http1])
            #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "PRI * HT"))
        }

        @Test func aClientGoneBeforeSpeakingAbandonsTheUpstream() throws {
            let channel = EmbeddedChannel()
            let decisions = Decisions()
            try sniffer(on: channel, decisions)
            channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
            _ = try channel.finish()
            #expect(decisions.abandoned)
            #expect(decisions.found.isEmpty)
        }
    }
}

extension HTTP2InspectionTests {
    @Suite struct RequestParsing {
        static let limit = HTTPHeadSizeLimit()

        static func block(_ fields: [(String, String)]) -> HPACKHeaders {
            HPACKHeaders(fields)
        }

        static let grpc: [(String, String)] = [
            (":method", "POST"), (":scheme", "http"), (":authority", "orders.shop:8080"), (":path", "/shop.Orders/Reserve"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ]

        @Test func aGRPCRequestBecomesAnHTTP1HeadWithItsAuthorityAsHost() throws {
            let request = try HTTP2Request.parse(Self.block(Self.grpc), limit: Self.limit).get()
            #expect(request.head.method == .POST)
            #expect(request.head.uri == "/shop.Orders/Reserve")
            #expect(request.head.headers["host"] == ["orders.shop:8080"])
            #expect(request.head.headers["te"] == ["trailers"])
            #expect(request.scheme == "http")
            #expect(request.authority == "orders.shop:8080")
            #expect(RequestHeadCheck.check(RequestHead(request.head)).map(\.host) == .success("orders.shop:8080"))
        }

        @Test func theWorkloadIsAskedForTheForwardedPathWithCredentialsStillNeverIndexed() throws {
            var block = Self.block(Self.grpc)
            block.add(name: "authorization", value: "Bearer abc", indexing: .neverIndexed)
            let request = try HTTP2Request.parse(block, limit: Self.limit).get()
            let sent = request.workloadHeaders(for: .init(target: "/shop.Orders/Reserve?x=1", removing: []))
            #expect(Array(sent.map(\.name).prefix(4)) == [":method", ":scheme", ":authority", ":path"])
            #expect(sent.first(name: ":path") == "/shop.Orders/Reserve?x=1")
            #expect(sent.first(name: "host") == nil, "the authority travels as :authority only")
            #expect(sent.first { $0.name == "authorization" }?.indexable == .neverIndexed)
            #expect(sent.first { $0.name == "content-type" }?.indexable == .indexable)
        }

        @Test func hostAloneStandsForTheAuthority() throws {
            let fields = Self.grpc.filter { $0.0 != ":authority" } + [("host", "orders.shop")]
            let request = try HTTP2Request.parse(Self.block(fields), limit: Self.limit).get()
            #expect(request.authority == "orders.shop")
        }

        @Test(arguments: [
            (HTTP2InspectionTests.RequestParsing.grpc + [("connection", "keep-alive")], 400, "connection-specific header connection"),
            (HTTP2InspectionTests.RequestParsing.grpc + [("transfer-encoding", "chunked")], 400, "connection-specific header transfer-encoding"),
            (HTTP2InspectionTests.RequestParsing.grpc + [("upgrade", "h2c")], 400, "connection-specific header upgrade"),
            (HTTP2InspectionTests.RequestParsing.grpc + [("te", "gzip")], 400, "TE other than"),
            (HTTP2InspectionTests.RequestParsing.grpc + [("host", "admin.shop:8080")], 400, ":authority and host name different targets"),
            (HTTP2InspectionTests.RequestParsing.grpc.filter { $0.0 != ":authority" }, 400, "neither :authority nor host"),
            (HTTP2InspectionTests.RequestParsing.grpc.filter { $0.0 != ":path" }, 400, "no :path"),
            (HTTP2InspectionTests.RequestParsing.grpc.filter { $0.0 != ":method" }, 400, "no :method"),
            (HTTP2InspectionTests.RequestParsing.grpc.filter { $0.0 != ":scheme" }, 400, "no :scheme"),
            ([(":method", "CONNECT"), (":authority", "10.77.0.2:8080")], 501, "CONNECT is not forwarded"),
            ([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", "/chat"), (":authority", "a")], 501, "extended CONNECT"),
            ([(":method", "GET"), (":scheme", "http"), ("accept", "*/*"), (":path", "/"), (":authority", "a")], 400, "comes after a regular header"),
            ([(":method", "GET"), (":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "a")], 400, ":method more than once"),
            ([(":method", "GET"), (":status", "200"), (":scheme", "http"), (":path", "/"), (":authority", "a")], 400, "unknown pseudo-header"),
            (HTTP2InspectionTests.RequestParsing.grpc + [("X-Token", "1")], 400, "not lowercase"),
            (HTTP2InspectionTests.RequestParsing.grpc + [("x-token", " 1")], 400, "whitespace"),
            ([(":method", "GET"), (":scheme", "ftp"), (":path", "/"), (":authority", "a")], 400, "neither http nor https"),
        ] as [([(String, String)], Int, String)])
        func whatHTTP2ForbidsIsRefused(fields: [(String, String)], status: Int, reason: String) {
            guard case .failure(let refusal) = HTTP2Request.parse(Self.block(fields), limit: Self.limit) else {
                Issue.record("accepted \(fields)")
                return
            }
            #expect(refusal.status.rawValue == status)
            #expect(refusal.reason.contains(reason), "\(refusal.reason)")
        }

        @Test func tooManyFieldsAreRefusedWith431() {
            let fields = Self.grpc + (0..<5).map { ("x-\($0)", "v") }
            let limit = HTTPHeadSizeLimit(maximumBytes: 64 * 1024, maximumFields: 8)
            guard case .failure(let refusal) = HTTP2Request.parse(Self.block(fields), limit: limit) else {
                Issue.record("accepted a head over the limit")
                return
            }
            #expect(refusal.status == .requestHeaderFieldsTooLarge)
        }
    }
}

extension HTTP2InspectionTests {
    @Suite struct StreamExchange {
        @Test func anAllowedRequestIsRelayedUntilBothEnd() {
            var exchange = HTTP2StreamExchange()
            #expect(step { exchange.clientSent(headers: true, endStream: false) } == .inspect)
            exchange.forwarded()
            #expect(step { exchange.clientSent(headers: false, endStream: true) } == .forward)
            #expect(step { exchange.workloadSent(status: 200, endStream: false) })
            #expect(step { exchange.workloadSent(status: nil, endStream: false) })
            #expect(step { exchange.workloadSent(status: nil, endStream: true) }, "trailers")
            #expect(exchange.status == 200)
            #expect(exchange.completed)
            #expect(step { exchange.workloadClosed() } == .none)
            #expect(step { exchange.clientClosed() } == .none)
        }

        @Test func anInterimResponseIsPassedOnWithoutBeingTheStatus() {
            var exchange = HTTP2StreamExchange()
            _ = exchange.clientSent(headers: true, endStream: true)
            exchange.forwarded()
            #expect(step { exchange.workloadSent(status: 100, endStream: false) })
            #expect(exchange.status == nil)
            #expect(step { exchange.workloadClosed() } == .answerBadGateway, "nothing final was sent yet: the agent can still answer")
        }

        @Test func anAnsweredRequestDropsItsBodyAndAsksTheClientToStop() {
            var exchange = HTTP2StreamExchange()
            _ = exchange.clientSent(headers: true, endStream: false)
            exchange.answered(LocalResponse(status: .forbidden, body: "RBAC: access denied", close: false))
            #expect(step { exchange.clientSent(headers: false, endStream: false) } == .drop)
            #expect(exchange.answerWritten() == .resetClient(.noError))
            #expect(step { exchange.clientReset(.cancel) } == .none, "nothing went to the workload")
        }

        @Test func anAnsweredRequestThatEndedNeedsNoReset() {
            var exchange = HTTP2StreamExchange()
            _ = exchange.clientSent(headers: true, endStream: true)
            exchange.answered(LocalResponse(status: .forbidden, body: "RBAC: access denied", close: false))
            #expect(exchange.answerWritten() == .none)
        }

        @Test func resetsCrossOverOnceWithTheirCode() {
            var fromClient = HTTP2StreamExchange()
            _ = fromClient.clientSent(headers: true, endStream: false)
            fromClient.forwarded()
            #expect(step { fromClient.clientReset(.cancel) } == .resetWorkload(.cancel))
            #expect(step { fromClient.workloadClosed() } == .none, "the workload's stream closing after our reset is not news")
            #expect(step { fromClient.clientSent(headers: false, endStream: false) } == .drop)

            var fromWorkload = HTTP2StreamExchange()
            _ = fromWorkload.clientSent(headers: true, endStream: false)
            fromWorkload.forwarded()
            #expect(step { fromWorkload.workloadReset(.refusedStream) } == .resetClient(.refusedStream))
            #expect(step { fromWorkload.clientClosed() } == .none)
            #expect(fromWorkload.reset == .init(by: .workload, code: .refusedStream))
        }

        @Test func aSideThatVanishesResetsTheOther() {
            var client = HTTP2StreamExchange()
            _ = client.clientSent(headers: true, endStream: false)
            client.forwarded()
            #expect(step { client.clientClosed() } == .resetWorkload(.cancel))

            var halfAnswered = HTTP2StreamExchange()
            _ = halfAnswered.clientSent(headers: true, endStream: true)
            halfAnswered.forwarded()
            _ = halfAnswered.workloadSent(status: 200, endStream: false)
            #expect(step { halfAnswered.workloadClosed() } == .resetClient(.internalError), "half a response cannot be replaced by a 502")

            var answeredEarly = HTTP2StreamExchange()
            _ = answeredEarly.clientSent(headers: true, endStream: false)
            answeredEarly.forwarded()
            _ = answeredEarly.workloadSent(status: 413, endStream: true)
            #expect(step { answeredEarly.workloadClosed() } == .resetClient(.noError), "a whole response: the client just stops sending")
        }
    }
}

extension HTTP2InspectionTests {
    @Suite struct ConnectionLifecycle {
        @Test func theWorkloadGoingAwayDrainsTheClient() {
            var lifecycle = HTTP2ConnectionLifecycle()
            lifecycle.streamCreated(HTTP2StreamID(1))
            lifecycle.streamOpened()
            lifecycle.streamCreated(HTTP2StreamID(3))
            lifecycle.streamOpened()
            #expect(step { lifecycle.workloadGoingAway() } == .sendGoAway(lastStreamID: HTTP2StreamID(3)))
            #expect(step { lifecycle.workloadGoingAway() } == .none, "GOAWAY, then the close: one drain")
            #expect(step { lifecycle.streamClosed() } == .none)
            #expect(step { lifecycle.streamClosed() } == .finish)
            #expect(step { lifecycle.clientClosed() } == .none)
        }

        @Test func anIdleConnectionWhoseWorkloadGoesFinishesAtOnce() {
            var lifecycle = HTTP2ConnectionLifecycle()
            #expect(step { lifecycle.workloadGoingAway() } == .sendGoAwayThenFinish(lastStreamID: .rootStream))
        }

        @Test func theClientEndingWaitsForItsStreams() {
            var lifecycle = HTTP2ConnectionLifecycle()
            lifecycle.streamOpened()
            #expect(step { lifecycle.clientInputEnded() } == .none)
            #expect(step { lifecycle.streamClosed() } == .finish)
        }

        @Test func theClientClosingClosesTheWorkload() {
            var lifecycle = HTTP2ConnectionLifecycle()
            lifecycle.streamOpened()
            #expect(step { lifecycle.clientClosed() } == .closeWorkload)
            #expect(step { lifecycle.streamClosed() } == .none)
        }
    }
}

// MARK: - Whole connections, in memory

/// An inspected connection carried between in-memory channels on one loop: a
/// test HTTP/2 client, the agent's two channels (as `InboundPlaintextProxy`
/// sets them up), and a workload that echoes every request.
final class H2Harness {
    let loop = EmbeddedEventLoop()
    let client: EmbeddedChannel
    let agentClient: EmbeddedChannel
    let agentUpstream: EmbeddedChannel
    let workload: EmbeddedChannel
    let log = H2AccessLog()
    let seen = H2WorkloadRecord()
    /// While set, nothing the agent writes reaches the workload (a workload that stopped reading).
    var stallWorkload = false
    /// Bytes the client got to send to the agent.
    private(set) var bytesFromClient = 0
    private var multiplexer: NIOHTTP2Handler.StreamMultiplexer?

    // An embedded channel left open keeps its pipeline in a cycle: closing
    // them lets the leak checker (make test-sanitize) see the agent's own.
    deinit {
        for channel in [client, agentClient, agentUpstream, workload] {
            _ = try? channel.finish(acceptAlreadyClosed: true)
        }
    }

    init(http2Client: Bool = true, clientValidation: Bool = true, http2Workload: Bool = true) throws {
        client = EmbeddedChannel(loop: loop)
        agentClient = EmbeddedChannel(loop: loop)
        agentUpstream = EmbeddedChannel(loop: loop)
        workload = EmbeddedChannel(loop: loop)
        let address = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)

        let carrier = Carrier.inspect(try Self.inspector(), accessLog: log, limit: HTTPHeadSizeLimit(), on: loop)
        try carrier.installUpstream(on: agentUpstream)
        agentUpstream.connect(to: address, promise: nil)

        if http2Workload {
            let record = NIOLoopBound(seen, eventLoop: loop)
            _ = try workload.pipeline.syncOperations.configureHTTP2Pipeline(
                mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()
            ) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(H2EchoStream(record: record.value))
                }
            }
        }
        // Without HTTP/2 the workload channel just collects what the agent sends it.
        workload.connect(to: address, promise: nil)

        try carrier.installClient(on: agentClient)
        agentClient.connect(to: address, promise: nil)

        if http2Client {
            var configuration = NIOHTTP2Handler.ConnectionConfiguration()
            configuration.headerBlockValidation = clientValidation ? .enabled : .disabled
            multiplexer = try client.pipeline.syncOperations.configureHTTP2Pipeline(
                mode: .client, connectionConfiguration: configuration, streamConfiguration: .init()
            ) { $0.close() }
        }
        // Without HTTP/2 the client channel just collects what the agent answers.
        client.connect(to: address, promise: nil)
        try pump()
    }

    static func inspector() throws -> HTTPRequestInspector {
        let orders = Workload(name: "orders", namespace: "shop", serviceAccount: "orders", identity: try SpiffeID("spiffe://td.example/ns/shop/sa/orders"))
        var reserve = AuthorizationPolicy.Operation()
        reserve.paths = [.exact("/shop.Orders/Reserve")]
        let policy = AuthorizationPolicy(name: "orders-rpc", namespace: "shop", action: .ALLOW, rules: [.init(to: [reserve])])
        let snapshot = AuthorizationSnapshot(generation: 1, policies: AuthorizationPolicySet([policy], rootNamespace: "istio-system"), workloads: [orders])
        let attributes = ConnectionAttributes(
            peer: try SpiffeID("spiffe://td.example/ns/shop/sa/checkout"), source: try SocketAddress(ipAddress: "10.77.0.1", port: 40000),
            destination: try SocketAddress(ipAddress: "10.77.0.2", port: 8080))
        var entry = AccessLogEntry(time: 0, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
        entry.protocol = "http"
        return HTTPRequestInspector(workload: orders, connection: attributes, authorizer: InboundAuthorizer(snapshot), connectionEntry: entry)
    }

    static func request(_ path: String, extra: [(String, String)] = []) -> HPACKHeaders {
        HPACKHeaders([
            (":method", "POST"), (":scheme", "http"), (":authority", "orders.shop:8080"), (":path", path),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ] + extra)
    }

    /// Moves bytes between the channels until none move.
    func pump() throws {
        var moved = true
        while moved {
            loop.run()
            moved = false
            for (from, to) in [(client, agentClient), (agentClient, client), (agentUpstream, workload), (workload, agentUpstream)] {
                if stallWorkload && from === agentUpstream { continue }
                while let bytes = try from.readOutbound(as: ByteBuffer.self) {
                    moved = true
                    if from === client { bytesFromClient += bytes.readableBytes }
                    if to.isActive { try to.writeInbound(bytes) }
                }
            }
        }
    }

    /// Opens a stream on the test client and sends `frames` on it.
    func stream(_ frames: [HTTP2Frame.FramePayload]) throws -> H2ResponseCollector {
        let collector = H2ResponseCollector()
        let bound = NIOLoopBound(collector, eventLoop: loop)
        multiplexer?.createStreamChannel(promise: nil) { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(bound.value) }
        }
        loop.run()
        for frame in frames { collector.send(frame) }
        try pump()
        return collector
    }
}

final class H2AccessLog: AccessLogSink {
    private let recorded = Mutex<[AccessLogEntry]>([])

    private let observed = Mutex<[AccessLogEntry]>([])

    func record(_ entry: AccessLogEntry) {
        recorded.withLock { $0.append(entry) }
    }

    func observe(_ entry: AccessLogEntry) {
        observed.withLock { $0.append(entry) }
    }

    let observesRequests = false
    var entries: [AccessLogEntry] { recorded.withLock { $0 } }
    var observations: [AccessLogEntry] { observed.withLock { $0 } }
}

/// What the echoing workload saw.
final class H2WorkloadRecord {
    struct Request: Equatable {
        var path: String
        var body: String
    }

    struct Reset: Equatable {
        var path: String
        var code: HTTP2ErrorCode
    }

    var started: [String] = []
    var completed: [Request] = []
    var resets: [Reset] = []
    var headers: [HPACKHeaders] = []
}

/// A workload stream: echoes the request's body as a gRPC-style response with
/// trailers, or resets the stream when the path asks for it.
final class H2EchoStream: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let record: H2WorkloadRecord
    private var path = ""
    private var body = ByteBuffer()

    init(record: H2WorkloadRecord) {
        self.record = record
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if let path = headers.headers.first(name: ":path") {
                self.path = path
                record.started.append(path)
                record.headers.append(headers.headers)
                if path.hasSuffix("?reset=refused") {
                    context.writeAndFlush(wrapOutboundOut(.rstStream(.refusedStream)), promise: nil)
                    return
                }
            }
            if headers.endStream { respond(context) }
        case .data(let data):
            if case .byteBuffer(let buffer) = data.data { body.writeImmutableBuffer(buffer) }
            if data.endStream { respond(context) }
        case .rstStream(let code):
            record.resets.append(.init(path: path, code: code))
        default:
            break
        }
    }

    private func respond(_ context: ChannelHandlerContext) {
        record.completed.append(.init(path: path, body: String(buffer: body)))
        context.write(wrapOutboundOut(.headers(.init(headers: [":status": "200", "content-type": "application/grpc"]))), promise: nil)
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: ["grpc-status": "0"], endStream: true))), promise: nil)
    }
}

/// The test client's view of one stream.
final class H2ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var context: ChannelHandlerContext?
    var headerBlocks: [HPACKHeaders] = []
    var body = ByteBuffer()
    var ended = false
    var reset: HTTP2ErrorCode?
    var closed = false

    var status: String? { headerBlocks.first?.first(name: ":status") }
    var trailers: HPACKHeaders? { headerBlocks.count > 1 ? headerBlocks.last : nil }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func send(_ payload: HTTP2Frame.FramePayload) {
        context?.writeAndFlush(wrapOutboundOut(payload), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            headerBlocks.append(headers.headers)
            if headers.endStream { ended = true }
        case .data(let data):
            if case .byteBuffer(let buffer) = data.data { body.writeImmutableBuffer(buffer) }
            if data.endStream { ended = true }
        case .rstStream(let code):
            reset = code
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed, reset == nil {
            reset = closed.errorCode
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        context.fireChannelInactive()
    }
}

/// Runs a state machine's step outside `#expect`, whose expansion cannot mutate.
private func step<T>(_ body: () -> T) -> T {
    body()
}

@Suite struct HTTP2InspectionTests {
    typealias Harness = H2Harness

    static func data(_ text: String, end: Bool) -> HTTP2Frame.FramePayload {
        .data(.init(data: .byteBuffer(ByteBuffer(string: text)), endStream: end))
    }

    @Test func anAllowedStreamReachesTheWorkloadWithItsNormalizedPathAndTrailersComeBack() throws {
        let harness = try Harness()
        let call = try harness.stream([.headers(.init(headers: Harness.request("//shop.Orders/./Reserve"))), Self.data("order-42", end: true)])

        #expect(harness.seen.completed == [.init(path: "/shop.Orders/Reserve", body: "order-42")])
        #expect(harness.seen.headers.first?.first(name: ":authority") == "orders.shop:8080")
        #expect(harness.seen.headers.first?.first(name: "te") == "trailers")
        #expect(call.status == "200")
        #expect(call.headerBlocks.first?.first(name: "content-type") == "application/grpc")
        #expect(String(buffer: call.body) == "order-42")
        #expect(call.trailers?.first(name: "grpc-status") == "0")
        #expect(call.ended && call.reset == nil && call.closed)

        let entries = harness.log.entries
        #expect(entries.count == 1)
        #expect(entries.first?.action == .allow)
        #expect(entries.first?.method == "POST")
        #expect(entries.first?.path == "/shop.Orders/Reserve")
        #expect(entries.first?.status == 200)
        #expect(entries.first?.bytesReceived == 8)
        #expect(entries.first?.bytesSent == 8)
        #expect(entries.first?.reason == "hbone")
    }

    @Test func aDeniedStreamIsAnswered403WhileAnotherStreamOnTheConnectionSucceeds() throws {
        let harness = try Harness()
        let denied = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Cancel"))), Self.data("order-42", end: true)])
        let allowed = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve"))), Self.data("order-43", end: true)])

        #expect(denied.status == "403")
        #expect(denied.headerBlocks.first?.first(name: "content-type") == "text/plain")
        #expect(String(buffer: denied.body) == "RBAC: access denied")
        #expect(denied.ended && denied.reset == nil)
        #expect(!harness.seen.started.contains("/shop.Orders/Cancel"), "a denied request never reaches the workload")

        #expect(allowed.status == "200")
        #expect(String(buffer: allowed.body) == "order-43")
        #expect(harness.agentClient.isActive && harness.agentUpstream.isActive)

        let entries = harness.log.entries
        #expect(entries.map(\.status) == [403, 200])
        #expect(entries.map(\.action) == [.deny, .allow])
        #expect(entries.map(\.path) == ["/shop.Orders/Cancel", "/shop.Orders/Reserve"])
    }

    @Test func aWorkloadThatStopsReadingStopsTheClientWithinTheWindows() throws {
        let harness = try Harness()
        harness.stallWorkload = true
        let chunk = String(repeating: "x", count: 16 * 1024)
        let pieces = 128
        let before = harness.bytesFromClient
        let call = try harness.stream(
            [.headers(.init(headers: Harness.request("/shop.Orders/Reserve")))]
                + (1...pieces).map { Self.data(chunk, end: $0 == pieces) })
        let sent = harness.bytesFromClient - before
        // One stream window unread, one queued towards the workload with the
        // high-water mark, and the workload's own window: far below the 2 MiB.
        #expect(sent < 512 * 1024, "the agent took \(sent) bytes while the workload read nothing")
        #expect(sent > HTTP2Inspection.streamWindow, "the agent reads while the workload's side can take more")
        #expect(harness.seen.started.isEmpty)

        harness.stallWorkload = false
        try harness.pump()
        #expect(harness.seen.completed.first?.body.utf8.count == pieces * chunk.utf8.count)
        #expect(call.body.readableBytes == pieces * chunk.utf8.count)
        #expect(call.trailers?.first(name: "grpc-status") == "0")
    }

    @Test func aDeniedStreamStillSendingIsAskedToStopAfterItsAnswer() throws {
        let harness = try Harness()
        let denied = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Cancel"))), Self.data("part", end: false)])
        #expect(denied.status == "403")
        #expect(String(buffer: denied.body) == "RBAC: access denied")
        #expect(denied.ended)
        #expect(denied.reset == .noError)
        #expect(harness.log.entries.first?.action == .deny)
        #expect(harness.log.entries.first?.status == 403)
    }

    @Test func aClientResetReachesTheWorkloadsStream() throws {
        let harness = try Harness()
        let call = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve"))), Self.data("part", end: false)])
        #expect(harness.seen.started == ["/shop.Orders/Reserve"])
        #expect(harness.seen.resets.isEmpty)

        call.send(.rstStream(.cancel))
        try harness.pump()
        #expect(harness.seen.resets == [.init(path: "/shop.Orders/Reserve", code: .cancel)])
        #expect(harness.log.entries.first?.reason == "stream reset by the client (CANCEL)")
        #expect(harness.agentClient.isActive, "a reset ends one stream, not the connection")
    }

    @Test func aWorkloadResetReachesTheClientWithItsCode() throws {
        let harness = try Harness()
        let call = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve?reset=refused"), endStream: true))])
        #expect(call.reset == .refusedStream)
        #expect(call.status == nil)
        #expect(harness.log.entries.first?.reason == "stream reset by the workload (REFUSED_STREAM)")
    }

    @Test func anAuthorityThatDisagreesWithHostIsRefusedAndTheConnectionKeepsWorking() throws {
        let harness = try Harness()
        let refused = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve", extra: [("host", "admin.shop")]), endStream: true))])
        #expect(refused.status == "400")
        #expect(String(buffer: refused.body).contains(":authority and host"))
        #expect(harness.seen.started.isEmpty)
        let allowed = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve"), endStream: true))])
        #expect(allowed.status == "200")
        #expect(harness.log.entries.first?.reason.hasPrefix("refused request:") == true)
    }

    @Test func aConnectionSpecificHeaderIsRefusedBeforeItBecomesARequest() throws {
        let harness = try Harness(clientValidation: false)
        let refused = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve", extra: [("connection", "close")]), endStream: true))])
        #expect(refused.reset == .protocolError)
        #expect(harness.seen.started.isEmpty)
        #expect(harness.log.entries.first?.action == .deny)
        #expect(harness.log.entries.first?.reason.contains("ForbiddenHeaderField") == true)
        let allowed = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve"), endStream: true))])
        #expect(allowed.status == "200")
    }

    @Test func aWorkloadThatGoesAwayMidRequestIsAnswered502AndTheClientDrained() throws {
        let harness = try Harness()
        let call = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve"))), Self.data("part", end: false)])
        #expect(harness.seen.started == ["/shop.Orders/Reserve"])
        harness.agentUpstream.close(promise: nil)
        try harness.pump()
        #expect(call.status == "502")
        #expect(call.reset == .noError, "the rest of the request has nowhere to go")
        #expect(!harness.agentClient.isActive, "no stream is left, and the workload is gone")
        #expect(harness.log.entries.first?.status == 502)
    }

    @Test func aWorkloadGoingAwayLetsTheClientsOpenStreamFinish() throws {
        let harness = try Harness()
        let call = try harness.stream([.headers(.init(headers: Harness.request("/shop.Orders/Reserve"))), Self.data("part", end: false)])
        #expect(harness.seen.started == ["/shop.Orders/Reserve"])
        // The workload takes no new streams but finishes this one; the client is
        // told the same, naming its open stream as the last one processed.
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: HTTP2StreamID(1), errorCode: .noError, opaqueData: nil))
        harness.workload.writeAndFlush(goAway, promise: nil)
        try harness.pump()
        call.send(Self.data(" rest", end: true))
        try harness.pump()
        #expect(call.reset == nil, "the open stream was cut: \(String(describing: call.reset))")
        #expect(call.status == "200")
        #expect(call.ended)
    }

    @Test func http1StillGoesThroughTheHTTP1Gate() throws {
        let harness = try Harness(http2Client: false, http2Workload: false)
        try harness.agentClient.writeInbound(ByteBuffer(string: "GET //shop.Orders/Reserve HTTP/1.1\r\nHost: orders.shop\r\n\r\n"))
        try harness.pump()
        var request = ""
        while let bytes = try harness.workload.readInbound(as: ByteBuffer.self) {
            request += String(buffer: bytes)
        }
        #expect(request.hasPrefix("GET /shop.Orders/Reserve HTTP/1.1\r\n"), "\(request)")
        try harness.workload.writeOutbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
        try harness.pump()
        var answer = ""
        while let bytes = try harness.client.readInbound(as: ByteBuffer.self) {
            answer += String(buffer: bytes)
        }
        #expect(answer.hasPrefix("HTTP/1.1 200 OK"), "\(answer)")
        #expect(answer.hasSuffix("ok"))
        #expect(harness.log.entries.first?.status == 200)
    }

    @Test func anythingButThePrefaceTakesTheHTTP1Path() throws {
        let harness = try Harness(http2Client: false)
        try harness.agentClient.writeInbound(ByteBuffer(string: "hello there\r\n\r\n"))
        try harness.pump()
        var answer = ""
        while let bytes = try harness.client.readInbound(as: ByteBuffer.self) {
            answer += String(buffer: bytes)
        }
        #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
        #expect(harness.seen.started.isEmpty)
    }
}
