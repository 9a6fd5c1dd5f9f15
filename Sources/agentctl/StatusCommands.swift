import AdminAPI
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
                ["policies", "generation \(status.policyGeneration), \(status.authorizationPolicies) AuthorizationPolicy(s)"],
                ["certificates", "\(status.certificates), earliest expiry \(status.earliestCertificateExpiry ?? "-")"],
            ] + (status.sources ?? []).map { source in
                let state = source.connected ? "connected" : "NOT CONNECTED (keeping its last workloads)"
                let failed = source.failed > 0 ? ", \(source.failed) failed" : ""
                let error = source.lastError.map { "; last error: \($0)" } ?? ""
                return [
                    "source \(source.name)",
                    "\(source.endpoint): \(state), \(source.enrolled) enrolled of \(source.workloads)\(failed), \(source.restarts) restart(s)\(error)",
                ]
            })
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
                ["WORKLOAD", "IDENTITY", "SOURCE", "CAPTURE", "CGROUP", "CGROUP ID", "STATE", "PORTS", "LABELS"],
                workloads.map { view in
                    [
                        "\(view.namespace)/\(view.name)", view.identity, view.source ?? "-",
                        view.captureMode == "netns" ? "netns \(view.netns ?? "?") \((view.addresses ?? []).joined(separator: ","))" : (view.captureMode ?? "host"),
                        view.cgroup,
                        view.cgroupID.map(String.init) ?? "(not present)",
                        view.state.map { state in view.since.map { "\(state) since \($0)" } ?? state } ?? "-",
                        view.ports.isEmpty ? "-" : view.ports.map { "\($0) \(view.mtls[String($0)] ?? "?")" }.joined(separator: ", "),
                        view.labels.isEmpty ? "-" : view.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
                    ]
                }
            )
        }
    }
}

struct RulesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rules",
        abstract: "The nftables table as the kernel holds it now, and whether it matches what the agent wants (exit 1 if not)."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let (rules, raw) = try connection.fetch("/v1/rules", as: AdminViews.RulesView.self)
        switch connection.output {
        case .json:
            print(String(decoding: raw, as: UTF8.self))
        case .table:
            print(rules.live ?? "(table \(rules.table) is not in the kernel)")
            if rules.inSync {
                print("# table \(rules.table) matches the desired ruleset")
            } else {
                print("# table \(rules.table) differs from the desired ruleset (the agent repairs it within 10 s):")
                for line in rules.drift { print("#   \(line)") }
            }
        }
        if !rules.inSync { throw ExitCode.failure }
    }
}

struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Re-read the config and policies (the same as SIGHUP) and say how it went; exit 1 when anything was refused."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let outcome: ReloadOutcome
        let raw: Data
        do {
            raw = try connection.client.post("/v1/reload")
            outcome = try JSONDecoder().decode(ReloadOutcome.self, from: raw)
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
        if connection.output == .json {
            print(String(decoding: raw, as: UTF8.self))
        } else if outcome.config == "applied" {
            print("reloaded: \(outcome.workloads) workload(s), policy generation \(outcome.policyGeneration)")
            if !outcome.restartRequired.isEmpty {
                print("changed, but applied only on restart: \(outcome.restartRequired.joined(separator: ", "))")
            }
            for error in outcome.errors {
                printError("policies refused, the previous ones stay in force: \(error)")
            }
        } else {
            printError("reload refused, the running configuration stays in force:")
            for error in outcome.errors { printError(error) }
        }
        if outcome.config != "applied" || !outcome.errors.isEmpty { throw ExitCode.failure }
    }
}
