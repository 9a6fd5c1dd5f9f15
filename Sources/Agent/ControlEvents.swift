import AdminAPI
import CNI
import Dispatch
import Foundation
import NIOCore

/// What the control loop acts on, one at a time: the periodic tick, signals,
/// and requests from the admin API.
enum ControlEvent: Sendable {
    case tick
    /// Re-read the config and the policies: SIGHUP (no one waits), or
    /// `agentctl reload`, which waits for the outcome.
    case reload(EventLoopPromise<ReloadOutcome>?)
    /// SIGUSR1: logrotate moved the access log.
    case reopenLogs
    case terminate(signal: String)
    /// Another agent asks for this one's sockets: stop accepting, then succeed.
    case handoverRequested(EventLoopPromise<Void>)
    /// The agent that asked did not become ready: accept again.
    case handoverAbandoned
    /// Another agent took this one's sockets and serves now.
    case superseded(by: Int32)
    /// A workload source changed the registry: capture what came, release
    /// what went, without waiting for the tick.
    case workloadsChanged
    /// The CNI plugin asks (ADD, DEL, CHECK); answered once the change is made.
    case cni(EnrollmentRequest, EventLoopPromise<EnrollmentOutcome>)
}

/// The control loop's inbox: signals and a timer feed it from Dispatch, and
/// the admin API posts reload requests to it.
struct ControlEvents: Sendable {
    let stream: AsyncStream<ControlEvent>
    private let continuation: AsyncStream<ControlEvent>.Continuation

    /// Takes over SIGTERM, SIGINT, SIGHUP and SIGUSR1 at once, so that a
    /// signal that arrives while the agent starts waits in the stream instead
    /// of being lost between ignoring the default action and watching for it.
    init(tickEvery interval: Duration) {
        let (stream, continuation) = AsyncStream.makeStream(of: ControlEvent.self)
        self.stream = stream
        self.continuation = continuation
        let queue = DispatchQueue(label: "mesh-agent.signals")
        var sources: [DispatchSourceProtocol] = []
        for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT"), (SIGHUP, "SIGHUP"), (SIGUSR1, "SIGUSR1")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                switch number {
                case SIGHUP: continuation.yield(.reload(nil))
                case SIGUSR1: continuation.yield(.reopenLogs)
                default: continuation.yield(.terminate(signal: name))
                }
            }
            source.resume()
            sources.append(source)
        }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        let milliseconds = Int(interval.components.seconds * 1000 + interval.components.attoseconds / 1_000_000_000_000_000)
        timer.schedule(deadline: .now() + .milliseconds(milliseconds), repeating: .milliseconds(milliseconds))
        timer.setEventHandler { continuation.yield(.tick) }
        timer.resume()
        sources.append(timer)
        let retained = DispatchSources(sources)
        continuation.onTermination = { _ in retained.cancel() }
    }

    /// Asks the control loop to reload and waits for the outcome. Blocking:
    /// for the admin API's thread pool, never an event loop.
    func reload(on eventLoop: EventLoop) throws -> ReloadOutcome {
        let promise = eventLoop.makePromise(of: ReloadOutcome.self)
        guard case .enqueued = continuation.yield(.reload(promise)) else {
            promise.fail(AgentError.shuttingDown)
            return try promise.futureResult.wait()
        }
        return try promise.futureResult.wait()
    }

    /// From the handover thread: stops accepting before the sockets go to
    /// another agent, so that two processes never accept on one socket.
    /// Blocking: for that thread, never an event loop.
    func prepareHandover(on eventLoop: EventLoop) throws {
        let promise = eventLoop.makePromise(of: Void.self)
        guard case .enqueued = continuation.yield(.handoverRequested(promise)) else {
            promise.fail(AgentError.shuttingDown)
            return try promise.futureResult.wait()
        }
        try promise.futureResult.wait()
    }

    /// From the enrollment server: the plugin waits for the outcome.
    func cni(_ request: EnrollmentRequest, on eventLoop: EventLoop) async throws -> EnrollmentOutcome {
        let promise = eventLoop.makePromise(of: EnrollmentOutcome.self)
        if case .enqueued = continuation.yield(.cni(request, promise)) {} else {
            promise.fail(CNIEnrollmentError.shuttingDown)
        }
        return try await promise.futureResult.get()
    }

    func workloadsChanged() {
        continuation.yield(.workloadsChanged)
    }

    func handoverAbandoned() {
        continuation.yield(.handoverAbandoned)
    }

    /// From the handover thread: another agent took over.
    func superseded(by pid: Int32) {
        continuation.yield(.superseded(by: pid))
    }

    func finish() {
        continuation.finish()
    }
}

/// Keeps the signal and timer sources alive for as long as the event stream is
/// consumed; Dispatch sources are thread-safe but not marked Sendable.
private final class DispatchSources: @unchecked Sendable {
    private let sources: [DispatchSourceProtocol]
    init(_ sources: [DispatchSourceProtocol]) { self.sources = sources }
    func cancel() { sources.forEach { $0.cancel() } }
}
