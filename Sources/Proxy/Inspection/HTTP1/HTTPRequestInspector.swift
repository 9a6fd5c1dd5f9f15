import NIOCore
import NIOHTTP1
import Policy
import Workloads

/// Decides one inbound HTTP request: framing and target checks, the request's
/// token, then L7 policy. Pure apart from the policy snapshot it reads.
struct HTTPRequestInspector: Sendable {
    enum Outcome {
        /// Send `head` (the target normalized, consumed tokens removed) upstream.
        case forward(HTTPRequestHead, AccessLogEntry)
        /// Answer locally; `close` when the connection cannot carry another request.
        case respond(LocalResponse, AccessLogEntry)
    }

    let workload: Workload
    let connection: ConnectionAttributes
    let authorizer: InboundAuthorizer
    /// The connection's log entry, which each request's entry starts from.
    let connectionEntry: AccessLogEntry

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
    /// under the policy in force, and says what to do with it.
    func inspect(_ head: HTTPRequestHead, now: Double = wallClock()) -> Outcome {
        // One snapshot decides the whole request: token rules and policy of one generation.
        let policy = authorizer.snapshot.policy(for: workload)
        let verdict = policy.decide(RequestHead(head), on: connection, now: now)
        authorizer.record(verdict)
        return outcome(of: verdict, for: head)
    }

    /// What the data path does with a verdict on `head`.
    func outcome(of verdict: RequestVerdict, for head: HTTPRequestHead) -> Outcome {
        switch verdict {
        case .refused(let refusal):
            return .respond(
                LocalResponse(status: refusal.responseStatus, body: "\(refusal.reason)\n", close: true),
                refusedEntry(refusal.reason, method: head.method.rawValue))
        case .unauthenticated(let reason, let checked):
            var entry = requestEntry()
            entry.method = head.method.rawValue
            entry.path = checked.target.path
            entry.action = .deny
            entry.policy = nil
            entry.reason = "request authentication failed: \(reason)"
            return .respond(LocalResponse(status: .unauthorized, body: "Jwt verification fails", close: !head.isKeepAlive), entry)
        case .decided(let decision, let request):
            var entry = requestEntry()
            entry.method = head.method.rawValue
            entry.path = request.checked.target.path
            entry.requestPrincipal = request.identity?.principal
            entry.record(decision)
            guard decision.outcome == .allow else {
                return .respond(LocalResponse(status: .forbidden, body: "RBAC: access denied", close: !head.isKeepAlive), entry)
            }
            // The workload is asked for exactly what policy checked.
            var forwarded = head
            forwarded.uri = request.checked.target.target
            for name in request.tokenHeadersToRemove {
                forwarded.headers.remove(name: name)
            }
            return .forward(forwarded, entry)
        }
    }
}

extension RequestHead {
    /// An HTTP/1.x head as NIOHTTP1 decoded it (or as an HTTP/2 header block was
    /// turned into one).
    init(_ head: HTTPRequestHead) {
        self.init(
            method: head.method.rawValue, target: head.uri, version: Version(major: head.version.major, minor: head.version.minor),
            fields: head.headers.map { HTTPField(name: $0.name, value: $0.value) })
    }
}

