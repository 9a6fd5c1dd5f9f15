/// `mesh-agent-cni install|uninstall [flags]`: what the DaemonSet's init
/// container (or an operator on the node) asks for. A runtime runs the
/// plugin with no arguments and CNI_COMMAND set, so arguments alone say the
/// binary is run as the installer.
public struct InstallCommand: Equatable, Sendable {
    public enum Action: String, Sendable {
        case install, uninstall, help
    }

    public var action: Action
    /// Where runtimes look for plugin binaries (their `CNI_PATH`).
    public var binDirectory = "/opt/cni/bin"
    /// Where runtimes read network configs.
    public var confDirectory = "/etc/cni/net.d"
    public var agentSocket = PluginSettings.defaultAgentSocket

    public init(action: Action) {
        self.action = action
    }

    public static let usage = """
        usage: mesh-agent-cni install [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--agent-socket PATH]
               mesh-agent-cni uninstall [--cni-bin-dir DIR] [--cni-conf-dir DIR]

        install    copies this binary to DIR/mesh-agent-cni (default /opt/cni/bin) and chains the
                   plugin, with the agent's enrollment socket (default \(PluginSettings.defaultAgentSocket)),
                   into the network config the runtime uses: the first *.conflist, *.conf or *.json of
                   the conf dir (default /etc/cni/net.d); a single plugin's .conf becomes a .conflist.
                   Running it again changes nothing.
        uninstall  takes the plugin out of every conflist of the conf dir, then removes the binary.

        Run by a container runtime (CNI_COMMAND set, config on stdin), it is the CNI plugin.
        """

    public static func parse(_ arguments: [String]) throws(ChainInstallationError) -> InstallCommand {
        let fix = "see mesh-agent-cni --help"
        guard let first = arguments.first else {
            throw ChainInstallationError("no command given", remedy: fix)
        }
        guard let action = Action(rawValue: first) ?? (["-h", "--help"].contains(first) ? .help : nil) else {
            throw ChainInstallationError("\(CNIEnvironment.quoted(first)) is not a command of mesh-agent-cni (install, uninstall)", remedy: fix)
        }
        var command = InstallCommand(action: action)
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            if argument == "-h" || argument == "--help" {
                command.action = .help
                continue
            }
            // `--flag value` or `--flag=value`.
            let parts = argument.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let flag = String(parts[0])
            let value: String
            if parts.count == 2 {
                value = String(parts[1])
            } else if let next = rest.popFirst() {
                value = next
            } else {
                throw ChainInstallationError("\(CNIEnvironment.quoted(flag)) needs a value", remedy: fix)
            }
            switch flag {
            case "--cni-bin-dir":
                command.binDirectory = try path(value, flag: flag, check: Names.filePathProblem)
            case "--cni-conf-dir":
                command.confDirectory = try path(value, flag: flag, check: Names.filePathProblem)
            case "--agent-socket" where action != .uninstall:
                command.agentSocket = try path(value, flag: flag, check: Names.socketPathProblem)
            default:
                throw ChainInstallationError("\(CNIEnvironment.quoted(flag)) is not a flag of mesh-agent-cni \(action.rawValue)", remedy: fix)
            }
        }
        return command
    }

    private static func path(_ value: String, flag: String, check: (String) -> String?) throws(ChainInstallationError) -> String {
        if let problem = check(value) {
            throw ChainInstallationError("\(flag) \(CNIEnvironment.quoted(value)) is not a usable path: \(problem)", remedy: "give an absolute path")
        }
        return value
    }
}
