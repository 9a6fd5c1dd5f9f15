#if canImport(Glibc)
import Glibc
#endif

/// What applies to one workload: its compiled authorization policies, the JWT
/// rules of the RequestAuthentications that select it, and the ports it
/// declared TCP-only. The data path and `agentctl policy explain` decide with
/// the same two functions here, so they cannot disagree.
public struct WorkloadPolicy: Sendable {
    public var authorization: WorkloadAuthorization
    public var authenticator: RequestAuthenticator
    /// Ports that carry no HTTP (`protocol: tcp`): decided per connection only.
    public var tcpPorts: Set<UInt16>
    /// How request paths are normalized before they are matched and forwarded.
    public var pathRules: HTTPPath.Rules

    public init(
        authorization: WorkloadAuthorization, authenticator: RequestAuthenticator, tcpPorts: Set<UInt16> = [], pathRules: HTTPPath.Rules = .standard
    ) {
        self.authorization = authorization
        self.authenticator = authenticator
        self.tcpPorts = tcpPorts
        self.pathRules = pathRules
    }

    /// The decision for a connection (L4). A workload with JWT rules has every
    /// request on a connection it allows inspected, since an invalid token is
    /// refused (401) whatever the authorization policy says.
    public func decide(_ connection: ConnectionAttributes) -> ConnectionAuthorization {
        let tcpOnly = tcpPorts.contains(connection.destinationPort)
        let result = authorization.authorize(connection, tcpOnly: tcpOnly)
        if !tcpOnly, case .decided(let decision) = result, decision.outcome == .allow, !authenticator.isEmpty {
            return .inspectRequests
        }
        return result
    }

    /// The decision for one request on an inspected connection: the head's
    /// checks and the normalization of its target, then its token, then L7
    /// policy with dry-run and audit policies.
    public func decide(_ request: RequestHead, on connection: ConnectionAttributes, now: Double = wallClock()) -> RequestVerdict {
        let checked: CheckedRequest
        switch RequestHeadCheck.check(request, pathRules: pathRules) {
        case .failure(let refusal): return .refused(refusal)
        case .success(let value): checked = value
        }
        var identity: RequestIdentity?
        var consumed: [String] = []
        switch authenticator.authenticate(headers: request.fields, query: checked.target.query.map { Substring($0) }, now: now) {
        case .noToken:
            break
        case .authenticated(let verified):
            identity = verified
            consumed = authenticator.tokenHeadersToRemove(from: request.fields, issuer: verified.issuer)
        case .rejected(let reason):
            return .unauthenticated(reason: reason, checked)
        }
        let attributes = HTTPRequestAttributes(
            method: request.method, path: checked.target.path, host: checked.host ?? "", headers: request.fields, identity: identity)
        let decision = authorization.authorize(connection, request: attributes)
        return .decided(decision, DecidedRequest(checked: checked, identity: identity, tokenHeadersToRemove: consumed))
    }
}

/// What the request decision says.
public enum RequestVerdict: Sendable {
    /// Malformed or ambiguous: answered with the refusal's status, never
    /// forwarded, and no rule decided.
    case refused(RequestRefusal)
    /// The request's token was refused: 401, whatever the policy says.
    case unauthenticated(reason: String, CheckedRequest)
    /// Policy decided: forwarded when allowed, 403 when denied.
    case decided(AuthorizationDecision, DecidedRequest)
}

/// A request that reached policy.
public struct DecidedRequest: Equatable, Sendable {
    public var checked: CheckedRequest
    /// The end user of its verified token, if it carried one.
    public var identity: RequestIdentity?
    /// Header fields that carried the verified token and are not forwarded
    /// (RequestAuthentication without `forwardOriginalToken`).
    public var tokenHeadersToRemove: [String]
}

/// Seconds since the epoch: the time access-log lines carry and tokens are
/// checked against.
public func wallClock() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1_000_000_000
}
