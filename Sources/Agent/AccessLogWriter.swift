import Config
import Foundation
import Graph
#if canImport(Glibc)
import Glibc
#endif
import Metrics
import NIOConcurrencyHelpers
import NIOPosix
import Proxy
import Synchronization

/// The access log's token bucket and count of dropped lines, as a value: the
/// writer keeps it under its lock and passes the time in, so tests drive it
/// without sleeping.
///
/// Deny lines have their own share, a quarter of the rate and of the burst,
/// that allow lines cannot take: a flood of allowed requests cannot hide the
/// refusals, and a flood of refused connections is held to the same limit.
/// What one share's bucket cannot hold (it is full) flows to the other, so
/// either kind alone keeps the whole rate; the burst stays split, three
/// quarters for allow lines and one for deny lines.
public struct AccessLogRateLimit: Sendable {
    public enum Decision: Equatable, Sendable {
        case write
        case drop
        /// Lines were dropped and a second has passed since the first of them:
        /// write the summary line for `dropped` lines, then this line.
        case reportThenWrite(dropped: UInt64)
        /// This line is dropped too (it is counted in `dropped`); write the
        /// summary line.
        case dropAndReport(dropped: UInt64)
    }

    /// The deny lines' share of the rate and of the burst.
    static let denyShare = 0.25
    /// Summary lines are at least this far apart, so they cannot become a flood.
    static let reportInterval = 1.0

    private struct Bucket: Sendable {
        var tokens: Double
        let capacity: Double
        let rate: Double

        init(rate: Double, capacity: Double) {
            self.rate = rate
            self.capacity = capacity
            tokens = capacity
        }

        /// Adds tokens up to the capacity and returns what did not fit.
        @discardableResult
        mutating func add(_ amount: Double) -> Double {
            let filled = tokens + amount
            tokens = min(filled, capacity)
            return filled - tokens
        }

        mutating func take() -> Bool {
            guard tokens >= 1 else { return false }
            tokens -= 1
            return true
        }
    }

    private struct Shares: Sendable {
        var allow: Bucket
        var deny: Bucket
        var refilledAt: Double

        init(_ limit: AccessLogLimit, now: Double) {
            let rate = Double(limit.linesPerSecond)
            // Each share holds at least one line, or its kind could never write.
            let denyCapacity = max(1, (Double(limit.burst) * AccessLogRateLimit.denyShare).rounded(.down))
            let allowCapacity = max(1, Double(limit.burst) - denyCapacity)
            deny = Bucket(rate: rate * AccessLogRateLimit.denyShare, capacity: denyCapacity)
            allow = Bucket(rate: rate - deny.rate, capacity: allowCapacity)
            refilledAt = now
        }

        mutating func admit(_ action: AccessLogEntry.Action, now: Double) -> Bool {
            // Clocks read on different event loops reach the lock out of order;
            // an earlier time adds nothing rather than taking tokens back.
            let elapsed = max(0, now - refilledAt)
            refilledAt = max(refilledAt, now)
            // Between two lines nothing is taken, so what overflows now is
            // exactly what a full bucket could not hold over the interval.
            let allowOverflow = allow.add(elapsed * allow.rate)
            let denyOverflow = deny.add(elapsed * deny.rate)
            allow.add(denyOverflow)
            deny.add(allowOverflow)
            switch action {
            case .allow: return allow.take()
            case .deny: return deny.take()
            }
        }
    }

    private enum Budget: Sendable {
        case unlimited
        case limited(Shares)
    }

    /// Lines dropped and not yet reported, and when the first of them was.
    private struct Unreported: Sendable {
        var count: UInt64
        let since: Double
    }

    public let limit: AccessLogLimit
    private var budget: Budget
    private var unreported: Unreported?

    public init(_ limit: AccessLogLimit, now: Double) {
        self.limit = limit
        budget = limit.isUnlimited ? .unlimited : .limited(Shares(limit, now: now))
    }

    /// Whether a line with this action may be written at `now` (seconds on a
    /// clock that never jumps), and whether the summary line is due.
    public mutating func admit(_ action: AccessLogEntry.Action, now: Double) -> Decision {
        let admitted: Bool
        switch budget {
        case .unlimited:
            admitted = true
        case .limited(var shares):
            admitted = shares.admit(action, now: now)
            budget = .limited(shares)
        }
        if !admitted {
            unreported = Unreported(count: (unreported?.count ?? 0) + 1, since: unreported?.since ?? now)
        }
        switch (admitted, takeReport(now: now)) {
        case (true, nil): return .write
        case (false, nil): return .drop
        case (true, let dropped?): return .reportThenWrite(dropped: dropped)
        case (false, let dropped?): return .dropAndReport(dropped: dropped)
        }
    }

