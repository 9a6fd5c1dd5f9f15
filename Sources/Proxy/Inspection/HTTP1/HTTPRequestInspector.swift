import NIOCore
import NIOHTTP1
import Policy

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
        var entry = connectionEntry
        entry.time = wallClock()
        entry.protocol = "http"
        entry.bytesSent = 0
        entry.bytesReceived = 0
        return entry
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

    func inspect(_ head: HTTPRequestHead) -> Outcome {
        let validated: ValidatedRequestHead
        switch HTTPRequestValidation.validate(head) {
        case .failure(let refusal):
            return .respond(
                LocalResponse(status: refusal.status, body: "\(refusal.reason)\n", close: true), refusedEntry(refusal.reason, method: head.method.rawValue))
        case .success(let value):
            validated = value
        }
        var entry = requestEntry()
        entry.method = head.method.rawValue
        entry.path = validated.target.path
        let headers = head.headers.map { HTTPField(name: $0.name, value: $0.value) }
        // One snapshot decides the whole request: token rules and policy of one generation.
        let policy = authorizer.snapshot.policy(for: workload)
        var forwarded = validated.head
        var identity: RequestIdentity?
        switch policy.authenticator.authenticate(headers: headers, query: validated.target.query.map { Substring($0) }, now: wallClock()) {
        case .noToken:
            break
        case .authenticated(let verified):
            identity = verified
            entry.requestPrincipal = verified.principal
            for name in policy.authenticator.tokenHeadersToRemove(from: headers, issuer: verified.issuer) {
                forwarded.headers.remove(name: name)
            }
        case .rejected(let reason):
            authorizer.recordUnauthenticated()
            entry.action = .deny
            entry.policy = nil
            entry.reason = "request authentication failed: \(reason)"
            return .respond(LocalResponse(status: .unauthorized, body: "Jwt verification fails", close: !head.isKeepAlive), entry)
        }
        let attributes = HTTPRequestAttributes(
            method: head.method.rawValue, path: validated.target.path, host: validated.host ?? "", headers: headers, identity: identity)
        let decision = authorizer.authorize(connection, request: attributes, under: policy)
        entry.record(decision)
        guard decision.outcome == .allow else {
            return .respond(LocalResponse(status: .forbidden, body: "RBAC: access denied", close: !head.isKeepAlive), entry)
        }
        return .forward(forwarded, entry)
    }
}

/// A response the agent writes itself (403, 400, …).
struct LocalResponse: Equatable {
    var status: HTTPResponseStatus
    var body: String
    var close: Bool
}
