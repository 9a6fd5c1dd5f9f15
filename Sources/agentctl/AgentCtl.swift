import Agent
import ArgumentParser
import Foundation

@main
struct AgentCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentctl",
        abstract: "Inspect and operate mesh-agent.",
        subcommands: [ConfigCommand.self, CACommand.self, CertsCommand.self, ConnectionsCommand.self]
    )
}

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with the agent's configuration file.",
        subcommands: [Check.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a config file without starting the agent; exit 1 with FILE:LINE: reason when it is invalid."
        )

        @Argument(help: "The config file to check.")
        var file: String

        func run() throws {
            do {
                let config = try AgentConfig.load(path: file)
                print("\(file): valid (trust domain \(config.trustDomain), node \(config.node), \(config.workloads.count) workload(s))")
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode.failure
            }
        }
    }
}
