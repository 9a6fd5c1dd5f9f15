import NIOConcurrencyHelpers
import NIOCore

/// The connections the agent is proxying right now: admission against the
/// configured maximum, what each one is (for `agentctl connections`), and the
/// handle that drain uses to count them and close them at the deadline.
public final class ConnectionTracker: Sendable {
    private struct Tracked {
        var channel: Channel
        var entry: AccessLogEntry?
        var received: ByteCounter?
        var sent: ByteCounter?
    }

    private let tracked = NIOLockedValueBox<[ObjectIdentifier: Tracked]>([:])
    public let maximum: Int

    public init(maximum: Int) {
        self.maximum = maximum
    }

    public var count: Int {
        tracked.withLockedValue { $0.count }
    }

    /// Admits `channel` if there is room, and forgets it when it closes.
    func admit(_ channel: Channel) -> Bool {
        let key = ObjectIdentifier(channel)
        let admitted = tracked.withLockedValue { tracked -> Bool in
            guard tracked.count < maximum else { return false }
            tracked[key] = Tracked(channel: channel)
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [tracked] _ in
                tracked.withLockedValue { $0[key] = nil }
            }
        }
        return admitted
    }

    /// Records what an admitted connection is, once it is proxied.
    func describe(_ channel: Channel, as entry: AccessLogEntry, received: ByteCounter, sent: ByteCounter) {
        tracked.withLockedValue { tracked in
            tracked[ObjectIdentifier(channel)]?.entry = entry
            tracked[ObjectIdentifier(channel)]?.received = received
            tracked[ObjectIdentifier(channel)]?.sent = sent
        }
    }

    /// The proxied connections now, as access log entries with the bytes so far
    /// and their age as duration, oldest first.
    public func snapshot() -> [AccessLogEntry] {
        let now = wallClock()
        let entries = tracked.withLockedValue { tracked in
            tracked.values.compactMap { item -> AccessLogEntry? in
                guard var entry = item.entry else { return nil }
                entry.bytesReceived = item.received?.value ?? 0
                entry.bytesSent = item.sent?.value ?? 0
                entry.durationMilliseconds = max(0, (now - entry.time) * 1000)
                return entry
            }
        }
        return entries.sorted { $0.time < $1.time }
    }

    /// Closes every connection still open (the drain deadline passed). A tunnel
    /// stream goes with its whole peer connection: a stream whose peer stopped
    /// reading would otherwise wait for window to send its END_STREAM.
    public func closeAll() {
        for item in tracked.withLockedValue({ Array($0.values) }) {
            (item.channel.parent ?? item.channel).close(promise: nil)
        }
    }
}
