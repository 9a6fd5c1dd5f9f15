import Foundation
import Testing
@testable import AdminAPI

/// The admin API's JSON is a public interface (scripts read `agentctl -o json`),
/// and the agent and agentctl now share it through this module: its field
/// names are pinned here, whichever side changes.
@Suite struct AdminViewsJSONTests {
    static func keys(_ value: some Encodable) throws -> Set<String> {
        let object = try JSONSerialization.jsonObject(with: try AdminViews.encode(value))
        return Set((object as? [String: Any])?.keys.map { $0 } ?? [])
    }

    @Test func certificateFields() throws {
        let view = AdminViews.CertificateView(
            identity: "spiffe://td/ns/a/sa/b", serial: "01", notBefore: "t0", notAfter: "t1", renewAt: "t2", state: "valid", lastError: "e",
            chainPEM: "pem")
        #expect(try Self.keys(view) == ["identity", "serial", "not_before", "not_after", "renew_at", "state", "last_error", "chain_pem"])
    }

    @Test func connectionFields() throws {
        let view = AdminViews.ConnectionView(
            direction: "inbound", sourceAddress: "10.0.0.1:1", sourceWorkload: "a", sourceIdentity: "i", destinationAddress: "10.0.0.2:2",
            destinationWorkload: "b", destinationIdentity: "j", tls: "mtls", reason: "r", bytesSent: 1, bytesReceived: 2, durationMilliseconds: 3)
        #expect(
            try Self.keys(view) == [
                "direction", "src_addr", "src_workload", "src_identity", "dst_addr", "dst_workload", "dst_identity", "tls", "reason",
                "bytes_sent", "bytes_received", "duration_ms",
            ])
    }

    @Test func workloadFields() throws {
        let view = AdminViews.WorkloadView(
            name: "a", namespace: "ns", serviceAccount: "sa", identity: "i", cgroup: "/a", cgroupID: 7, present: true, ports: [80],
            mtls: ["80": "STRICT"], labels: ["app": "a"])
        #expect(
            try Self.keys(view) == ["name", "namespace", "service_account", "identity", "cgroup", "cgroup_id", "present", "ports", "mtls", "labels"])
    }

    @Test func statusFields() throws {
        let view = AdminViews.StatusView(
            version: "v", uptimeSeconds: 1, node: "n", trustDomain: "td", captureMode: "host", table: "inet mesh_agent", rules: "in sync",
            ready: true, workloads: 1, workloadsPresent: 1, connections: 0, peerAuthentications: 0, authorizationPolicies: 0,
            policyGeneration: 1, defaultMTLSMode: "PERMISSIVE", certificates: 1, earliestCertificateExpiry: "t")
        #expect(
            try Self.keys(view) == [
                "version", "uptime_seconds", "node", "trust_domain", "capture_mode", "table", "rules", "ready", "workloads",
                "workloads_present", "connections", "peer_authentications", "authorization_policies", "policy_generation",
                "default_mtls_mode", "certificates", "earliest_certificate_expiry",
            ])
    }

    @Test func rulesFields() throws {
        let view = AdminViews.RulesView(table: "inet mesh_agent", inSync: false, drift: ["x"], live: "l", desired: "d")
        #expect(try Self.keys(view) == ["table", "in_sync", "drift", "live", "desired"])
    }

    @Test func policiesFields() throws {
        let row = AdminViews.PoliciesView.Row(
            kind: "AuthorizationPolicy", namespace: "ns", name: "p", selector: "app=a", action: "ALLOW", rules: 1, dryRun: true, source: "f:1")
        let view = AdminViews.PoliciesView(
            generation: 1, loadedAt: "t", directory: "/d", files: ["f"], policies: [row], warnings: [], lastReloadError: ["e"],
            lastReloadErrorAt: "t")
        #expect(
            try Self.keys(view) == ["generation", "loaded_at", "directory", "files", "policies", "warnings", "last_reload_error", "last_reload_error_at"])
        #expect(try Self.keys(row) == ["kind", "namespace", "name", "selector", "action", "rules", "dry_run", "source"])
    }

    @Test func explainFields() throws {
        let view = AdminViews.ExplainView(
            decision: "deny", layer: "l7", workload: "ns/a", source: "s", port: 80, policy: "p", rule: "r", reason: "why", audited: ["q"],
            dryRun: "allow", path: "/", requestPrincipal: "iss/sub", responseStatus: 403)
        #expect(
            try Self.keys(view) == [
                "decision", "layer", "workload", "source", "port", "policy", "rule", "reason", "audited", "dry_run", "path",
                "request_principal", "response_status",
            ])
    }

    @Test func reloadOutcomeFields() throws {
        let outcome = ReloadOutcome(config: "applied", errors: [], restartRequired: ["ports"], workloads: 2, policyGeneration: 3)
        #expect(try Self.keys(outcome) == ["config", "errors", "restart_required", "workloads", "policy_generation"])
    }

    /// agentctl prints `-o json` as the agent sent it: sorted keys, unescaped slashes.
    @Test func encodingIsStableText() throws {
        let outcome = ReloadOutcome(config: "applied", errors: ["a/b"], restartRequired: [], workloads: 0, policyGeneration: 1)
        let text = String(decoding: try AdminViews.encode(outcome), as: UTF8.self)
        #expect(text.contains(#""a/b""#))
        #expect(text.range(of: "\"config\"")!.lowerBound < text.range(of: "\"errors\"")!.lowerBound)
    }
}

@Suite struct AdminClientResponseTests {
    @Test func anOKResponseGivesItsBody() throws {
        let body = try AdminClient.body(of: Data("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}".utf8))
        #expect(String(decoding: body, as: UTF8.self) == "{\"a\":1}")
    }

    @Test func anErrorStatusCarriesTheAgentsMessage() {
        #expect {
            _ = try AdminClient.body(of: Data("HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"not installed yet\"}".utf8))
        } throws: { error in
            "\(error)" == "the agent answered 503: not installed yet"
        }
    }

    @Test func aResponseWithoutHeadersIsRefused() {
        #expect {
            _ = try AdminClient.body(of: Data("HTTP/1.1 200 OK\r\n".utf8))
        } throws: { error in
            "\(error)" == "the agent's answer could not be read: no end of headers"
        }
    }
}
