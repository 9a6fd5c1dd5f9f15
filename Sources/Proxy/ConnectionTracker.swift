import NIOConcurrencyHelpers
import NIOCore

/// The connections the agent is proxying right now: admission against the
/// configured maximum, and the handle that drain uses to wait for them or close
/// them at the deadline.
public final class ConnectionTracker: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: Channel] = [:]
        var waiters: [EventLoopPromise<Void>] = []
    }

    private let state = NIOLockedValueBox(State())
    public let maximum: Int

    public init(maximum: Int) {
        self.maximum = maximum
    }

    public var count: Int {
        state.withLockedValue { $0.channels.count }
    }

    /// Admits `channel` if there is room, and forgets it when it closes.
    func admit(_ channel: Channel) -> Bool {
        let admitted = state.withLockedValue { state -> Bool in
            guard state.channels.count < maximum else { return false }
            state.channels[ObjectIdentifier(channel)] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [self] _ in forget(channel) }
        }
        return admitted
    }

    private func forget(_ channel: Channel) {
        let waiters = state.withLockedValue { state -> [EventLoopPromise<Void>] in
            state.channels[ObjectIdentifier(channel)] = nil
            guard state.channels.isEmpty else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.succeed(()) }
    }

    /// Succeeds once no connection is left.
    public func allClosed(on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let done = state.withLockedValue { state -> Bool in
            if state.channels.isEmpty { return true }
            state.waiters.append(promise)
            return false
        }
        if done { promise.succeed(()) }
        return promise.futureResult
    }

    /// Closes every connection still open (the drain deadline passed).
    public func closeAll() {
        let channels = state.withLockedValue { Array($0.channels.values) }
        for channel in channels {
            channel.close(promise: nil)
        }
    }
}
