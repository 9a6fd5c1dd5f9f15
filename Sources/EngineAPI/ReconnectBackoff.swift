/// How long to wait before connecting again: doubling from `initial` up to
/// `maximum`, each delay shortened by up to `jitter` of itself so that the
/// agents of many nodes do not all hit a restarted engine at once.
public struct ReconnectBackoff: Hashable, Sendable {
    public var initial: Duration
    public var maximum: Duration
    /// 0 (none) to 1 (a delay may shrink to nothing).
    public var jitter: Double
    /// Failures since the last reset.
    public private(set) var failures = 0

    public init(initial: Duration = .milliseconds(200), maximum: Duration = .seconds(30), jitter: Double = 0.2) {
        self.initial = max(initial, .milliseconds(1))
        self.maximum = max(maximum, self.initial)
        self.jitter = min(max(jitter, 0), 1)
    }

    /// The delay before the next attempt, counting one more failure.
    /// `random` is in 0..<1.
    public mutating func nextDelay(random: Double) -> Duration {
        // Doubling stops once past the maximum, so the count cannot overflow
        // a Duration however long the engine stays away.
        var delay = initial
        var step = 0
        while step < failures && delay < maximum {
            delay *= 2
            step += 1
        }
        delay = min(delay, maximum)
        failures += 1
        let shrink = min(max(random, 0), 1) * jitter
        return delay * (1 - shrink)
    }

    /// The engine is back: the next failure waits `initial` again.
    public mutating func reset() {
        failures = 0
    }
}
