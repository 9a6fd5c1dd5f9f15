import NIOConcurrencyHelpers
import NIOCore

/// The connections the agent is proxying right now: admission against the
/// configured maximum, and the handle that drain uses to count them and close
/// them at the deadline.
public final class ConnectionTracker: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
    public let maximum: Int

    public init(maximum: Int) {
        self.maximum = maximum
    }

    public var count: Int {
        channels.withLockedValue { $0.count }
    }

    /// Admits `channel` if there is room, and forgets it when it closes.
    func admit(_ channel: Channel) -> Bool {
        let key = ObjectIdentifier(channel)
        let admitted = channels.withLockedValue { channels -> Bool in
            guard channels.count < maximum else { return false }
            channels[key] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [channels] _ in
                channels.withLockedValue { $0[key] = nil }
            }
        }
        return admitted
    }

    /// Closes every connection still open (the drain deadline passed). A tunnel
    /// stream goes with its whole peer connection: a stream whose peer stopped
    /// reading would otherwise wait for window to send its END_STREAM.
    public func closeAll() {
        for channel in channels.withLockedValue({ Array($0.values) }) {
            (channel.parent ?? channel).close(promise: nil)
        }
    }
}