    /// The number of dropped lines to report, if there are any and a second has
    /// passed since the first of them; they count as reported.
    public mutating func takeReport(now: Double) -> UInt64? {
        guard let pending = unreported, now - pending.since >= Self.reportInterval else { return nil }
        unreported = nil
        return pending.count
    }

    /// Every dropped line not yet reported, however recent: for the last
    /// summary line, when the log is closed.
    public mutating func takeAllUnreported() -> UInt64? {
        defer { unreported = nil }
        return unreported?.count
    }

    /// Starts over with another limit (a full bucket); dropped lines not yet
    /// reported are still reported.
    public mutating func change(to limit: AccessLogLimit, now: Double) {
        let pending = unreported
        self = AccessLogRateLimit(limit, now: now)
        unreported = pending
    }
}

/// The writer's clocks, injectable so that tests need not sleep.
struct AccessLogClock: Sendable {
    /// Seconds on a clock that never jumps: the bucket refills by it.
    var monotonic: @Sendable () -> Double
    /// Seconds since the epoch: the summary line's `time`.
    var wall: @Sendable () -> Double

    static let system = AccessLogClock(
        monotonic: { Self.read(CLOCK_MONOTONIC) },
        wall: { Self.read(CLOCK_REALTIME) }
    )

    private static func read(_ clock: clockid_t) -> Double {
        var now = timespec()
        clock_gettime(clock, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1_000_000_000
    }
}

/// Appends access-log lines to a file (or stdout for "-"). Lines are whole and
/// never interleave: they are added under a lock. Lines recorded on an event
/// loop are written together when that loop's current tick is done (a `write(2)`
/// per line cost a request-rate through L7 policy several percent); lines from
/// elsewhere, and a buffer grown past `batchLimit`, are written at once. Lines
/// over the rate limit are dropped; a summary line says how many, at most once
/// a second.
///
/// Every line is also an observation of the service graph, counted on the
/// event loop that recorded it (`GraphTally`), outside the line's lock: the
/// access log already sees every connection and inspected request with its
/// decision, so the graph adds no lock, no hop and no second decision path.
/// Lines the rate limit drops, and allowed requests that get no line, are
/// counted in the graph too.
public final class AccessLogWriter: AccessLogSink {
    /// Everything a line needs, under one lock taken once per line.
    private struct State {
        var descriptor: Int32
        var rateLimit: AccessLogRateLimit
        /// Lines recorded and not yet written, in order.
        var pending: [UInt8] = []
        /// A write of `pending` is scheduled on an event loop.
        var writeScheduled = false
    }

    static let batchLimit = 64 * 1024

    private let state: NIOLockedValueBox<State>
    private let ownsDescriptor: Bool
    private let clock: AccessLogClock
    public let path: String
    /// Whether allowed HTTP requests get a line (`accessLog.requests: all`);
    /// read without the lock, since a skipped line must cost nothing more.
    private let allowedRequests: Synchronization.Atomic<Bool>
    private let writeFailures = Counter(label: "mesh_agent_access_log_write_failures_total")
    private let dropped = Counter(label: "mesh_agent_access_log_dropped_total")

    /// A writer of every line to `path`, without a graph (micro-benchmarks).
    package convenience init(path: String, limit: AccessLogLimit) throws {
        try self.init(path: path, limit: limit, requests: .all, clock: .system, graph: nil)
    }

    convenience init(path: String, limit: AccessLogLimit = .default, requests: AccessLogRequests = .all, graph: GraphTally? = nil) throws {
        try self.init(path: path, limit: limit, requests: requests, clock: .system, graph: graph)
    }

    init(path: String, limit: AccessLogLimit, requests: AccessLogRequests = .all, clock: AccessLogClock, graph: GraphTally? = nil) throws {
        self.path = path
        self.clock = clock
        allowedRequests = Synchronization.Atomic(requests == .all)
        ownsDescriptor = path != "-"
        let descriptor = ownsDescriptor ? try Self.open(path) : STDOUT_FILENO
        state = NIOLockedValueBox(
            State(descriptor: descriptor, rateLimit: AccessLogRateLimit(limit, now: clock.monotonic())))
        self.graph = graph
    }

    /// Where lines are counted as graph edges; nil when the graph is off.
    private let graph: GraphTally?

