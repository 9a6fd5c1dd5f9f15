import LinuxNet
import NIOCore
import NIOHTTP2

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
    func report(_ entry: AccessLogEntry) {
        requestCounters.record(entry)
        accessLog.record(entry)
    }

    func attachWorkload(multiplexer: NIOHTTP2Handler.StreamMultiplexer, watcher: HTTP2ConnectionWatcher) {
        self.multiplexer = multiplexer
        workloadWatcher = watcher
    }

    func attachClient(watcher: HTTP2ConnectionWatcher) {
        clientWatcher = watcher
    }

    /// A stream to the workload for `client`'s request, or nil when the
    /// workload's connection is going away.
    func openWorkloadStream(for client: HTTP2RequestStream) -> HTTP2WorkloadStream? {
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

    func streamOpened() {
        lifecycle.streamOpened()
    }

    func streamClosed() {
        perform(lifecycle.streamClosed())
    }

    func streamCreated(_ id: HTTP2StreamID) {
        lifecycle.streamCreated(id)
    }

    func clientInputEnded() {
        perform(lifecycle.clientInputEnded())
    }

    func clientClosed() {
        perform(lifecycle.clientClosed())
        clientWatcher = nil
    }

    func workloadGoingAway() {
        perform(lifecycle.workloadGoingAway())
    }

    func workloadClosed() {
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

extension HTTP2ProxyConnection {
    /// Logs a request NIOHTTP2 refused for its header block (with RST_STREAM
    /// PROTOCOL_ERROR, as RFC 9113 asks); it never became a stream, so this
    /// is its only line.
    func refusedHeaderBlock(_ error: Error) {
        accessLog.record(inspector.refusedEntry("malformed HTTP/2 header block (\(String(describing: type(of: error))))"))
    }
}
