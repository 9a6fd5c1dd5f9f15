import NIOCore
import NIOHTTP1
import Policy

/// How a proxied connection is carried between its client and its upstream:
/// bytes spliced as they are, or HTTP requests decoded, decided one by one and
/// encoded again.
enum Carrier {
    case splice(NIOLoopBound<SplicePair>)
    case inspect(NIOLoopBound<(gate: HTTPRequestGate, relay: HTTPUpstreamRelay)>, limit: HTTPHeadSizeLimit)

    static func splice(on eventLoop: EventLoop) -> Carrier {
        .splice(SpliceHandler.pair(on: eventLoop))
    }

    static func inspect(_ inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, on eventLoop: EventLoop) -> Carrier {
        let (gate, relay) = HTTPUpstreamRelay.pair(inspector: inspector, accessLog: accessLog, limit: limit)
        return .inspect(NIOLoopBound((gate: gate, relay: relay), eventLoop: eventLoop), limit: limit)
    }

    /// Adds the upstream side's handlers; called while the upstream connects.
    func installUpstream(on channel: Channel) throws {
        let operations = channel.pipeline.syncOperations
        switch self {
        case .splice(let handlers):
            try operations.addHandler(handlers.value.upstream)
        case .inspect(let handlers, _):
            // The response decoder watches the requests written through it, to
            // know which responses (to HEAD) have no body.
            try operations.addHandler(HTTPRequestEncoder())
            try operations.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward)))
            try operations.addHandler(handlers.value.relay)
        }
    }

    /// Adds the client side's handlers, once the upstream is connected.
    func installClient(on channel: Channel) throws {
        let operations = channel.pipeline.syncOperations
        switch self {
        case .splice(let handlers):
            try operations.addHandler(handlers.value.client)
        case .inspect(let handlers, let limit):
            try operations.addHandler(limit.makeRequestDecoder())
            try operations.addHandler(HTTPResponseEncoder())
            try operations.addHandler(handlers.value.gate)
        }
    }

    /// Bytes that came from the client.
    var received: ByteCounter {
        switch self {
        case .splice(let handlers): return handlers.value.client.received
        case .inspect(let handlers, _): return handlers.value.gate.received
        }
    }

    /// Bytes that went back to the client.
    var sent: ByteCounter {
        switch self {
        case .splice(let handlers): return handlers.value.upstream.received
        case .inspect(let handlers, _): return handlers.value.gate.sent
        }
    }
}
