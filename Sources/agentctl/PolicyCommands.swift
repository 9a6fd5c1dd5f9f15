import AdminAPI
import ArgumentParser
import Config
import Foundation
import Policy

struct PoliciesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policies",
        abstract: "The policies the agent enforces now, their generation, and why the last reload was refused (if it was)."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let (view, raw) = try connection.fetch("/v1/policies", as: AdminViews.PoliciesView.self)
        switch connection.output {
        case .json:
            print(String(decoding: raw, as: UTF8.self))
        case .table:
            print("generation \(view.generation), loaded \(view.loadedAt) from \(view.directory) (\(view.files.count) file(s))")
            if let errors = view.lastReloadError {
                print("last reload refused at \(view.lastReloadErrorAt ?? "?"); the policies below stay in force:")
                for error in errors { print("  \(error)") }
            }
            print("")
            printTable(
                ["KIND", "POLICY", "SELECTOR", "ACTION", "RULES", "EXPIRES", "SOURCE"],
                view.policies.map { row in
                    [
                        row.kind, "\(row.namespace)/\(row.name)", row.selector ?? "(namespace)", row.action + (row.dryRun == true ? " (dry-run)" : ""),
                        row.rules.map(String.init) ?? "-", Self.timeLeft(row), row.source,
                    ]
                })
            for warning in view.warnings { print("warning: \(warning)") }
        }
    }

    /// A grant's time left, as `3h59m left` or `expired`; `-` for a policy without one.
    static func timeLeft(_ row: AdminViews.PoliciesView.Row) -> String {
        guard let expires = row.expires, let seconds = row.secondsLeft else { return "-" }
        guard seconds > 0 else { return "expired (\(expires))" }
        let (hours, minutes) = (seconds / 3600, (seconds % 3600) / 60)
        let left = hours > 0 ? "\(hours)h\(minutes)m" : minutes > 0 ? "\(minutes)m\(seconds % 60)s" : "\(seconds)s"
        return "\(left) left"
    }
}

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check policy files, and ask what the policies in force decide.",
        subcommands: [Check.self, Explain.self, Suggest.self, Report.self, Grant.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a policy file or directory without a running agent; exit 1 with FILE:LINE: reason for each problem."
        )

        @Argument(help: "A policy file, or a directory of *.yaml / *.yml files (read as the agent reads policyDir).")
        var path: String

        @Option(help: "The mesh's root namespace, whose policies apply to every workload (default: the config's, or istio-system).")
        var rootNamespace: String?

        @Option(help: "An agent config: also check the policies against its workloads (rules naming HTTP attributes on ports declared protocol: tcp).")
        var config: String?

        func run() throws {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                printError("\(path): no such file or directory")
                throw ExitCode.failure
            }
            var agentConfig: AgentConfig?
            if let config {
                do {
                    agentConfig = try AgentConfig.load(path: config)
                } catch {
                    printError("\(error)")
                    throw ExitCode.failure
                }
            }
            let rootNamespace = self.rootNamespace ?? agentConfig?.rootNamespace ?? "istio-system"
            let policies: PolicySet
            do {
                if isDirectory.boolValue {
                    policies = try PolicyLoader.load(directory: path, rootNamespace: rootNamespace, defaultMode: .PERMISSIVE)
                } else {
                    policies = try PolicyLoader.load(file: path, rootNamespace: rootNamespace, defaultMode: .PERMISSIVE)
                }
                if let agentConfig { try policies.check(against: agentConfig.workloads) }
            } catch {
                FileHandle.standardError.write(Data(error.errors.map { "\($0)\n" }.joined().utf8))
                throw ExitCode.failure
            }
            for warning in policies.warnings { print("warning: \(warning)") }
            print(
                "\(path): valid (\(policies.authorization.policies.count) AuthorizationPolicy(s), \(policies.requestAuthentication.policies.count) RequestAuthentication(s), \(policies.peerAuthentication.policies.count) PeerAuthentication(s)\(policies.skippedDocumentCount > 0 ? ", \(policies.skippedDocumentCount) document(s) of other kinds ignored" : ""))"
            )
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What the running agent's policies decide for a connection (and request) to one of its workloads, and which rule decides.",
            discussion: """
                The agent answers with the evaluator its data path uses. Without --from or --from-workload the caller \
                is plaintext (no identity). When the workload's policies name HTTP attributes, describe the request \
                with --method and --path (and --header, --host, --jwt).
                """
        )

        @OptionGroup var connection: AgentConnection

        @Option(help: "The caller's SPIFFE ID (spiffe://TD/ns/NS/sa/SA).")
        var from: String?

        @Option(help: "The caller, as a workload of this node (NAME or NAMESPACE/NAME).")
        var fromWorkload: String?

        @Option(help: "The workload called (NAME or NAMESPACE/NAME).")
        var toWorkload: String

        @Option(help: "The destination port.")
        var port: UInt16

        @Option(help: "The caller's IP address, for ipBlocks and source.ip.")
        var sourceIp: String?

        @Option(help: "HTTP method.")
        var method: String?

        @Option(help: "HTTP path (normalized as the data path normalizes it).")
        var path: String?

        @Option(help: "Host / :authority (default: the workload's name).")
        var host: String?

        @Option(help: "A request header, NAME=VALUE; repeat for more.")
        var header: [String] = []

        @Option(help: "A JWT the request carries (checked against the RequestAuthentication in force).")
        var jwt: String?

        func validate() throws {
            if from != nil && fromWorkload != nil {
                throw ValidationError("give --from or --from-workload, not both")
            }
        }

        func run() throws {
            var items: [(String, String)] = [("to_workload", toWorkload), ("port", String(port))]
            if let from { items.append(("from", from)) }
            if let fromWorkload { items.append(("from_workload", fromWorkload)) }
            if let sourceIp { items.append(("source_ip", sourceIp)) }
            if let method { items.append(("method", method)) }
            if let path { items.append(("path", path)) }
            if let host { items.append(("host", host)) }
            if let jwt { items.append(("jwt", jwt)) }
            items += header.map { ("header", $0) }
            var components = URLComponents()
            components.path = "/v1/policy/explain"
            components.queryItems = items.map { URLQueryItem(name: $0.0, value: $0.1) }
            // Query values may hold '+' (tokens, headers), which forms read as a space.
            let query = (components.percentEncodedQuery ?? "").replacingOccurrences(of: "+", with: "%2B")
            let (view, raw) = try connection.fetch("/v1/policy/explain?\(query)", as: AdminViews.ExplainView.self)
            switch connection.output {
            case .json:
                print(String(decoding: raw, as: UTF8.self))
            case .table:
                var rows = [
                    ["decision", view.decision], ["decided by", view.layer], ["workload", "\(view.workload) port \(view.port)"],
                    ["source", view.source],
                ]
                if let path = view.path { rows.append(["path", path]) }
                if let principal = view.requestPrincipal { rows.append(["request principal", principal]) }
                rows.append(["policy", view.policy ?? "-"])
                if let rule = view.rule { rows.append(["rule", rule]) }
                rows.append(["reason", view.reason])
                if let audited = view.audited { rows.append(["audited by", audited.joined(separator: ", ")]) }
                if let dryRun = view.dryRun { rows.append(["dry-run", dryRun]) }
                printTable(["FIELD", "VALUE"], rows)
            }
        }
    }
}
