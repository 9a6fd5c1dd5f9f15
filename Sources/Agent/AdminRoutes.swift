import AdminAPI
import Foundation
import Graph
import Netfilter
import Prometheus
import Proxy
import TLS

/// What the agent serves besides workload traffic: the admin API on its Unix
/// socket, Prometheus metrics and the readiness probe. Every route reads the
/// agent's parts as they are now; reload goes through the control loop.
enum AdminRoutes {
    static func servers(for services: AgentServices, events: ControlEvents, metrics: PrometheusCollectorRegistry) -> [AdminServer] {
        let (config, group, logger) = (services.config, services.group, services.logger)
        return [
            AdminServer(path: config.adminSocket, routes: adminRoutes(services, events: events), queryRoutes: queryRoutes(services), group: group, logger: logger),
            AdminServer(
                binding: .tcp(name: "metrics", port: config.ports.metrics, sockets: services.sockets),
                routes: [
                    "/metrics": {
                        AdminServer.Response(contentType: "text/plain; version=0.0.4; charset=utf-8", body: Data(metrics.emitToBuffer()))
                    },
                ], group: group, logger: logger),
            AdminServer(
                binding: .tcp(name: "readiness", port: config.ports.readiness, sockets: services.sockets),
                routes: ["/healthz/ready": readiness(services.state)], group: group, logger: logger),
        ]
    }

    private static let graphOff = AdminServer.Response(
        status: .serviceUnavailable, body: Data(#"{"error":"the service graph is off: graph.enabled is false in the agent's config"}"#.utf8))

    private static func readiness(_ state: AgentState) -> AdminServer.Route {
        {
            state.current.ready
                ? AdminServer.Response(contentType: "text/plain", body: Data("ready\n".utf8))
                : AdminServer.Response(status: .serviceUnavailable, contentType: "text/plain", body: Data("not ready\n".utf8))
        }
    }

    private static func adminRoutes(_ services: AgentServices, events: ControlEvents) -> [String: AdminServer.Route] {
        let (config, state, svids, registry, connections, netfilter, group) = (
            services.config, services.state, services.svids, services.registry, services.connections, services.netfilter, services.group
        )
        let podSources = services.podSources
        return [
            "/v1/certs": { AdminServer.Response(body: try AdminViews.encode(AdminViews.certificates(svids))) },
            "/v1/connections": { AdminServer.Response(body: try AdminViews.encode(AdminViews.connections(connections))) },
            "/v1/rules": {
                guard let parameters = state.current.captureParameters else {
                    return AdminServer.Response(status: .serviceUnavailable, body: Data(#"{"error":"the capture table is not installed yet"}"#.utf8))
                }
                return AdminServer.Response(body: try AdminViews.encode(AdminViews.rules(desired: CaptureRules.table(for: parameters), netfilter: netfilter)))
            },
            "POST /v1/graph/baseline": {
                guard let graph = services.graph else { return graphOff }
                try graph.setBaseline()
                return AdminServer.Response(body: Data(#"{"baseline":"set"}"#.utf8))
            },
            // The same reload as SIGHUP, done by the control loop; the answer says how it went.
            "POST /v1/reload": {
                AdminServer.Response(body: try AdminViews.encode(try events.reload(on: group.next())))
            },
            "/v1/policies": {
                AdminServer.Response(body: try AdminViews.encode(AdminViews.policies(state.current.policy)))
            },
            "/v1/workloads": {
                AdminServer.Response(body: try AdminViews.encode(AdminViews.workloads(registry, modes: state.current.peerAuthentication, namespaces: state.current.namespaces)))
            },
            "/v1/status": {
                let now = state.current
                let certificates = svids.statuses()
                let members = registry.members
                let status = AdminViews.StatusView(
                    version: MeshAgentVersion.current,
                    uptimeSeconds: Int((ContinuousClock.now - state.started).components.seconds),
                    node: config.node, trustDomain: config.trustDomain, captureMode: config.captureMode.rawValue,
                    table: "inet mesh_agent", rules: now.rules, ready: now.ready,
                    workloads: members.count, workloadsPresent: members.filter(\.isPresent).count,
                    connections: connections.count, peerAuthentications: now.peerAuthentication.policies.count,
                    authorizationPolicies: now.policy.policies.authorization.policies.count, policyGeneration: now.policy.generation,
                    defaultMTLSMode: now.peerAuthentication.defaultMode.rawValue, certificates: certificates.count,
                    earliestCertificateExpiry: certificates.compactMap(\.notAfter).min().map(Certificate.formatTime),
                    sources: podSources.views)
                return AdminServer.Response(body: try AdminViews.encode(status))
            },
        ]
    }

    private static func queryRoutes(_ services: AgentServices) -> [String: AdminServer.QueryRoute] {
        let (registry, authorizer, graph, state) = (services.registry, services.authorizer, services.graph, services.state)
        return [
            "/v1/graph": { parameters in
                guard let graph else { return graphOff }
                return AdminServer.Response(body: try AdminViews.graph(parameters, graph: graph))
            },
            "/v1/policy/report": { parameters in
                guard let graph else { return graphOff }
                return AdminServer.Response(
                    body: try AdminViews.policyReport(
                        parameters, graph: graph, policies: state.current.policy.policies.authorization, workloads: registry.members.map(\.workload)))
            },
            "/v1/policy/explain": { parameters in
                AdminServer.Response(body: try AdminViews.encode(AdminViews.explain(parameters, registry: registry, authorizer: authorizer)))
            },
        ]
    }
}
