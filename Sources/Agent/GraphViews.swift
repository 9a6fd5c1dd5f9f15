import AdminAPI
import Foundation
import Graph
import Policy
import Workloads

extension AdminViews {
    struct GraphQueryError: Error, CustomStringConvertible {
        let description: String
    }

    /// `GET /v1/graph?since=SECONDS_SINCE_EPOCH`: `{"edges": [...]}`, the
    /// edges last seen in the window (all of them without `since`).
    /// `GET /v1/graph?since=SECONDS_SINCE_EPOCH&new=true`: with `new`, only
    /// the edges whose caller, workload and port were first seen after the
    /// learning period.
    static func graph(_ parameters: [(name: String, value: String)], graph: GraphRecorder) throws -> Data {
        let onlyNew = parameters.contains { $0.name == "new" && $0.value == "true" }
        let rest = parameters.filter { $0.name != "new" }
        return try GraphDocument(edges: try graph.edges(since: try since(rest, endpoint: "/v1/graph"), onlyNew: onlyNew)).encoded()
    }

    /// `GET /v1/policy/report?since=SECONDS_SINCE_EPOCH`: what each rule of
    /// the AuthorizationPolicies in force did in the window, and the
    /// plaintext peers a switch to STRICT would cut off.
    static func policyReport(
        _ parameters: [(name: String, value: String)], graph: GraphRecorder, policies: AuthorizationPolicySet, workloads: [Workload]
    ) throws -> Data {
        let edges = try graph.edges(since: try since(parameters, endpoint: "/v1/policy/report"))
        // Which workloads each policy applies to, as the data path finds them.
        var applies: [String: Set<String>] = [:]
        for workload in workloads {
            for policy in policies.forWorkload(namespace: workload.namespace, labels: workload.labels).policies {
                applies[policy.reference, default: []].insert(workload.qualifiedName)
            }
        }
        let report = PolicyReport(
            edges: edges,
            policies: policies.policies.map { policy in
                PolicyReport.Policy(
                    name: policy.reference, action: policy.action.rawValue, dryRun: policy.dryRun, rules: policy.rules.count,
                    workloads: applies[policy.reference] ?? [], expires: policy.expires)
            }, now: wallClock())
        return try AdminViews.encode(report)
    }

    private static func since(_ parameters: [(name: String, value: String)], endpoint: String) throws -> Double? {
        var since: Double?
        for (name, value) in parameters {
            guard name == "since" else {
                throw GraphQueryError(description: "unknown parameter \"\(name)\"; \(endpoint) takes since=SECONDS_SINCE_EPOCH\(endpoint == "/v1/graph" ? " and new=true" : "")")
            }
            guard let seconds = Double(value), seconds.isFinite else {
                throw GraphQueryError(description: "since=\"\(value)\" is not a time in seconds since the epoch")
            }
            since = seconds
        }
        return since
    }
}
