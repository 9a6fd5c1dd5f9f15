import AdminAPI
import Foundation
import NIOCore
import Policy
import Proxy
import TLS
import Workloads

/// The policy set in force and how the last reloads went, as the control loop
/// publishes it for `agentctl policies`.
public struct PolicyStatus: Sendable {
    public var generation: Int
    public var loadedAt: Double
    public var directory: String
    public var policies: PolicySet
    /// The reasons the last reload was refused (`file:line: reason`); nil once
    /// a later reload succeeded.
    public var lastError: [String]?
    public var lastErrorAt: Double?
}

extension AdminViews {
    static func policies(_ status: PolicyStatus, now: Double = wallClock()) -> PoliciesView {
        func selector(_ labels: [String: String]?) -> String? {
            labels.map { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") }
        }
        var rows: [PoliciesView.Row] = status.policies.authorization.policies.map { policy in
            .init(
                kind: AuthorizationPolicy.kind, namespace: policy.namespace, name: policy.name, selector: selector(policy.matchLabels),
                action: policy.action.rawValue, rules: policy.rules.count, dryRun: policy.dryRun ? true : nil, source: policy.source,
                expires: policy.expires.map { RFC3339.format($0) }, secondsLeft: policy.expires.map { Int(max(0, ($0 - now).rounded(.up))) })
        }
        rows += status.policies.requestAuthentication.policies.map { policy in
            .init(
                kind: RequestAuthentication.kind, namespace: policy.namespace, name: policy.name, selector: selector(policy.matchLabels),
                action: policy.jwtRules.map(\.issuer).joined(separator: ","), rules: policy.jwtRules.count, dryRun: nil, source: policy.source)
        }
        rows += status.policies.peerAuthentication.policies.map { policy in
            .init(
                kind: PeerAuthentication.kind, namespace: policy.namespace, name: policy.name, selector: selector(policy.matchLabels),
                action: policy.mode.rawValue, rules: nil, dryRun: nil, source: policy.source)
        }
        return PoliciesView(
            generation: status.generation, loadedAt: Certificate.formatTime(Int64(status.loadedAt)), directory: status.directory,
            files: status.policies.files, policies: rows, warnings: status.policies.warnings, lastReloadError: status.lastError,
            lastReloadErrorAt: status.lastErrorAt.map { Certificate.formatTime(Int64($0)) })
    }

    struct ExplainError: Error, CustomStringConvertible {
        let description: String
    }

    /// Decides a hypothetical connection (and request) with the same
    /// evaluator the data path uses, against the policies in force.
    static func explain(
        _ parameters: [(name: String, value: String)], registry: WorkloadRegistry, authorizer: InboundAuthorizer, now: Double = wallClock()
    ) throws -> ExplainView {
        var values: [String: String] = [:]
        var headers: [HTTPField] = []
        for (name, value) in parameters {
            if name == "header" {
                guard let separator = value.firstIndex(where: { $0 == "=" || $0 == ":" }) else {
                    throw ExplainError(description: "a header is NAME=VALUE, got \"\(value)\"")
                }
                headers.append(HTTPField(name: String(value[..<separator]), value: String(value[value.index(after: separator)...]).trimmingCharacters(in: .whitespaces)))
            } else {
                values[name] = value
            }
        }
        let workloads = registry.members.map(\.workload)
        func find(_ name: String) throws -> Workload {
            let matches = workloads.filter { $0.qualifiedName == name || $0.name == name }
            guard let workload = matches.first else {
                throw ExplainError(description: "no workload \"\(name)\" on this node; known: \(workloads.map(\.qualifiedName).joined(separator: ", "))")
            }
            guard matches.count == 1 else {
                throw ExplainError(description: "\"\(name)\" names several workloads; write NAMESPACE/NAME: \(matches.map(\.qualifiedName).joined(separator: ", "))")
            }
            return workload
        }
        guard let target = values["to_workload"] else { throw ExplainError(description: "--to-workload is required") }
        let workload = try find(target)
        guard let portText = values["port"], let port = UInt16(portText), port > 0 else {
            throw ExplainError(description: "--port must be a port number from 1 to 65535")
        }
        let arrival: Arrival
        if let from = values["from"] {
            do {
                arrival = .tunnel(peer: try SpiffeID(from.hasPrefix("spiffe://") ? from : "spiffe://\(from)"))
            } catch {
                throw ExplainError(description: "--from \"\(from)\" is not a SPIFFE ID: \(error)")
            }
        } else if let from = values["from_workload"] {
            arrival = .sameNode(source: try find(from))
        } else {
            arrival = .plaintext
        }
        var source: SocketAddress?
        if let text = values["source_ip"] {
            guard let address = try? SocketAddress(ipAddress: text, port: 0) else { throw ExplainError(description: "--source-ip \"\(text)\" is not an IP address") }
            source = address
        }
        // The node address a caller dialled is not asked for: destination.ip rules do not match.
        let destination = try SocketAddress(ipAddress: "0.0.0.0", port: Int(port))
        // One snapshot decides, as for a connection: admission, then each request.
        let snapshot = authorizer.snapshot
        let plan = Admission.plan(arrival, source: source, destination: destination, resolved: .workload(workload), policy: snapshot, now: now)
        let attributes = plan.attributes

        var view = ExplainView(
            decision: "allow", layer: "l4", workload: workload.qualifiedName,
            source: arrival.peerIdentity?.description ?? "plaintext (no identity)", port: Int(port), reason: "")
        func fill(_ decision: AuthorizationDecision) {
            view.decision = decision.outcome.rawValue
            view.policy = decision.policy
            view.rule = decision.rule?.description
            view.reason = decision.reason
            view.audited = decision.audits.isEmpty ? nil : decision.audits
            view.dryRun = decision.dryRun.map { "\($0.outcome.rawValue)\($0.rule.map { " (\($0))" } ?? "")" }
        }
        switch plan.decision {
        case .refuse(.plaintextToStrictPort(let mode)):
            view.decision = "deny"
            view.layer = "peer_authentication"
            view.policy = mode.policy
            view.reason = plan.entry.reason
            return view
        case .refuse(.denied(let decision)):
            fill(decision)
            return view
        case .refuse:
            view.decision = "deny"
            view.reason = plan.entry.reason
            return view
        case .forward(_, inspectRequests: false):
            if case .decided(let decision)? = plan.authorization { fill(decision) }
            return view
        case .forward(_, inspectRequests: true):
            break
        }
        let policy = snapshot.policy(for: workload)
        view.layer = "l7"
        guard let method = values["method"], let target = values["path"] else {
            view.decision = "depends on the request"
            view.reason = "a policy of \(workload.qualifiedName) names HTTP attributes; describe a request with --method and --path"
            return view
        }
        // The request as a client would send it: a Host (the workload's name
        // unless --host or a host header says otherwise), the headers given, and
        // the token as a bearer.
        var fields = headers
        if !fields.contains(where: { $0.name == "host" }) {
            fields.insert(HTTPField(name: "host", value: values["host"] ?? workload.name), at: 0)
        }
        if let jwt = values["jwt"] {
            fields.append(HTTPField(name: "authorization", value: "Bearer \(jwt)"))
        }
        switch policy.decide(RequestHead(method: method, target: target, fields: fields), on: attributes, now: now) {
        case .refused(let refusal):
            view.decision = "deny"
            view.responseStatus = refusal.status.rawValue
            view.reason = "the request would be refused with \(refusal.status.rawValue): \(refusal.reason)"
        case .unauthenticated(let reason, let checked):
            view.path = checked.target.path
            view.decision = "deny"
            view.responseStatus = 401
            view.reason = "the request would be refused with 401: request authentication failed: \(reason)"
        case .decided(let decision, let request):
            view.path = request.checked.target.path
            view.requestPrincipal = request.identity?.principal
            fill(decision)
            if decision.outcome == .deny { view.responseStatus = 403 }
        }
        return view
    }
}
