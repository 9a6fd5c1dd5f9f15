import Testing
@testable import Kubernetes

@Suite struct BackoffTests {
    @Test func doublesUpToTheMaximum() {
        let backoff = Backoff(initial: .milliseconds(500), maximum: .seconds(30), jitter: 0)
        #expect((1...9).map { backoff.delay(afterFailures: $0, random: 0.7) }
            == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(30), .seconds(30), .seconds(30)])
        #expect(backoff.delay(afterFailures: 1_000_000, random: 0) == .seconds(30))
        #expect(backoff.delay(afterFailures: 0, random: 0) == .milliseconds(500))
    }

    @Test func jitterTakesOffUpToItsShare() {
        let backoff = Backoff(initial: .seconds(4), maximum: .seconds(30), jitter: 0.5)
        #expect(backoff.delay(afterFailures: 1, random: 0) == .seconds(4))
        #expect(backoff.delay(afterFailures: 1, random: 0.5) == .seconds(3))
        #expect(backoff.delay(afterFailures: 1, random: 0.999999) > .seconds(2))
        #expect(backoff.delay(afterFailures: 1, random: 7) == .seconds(2), "random is clamped")
        #expect(Backoff(jitter: 3).jitter == 1)
        #expect(Backoff(initial: .seconds(5), maximum: .seconds(1)).maximum == .seconds(5))
    }
}

@Suite struct ListWatchStateTests {
    static let noJitter = Backoff(initial: .seconds(1), maximum: .seconds(8), jitter: 0)

    @Test func listThenWatchFromItsVersion() {
        var state = ListWatchState(backoff: Self.noJitter)
        #expect(state.start() == .list)
        #expect(state.listed(resourceVersion: "10") == .watch(resourceVersion: "10"))
        state.observed(resourceVersion: "12")
        state.observed(resourceVersion: "")
        #expect(state.resourceVersion == "12")
        // The server's timeout ended a working watch: resume at once.
        #expect(state.watchEnded(.closed(worked: true), random: 0) == .watch(resourceVersion: "12"))
        #expect(state.watchRestarts == 1)
        #expect(state.relists == 0)
    }

    @Test func failuresBackOffAndResumeFromTheLastVersion() {
        var state = ListWatchState(backoff: Self.noJitter)
        _ = state.listed(resourceVersion: "10")
        #expect(state.watchEnded(.failed, random: 0) == .wait(.seconds(1)))
        #expect(state.waited() == .watch(resourceVersion: "10"))
        #expect(state.watchEnded(.failed, random: 0) == .wait(.seconds(2)))
        #expect(state.waited() == .watch(resourceVersion: "10"))
        #expect(state.watchEnded(.closed(worked: false), random: 0) == .wait(.seconds(4)), "a watch refused at once is a failure")
        #expect(state.waited() == .watch(resourceVersion: "10"))
        state.observed(resourceVersion: "11")
        #expect(state.consecutiveFailures == 0)
        #expect(state.watchEnded(.failed, random: 0) == .wait(.seconds(1)), "an event resets the backoff")
        #expect(state.waited() == .watch(resourceVersion: "11"))
        #expect(state.relists == 0)
    }

    @Test func goneListsAgainAtOnceThenBacksOff() {
        var state = ListWatchState(backoff: Self.noJitter)
        #expect(state.listsFromCache)
        _ = state.listed(resourceVersion: "10")
        #expect(state.watchEnded(.gone, random: 0) == .list)
        #expect(!state.listsFromCache, "after a 410 the list is read from etcd, not from a cache that may be behind")
        #expect(state.resourceVersion == nil)
        #expect(state.listed(resourceVersion: "20") == .watch(resourceVersion: "20"))
        #expect(state.relists == 1)
        // A server that answers every watch with 410 is not listed in a tight loop.
        #expect(state.watchEnded(.gone, random: 0) == .wait(.seconds(1)))
        #expect(state.waited() == .list)
        #expect(state.listed(resourceVersion: "30") == .watch(resourceVersion: "30"))
        state.observed(resourceVersion: "31")
        #expect(state.listsFromCache)
        #expect(state.watchEnded(.gone, random: 0) == .list, "after an event, a 410 lists at once again")
    }

    @Test func aLostEventListsAgainAfterABackoff() {
        var state = ListWatchState(backoff: Self.noJitter)
        _ = state.listed(resourceVersion: "10")
        #expect(state.watchEnded(.lostEvent, random: 0) == .wait(.seconds(1)))
        #expect(state.waited() == .list)
    }

    @Test func listFailuresBackOffAndListAgain() {
        var state = ListWatchState(backoff: Self.noJitter)
        #expect(state.listFailed(random: 0) == .wait(.seconds(1)))
        #expect(state.waited() == .list)
        #expect(state.listFailed(random: 0) == .wait(.seconds(2)))
        #expect(state.listFailed(random: 0) == .wait(.seconds(4)))
        #expect(state.listFailed(random: 0) == .wait(.seconds(8)))
        #expect(state.listFailed(random: 0) == .wait(.seconds(8)))
        #expect(state.waited() == .list)
        #expect(state.listed(resourceVersion: "5") == .watch(resourceVersion: "5"))
        #expect(state.consecutiveFailures == 0)
        #expect(state.relists == 0, "the first successful list is no relist")
    }
}
