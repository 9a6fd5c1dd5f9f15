/// `mesh-agent-cni install` and `uninstall` as decisions on names and bytes:
/// which of the node's network configs the runtime uses, and what it becomes
/// with this plugin chained in or taken out. The executable lists the
/// directory, reads the files it is asked for, and carries out the steps,
/// each write atomic, so the runtime never reads half a config.
public enum ChainInstallation {
    /// The `type` this plugin has in a conflist (its binary's name).
    public static let pluginType = "mesh-agent-cni"

    /// The extensions libcni loads network configs from (containerd and
    /// CRI-O use it); `.conf` and `.json` hold one plugin's config.
    public static let configExtensions = [".conflist", ".conf", ".json"]

    /// What the executable does, in order.
    public enum Step: Equatable, Sendable {
        /// Replace (or make) `file` with `contents`, by writing a temporary
        /// file in the same directory and renaming it over, with the mode
        /// `modeOf` has now.
        case write(file: String, contents: [UInt8], modeOf: String)
        /// Remove `file`: a single plugin's config, once the conflist that
        /// replaces it is written.
        case remove(file: String)
    }

    public struct Plan: Equatable, Sendable {
        /// The config the runtime uses, as found (before any conversion).
        public var file: String
        /// Empty when the config is already as it should be.
        public var steps: [Step]
    }