    private static func open(_ path: String) throws -> Int32 {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        }
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw AgentError.accessLog(path: path, reason: String(cString: strerror(errno)))
        }
        return fd
    }

    /// Opens the path again, for log rotation (SIGUSR1 after logrotate moved the
    /// file away). Lines keep going to the old file until the new one is open;
    /// if it cannot be opened they keep going there, and the error says why.
    public func reopen() throws {
        guard ownsDescriptor else { return }
        let fresh = try Self.open(path)
        let old = state.withLockedValue { state in
            // What was recorded before the rotation belongs in the old file.
            writePending(&state)
            defer { state.descriptor = fresh }
            return state.descriptor
        }
        close(old)
    }

    /// The limit in force.
    public var limit: AccessLogLimit {
        state.withLockedValue { $0.rateLimit.limit }
    }

    /// Puts another limit in force at once (a configuration reload), with a
    /// full bucket.
    public func change(limit: AccessLogLimit) {
        let now = clock.monotonic()
        state.withLockedValue { $0.rateLimit.change(to: limit, now: now) }
    }

    /// Which requests get a line from now on (a configuration reload).
    public func change(requests: AccessLogRequests) {
        allowedRequests.store(requests == .all, ordering: .relaxed)
    }

    public var requests: AccessLogRequests {
        allowedRequests.load(ordering: .relaxed) ? .all : .denied
    }

    public func record(_ entry: AccessLogEntry) {
        observe(entry)
        // An allowed request with `requests: denied` gets no line, but the graph has counted it.
        if entry.isRequest, entry.action == .allow, !allowedRequests.load(ordering: .relaxed) { return }
        // Formatted before the lock, to keep the lock short; in a flood some of
        // this work is for lines that are then dropped.
        let line = entry.jsonLineBytes()
        let now = clock.monotonic()
        let loop = MultiThreadedEventLoopGroup.currentEventLoop
        var scheduleWrite = false
        let kept = line.withUnsafeBufferPointer { bytes in
            state.withLockedValue { state -> Bool in
                switch state.rateLimit.admit(entry.action, now: now) {
                case .write:
                    break
                case .drop:
                    return false
                case .reportThenWrite(let count):
                    appendSummary(dropped: count, to: &state)
                case .dropAndReport(let count):
                    appendSummary(dropped: count, to: &state)
                    writePending(&state)
                    return false
                }
                state.pending.append(contentsOf: bytes)
                if loop == nil || state.pending.count >= Self.batchLimit {
                    writePending(&state)
                } else if !state.writeScheduled {
                    state.writeScheduled = true
                    scheduleWrite = true
                }
                return true
            }
        }
        if !kept { dropped.increment() }
        if scheduleWrite, let loop {
            loop.execute { [self] in flush() }
        }
    }

    public var observesRequests: Bool { graph?.watchesRequests ?? false }

    /// Counts `entry` in the graph without writing a line.
    public func observe(_ entry: AccessLogEntry) {
        guard let graph, let observation = EdgeObservation(entry) else { return }
        graph.add(observation)
    }

    /// Writes an event line (a new edge) at once, outside the rate limit:
    /// the caller bounds how many it writes.
    public func recordEvent(_ line: [UInt8]) {
        state.withLockedValue { state in
            state.pending.append(contentsOf: line)
            writePending(&state)
        }
    }

    /// Writes the lines recorded so far.
    public func flush() {
        state.withLockedValue { state in
            state.writeScheduled = false
            writePending(&state)
        }
    }

    private func writePending(_ state: inout State) {
        guard !state.pending.isEmpty else { return }
        state.pending.withUnsafeBufferPointer { writeAll($0, to: state.descriptor) }
        state.pending.removeAll(keepingCapacity: state.pending.capacity <= 4 * Self.batchLimit)
    }

    /// Writes the summary line now if lines were dropped a second ago or more
    /// and not yet reported. For a periodic tick: the end of a flood is then in
    /// the log even when no further line comes to carry the summary.
    public func writeDropSummary() {
        let now = clock.monotonic()
        state.withLockedValue { state in
            guard let count = state.rateLimit.takeReport(now: now) else { return }
            appendSummary(dropped: count, to: &state)
            writePending(&state)
        }
    }

    /// `{"time":"…","dropped":N,"reason":"access log rate limit"}`: where the
    /// gap is, in the log itself. Called under the lock, at most once a second.
    private func appendSummary(dropped count: UInt64, to state: inout State) {
        var line = Self.summaryLine(dropped: count, time: clock.wall())
        line.withUTF8 { state.pending.append(contentsOf: $0) }
    }

    static func summaryLine(dropped count: UInt64, time: Double) -> String {
        "{\"time\":\"\(AccessLogEntry.formatTime(time))\",\"dropped\":\(count),\"reason\":\"access log rate limit\"}\n"
    }

    private func writeAll(_ bytes: UnsafeBufferPointer<UInt8>, to descriptor: Int32) {
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let written = write(descriptor, base + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                writeFailures.increment()
                return
            }
            offset += written
        }
    }

    deinit {
        state.withLockedValue { state in
            // The last gap is reported even if it is younger than a second.
            if let count = state.rateLimit.takeAllUnreported() {
                appendSummary(dropped: count, to: &state)
            }
            writePending(&state)
            if ownsDescriptor { close(state.descriptor) }
        }
    }
}

