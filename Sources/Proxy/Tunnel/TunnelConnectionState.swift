import NIOHTTP2

/// Where one peer connection of the tunnel server stands: how many streams
/// are open, the last one the peer opened, and whether the agent is draining.
/// `TunnelConnectionMonitor` feeds it the connection's events and carries out
/// the actions it returns.
struct TunnelConnectionState {
    enum Action: Equatable {
        case none
        /// No stream is open: close the connection if none opens within the idle timeout.
        case startIdleTimer
        case cancelIdleTimer
        /// Tell the peer to open no more streams; those up to `lastStreamID`
        /// finish. Close at once when `closeNow` (none is open).
        case sendGoAway(lastStreamID: HTTP2StreamID, closeNow: Bool)
        case close
    }

    private(set) var openStreams = 0
    /// The highest stream the peer opened: a GOAWAY naming it lets those finish
    /// and refuses any later one.
    private(set) var lastStream = HTTP2StreamID(0)
    private(set) var draining = false

    /// The connection was accepted: it starts with no stream.
    func connectionStarted() -> Action {
        .startIdleTimer
    }

    mutating func streamOpened(_ id: HTTP2StreamID) -> Action {
        openStreams += 1
        lastStream = max(lastStream, id)
        return .cancelIdleTimer
    }

    mutating func streamClosed() -> Action {
        openStreams = max(0, openStreams - 1)
        guard openStreams == 0 else { return .none }
        return draining ? .close : .startIdleTimer
    }

    /// The agent is draining: new streams go to a peer that is still accepting.
    mutating func drainRequested() -> Action {
        guard !draining else { return .none }
        draining = true
        return .sendGoAway(lastStreamID: lastStream, closeNow: openStreams == 0)
    }

    /// The idle timer ran out. A stream that opened since would have cancelled
    /// it; closing is still checked against the streams open now.
    func idleTimerFired() -> Action {
        openStreams == 0 ? .close : .none
    }
}
