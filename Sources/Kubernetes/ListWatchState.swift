/// How long to wait before the next attempt after failures: doubling from
/// `initial` up to `maximum`, less up to `jitter` of it at random, so that the
/// agents of a whole cluster do not come back to a restarted API server in
/// step.
public struct Backoff: Hashable, Sendable {
    public var initial: Duration
    public var maximum: Duration
    /// The share of each delay that is random, 0 to 1.
    public var jitter: Double

    public init(initial: Duration = .milliseconds(500), maximum: Duration = .seconds(30), jitter: Double = 0.5) {
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.jitter = min(max(jitter, 0), 1)
    }

    /// The delay after `failures` consecutive failures (1 or more);
    /// `random` in 0..<1 picks where in the jitter range it falls.
    public func delay(afterFailures failures: Int, random: Double) -> Duration {
        let doublings = min(max(failures - 1, 0), 30)
        var delay = initial
        for _ in 0..<doublings {
            delay *= 2
            if delay >= maximum { break }
        }
        delay = min(delay, maximum)
        let unit = min(max(random, 0), 1)
        return delay - delay * (jitter * unit)
    }
}

/// The list-then-watch cycle of one resource, as a value: events in, the next
/// thing to do out. The driver runs the actions and reports how they went;
/// this decides when to list again, when to resume a watch, and how long to
/// back off.
///
/// - A list gives the version to watch from; a watch resumes from the last
///   version seen (an event's or a bookmark's), so nothing is missed or seen
///   twice across reconnects.
/// - 410 Gone (on the request or as an `ERROR` event) means that version is no
///   longer kept: list again, at once.
/// - A watch the server ended after it worked (its `timeoutSeconds` ran out)
///   resumes at once; a failure, or a watch that ended before any event,
///   backs off, doubling while failures repeat.
struct ListWatchState: Sendable {
    enum Action: Equatable, Sendable {
        case list
        case watch(resourceVersion: String)
        case wait(Duration)
    }

    /// How a watch ended.
    enum WatchEnd: Equatable, Sendable {
        /// The server ended the response. `worked`: lines arrived, or it
        /// lasted long enough to be a server's timeout rather than a refusal.
        case closed(worked: Bool)
        /// 410 Gone: the version is too old.
        case gone
        /// An event could not be read (too large, not JSON): the cache may
        /// have missed a change, so only a list can set it right.
        case lostEvent
        /// An error (connection, HTTP status, decoding, idle timeout).
        case failed
    }

    let backoff: Backoff
    private(set) var resourceVersion: String?
    private(set) var consecutiveFailures = 0
    /// What to do once a wait is over.
    private var afterWait: Action = .list
    /// Watches started after the first one, for any reason.
    private(set) var watchRestarts = 0
    /// Lists after the first one.
    private(set) var relists = 0
    /// 410s in a row with no event between them; a server that answers
    /// every watch with 410 must not be listed in a tight loop.
    private var consecutiveGone = 0
    private var hasListed = false
    private var hasWatched = false

    init(backoff: Backoff) {
        self.backoff = backoff
    }

    func start() -> Action { .list }

    /// Whether the next list may come from the API server's watch cache
    /// (`resourceVersion=0`): cheap for the API server, where a node's pods
    /// are indexed, instead of a read of every pod in etcd, and what the
    /// watch then starts from catches up. After a 410 the cache itself may be
    /// behind what was seen, so the list is read from etcd.
    var listsFromCache: Bool { consecutiveGone == 0 }

    mutating func listed(resourceVersion: String) -> Action {
        if hasListed { relists += 1 }
        hasListed = true
        self.resourceVersion = resourceVersion
        consecutiveFailures = 0
        return watch()
    }

    mutating func listFailed(random: Double) -> Action {
        fail(then: .list, random: random)
    }

    /// A watch line carried this version (an object's or a bookmark's).
    mutating func observed(resourceVersion: String) {
        guard !resourceVersion.isEmpty else { return }
        self.resourceVersion = resourceVersion
        consecutiveFailures = 0
        consecutiveGone = 0
    }

    mutating func watchEnded(_ end: WatchEnd, random: Double) -> Action {
        switch end {
        case .gone:
            resourceVersion = nil
            consecutiveGone += 1
            if consecutiveGone == 1 { return .list }
            return fail(then: .list, random: random)
        case .lostEvent:
            resourceVersion = nil
            return fail(then: .list, random: random)
        case .closed(worked: true):
            return watch()
        case .closed(worked: false), .failed:
            return fail(then: resourceVersion == nil ? .list : .watch(resourceVersion: resourceVersion ?? ""), random: random)
        }
    }

    /// The wait is over: the action it was put before.
    mutating func waited() -> Action {
        if case .watch = afterWait, let resourceVersion {
            return watch(from: resourceVersion)
        }
        return .list
    }

    private mutating func watch() -> Action {
        guard let resourceVersion else { return .list }
        return watch(from: resourceVersion)
    }

    private mutating func watch(from version: String) -> Action {
        if hasWatched { watchRestarts += 1 }
        hasWatched = true
        return .watch(resourceVersion: version)
    }

    private mutating func fail(then next: Action, random: Double) -> Action {
        consecutiveFailures += 1
        afterWait = next
        return .wait(backoff.delay(afterFailures: consecutiveFailures, random: random))
    }
}
