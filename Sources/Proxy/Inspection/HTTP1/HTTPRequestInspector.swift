import NIOCore
import NIOHTTP1
import Policy
import Workloads

/// Decides one inbound HTTP request: framing and target checks, the request's
/// token, then L7 policy. Pure apart from the policy snapshot it reads.
package struct HTTPRequestInspector: Sendable {
    enum Outcome {
        /// Send the request upstream, changed as `Forwarding` says.
        case forward(Forwarding, AccessLogEntry)
        /// Answer locally; `close` when the connection cannot carry another request.
        case respond(LocalResponse, AccessLogEntry)
    }

    /// What of an allowed request the workload is sent differently from how
    /// it came: the target policy checked (normalized), and without the
    /// fields that carried a verified token it does not forward.
    struct Forwarding: Equatable {
        var target: String
        /// Lowercase field names.
        var removing: [String]
    }

    let workload: Workload
    let connection: ConnectionAttributes
    let authorizer: InboundAuthorizer
    /// The connection's log entry, which each request's entry starts from.
    let connectionEntry: AccessLogEntry

    package init(workload: Workload, connection: ConnectionAttributes, authorizer: InboundAuthorizer, connectionEntry: AccessLogEntry) {
        self.workload = workload
        self.connection = connection
        self.authorizer = authorizer
        self.connectionEntry = connectionEntry
    }

    /// A new request's log line, starting from the connection's.
    func requestEntry() -> AccessLogEntry {
        connectionEntry.requestEntry(at: wallClock())
    }

    /// The log line of a request refused before policy saw it: malformed or
    /// ambiguous, so that no rule decided.
    func refusedEntry(_ reason: String, method: String? = nil) -> AccessLogEntry {
        var entry = requestEntry()
        entry.method = method
        entry.action = .deny
        entry.policy = nil
        entry.reason = "refused request: \(reason)"
        return entry
    }

    /// Decides `head` with the one request decision (`WorkloadPolicy.decide`)
    /// under the policy in force, and says what to do with it. `keepAlive`:
    /// whether the client's connection may carry another request after it.
    func inspect(_ head: RequestHead, keepAlive: @autoclosure () -> Bool, now: Double = wallClock()) -> Outcome {
        // One snapshot decides the whole request: token rules and policy of one generation.
        let policy = authorizer.policy(for: workload)
        let verdict = policy.decide(head, on: connection, now: now)
        authorizer.record(verdict)
        return outcome(of: verdict, method: head.method, keepAlive: keepAlive)
    }

    /// What the data path does with a verdict on a request. `keepAlive` is
    /// asked only when the agent answers itself, not for a forwarded request.
    func outcome(of verdict: RequestVerdict, method: String, keepAlive: () -> Bool) -> Outcome {
        switch verdict {
        case .refused(let refusal):
            return .respond(
                LocalResponse(status: refusal.responseStatus, body: "\(refusal.reason)\n", close: true),
                refusedEntry(refusal.reason, method: method))
        case .unauthenticated(let reason, let checked):
            var entry = requestEntry()
            entry.method = method
            entry.path = checked.target.path
            entry.action = .deny
            entry.policy = nil
            entry.reason = "request authentication failed: \(reason)"
            return .respond(LocalResponse(status: .unauthorized, body: "Jwt verification fails", close: !keepAlive()), entry)
        case .decided(let decision, let request):
            var entry = requestEntry()
            entry.method = method
            entry.path = request.checked.target.path
            entry.requestPrincipal = request.identity?.principal
            entry.record(decision)
            guard decision.outcome == .allow else {
                return .respond(LocalResponse(status: .forbidden, body: "RBAC: access denied", close: !keepAlive()), entry)
            }
            // The workload is asked for exactly what policy checked.
            return .forward(Forwarding(target: request.checked.target.target, removing: request.tokenHeadersToRemove), entry)
        }
    }
}

extension RequestHead {
    /// An HTTP/2 request's head in the HTTP/1.1 form it is decided in.
    init(_ head: HTTPRequestHead) {
        self.init(
            method: head.method.rawValue, target: head.uri, version: Version(major: head.version.major, minor: head.version.minor),
            fields: head.headers.map { HTTPField(name: $0.name, value: $0.value) })
    }
}

