import ArgumentParser
import Config
import Foundation

@main
struct AgentCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentctl",
        abstract: "Inspect and operate mesh-agent.",
        subcommands: [StatusCommand.self, WorkloadsCommand.self, CertsCommand.self, ConnectionsCommand.self, RulesCommand.self, PoliciesCommand.self, PolicyCommand.self, GraphCommand.self, ReloadCommand.self, ConfigCommand.self, CACommand.self]
    )

    /// `agentctl --socket PATH COMMAND` (as documented) and `agentctl COMMAND
    /// --socket PATH` both work: the option is parsed by the commands that talk
    /// to the agent, so a leading one is moved behind the command words.
    static func main() {
        main(Self.movingLeadingOptions(Array(CommandLine.arguments.dropFirst())))
    }

    static func movingLeadingOptions(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var rest = arguments[...]
        while let first = rest.first, first == "--socket" || first.hasPrefix("--socket=") || first == "-o" || first == "--output" {
            leading.append(first)
            rest = rest.dropFirst()
            if !first.contains("="), let value = rest.first {
                leading.append(value)
                rest = rest.dropFirst()
            }
        }
        guard !leading.isEmpty else { return arguments }
        // Command words come first: everything up to the first option.
        let commandWords = rest.prefix { !$0.hasPrefix("-") }
        return Array(commandWords) + leading + Array(rest.dropFirst(commandWords.count))
    }
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
