import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Policy
@testable import Proxy

/// An inspected connection carried in memory, as the tunnel server and the
/// inbound plaintext listener set one up (`Carrier.inspect`): a client whose
/// bytes come from the fuzzer, the agent's two channels, and a workload that
/// answers every request it receives with 200 and remembers it.
///
/// Whatever the client sends, the workload must only ever see requests that
/// policy could allow, with normalized paths: a request the agent framed one
/// way and the workload another (smuggling), or a path the two read
/// differently, shows up here as a request the workload should not have got.
public final class InspectedConnectionHarness {
    public enum WorkloadProtocol {
        case http1
        case http2
    }

    private let loop = EmbeddedEventLoop()
    private let agentClient: EmbeddedChannel
    private let agentUpstream: EmbeddedChannel
    private let workload: EmbeddedChannel
    private let record = WorkloadRecord()
    /// How many requests the agent allowed on this connection.
    private var allowedRequests: Int64 = 0

    private init(workload workloadProtocol: WorkloadProtocol) throws {
        agentClient = EmbeddedChannel(loop: loop)
        agentUpstream = EmbeddedChannel(loop: loop)
        workload = EmbeddedChannel(loop: loop)
        let address = MeshFixture.workloadAddress

        let carrier = Carrier.inspect(MeshFixture.inspector, accessLog: CheckingAccessLog(), limit: HTTPHeadSizeLimit(), on: loop)
        try carrier.installUpstream(on: agentUpstream)
        agentUpstream.connect(to: address, promise: nil)

        let record = NIOLoopBound(record, eventLoop: loop)
        switch workloadProtocol {
        case .http1:
            try workload.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try workload.pipeline.syncOperations.addHandler(HTTP1Workload(record: record.value))
        case .http2:
            _ = try workload.pipeline.syncOperations.configureHTTP2Pipeline(
                mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()
            ) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(HTTP2WorkloadStream(record: record.value))
                }
            }
        }
        workload.connect(to: address, promise: nil)

        try carrier.installClient(on: agentClient)
        agentClient.connect(to: address, promise: nil)
        pump()
    }

    /// One connection's life with `bytes` from the client, checked.
    public static func run(clientBytes bytes: [UInt8], workload workloadProtocol: WorkloadProtocol) {
        precondition(canariesReachTheWorkload)
        life(bytes, workloadProtocol).requireOnlyAllowedRequestsReachedTheWorkload()
    }

    private static func life(_ bytes: [UInt8], _ workloadProtocol: WorkloadProtocol) -> InspectedConnectionHarness {
        let allowedBefore = AllowedRequestCounter.shared.value
        let harness: InspectedConnectionHarness
        do {
            harness = try InspectedConnectionHarness(workload: workloadProtocol)
        } catch {
            fatalError("the inspected connection cannot be set up: \(error)")
        }
        // In two reads, cut where the last byte says: the agent must read the
        // bytes the same however they arrive.
        let cut = bytes.last.map { Int($0) % bytes.count } ?? 0
        harness.clientSends(Array(bytes[..<cut]))
        harness.clientSends(Array(bytes[cut...]))
        harness.finish()
        harness.allowedRequests = AllowedRequestCounter.shared.value - allowedBefore
        return harness
    }

    /// Checked once per process: a request the fixture's policy allows does
    /// reach the workload. Without it, a setup that let nothing through would
    /// pass every input.
    private static let canariesReachTheWorkload: Bool = {
        let http1 = Array("GET /public/canary HTTP/1.1\r\nHost: orders.shop\r\n\r\n".utf8)
        for (bytes, workload) in [(http1, WorkloadProtocol.http1), (http2Canary(), .http2)] {
            let harness = life(bytes, workload)
            let seen = harness.requestsSeen.map(\.target)
            Fuzzing.require(seen == ["/public/canary"], "an allowed request reached the \(workload) workload as \(seen)")
            Fuzzing.require(harness.allowedRequests == 1, "the \(workload) canary counted \(harness.allowedRequests) allowed requests")
        }
        return true
    }()

    /// The preface, an empty SETTINGS frame, and a HEADERS frame that opens
    /// and ends stream 1.
    private static func http2Canary() -> [UInt8] {
        var block = ByteBuffer()
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        let request: HPACKHeaders = [":method": "GET", ":scheme": "http", ":authority": "orders.shop", ":path": "/public/canary"]
        do {
            try encoder.encode(headers: request, to: &block)
        } catch {
            fatalError("the canary request cannot be encoded: \(error)")
        }
        let length = block.readableBytes
        let headers: [UInt8] = [UInt8(length >> 16), UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length), 0x1, 0x5, 0, 0, 0, 1]
        return Fuzzing.http2Preface + [0, 0, 0, 0x4, 0, 0, 0, 0, 0] + headers + Array(block.readableBytesView)
    }

    /// Bytes from the client, in one read (a socket never reads none).
    private func clientSends(_ bytes: [UInt8]) {
        guard agentClient.isActive, !bytes.isEmpty else { return }
        _ = try? agentClient.writeInbound(ByteBuffer(bytes: bytes))
        pump()
    }

    /// The client half-closes, then everything closes, and every timer the
    /// agent set fires: the connection's whole life.
    private func finish() {
        agentClient.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        pump()
        for channel in [agentClient, workload, agentUpstream] {
            channel.close(promise: nil)
            pump()
        }
        loop.advanceTime(by: .minutes(10))
        pump()
        for channel in [agentClient, workload, agentUpstream] {
            _ = try? channel.finish(acceptAlreadyClosed: true)
        }
        try? loop.syncShutdownGracefully()
    }

    /// The requests the workload received, each as method and target.
    private var requestsSeen: [(method: String, target: String)] { record.requests }

    /// Fails the run if the workload got a request policy cannot allow, a
    /// target that is not normalized, or more requests than the agent allowed
    /// (one hidden in another's body): one the agent did not decide as sent.
    private func requireOnlyAllowedRequestsReachedTheWorkload() {
        Fuzzing.require(
            record.requests.count <= allowedRequests,
            "the workload got \(record.requests.count) requests where the agent allowed \(allowedRequests): \(record.requests)")
        for request in record.requests {
            let normalized = HTTPPath.normalize(request.target, rules: MeshFixture.workloadPolicy.pathRules)
            guard case .success(let target) = normalized else {
                Fuzzing.require(false, "the workload got \(request.method) \(request.target.debugDescription), which the agent refuses: \(normalized)")
                continue
            }
            Fuzzing.require(target.target == request.target, "the workload got \(request.target.debugDescription), not normalized (\(target.target))")
            Fuzzing.require(MeshFixture.mayReachWorkload(target.path), "the workload got \(request.method) \(request.target.debugDescription), which policy denies")
        }
    }

    /// Moves bytes between the agent and the workload until none move; what
    /// the agent answers the client is dropped.
    private func pump() {
        for _ in 0..<10_000 {
            loop.run()
            var moved = false
            while let bytes = try? agentUpstream.readOutbound(as: ByteBuffer.self) {
                moved = true
                if workload.isActive { _ = try? workload.writeInbound(bytes) }
            }
            while let bytes = try? workload.readOutbound(as: ByteBuffer.self) {
                moved = true
                if agentUpstream.isActive { _ = try? agentUpstream.writeInbound(bytes) }
            }
            while (try? agentClient.readOutbound(as: ByteBuffer.self)) != nil {
                moved = true
            }
            if !moved { return }
        }
        Fuzzing.require(false, "the agent and the workload never stop exchanging bytes")
    }
}

private final class WorkloadRecord {
    var requests: [(method: String, target: String)] = []
}

/// A workload speaking HTTP/1.1: 200 to every request once it has ended.
private final class HTTP1Workload: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let record: WorkloadRecord

    init(record: WorkloadRecord) {
        self.record = record
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            record.requests.append((head.method.rawValue, head.uri))
        case .body:
            break
        case .end:
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "2"])
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok")))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}

/// A workload stream speaking HTTP/2: 200 with trailers once the request ends.
private final class HTTP2WorkloadStream: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let record: WorkloadRecord

    init(record: WorkloadRecord) {
        self.record = record
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if let path = headers.headers.first(name: ":path") {
                record.requests.append((headers.headers.first(name: ":method") ?? "", path))
            }
            if headers.endStream { respond(context) }
        case .data(let data):
            if data.endStream { respond(context) }
        default:
            break
        }
    }

    private func respond(_ context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.headers(.init(headers: [":status": "200"]))), promise: nil)
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer(string: "ok"))))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: ["grpc-status": "0"], endStream: true))), promise: nil)
    }
}
