import AdminAPI
import ArgumentParser
import Config
import Foundation
import Graph
import Policy
import TLS

extension PolicyCommand {
    struct Grant: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Just-in-time access: write a policy that allows one caller to one workload until it expires by itself.",
            discussion: """
                Writes an ALLOW AuthorizationPolicy annotated mesh-agent.io/expires into the running agent's policy \
                directory (it asks the agent where that is; --dir overrides) and prints it. The agent applies it \
                within a second and stops applying it at the expiry instant, closing the connections only it allowed.
                """
        )

        @OptionGroup var connection: AgentConnection

        @Option(help: "The caller's SPIFFE ID (spiffe://TD/ns/NS/sa/SA).")
        var from: String

        @Option(help: "The workload to reach (NAME or NAMESPACE/NAME, as agentctl workloads lists it).")
        var to: String

        @Option(help: "Only this port.")
        var port: UInt16?

        @Option(help: "Only this HTTP method (with --path).")
        var method: String?

        @Option(help: "Only this HTTP path, exact or with a trailing * for a prefix (with --method).")
        var path: String?

        @Option(name: .customLong("for"), help: "How long the grant lasts, like 4h, 30m or 1d.")
        var duration: String

        @Option(help: "Write into this directory instead of the agent's policy directory.")
        var dir: String?

        func validate() throws {
            guard (method == nil) == (path == nil) else { throw ValidationError("--method and --path go together") }
            guard let window = parseWindow(duration), window > .zero else {
                throw ValidationError("--for \"\(duration)\" is not a duration; write it like 4h, 30m or 1d")
            }
            do {
                _ = try SpiffeID(from)
            } catch {
                throw ValidationError("--from must be a SPIFFE ID, spiffe://TD/ns/NS/sa/SA: \(error)")
            }
        }

        func run() throws {
            let (workloads, _) = try connection.fetch("/v1/workloads", as: [AdminViews.WorkloadView].self)
            let matches = workloads.filter { "\($0.namespace)/\($0.name)" == to || $0.name == to }
            guard matches.count == 1, let workload = matches.first else {
                printError(matches.isEmpty
                    ? "no workload \"\(to)\" on this node; agentctl workloads lists them"
                    : "\"\(to)\" names several workloads; write NAMESPACE/NAME")
                throw ExitCode.failure
            }
            guard !workload.labels.isEmpty else {
                printError("\(workload.namespace)/\(workload.name) has no labels, so no policy can select it alone: give it labels (e.g. app: \(workload.name))")
                throw ExitCode.failure
            }
            let directory: String
            if let dir {
                directory = dir
            } else {
                directory = try connection.fetch("/v1/policies", as: AdminViews.PoliciesView.self).0.directory
            }
            let seconds = Double(parseWindow(duration)?.components.seconds ?? 0)
            let expires = RFC3339.format(Date().timeIntervalSince1970 + seconds)
            let caller = String(from.dropFirst("spiffe://".count))
            let sa = caller.split(separator: "/").last.map(String.init) ?? "caller"
            let stamp = expires.filter(\.isNumber)
            let name = String("grant-\(sa)-\(workload.name)".lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }.prefix(48)) + "-\(stamp.prefix(14))"
            let text = PolicySuggestion.grant(
                name: name, namespace: workload.namespace, labels: workload.labels, principal: caller, expires: expires, port: port,
                method: method, path: path)
            // Checked as the agent will read it, before it is written there.
            do {
                _ = try PolicyFile.parse(text, file: name + ".yaml")
            } catch {
                printError(error.errors.map(\.description).joined(separator: "\n"))
                throw ExitCode.failure
            }
            let file = (directory as NSString).appendingPathComponent(name + ".yaml")
            do {
                try Data(text.utf8).write(to: URL(fileURLWithPath: file), options: .withoutOverwriting)
            } catch {
                printError("cannot write \(file): \(error.localizedDescription)")
                throw ExitCode.failure
            }
            print("# written to \(file)")
            print(text, terminator: "")
        }
    }
}
