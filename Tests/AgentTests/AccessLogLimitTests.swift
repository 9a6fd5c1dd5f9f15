import Config
import Foundation
import Proxy
import Testing
@testable import Agent

@Suite struct AccessLogLimitTests {
    typealias Decision = AccessLogRateLimit.Decision

    /// 100 lines/s and a burst of 40: deny lines hold 10 of the burst and
    /// 25 lines/s, allow lines 30 and 75 lines/s.
    static let limit = AccessLogLimit(linesPerSecond: 100, burst: 40)

    private func admitted(_ count: Int, _ action: AccessLogEntry.Action, at now: Double, in bucket: inout AccessLogRateLimit) -> Int {
        (0..<count).reduce(0) { written, _ in
            switch bucket.admit(action, now: now) {
            case .write, .reportThenWrite: return written + 1
            case .drop, .dropAndReport: return written
            }
        }
    }

    @Test func aFullBucketTakesTheBurstAtOnceThenDrops() {
        var bucket = AccessLogRateLimit(Self.limit, now: 0)
        #expect(admitted(100, .allow, at: 0, in: &bucket) == 30, "allow lines alone burst to three quarters")
        #expect(admitted(100, .deny, at: 0, in: &bucket) == 10, "the deny quarter was still there")
        #expect(bucket.admit(.allow, now: 0) == .drop)
        #expect(bucket.admit(.deny, now: 0) == .drop)
    }

    @Test func theBucketRefillsAtTheRateAndAnIdleShareFlowsToTheOther() {
        var bucket = AccessLogRateLimit(Self.limit, now: 0)
        _ = admitted(30, .allow, at: 0, in: &bucket)
        // A quarter second: 18.75 tokens of allow's own rate, and the 6.25 of
        // deny's that its full bucket cannot hold; allow lines alone keep the
        // whole rate.
        #expect(admitted(100, .allow, at: 0.25, in: &bucket) == 25)
        #expect(admitted(100, .allow, at: 0.25, in: &bucket) == 0)
        #expect(admitted(100, .allow, at: 0.265625, in: &bucket) == 1, "1/64 s is 1.5625 lines")
        // Ten idle seconds fill the allow share to its capacity, no more.
        #expect(admitted(1000, .allow, at: 10.25, in: &bucket) == 30)
    }

    @Test func aClockReadOutOfOrderTakesNothingBack() {
        var bucket = AccessLogRateLimit(Self.limit, now: 10)
        _ = admitted(30, .allow, at: 10, in: &bucket)
        #expect(admitted(10, .allow, at: 9, in: &bucket) == 0)
        #expect(admitted(100, .allow, at: 10.25, in: &bucket) == 25)
    }

    /// 10,000 allowed requests a second for 10 s, with 20 refusals a second among
    /// them: every refusal is in the log, and the total stays within the limit.
    @Test func aFloodOfAllowLinesDoesNotStarveDenyLines() {
        var bucket = AccessLogRateLimit(Self.limit, now: 0)
        var allowWritten = 0
        var denyWritten = 0
        var denyOffered = 0
        for millisecond in 1...10_000 {
            let now = Double(millisecond) / 1000
            allowWritten += admitted(10, .allow, at: now, in: &bucket)
            if millisecond % 50 == 0 {
                denyOffered += 1
                denyWritten += admitted(1, .deny, at: now, in: &bucket)
            }
        }
        #expect(denyOffered == 200)
        #expect(denyWritten == 200)
        #expect(allowWritten + denyWritten <= 100 * 10 + 40)
        #expect(allowWritten >= 75 * 10, "allow lines keep at least their own share")
    }

    /// A flood of refused connections is bounded like any other, and cannot
    /// starve allow lines either.
    @Test func aFloodOfDenyLinesIsBoundedAndLeavesAllowLinesTheirShare() {
        var bucket = AccessLogRateLimit(Self.limit, now: 0)
        var allowWritten = 0
        var denyWritten = 0
        for millisecond in 1...10_000 {
            let now = Double(millisecond) / 1000
            denyWritten += admitted(10, .deny, at: now, in: &bucket)
            if millisecond % 20 == 0 {
                allowWritten += admitted(1, .allow, at: now, in: &bucket)
            }
        }
        #expect(allowWritten == 500, "50 allow lines a second are within their share of 75")
        #expect(allowWritten + denyWritten <= 100 * 10 + 40)
        #expect(denyWritten >= 25 * 10)
    }

