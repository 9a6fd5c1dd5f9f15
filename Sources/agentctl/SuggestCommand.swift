import AdminAPI
import ArgumentParser
import Foundation
import Graph

extension PolicyCommand {
    struct Suggest: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Least-privilege AuthorizationPolicy files (dry-run) from the observed graph, and PeerAuthentication STRICT where no plaintext was seen.",
            discussion: """
                For each destination workload on the agent's node: the callers (principals, or plaintext addresses), \
                ports, and for HTTP the methods and paths that were allowed in the window, as an ALLOW policy with \
                istio.io/dry-run: "true". Paths are widened only at variable segments (/orders/{id} -> /orders/*) or \
                where eight or more siblings share a parent other than / (docs/journey.md). Merge the graphs of \
                several nodes first (agentctl graph merge) and pass the result with --graph for the whole cluster, \
                with the other nodes' workloads (agentctl workloads -o json on each) as --workloads FILE: a policy \
                selects its workload by labels, which only the workload's own node knows.
                """
        )

        @Option(name: .long, help: "The agent's admin socket (default: $MESH_AGENT_SOCKET or \(AdminClient.defaultSocket)).")
        var socket: String?

        @Option(help: "Only what was seen within this long before now, like 7d or 24h (default: everything kept).")
        var since: String?

        @Option(help: "Only policies for this destination workload (NAME or NAMESPACE/NAME).")
        var workload: String?

        @Option(help: "Only policies for workloads in this namespace.")
        var namespace: String?

        @Option(help: "A graph file (agentctl graph -o json, or graph merge) instead of the running agent's graph.")
        var graph: String?

        @Option(help: "Workloads of other nodes, for their labels (agentctl workloads -o json there); repeat for each node.")
        var workloads: [String] = []

        @Option(help: "Write one file per workload into this directory instead of printing them.")
        var out: String?

        func run() throws {
            let start = try GraphCommand.windowStart(since)
            var edges: [Edge]
            if let graph {
                do {
                    edges = try GraphDocument.decode(try Data(contentsOf: URL(fileURLWithPath: graph)), source: graph).edges
                } catch {
                    printError("\(error)")
                    throw ExitCode.failure
                }
            } else {
                edges = try GraphCommand.fetch(socket: socket, since: start)
            }
            edges = edges.filter { edge in
                let destination = edge.key.destinationWorkload
                return EdgeFilter(since: start).matches(edge)
                    && (namespace.map { edge.key.destinationNamespace == $0 } ?? true)
                    && (workload.map { destination == $0 || destination.hasSuffix("/\($0)") } ?? true)
            }
            // Selectors are the workloads' labels, as their nodes' agents know them.
            var known: [AdminViews.WorkloadView] = []
            for file in workloads {
                do {
                    known += try JSONDecoder().decode([AdminViews.WorkloadView].self, from: try Data(contentsOf: URL(fileURLWithPath: file)))
                } catch {
                    printError("--workloads \(file): not the output of agentctl workloads -o json: \(error)")
                    throw ExitCode.failure
                }
            }
            do {
                known += try JSONDecoder().decode(
                    [AdminViews.WorkloadView].self, from: try AgentConnection.client(socket: socket).get("/v1/workloads"))
            } catch {
                // With every node's workloads in files, the local agent is not needed.
                if workloads.isEmpty || graph == nil {
                    printError("\(error) (the workloads' labels come from the running agent)")
                    throw ExitCode.failure
                }
            }
            let labels = Dictionary(known.map { ("\($0.namespace)/\($0.name)", $0.labels) }, uniquingKeysWith: { first, _ in first })
            let suggestion = PolicySuggestion(edges: edges, labels: labels)
            for (workload, reason) in suggestion.skipped {
                printError("no policy for \(workload): \(reason)")
            }
            guard !suggestion.files.isEmpty else {
                printError("nothing to suggest\(since.map { " from the last \($0)" } ?? ""): no allowed traffic to a labelled workload was observed")
                throw ExitCode.failure
            }
            if let out {
                do {
                    try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
                    for file in suggestion.files {
                        let path = (out as NSString).appendingPathComponent(file.name)
                        try Data(file.text.utf8).write(to: URL(fileURLWithPath: path))
                        print(path)
                    }
                } catch {
                    printError("cannot write the suggested policies into \(out): \(error.localizedDescription)")
                    throw ExitCode.failure
                }
            } else {
                print(suggestion.files.map(\.text).joined(separator: "---\n"), terminator: "")
            }
        }
    }
}
