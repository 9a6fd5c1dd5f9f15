import AdminAPI
import ArgumentParser
import Config
import Foundation
import Graph

/// `agentctl graph`: the service graph this node observed, or several nodes'
/// graphs merged into the cluster's.
struct GraphCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "The observed service graph: who talked to which workload, how, and what policy said.",
        subcommands: [Show.self, Merge.self, Baseline.self],
        defaultSubcommand: Show.self
    )

    /// The start of a window written like 24h or 7d, in seconds since the epoch.
    static func windowStart(_ since: String?, now: Date = Date()) throws -> Double? {
        guard let since else { return nil }
        guard let window = parseWindow(since) else {
            throw ValidationError("--since \"\(since)\" is not a duration; write it like 24h, 90m or 7d")
        }
        return now.timeIntervalSince1970 - Double(window.components.seconds)
    }

    /// The running agent's edges last seen at or after `since`; exits 1 with
    /// the reason when the agent cannot answer.
    static func fetch(socket: String?, since: Double?, onlyNew: Bool = false) throws -> [Edge] {
        // The window is applied by the agent, so it reads only those hours.
        let query = (since.map { ["since=\(String(format: "%.3f", $0))"] } ?? []) + (onlyNew ? ["new=true"] : [])
        let path = "/v1/graph" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        do {
            return try GraphDocument.decode(try AgentConnection.client(socket: socket).get(path), source: "the agent's \(path)").edges
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
    }

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case table, json, dot, svg
    }

    /// What both subcommands print: which edges, and how.
    struct Selection: ParsableArguments {
        @Option(name: [.customShort("o"), .long], help: "Output format: table, json, dot or svg (svg needs Graphviz's dot).")
        var output: Format = .table

        @Option(help: "Only edges from or to this namespace.")
        var namespace: String?

        @Option(help: "Only edges to this workload (NAME or NAMESPACE/NAME), or from this service account.")
        var workload: String?

        @Option(help: "Only edges seen within this long before now, like 24h, 90m or 7d.")
        var since: String?

        /// `--since` as seconds since the epoch.
        func sinceTime() throws -> Double? { try GraphCommand.windowStart(since) }

        func print(_ edges: [Edge]) throws {
            let filter = EdgeFilter(namespace: namespace, workload: workload, since: try sinceTime())
            let shown = edges.filter(filter.matches)
            switch output {
            case .table:
                guard !shown.isEmpty else {
                    Swift.print("no edges observed\(since.map { " in the last \($0)" } ?? "")")
                    return
                }
                printTable(GraphView.tableHeader, GraphView.tableRows(shown))
            case .json:
                FileHandle.standardOutput.write(try GraphDocument(edges: shown).encoded())
                Swift.print("")
            case .dot:
                Swift.print(GraphView.dot(shown), terminator: "")
            case .svg:
                FileHandle.standardOutput.write(try Self.render(GraphView.dot(shown)))
            }
        }

        /// DOT rendered as SVG by Graphviz's `dot`, found on PATH.
        static func render(_ dot: String) throws -> Data {
            let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
                .map { "\($0)/dot" }.first { FileManager.default.isExecutableFile(atPath: $0) }
            guard let path else {
                printError("-o svg needs Graphviz's dot, which is not on PATH: install graphviz (apt-get install graphviz), or use -o dot")
                throw ExitCode.failure
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = ["-Tsvg"]
            let input = Pipe()
            let output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            try process.run()
            // Written from another thread: dot may fill its output pipe before
            // it has read all of its input.
            let writer = Thread {
                input.fileHandleForWriting.write(Data(dot.utf8))
                try? input.fileHandleForWriting.close()
            }
            writer.start()
            let svg = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                printError("\(path) -Tsvg failed with status \(process.terminationStatus); -o dot prints what it was given")
                throw ExitCode.failure
            }
            return svg
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "The edges this node's agent observed (the default: `agentctl graph` is `agentctl graph show`)."
        )

        @Option(name: .long, help: "The agent's admin socket (default: $MESH_AGENT_SOCKET or \(AdminClient.defaultSocket)).")
        var socket: String?

        @OptionGroup var selection: Selection

        @Flag(name: .customLong("new"), help: "Only edges whose caller, workload and port were first seen after the learning period.")
        var onlyNew = false

        func run() throws {
            try selection.print(try GraphCommand.fetch(socket: socket, since: try selection.sinceTime(), onlyNew: onlyNew))
        }
    }

    struct Baseline: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "End the learning period now: from now on, an edge never seen before is logged (event new_edge) and counted."
        )

        @OptionGroup var connection: AgentConnection

        func run() throws {
            do {
                _ = try connection.client.post("/v1/graph/baseline")
            } catch {
                printError("\(error)")
                throw ExitCode.failure
            }
            print("baseline set: the graph observed so far is what is known; new edges are reported from now on")
        }
    }

    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "merge",
            abstract: "Several nodes' graphs (agentctl graph -o json from each) as one: the cluster view."
        )

        @Argument(help: "Files written by agentctl graph -o json; - reads standard input.")
        var files: [String]

        @OptionGroup var selection: Selection

        func validate() throws {
            guard !files.isEmpty else { throw ValidationError("name at least one file written by agentctl graph -o json") }
        }

        func run() throws {
            var edges: [Edge] = []
            for file in files {
                do {
                    let data = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: file))
                    edges += try GraphDocument.decode(data, source: file).edges
                } catch let error as GraphError {
                    printError("\(error)")
                    throw ExitCode.failure
                } catch {
                    printError("\(file): cannot read it: \(error.localizedDescription)")
                    throw ExitCode.failure
                }
            }
            try selection.print(Edge.merged(edges))
        }
    }
}