    @Test func zeroLinesPerSecondIsUnlimited() {
        var bucket = AccessLogRateLimit(.unlimited, now: 0)
        #expect(admitted(1_000_000, .allow, at: 0, in: &bucket) == 1_000_000)
        #expect(admitted(1_000_000, .deny, at: 0, in: &bucket) == 1_000_000)
        #expect(bucket.takeReport(now: 100) == nil)
    }

    @Test func droppedLinesAreReportedOnceASecondWithTheirCount() {
        // Allow lines: a burst of 3 and 4 lines a second (their 3 and deny's idle 1).
        var bucket = AccessLogRateLimit(AccessLogLimit(linesPerSecond: 4, burst: 4), now: 0)
        #expect(admitted(3, .allow, at: 0, in: &bucket) == 3)
        #expect(admitted(5, .allow, at: 0.1, in: &bucket) == 0)
        #expect(bucket.admit(.allow, now: 0.2) == .drop)
        // Less than a second since the first drop: written without a summary.
        #expect(bucket.admit(.allow, now: 0.9) == .write)
        #expect(admitted(2, .allow, at: 0.9, in: &bucket) == 2)
        #expect(bucket.admit(.allow, now: 1.0) == .drop)
        #expect(bucket.admit(.allow, now: 1.1) == .dropAndReport(dropped: 8))
        // The next summary counts from the next drop, a second later at the earliest.
        #expect(bucket.admit(.allow, now: 1.12) == .drop)
        #expect(bucket.takeReport(now: 2.1) == nil)
        #expect(bucket.admit(.allow, now: 2.3) == .reportThenWrite(dropped: 1))
        #expect(bucket.takeReport(now: 10) == nil, "nothing dropped since")
    }

    @Test func aChangedLimitStartsFullAndKeepsTheUnreportedCount() {
        var bucket = AccessLogRateLimit(AccessLogLimit(linesPerSecond: 4, burst: 4), now: 0)
        #expect(admitted(10, .allow, at: 0, in: &bucket) == 3)
        bucket.change(to: .unlimited, now: 0.5)
        #expect(bucket.limit == .unlimited)
        #expect(admitted(100, .allow, at: 0.5, in: &bucket) == 100)
        #expect(bucket.admit(.allow, now: 1) == .reportThenWrite(dropped: 7))
    }

    @Test func theDefaultKeepsAFewThousandLinesASecond() {
        var bucket = AccessLogRateLimit(.default, now: 0)
        var written = 0
        for millisecond in 1...10_000 {
            written += admitted(4, .allow, at: Double(millisecond) / 1000, in: &bucket)
        }
        #expect(written == 40_000, "4,000 lines a second are all kept")
    }

