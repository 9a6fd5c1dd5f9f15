import Agent
import ArgumentParser
import Foundation

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Is the agent working: version, uptime, node, capture rules, workloads, connections, certificates."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let (status, raw) = try connection.fetch("/v1/status", as: AdminViews.StatusView.self)
        switch connection.output {
        case .json:
            print(String(decoding: raw, as: UTF8.self))
        case .table:
            printTable(["FIELD", "VALUE"], [
                ["version", status.version],
                ["uptime", "\(status.uptimeSeconds)s"],
                ["node", status.node],
                ["trust domain", status.trustDomain],
                ["capture mode", status.captureMode],
                ["ready", status.ready ? "yes" : "no"],
                ["rules", "table \(status.table): \(status.rules)"],
                ["workloads", "\(status.workloadsPresent) present of \(status.workloads) configured"],
                ["connections", String(status.connections)],
                ["mTLS", "default \(status.defaultMTLSMode), \(status.peerAuthentications) PeerAuthentication(s)"],
                ["certificates", "\(status.certificates), earliest expiry \(status.earliestCertificateExpiry ?? "-")"],
            ])
        }
    }
}

struct WorkloadsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workloads",
        abstract: "The configured workloads: identity, cgroup and its id (when present), ports and their mTLS mode, labels."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let (workloads, raw) = try connection.fetch("/v1/workloads", as: [AdminViews.WorkloadView].self)
        switch connection.output {
        case .json:
            print(String(decoding: raw, as: UTF8.self))
        case .table:
            printTable(
                ["WORKLOAD", "IDENTITY", "CGROUP", "CGROUP ID", "PORTS", "LABELS"],
                workloads.map { view in
                    [
                        "\(view.namespace)/\(view.name)", view.identity, view.cgroup,
                        view.cgroupID.map(String.init) ?? "(not present)",
                        view.ports.isEmpty ? "-" : view.ports.map { "\($0) \(view.mtls[String($0)] ?? "?")" }.joined(separator: ", "),
                        view.labels.isEmpty ? "-" : view.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
                    ]
                }
            )
        }
    }
}
