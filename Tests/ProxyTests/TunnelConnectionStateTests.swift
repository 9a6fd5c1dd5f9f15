import NIOHTTP2
import Testing
@testable import Proxy

/// A tunnel server's peer connection, driven by events alone: idle timeout
/// only while no stream is open, and a drain that lets open streams finish.
@Suite struct TunnelConnectionStateTests {
    @Test func theIdleTimerRunsOnlyWhileNoStreamIsOpen() {
        var state = TunnelConnectionState()
        #expect(state.connectionStarted() == .startIdleTimer)
        #expect(state.streamOpened(1) == .cancelIdleTimer)
        #expect(state.streamOpened(3) == .cancelIdleTimer)
        #expect(state.streamClosed() == .none, "stream 3 is still open")
        #expect(state.idleTimerFired() == .none, "a stale timer never closes a busy connection")
        #expect(state.streamClosed() == .startIdleTimer)
        #expect(state.idleTimerFired() == .close)
    }

    @Test func drainingNamesTheLastStreamAndClosesWhenTheLastOneEnds() {
        var state = TunnelConnectionState()
        _ = state.streamOpened(5)
        _ = state.streamOpened(7)
        #expect(state.drainRequested() == .sendGoAway(lastStreamID: 7, closeNow: false))
        #expect(state.drainRequested() == .none, "one GOAWAY per connection")
        #expect(state.streamClosed() == .none)
        #expect(state.streamClosed() == .close, "drained: no idle timer, the connection goes")
    }

    @Test func drainingAnIdleConnectionClosesItAtOnce() {
        var state = TunnelConnectionState()
        _ = state.connectionStarted()
        #expect(state.drainRequested() == .sendGoAway(lastStreamID: 0, closeNow: true))
    }

    @Test func theLastStreamIsTheHighestOpenedNotTheLatest() {
        var state = TunnelConnectionState()
        _ = state.streamOpened(9)
        _ = state.streamClosed()
        _ = state.streamOpened(3)
        #expect(state.drainRequested() == .sendGoAway(lastStreamID: 9, closeNow: false))
    }
}
