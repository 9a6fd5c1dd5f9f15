import Testing

@testable import EngineAPI

@Suite struct ReconnectBackoffTests {
    @Test func doublesUpToTheMaximum() {
        var backoff = ReconnectBackoff(initial: .milliseconds(200), maximum: .seconds(1), jitter: 0)
        let delays = (0..<6).map { _ in backoff.nextDelay(random: 0.5) }
        #expect(delays == [.milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1), .seconds(1)])
        #expect(backoff.failures == 6)
    }

    @Test func jitterOnlyShortens() {
        var backoff = ReconnectBackoff(initial: .seconds(1), maximum: .seconds(10), jitter: 0.2)
        #expect(backoff.nextDelay(random: 0) == .seconds(1))
        #expect(backoff.nextDelay(random: 1) == .milliseconds(1600))
        #expect(backoff.nextDelay(random: 7) == .milliseconds(3200), "random is clamped to 1")
        #expect(backoff.nextDelay(random: -1) == .seconds(8), "and to 0")
    }

    @Test func resetStartsOver() {
        var backoff = ReconnectBackoff(initial: .milliseconds(100), maximum: .seconds(5), jitter: 0)
        for _ in 0..<4 { _ = backoff.nextDelay(random: 0) }
        backoff.reset()
        #expect(backoff.nextDelay(random: 0) == .milliseconds(100))
    }

    @Test func aLongOutageDoesNotOverflow() {
        var backoff = ReconnectBackoff(initial: .milliseconds(1), maximum: .seconds(30), jitter: 0)
        for _ in 0..<10_000 { _ = backoff.nextDelay(random: 0) }
        #expect(backoff.nextDelay(random: 0) == .seconds(30))
    }

    @Test func nonsenseSettingsAreMadeSafe() {
        var backoff = ReconnectBackoff(initial: .zero, maximum: .zero, jitter: 5)
        #expect(backoff.initial == .milliseconds(1) && backoff.maximum == .milliseconds(1) && backoff.jitter == 1)
        #expect(backoff.nextDelay(random: 0) == .milliseconds(1))
    }
}
