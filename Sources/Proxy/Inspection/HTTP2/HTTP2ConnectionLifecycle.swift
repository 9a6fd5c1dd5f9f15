import NIOCore
import NIOHTTP2

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