    /// The file the runtime uses: libcni sorts the names with a config
    /// extension byte by byte and loads the first. nil when there is none.
    public static func primaryConfig(among names: [String]) -> String? {
        names.filter(isConfigName).min { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// Chains this plugin, with `agentSocket`, at the end of the primary
    /// config's plugins, unless it is there already (then only its
    /// `agentSocket` is set; any other settings of the entry stay). A single
    /// plugin's config becomes `NAME.conflist`, which sorts right after
    /// `NAME.conf`, so it stays the runtime's choice.
    public static func install(
        directory: String, names: [String], agentSocket: String, read: (String) throws(ChainInstallationError) -> [UInt8]
    ) throws(ChainInstallationError) -> Plan {
        guard let file = primaryConfig(among: names) else {
            throw ChainInstallationError(
                "no network config in \(directory) (no *.conflist, *.conf or *.json file): the network plugin has not written its config yet",
                remedy: "mesh-agent-cni is chained after the plugin that gives pods their interface; install the cluster's network plugin first, then run install again (in the DaemonSet, the init container fails and is restarted until the config is there)")
        }
        let path = join(directory, file)
        var list = try NetworkConfigList(file: path, bytes: read(file))
        if list.plugins.first?["type"]?.stringValue == pluginType {
            throw ChainInstallationError(
                "\(path) lists mesh-agent-cni as its first plugin",
                remedy: "it is a chained plugin and must follow the plugin that makes the pod's interface (bridge, ptp, calico, …); fix the plugins list by hand")
        }
        guard list.chain(agentSocket: agentSocket) else { return Plan(file: file, steps: []) }
        guard list.convertedFromSingle else {
            return Plan(file: file, steps: [.write(file: file, contents: list.encoded(), modeOf: file)])
        }
        let target = stem(of: file) + ".conflist"
        if names.contains(target) {
            throw ChainInstallationError(
                "\(path) is a single plugin's config to be turned into \(join(directory, target)), but that file exists already",
                remedy: "the runtime reads \(file) and ignores \(target), which sorts after it; remove the one that is not in use, then run install again")
        }
        return Plan(file: file, steps: [.write(file: target, contents: list.encoded(), modeOf: file), .remove(file: file)])
    }

    /// Takes this plugin out of every conflist that lists it (an earlier
    /// install may have chained a file that is no longer the first). Files
    /// that do not name it are not parsed, so a broken config of someone
    /// else's does not stop the uninstall.
    public static func uninstall(
        directory: String, names: [String], read: (String) throws(ChainInstallationError) -> [UInt8]
    ) throws(ChainInstallationError) -> [Step] {
        var steps: [Step] = []
        let candidates = names.filter { $0.hasSuffix(".conflist") }.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        for file in candidates {
            let bytes = try read(file)
            guard contains(bytes, Array(pluginType.utf8)) else { continue }
            var list = try NetworkConfigList(file: join(directory, file), bytes: bytes)
            if list.unchain() {
                steps.append(.write(file: file, contents: list.encoded(), modeOf: file))
            }
        }
        return steps
    }

    static func isConfigName(_ name: String) -> Bool {
        configExtensions.contains { name.hasSuffix($0) }
    }

    /// The name without its config extension.
    static func stem(of name: String) -> String {
        guard let suffix = configExtensions.first(where: { name.hasSuffix($0) }) else { return name }
        return String(name.dropLast(suffix.count))
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : "\(directory)/\(name)"
    }

    private static func contains(_ bytes: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, bytes.count >= needle.count else { return false }
        return (0...(bytes.count - needle.count)).contains { start in bytes[start..<(start + needle.count)].elementsEqual(needle) }
    }
}

/// A network configuration list as the installer edits it: the plugins, and
/// every other member kept as it was.
public struct NetworkConfigList: Equatable, Sendable {
    /// The list's members but `plugins` (`cniVersion`, `name`, and whatever
    /// else the network plugin wrote).
    public var members: [String: JSONValue]
    public var plugins: [[String: JSONValue]]
    /// Read from a single plugin's config (`.conf`, `.json`), made into a
    /// list as libcni does when it loads one.
    public let convertedFromSingle: Bool

    /// Parses `bytes`, a `.conflist` or (by the name's extension) a single
    /// plugin's config, and checks what the runtime and this plugin need:
    /// a name, a `cniVersion` mesh-agent-cni speaks, plugins with a type.
    public init(file: String, bytes: [UInt8]) throws(ChainInstallationError) {
        let remedy = "the runtime cannot use it either; fix or remove it (it is the network plugin's file), then run install again"
        guard bytes.count <= NetworkConfig.maximumSize else {
            throw ChainInstallationError("\(file) is larger than \(NetworkConfig.maximumSize) bytes, which is no network config", remedy: remedy)
        }
        let json: JSONValue
        do {
            json = try JSONValue.parse(bytes)
        } catch {
            throw ChainInstallationError("\(file) is not valid JSON: \(error.reason)", remedy: remedy)
        }
        guard var members = json.objectValue else {
            throw ChainInstallationError("\(file) holds \(json.kind), not a JSON object", remedy: remedy)
        }
        if file.hasSuffix(".conflist") {
            guard let value = members.removeValue(forKey: "plugins") else {
                throw ChainInstallationError("\(file) has no plugins list", remedy: "a .conflist is {\"cniVersion\", \"name\", \"plugins\": [...]}; \(remedy)")
            }
            guard case .array(let list) = value else {
                throw ChainInstallationError("\(file) has plugins that are \(value.kind), not an array", remedy: remedy)
            }
            guard !list.isEmpty else {
                throw ChainInstallationError(
                    "\(file) has an empty plugins list",
                    remedy: "mesh-agent-cni is chained after the plugin that makes the pod's interface, which the list must hold; \(remedy)")
            }
            plugins = []
            for (index, entry) in list.enumerated() {
                guard let plugin = entry.objectValue else {
                    throw ChainInstallationError("\(file): plugins[\(index)] is \(entry.kind), not an object", remedy: remedy)
                }
                plugins.append(plugin)
            }
            convertedFromSingle = false
        } else {
            if members["plugins"] != nil && members["type"] == nil {
                throw ChainInstallationError(
                    "\(file) holds a plugins list, but the runtime reads a file with this extension as a single plugin's config",
                    remedy: "rename it to end in .conflist, then run install again")
            }
            var plugin = members
            plugin["cniVersion"] = nil
            plugin["name"] = nil
            members = members.filter { $0.key == "cniVersion" || $0.key == "name" }
            plugins = [plugin]
            convertedFromSingle = true
        }
        self.members = members
        for (index, plugin) in plugins.enumerated() {
            guard let type = plugin["type"]?.stringValue, !type.isEmpty else {
                let which = convertedFromSingle ? file : "\(file): plugins[\(index)]"
                throw ChainInstallationError("\(which) has no type", remedy: remedy)
            }
        }
        guard let name = members["name"]?.stringValue, !name.isEmpty else {
            throw ChainInstallationError("\(file) has no name", remedy: remedy)
        }
        guard let versionText = members["cniVersion"]?.stringValue else {
            throw ChainInstallationError(
                "\(file) has no cniVersion", remedy: "mesh-agent-cni refuses a config without one; the network plugin's config should say \(CNIVersion.fallback)")
        }
        guard let version = CNIVersion(versionText), version.isSupported else {
            throw ChainInstallationError(
                "\(file) has cniVersion \(CNIEnvironment.quoted(versionText)), which mesh-agent-cni does not speak (it speaks \(CNIVersion.supportedList))",
                remedy: "chained in, it would fail every pod's ADD; configure the network plugin to write one of those versions, then run install again")
        }
    }

    /// Appends this plugin's entry unless one is there, in which case only
    /// its `agentSocket` is set: settings someone added to it (a timeout,
    /// excluded namespaces) stay. A second entry is dropped, as it would make
    /// every pod ask the agent twice. True when anything changed.
    public mutating func chain(agentSocket: String) -> Bool {
        let socket = JSONValue.string(agentSocket)
        let ours = plugins.indices.filter { isOurs(plugins[$0]) }
        guard let first = ours.first else {
            plugins.append(["type": .string(ChainInstallation.pluginType), "agentSocket": socket])
            return true
        }
        var changed = false
        if plugins[first]["agentSocket"] != socket {
            plugins[first]["agentSocket"] = socket
            changed = true
        }
        for index in ours.dropFirst().reversed() {
            plugins.remove(at: index)
            changed = true
        }
        return changed
    }

    /// Removes every entry of this plugin; true when there was one.
    public mutating func unchain() -> Bool {
        let before = plugins.count
        plugins.removeAll(where: isOurs)
        return plugins.count != before
    }

    /// The list as a `.conflist`, indented for the people who read the node's files.
    public func encoded() -> [UInt8] {
        var all = members
        all["plugins"] = .array(plugins.map(JSONValue.object))
        return JSONValue.object(all).indentedEncoded()
    }

    private func isOurs(_ plugin: [String: JSONValue]) -> Bool {
        plugin["type"]?.stringValue == ChainInstallation.pluginType
    }
}

/// Why install or uninstall cannot go on: what failed, on which file, and
/// what to do about it.
public struct ChainInstallationError: Error, Equatable, Sendable, CustomStringConvertible {
    public var problem: String
    public var remedy: String

    public init(_ problem: String, remedy: String) {
        self.problem = problem
        self.remedy = remedy
    }

    public var description: String { "\(problem); \(remedy)" }
}
