import LinuxNet
import NIOCore
import NIOHTTP1
import Policy

/// How a proxied connection is carried between its client and its upstream:
/// bytes spliced as they are (with `watch`, their HTTP/1.x request heads
/// reported on the way), or HTTP requests read and decided one by one:
/// HTTP/1.1 passed on as the bytes it came as, HTTP/2 stream by stream.
enum Carrier {
    case splice(NIOLoopBound<SplicePair>, watch: HTTPRequestTap.Watch?)
    case inspect(NIOLoopBound<InspectedConnection>)

    static func splice(on eventLoop: EventLoop, watching watch: HTTPRequestTap.Watch? = nil) -> Carrier {
        .splice(SplicePair.make(on: eventLoop), watch: watch)
    }

    static func inspect(_ inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, on eventLoop: EventLoop) -> Carrier {
        .inspect(NIOLoopBound(InspectedConnection(inspector: inspector, accessLog: accessLog, limit: limit), eventLoop: eventLoop))
    }

    /// Adds the upstream side's handlers; called while the upstream connects.
    func installUpstream(on channel: Channel) throws {
        switch self {
        case .splice(let handlers, _):
            try channel.pipeline.syncOperations.addHandler(handlers.value.upstream)
        case .inspect(let connection):
            try connection.value.installUpstream(on: channel)
        }
    }

    /// Adds the client side's handlers, once the upstream is connected.
    func installClient(on channel: Channel) throws {
        switch self {
        case .splice(let handlers, let watch):
            if let watch { try channel.pipeline.syncOperations.addHandler(HTTPRequestTap(watch)) }
            try channel.pipeline.syncOperations.addHandler(handlers.value.client)
        case .inspect(let connection):
            try connection.value.installClient(on: channel)
        }
    }

    /// Hands a plain splice to the kernel (`SplicePair.handOver`); nil when
    /// the event loops carry it: inspected, watched, or not two sockets.
    func handOver(client: Channel, upstream: Channel, to splicer: KernelSplicer) -> KernelSplice? {
        guard case .splice(let handlers, watch: nil) = self else { return nil }
        return handlers.value.handOver(client: client, upstream: upstream, to: splicer)
    }

    /// Bytes that came from the client.
    var received: ByteCounter {
        switch self {
        case .splice(let handlers, _): return handlers.value.client.received
        case .inspect(let connection): return connection.value.received
        }
    }

    /// Bytes that went back to the client.
    var sent: ByteCounter {
        switch self {
        case .splice(let handlers, _): return handlers.value.upstream.received
        case .inspect(let connection): return connection.value.sent
        }
    }
}

/// An inspected connection, whose protocol its client's first bytes decide.
///
/// The upstream is dialled before the client has sent anything, so its side
/// starts with a hold that keeps it from reading, and the client's side with a
/// sniffer. Once the sniffer knows the protocol, that protocol's handlers go in
/// on both sides, the upstream starts reading, and the sniffer hands on the
/// bytes it held. The byte counters are made up front, because the connection
/// is tracked before its protocol is known; either protocol counts into them.
final class InspectedConnection {
    private let inspector: HTTPRequestInspector
    private let accessLog: AccessLogSink
    private let limit: HTTPHeadSizeLimit
    private var client: Channel?
    private var upstream: Channel?
    private var hold: UpstreamReadHold?
    /// Bytes from the client, and back to it.
    let received = ByteCounter()
    let sent = ByteCounter()

    init(inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit) {
        self.inspector = inspector
        self.accessLog = accessLog
        self.limit = limit
    }

    func installUpstream(on channel: Channel) throws {
        // The handlers' closures keep this object alive until the protocol is
        // known; they leave their pipelines then (or when the channel closes).
        let hold = UpstreamReadHold {
            // The workload closed before the client said anything: nothing can be forwarded.
            self.client?.close(promise: nil)
        }
        try channel.pipeline.syncOperations.addHandler(hold)
        upstream = channel
        self.hold = hold
    }

    func installClient(on channel: Channel) throws {
        client = channel
        let sniffer = ProtocolSniffer(
            install: { found in
                do {
                    try self.install(found)
                } catch {
                    self.upstream?.close(promise: nil)
                    throw error
                }
            },
            abandoned: {
                self.upstream?.close(promise: nil)
            })
        try channel.pipeline.syncOperations.addHandler(sniffer)
    }

    /// Installs `found`'s handlers on both sides (the client's behind the
    /// sniffer, which is last in its pipeline) and lets the upstream read.
    private func install(_ found: InspectedProtocol) throws {
        guard let client, let upstream, let hold else {
            throw InspectionSetupError.incomplete
        }
        guard upstream.isActive else {
            throw InspectionSetupError.upstreamClosed
        }
        switch found {
        case .http1:
            let handlers = HTTP1Inspection.handlers(inspector: inspector, accessLog: accessLog, limit: limit, received: received, sent: sent)
            try upstream.pipeline.syncOperations.addHandler(handlers.upstream)
            try client.pipeline.syncOperations.addHandler(handlers.client)
        case .http2:
            try HTTP2Inspection.install(
                client: client, upstream: upstream, inspector: inspector, accessLog: accessLog, limit: limit,
                received: received, sent: sent)
        }
        self.hold = nil
        hold.release()
    }
}

enum InspectionSetupError: Error, CustomStringConvertible {
    case incomplete
    case upstreamClosed

    var description: String {
        switch self {
        case .incomplete:
            return "the inspected connection's client spoke before both of its sides were set up"
        case .upstreamClosed:
            return "the workload closed its connection before the client's first request"
        }
    }
}
