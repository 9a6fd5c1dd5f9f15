import Dispatch
import Graph
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

/// The service graph's counts between two flushes, kept per event loop: a
/// connection or request is counted on the loop that carried it, with no lock
/// and no hop, and the recorder collects every loop's counts with one task per
/// loop per flush. What is observed off the loops (the control plane, tests)
/// is counted under a lock of its own.
final class GraphTally: Sendable {
    private struct LoopCounts: Sendable {
        let loop: EventLoop
        let counts: NIOLoopBoundBox<EdgeAggregate>

        /// Called on `loop`.
        func take() -> EdgeAggregate {
            counts.value.take()
        }
    }

    /// `graph.http`: requests on connections that no policy inspects are
    /// watched for too.
    let watchesRequests: Bool
    private let perLoop: [ObjectIdentifier: LoopCounts]
    private let offLoop: NIOLockedValueBox<EdgeAggregate>
    private let loopsStopped = Synchronization.Atomic<Bool>(false)

    /// `limit`: distinct edges held per loop between flushes, so that what a
    /// flood of distinct edges (a scan) costs in memory is bounded.
    init(loops: [EventLoop], watchesRequests: Bool = false, limit: Int = 100_000) {
        self.watchesRequests = watchesRequests
        var perLoop: [ObjectIdentifier: LoopCounts] = [:]
        for loop in loops {
            perLoop[ObjectIdentifier(loop)] = LoopCounts(loop: loop, counts: .makeBoxSendingValue(EdgeAggregate(limit: limit), eventLoop: loop))
        }
        self.perLoop = perLoop
        offLoop = NIOLockedValueBox(EdgeAggregate(limit: limit))
    }

    func add(_ observation: EdgeObservation) {
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop, let mine = perLoop[ObjectIdentifier(loop)] {
            mine.counts.value.add(observation)
        } else {
            offLoop.withLockedValue { $0.add(observation) }
        }
    }

    /// Everything counted since the last call. Waits for each loop to hand
    /// its counts over; a loop that has stopped keeps what it held, and one
    /// that does not answer within `loopAnswerTimeout` hands it over with the
    /// next call. Called on an event loop, it takes only that loop's counts
    /// and the off-loop ones (waiting there for another loop could
    /// deadlock): the rest come next time.
    func take() -> EdgeAggregate {
        // Each part is bounded already; their sum keeps every edge they hold.
        var total = EdgeAggregate(limit: .max)
        total.merge(offLoop.withLockedValue { $0.take() })
        let current = MultiThreadedEventLoopGroup.currentEventLoop.map { ObjectIdentifier($0) }
        for (id, loop) in perLoop {
            if id == current {
                total.merge(loop.take())
            } else if current == nil, !loopsStopped.load(ordering: .relaxed), let taken = ask(loop) {
                total.merge(taken)
            }
        }
        return total
    }

    /// The loops are about to stop: from now on `take` asks them nothing
    /// (a task given to a stopped loop never runs).
    func stopAskingLoops() {
        loopsStopped.store(true, ordering: .relaxed)
    }

    static let loopAnswerTimeout = DispatchTimeInterval.seconds(5)

    /// A loop's counts, or nil when it does not answer in time; a late
    /// answer goes to the off-loop counts, so nothing is lost.
    private func ask(_ loop: LoopCounts) -> EdgeAggregate? {
        enum Answer {
            case waiting
            case given(EdgeAggregate)
            case tooLate
        }
        let answered = DispatchSemaphore(value: 0)
        let answer = NIOLockedValueBox(Answer.waiting)
        loop.loop.execute { [offLoop] in
            let taken = loop.take()
            let late = answer.withLockedValue { answer -> Bool in
                if case .tooLate = answer { return true }
                answer = .given(taken)
                return false
            }
            if late { offLoop.withLockedValue { $0.merge(taken) } }
            answered.signal()
        }
        _ = answered.wait(timeout: .now() + Self.loopAnswerTimeout)
        return answer.withLockedValue { answer in
            guard case .given(let taken) = answer else {
                answer = .tooLate
                return nil
            }
            return taken
        }
    }
}
