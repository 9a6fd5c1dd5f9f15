import AdminAPI
import ArgumentParser
import Foundation

/// Options every command that talks to a running agent shares.
struct AgentConnection: ParsableArguments {
    @Option(name: .long, help: "The agent's admin socket (default: $MESH_AGENT_SOCKET or \(AdminClient.defaultSocket)).")
    var socket: String?

    @Option(name: [.customShort("o"), .long], help: "Output format: table or json.")
    var output: OutputFormat = .table

    var client: AdminClient { Self.client(socket: socket) }

    /// The agent at `socket`, else `MESH_AGENT_SOCKET`, else the default path.
    static func client(socket: String?) -> AdminClient {
        AdminClient(socketPath: socket ?? ProcessInfo.processInfo.environment["MESH_AGENT_SOCKET"] ?? AdminClient.defaultSocket)
    }

    /// GETs `path` and decodes it, or exits 1 with the reason on stderr.
    func fetch<T: Decodable>(_ path: String, as type: T.Type) throws -> (T, Data) {
        do {
            let data = try client.get(path)
            return (try JSONDecoder().decode(T.self, from: data), data)
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data("agentctl: \(message)\n".utf8))
}

/// Prints rows under a header, each column as wide as its widest cell.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows {
        for (index, cell) in row.enumerated() where index < widths.count {
            widths[index] = max(widths[index], cell.count)
        }
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}