    @Test func timesAreWrittenAsTheAccessLogWritesThem() {
        #expect(AccessLogEntry.formatTime(0) == "1970-01-01T00:00:00.000Z")
        #expect(AccessLogEntry.formatTime(1_795_390_867.123) == "2026-11-22T23:41:07.123Z")
        #expect(AccessLogWriter.summaryLine(dropped: 12, time: 0)
            == "{\"time\":\"1970-01-01T00:00:00.000Z\",\"dropped\":12,\"reason\":\"access log rate limit\"}\n")
    }

    // MARK: - The writer

    /// A clock the test moves by hand.
    final class ManualClock: @unchecked Sendable {
        private let lock = NSLock()
        private var seconds = 0.0

        var now: Double {
            get { lock.withLock { seconds } }
            set { lock.withLock { seconds = newValue } }
        }

        var accessLogClock: AccessLogClock {
            AccessLogClock(monotonic: { self.now }, wall: { 1_795_390_867 + self.now })
        }
    }

    private static func temporaryLog() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("access-log-limit-\(UUID().uuidString).log").path
    }

    private static func entry(_ action: AccessLogEntry.Action, _ reason: String) -> AccessLogEntry {
        AccessLogEntry(time: 0, direction: .inbound, tls: .mutual, action: action, reason: reason)
    }

    private static func lines(_ path: String) throws -> [[String: Any]] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
    }

    @Test func theWriterDropsOverTheLimitAndWritesOneSummaryASecond() throws {
        let path = Self.temporaryLog()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let clock = ManualClock()
        let writer = try AccessLogWriter(path: path, limit: AccessLogLimit(linesPerSecond: 4, burst: 4), clock: clock.accessLogClock)

        for index in 0..<10 { writer.record(Self.entry(.allow, "burst \(index)")) }
        writer.record(Self.entry(.deny, "refused"))
        clock.now = 0.5
        writer.record(Self.entry(.allow, "refilled"))  // 1.5 tokens: written
        writer.record(Self.entry(.allow, "dropped"))
        writer.writeDropSummary()  // the first drop is younger than a second
        clock.now = 1.0
        writer.record(Self.entry(.allow, "carries the summary"))
        clock.now = 1.2
        writer.record(Self.entry(.allow, "after the summary"))  // 1.6 tokens
        writer.record(Self.entry(.allow, "dropped after the summary"))
        writer.writeDropSummary()
        clock.now = 2.2
        writer.writeDropSummary()
        writer.writeDropSummary()

        let lines = try Self.lines(path)
        #expect(lines.map { $0["reason"] as? String } == [
            "burst 0", "burst 1", "burst 2", "refused", "refilled",
            "access log rate limit", "carries the summary", "after the summary",
            "access log rate limit",
        ])
        #expect(lines[5]["dropped"] as? Int == 8)
        #expect(lines[5]["time"] as? String == "2026-11-22T23:41:08.000Z")
        #expect(lines[8]["dropped"] as? Int == 1)
        #expect(lines[8]["time"] as? String == "2026-11-22T23:41:09.200Z")
        #expect(lines[8].count == 3, "a summary line has time, dropped and reason only")
    }

    @Test func closingTheWriterReportsTheLastGap() throws {
        let path = Self.temporaryLog()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let clock = ManualClock()
        do {
            let writer = try AccessLogWriter(path: path, limit: AccessLogLimit(linesPerSecond: 4, burst: 4), clock: clock.accessLogClock)
            for _ in 0..<5 { writer.record(Self.entry(.allow, "line")) }
        }
        let lines = try Self.lines(path)
        #expect(lines.count == 4)
        #expect(lines.last?["dropped"] as? Int == 2)
    }

    @Test func theWriterTakesANewLimitAtOnce() throws {
        let path = Self.temporaryLog()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let clock = ManualClock()
        let writer = try AccessLogWriter(path: path, limit: AccessLogLimit(linesPerSecond: 4, burst: 4), clock: clock.accessLogClock)
        writer.change(limit: .unlimited)
        #expect(writer.limit == .unlimited)
        for _ in 0..<50 { writer.record(Self.entry(.allow, "line")) }
        #expect(try Self.lines(path).count == 50)
    }

    @Test func theWriterDefaultsToTheDefaultLimit() throws {
        let path = Self.temporaryLog()
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try AccessLogWriter(path: path).limit == .default)
    }

    /// `accessLog.requests: denied`: an allowed request gets no line, while a
    /// refused one and every connection line (an inspected connection's too,
    /// whose protocol is also "http") are written; a reload turns it back.
    @Test func requestsDeniedKeepsRefusedRequestsAndConnections() throws {
        let path = Self.temporaryLog()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let writer = try AccessLogWriter(path: path, limit: .unlimited, requests: .denied, clock: ManualClock().accessLogClock)
        #expect(writer.requests == .denied)
        var request = Self.entry(.allow, "allowed request")
        request.protocol = "http"
        request.isRequest = true
        var refused = request
        refused.action = .deny
        refused.reason = "refused request"
        var connection = Self.entry(.allow, "inspected connection")
        connection.protocol = "http"

        writer.record(request)
        writer.record(refused)
        writer.record(connection)
        writer.change(requests: .all)
        request.reason = "allowed request after the reload"
        writer.record(request)

        #expect(try Self.lines(path).map { $0["reason"] as? String } == [
            "refused request", "inspected connection", "allowed request after the reload",
        ])
        #expect(try Self.lines(path).allSatisfy { $0["isRequest"] == nil }, "the marker is not part of the line")
    }
}
