import LinuxNet
import NIOConcurrencyHelpers
import NIOCore
import Policy
import Workloads

/// The connections the agent is proxying right now: admission against the
/// configured maximum, what each one is (for `agentctl connections`), and the
/// handle that drain uses to count them and close them at the deadline.
public final class ConnectionTracker: Sendable {
    private struct Tracked {
        var channel: Channel
        var entry: AccessLogEntry?
        var received: ByteCounter?
        var sent: ByteCounter?
        var policyCheck: TrackedPolicyCheck?
        /// Set once the kernel splices it: its channel is closed then, and
        /// the connection lives on in the splicer.
        var kernel: SplicedConnection?

        func close() {
            if let kernel {
                kernel.abort()
            } else {
                // A tunnel stream goes with its whole peer connection: a stream
                // whose peer stopped reading would otherwise wait for window to
                // send its END_STREAM.
                (channel.parent ?? channel).close(promise: nil)
            }
        }
    }

    private let tracked = NIOLockedValueBox<[ObjectIdentifier: Tracked]>([:])
    public let maximum: Int
    /// Relays plain socket-to-socket connections in the kernel; without one
    /// the event loops carry every connection.
    public let splicer: KernelSplicer?

    public init(maximum: Int, splicer: KernelSplicer? = nil) {
        self.maximum = maximum
        self.splicer = splicer
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
                tracked.withLockedValue { tracked in
                    if tracked[key]?.kernel == nil { tracked[key] = nil }
                }
            }
        }
        return admitted
    }

    /// Records what an admitted connection is, once it is proxied; with
    /// `kernel`, it stays tracked until the splicer has ended it.
    func describe(
        _ channel: Channel, as entry: AccessLogEntry, received: ByteCounter, sent: ByteCounter, policyCheck: TrackedPolicyCheck? = nil,
        kernel: KernelSplice? = nil
    ) {
        let key = ObjectIdentifier(channel)
        tracked.withLockedValue { tracked in
            tracked[key]?.entry = entry
            tracked[key]?.received = received
            tracked[key]?.sent = sent
            tracked[key]?.policyCheck = policyCheck
            tracked[key]?.kernel = kernel?.connection
        }
        kernel?.ended.whenComplete { [tracked] _ in
            tracked.withLockedValue { $0[key] = nil }
        }
    }

    /// Checks every inbound connection against the policy now in force and
    /// closes those it no longer allows — revoking access takes effect on open
    /// connections too. A connection whose policy now needs its requests
    /// inspected, but which was not, is closed as well: the client reconnects
    /// and is inspected. Returns how many were closed.
    @discardableResult
    /// `because`, when given, is the reason every connection closed now is
    /// logged with (what changed, e.g. a grant that expired).
    public func recheck(_ authorizer: InboundAuthorizer, because: String? = nil) -> Int {
        let snapshot = authorizer.snapshot
        let now = wallClock()
        var closed = 0
        for item in tracked.withLockedValue({ Array($0.values) }) {
            guard let check = item.policyCheck else { continue }
            // Admitted again, as if it arrived now, to the workload it reached.
            let plan = Admission.plan(
                check.arrival, source: check.source, destination: check.destination, resolved: .workload(check.workload), policy: snapshot, now: now)
            let decision: AuthorizationDecision
            switch plan.decision {
            case .refuse(.denied(let result)):
                decision = result
            case .refuse(let refusal):
                decision = AuthorizationDecision(outcome: .deny, rule: nil, reason: plan.entry.reason.isEmpty ? "\(refusal)" : plan.entry.reason)
            case .forward(_, inspectRequests: true) where !check.inspected:
                decision = AuthorizationDecision(
                    outcome: .deny, rule: nil, reason: "the policy now decides each HTTP request, which this connection was opened without")
            case .forward:
                continue
            }
            check.revocation.revoke(because.map { AuthorizationDecision(outcome: .deny, rule: nil, reason: $0) } ?? decision)
            item.close()
            closed += 1
        }
        return closed
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

    /// Closes every connection still open (the drain deadline passed).
    public func closeAll() {
        for item in tracked.withLockedValue({ Array($0.values) }) {
            item.close()
        }
    }
}

/// What a connection to a workload was admitted as, so that it can be
/// admitted again when the policy changes.
struct TrackedPolicyCheck: Sendable {
    var arrival: Arrival
    var source: SocketAddress?
    var destination: SocketAddress
    var workload: Workload
    /// Whether its HTTP requests are inspected (each is then decided on its own).
    var inspected: Bool
    let revocation = Revocation()
}

/// Set when a policy reload closed a connection, so that its log line says why.
final class Revocation: Sendable {
    private let value = NIOLockedValueBox<AuthorizationDecision?>(nil)

    func revoke(_ decision: AuthorizationDecision) {
        value.withLockedValue { $0 = decision }
    }

    var decision: AuthorizationDecision? { value.withLockedValue { $0 } }
}
