import Metrics
import Synchronization

/// Counts the requests the request decision allowed, as the inspector's
/// authorizer reports them (the L7 `allow` decisions counter); every other
/// metric is dropped. No connection may bring the workload more requests
/// than were allowed on it.
final class AllowedRequestCounter: MetricsFactory, CounterHandler {
    /// Bootstrapped on first use, before the harness makes any authorizer.
    static let shared: AllowedRequestCounter = {
        let counter = AllowedRequestCounter()
        MetricsSystem.bootstrap(counter)
        return counter
    }()

    private let count = Mutex<Int64>(0)

    var value: Int64 { count.withLock { $0 } }

    func increment(by amount: Int64) {
        count.withLock { $0 += amount }
    }

    func reset() {}

    func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler {
        let allowedRequests = label == "mesh_agent_authorization_decisions_total"
            && dimensions.contains { $0 == ("layer", "l7") } && dimensions.contains { $0 == ("decision", "allow") }
        return allowedRequests ? self : NOOPMetricsHandler.instance
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler {
        NOOPMetricsHandler.instance
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler {
        NOOPMetricsHandler.instance
    }

    func destroyCounter(_ handler: CounterHandler) {}
    func destroyRecorder(_ handler: RecorderHandler) {}
    func destroyTimer(_ handler: TimerHandler) {}
}
