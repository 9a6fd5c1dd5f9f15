import CNI
import Testing

@Suite("mesh-agent-cni install and uninstall on a conf dir")
struct ChainInstallationTests {
    static let directory = "/etc/cni/net.d"
    static let socket = "/run/mesh-agent/cni.sock"

    static let bridgeList = """
        {
          "cniVersion": "1.0.0",
          "name": "cbr0",
          "disableCheck": false,
          "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
          ]
        }
        """

    static let bridgeConf = """
        {"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}
        """

    /// A conf dir in memory: names to contents.
    struct Directory {
        var files: [String: String]

        func read(_ name: String) throws(ChainInstallationError) -> [UInt8] {
            guard let text = files[name] else { throw ChainInstallationError("no \(name)", remedy: "test") }
            return Array(text.utf8)
        }

        func install(socket: String = ChainInstallationTests.socket) throws(ChainInstallationError) -> ChainInstallation.Plan {
            try ChainInstallation.install(directory: ChainInstallationTests.directory, names: Array(files.keys), agentSocket: socket, read: read)
        }

        func uninstall() throws(ChainInstallationError) -> [ChainInstallation.Step] {
            try ChainInstallation.uninstall(directory: ChainInstallationTests.directory, names: Array(files.keys), read: read)
        }

        /// Carries the steps out as the executable does.
        mutating func apply(_ steps: [ChainInstallation.Step]) {
            for step in steps {
                switch step {
                case .write(let file, let contents, _): files[file] = String(decoding: contents, as: UTF8.self)
                case .remove(let file): files[file] = nil
                }
            }
        }
    }

    private func json(_ text: String?) throws -> JSONValue {
        try JSONValue.parse(Array((text ?? "").utf8))
    }

    private func failure(_ body: () throws(ChainInstallationError) -> Void) -> ChainInstallationError? {
        do {
            try body()
            return nil
        } catch {
            return error
        }
    }

    @Test func aConflistGetsThePluginAppendedAndKeepsEverythingElse() throws {
        var directory = Directory(files: ["10-flannel.conflist": Self.bridgeList])
        let plan = try directory.install()
        #expect(plan.file == "10-flannel.conflist")
        #expect(plan.steps.count == 1)
        guard case .write(let file, _, let modeOf)? = plan.steps.first else {
            Issue.record("expected a write, got \(plan.steps)")
            return
        }
        #expect(file == "10-flannel.conflist" && modeOf == "10-flannel.conflist")
        directory.apply(plan.steps)

        let before = try json(Self.bridgeList)
        let after = try json(directory.files["10-flannel.conflist"])
        #expect(after["cniVersion"] == .string("1.0.0"))
        #expect(after["name"] == .string("cbr0"))
        #expect(after["disableCheck"] == .bool(false))
        guard case .array(let plugins)? = after["plugins"], case .array(let original)? = before["plugins"] else {
            Issue.record("no plugins in \(after)")
            return
        }
        #expect(Array(plugins.dropLast()) == original)
        #expect(plugins.last == .object(["type": .string("mesh-agent-cni"), "agentSocket": .string(Self.socket)]))
        // Written for people too: one member a line, and a final newline.
        #expect(directory.files["10-flannel.conflist"]?.hasSuffix("}\n") == true)
        #expect(directory.files["10-flannel.conflist"]?.contains("\n  \"plugins\": [\n") == true)
    }

    @Test func installingAgainChangesNothing() throws {
        var directory = Directory(files: ["10-flannel.conflist": Self.bridgeList])
        directory.apply(try directory.install().steps)
        let once = directory.files
        #expect(try directory.install().steps == [])
        #expect(directory.files == once)

        // Uninstall and install again: the same file as the first install made.
        directory.apply(try directory.uninstall())
        directory.apply(try directory.install().steps)
        #expect(directory.files == once)
    }

    @Test func anEntrySomeoneTunedKeepsItsSettingsAndTakesTheNewSocket() throws {
        var list = try NetworkConfigList(file: "x.conflist", bytes: Array(Self.bridgeList.utf8))
        _ = list.chain(agentSocket: "/run/old/cni.sock")
        list.plugins[2]["timeoutSeconds"] = .integer(30)
        list.plugins.append(["type": .string("mesh-agent-cni")])

        let changed = list.chain(agentSocket: Self.socket)
        #expect(changed)
        #expect(list.plugins.count == 3, "a second entry would make every pod ask the agent twice")
        #expect(list.plugins[2] == ["type": .string("mesh-agent-cni"), "agentSocket": .string(Self.socket), "timeoutSeconds": .integer(30)])
        let again = list.chain(agentSocket: Self.socket)
        #expect(!again)
    }

    @Test func aSinglePluginConfBecomesAConflistOfTheSameName() throws {
        var directory = Directory(files: ["10-mynet.conf": Self.bridgeConf, "99-loopback.conf": #"{"cniVersion":"0.4.0","name":"lo","type":"loopback"}"#])
        let plan = try directory.install()
        #expect(plan.file == "10-mynet.conf")
        guard plan.steps.count == 2, case .write(let file, _, let modeOf) = plan.steps[0] else {
            Issue.record("expected a write and a remove, got \(plan.steps)")
            return
        }
        // The new file sorts right after the old one, so the runtime's choice stays.
        #expect(file == "10-mynet.conflist")
        #expect(modeOf == "10-mynet.conf", "the conflist keeps the .conf's mode")
        #expect(plan.steps[1] == .remove(file: "10-mynet.conf"), "the .conf goes only after the conflist is written")
        directory.apply(plan.steps)

        #expect(Set(directory.files.keys) == ["10-mynet.conflist", "99-loopback.conf"])
        #expect(ChainInstallation.primaryConfig(among: Array(directory.files.keys)) == "10-mynet.conflist")
        let list = try json(directory.files["10-mynet.conflist"])
        var bridge = try json(Self.bridgeConf).objectValue ?? [:]
        bridge["cniVersion"] = nil
        bridge["name"] = nil
        #expect(list == .object([
            "cniVersion": .string("0.4.0"), "name": .string("mynet"),
            "plugins": .array([.object(bridge), .object(["type": .string("mesh-agent-cni"), "agentSocket": .string(Self.socket)])]),
        ]))
        #expect(try directory.install().steps == [])
    }

    @Test func aConfWhoseConflistNameIsTakenIsRefused() {
        let directory = Directory(files: ["10-mynet.conf": Self.bridgeConf, "10-mynet.conflist": Self.bridgeList])
        let error = failure { () throws(ChainInstallationError) in _ = try directory.install() }
        #expect(error?.problem == "/etc/cni/net.d/10-mynet.conf is a single plugin's config to be turned into /etc/cni/net.d/10-mynet.conflist, but that file exists already")
    }

    @Test(arguments: [[String](), ["README", "10-mynet.conf.bak", "calico-kubeconfig", ".10-mynet.conflist.12.tmp"]])
    func noConfigYetSaysTheNetworkPluginHasNotWrittenIt(names: [String]) {
        let directory = Directory(files: Dictionary(uniqueKeysWithValues: names.map { ($0, "x") }))
        let error = failure { () throws(ChainInstallationError) in _ = try directory.install() }
        #expect(error?.problem == "no network config in /etc/cni/net.d (no *.conflist, *.conf or *.json file): the network plugin has not written its config yet")
        #expect(error?.remedy.contains("install the cluster's network plugin first") == true)
    }

    @Test(arguments: [
        (#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"},]}"#,
         "/etc/cni/net.d/10-x.conflist is not valid JSON: unexpected ']' at byte 68 where a value should be"),
        ("", "/etc/cni/net.d/10-x.conflist is not valid JSON: the JSON ends where a value should be"),
        (#"[1]"#, "/etc/cni/net.d/10-x.conflist holds an array, not a JSON object"),
        (#"{"cniVersion": "1.0.0", "name": "n"}"#, "/etc/cni/net.d/10-x.conflist has no plugins list"),
        (#"{"cniVersion": "1.0.0", "name": "n", "plugins": []}"#, "/etc/cni/net.d/10-x.conflist has an empty plugins list"),
        (#"{"cniVersion": "1.0.0", "name": "n", "plugins": {}}"#, "/etc/cni/net.d/10-x.conflist has plugins that are an object, not an array"),
        (#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "cni0"}]}"#, "/etc/cni/net.d/10-x.conflist: plugins[0] has no type"),
        (#"{"cniVersion": "1.0.0", "name": "n", "plugins": ["bridge"]}"#, "/etc/cni/net.d/10-x.conflist: plugins[0] is a string, not an object"),
        (#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}"#, "/etc/cni/net.d/10-x.conflist has no name"),
        (#"{"name": "n", "plugins": [{"type": "bridge"}]}"#, "/etc/cni/net.d/10-x.conflist has no cniVersion"),
        (#"{"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "bridge"}]}"#,
         #"/etc/cni/net.d/10-x.conflist has cniVersion "0.2.0", which mesh-agent-cni does not speak (it speaks 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)"#),
        (#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "mesh-agent-cni"}, {"type": "bridge"}]}"#,
         "/etc/cni/net.d/10-x.conflist lists mesh-agent-cni as its first plugin"),
    ])
    func aBrokenConflistIsNamedWithWhatIsWrong(text: String, problem: String) {
        let directory = Directory(files: ["10-x.conflist": text, "20-ok.conflist": Self.bridgeList])
        let error = failure { () throws(ChainInstallationError) in _ = try directory.install() }
        #expect(error?.problem == problem)
        #expect(error?.remedy.isEmpty == false)
    }

    @Test func aConfHoldingAListIsToldToBeRenamed() {
        let directory = Directory(files: ["10-x.conf": Self.bridgeList])
        let error = failure { () throws(ChainInstallationError) in _ = try directory.install() }
        #expect(error?.problem == "/etc/cni/net.d/10-x.conf holds a plugins list, but the runtime reads a file with this extension as a single plugin's config")
        #expect(error?.remedy == "rename it to end in .conflist, then run install again")
    }

    @Test(arguments: [
        (["20-b.conflist", "10-a.conf", "30-c.json"], "10-a.conf"),
        (["10-a.conflist", "10-a.conf"], "10-a.conf"),
        (["10-a.json", "10-a.conflist"], "10-a.conflist"),
        (["calico.conflist", "Z.conflist", "10-calico.conflist"], "10-calico.conflist"),
        // Byte order, as Go's sort.Strings: upper case before lower case.
        (["a.conflist", "B.conflist"], "B.conflist"),
        (["00-x.conf.bak", ".tmp", "05-cilium.conflist", "87-podman.conflist"], "05-cilium.conflist"),
    ])
    func theFileTheRuntimeUsesIsTheFirstByName(names: [String], expected: String) {
        #expect(ChainInstallation.primaryConfig(among: names) == expected)
    }

    @Test func installEditsOnlyTheFirstFile() throws {
        let directory = Directory(files: ["20-other.conflist": Self.bridgeList, "10-flannel.conflist": Self.bridgeList])
        let plan = try directory.install()
        #expect(plan.file == "10-flannel.conflist")
        #expect(plan.steps.map(\.file) == ["10-flannel.conflist"])
    }

    @Test func uninstallTakesThePluginOutOfEveryConflistThatHasIt() throws {
        var directory = Directory(files: ["10-flannel.conflist": Self.bridgeList])
        directory.apply(try directory.install().steps)
        directory.files["05-new.conflist"] = directory.files["10-flannel.conflist"]
        // Not ours, and broken: not read, so it does not stop the uninstall.
        directory.files["30-broken.conflist"] = "{"
        directory.files["40-note.conf"] = #"{"type": "mesh-agent-cni"}"#

        let steps = try directory.uninstall()
        #expect(steps.map(\.file) == ["05-new.conflist", "10-flannel.conflist"])
        directory.apply(steps)
        #expect(try json(directory.files["10-flannel.conflist"])["plugins"] == json(Self.bridgeList)["plugins"])
        #expect(try json(directory.files["05-new.conflist"])["plugins"] == json(Self.bridgeList)["plugins"])
        #expect(try directory.uninstall() == [])
    }

    @Test func uninstallNamesABrokenFileThatMentionsThePlugin() {
        let directory = Directory(files: ["10-x.conflist": #"{"plugins": [{"type": "mesh-agent-cni"}"#])
        let error = failure { () throws(ChainInstallationError) in _ = try directory.uninstall() }
        #expect(error?.problem.hasPrefix("/etc/cni/net.d/10-x.conflist is not valid JSON") == true)
    }

    @Test(arguments: [
        (["install"], InstallCommand(action: .install)),
        (["uninstall", "--cni-conf-dir=/host/etc/cni/net.d"], {
            var command = InstallCommand(action: .uninstall)
            command.confDirectory = "/host/etc/cni/net.d"
            return command
        }()),
        (["install", "--cni-bin-dir", "/host/opt/cni/bin", "--agent-socket", "/var/run/mesh/cni.sock"], {
            var command = InstallCommand(action: .install)
            command.binDirectory = "/host/opt/cni/bin"
            command.agentSocket = "/var/run/mesh/cni.sock"
            return command
        }()),
        (["--help"], InstallCommand(action: .help)),
        (["install", "-h"], InstallCommand(action: .help)),
    ])
    func theCommandLineParses(arguments: [String], expected: InstallCommand) throws {
        #expect(try InstallCommand.parse(arguments) == expected)
    }

    @Test(arguments: [
        (["add"], #""add" is not a command of mesh-agent-cni (install, uninstall)"#),
        (["install", "--agent-socket"], #""--agent-socket" needs a value"#),
        (["install", "--agent-socket", "cni.sock"], #"--agent-socket "cni.sock" is not a usable path: it is not an absolute path"#),
        (["install", "--cni-bin-dir=opt/cni/bin"], #"--cni-bin-dir "opt/cni/bin" is not a usable path: it is not an absolute path"#),
        (["install", "--conf-dir", "/etc/cni/net.d"], #""--conf-dir" is not a flag of mesh-agent-cni install"#),
        (["uninstall", "--agent-socket", "/run/x.sock"], #""--agent-socket" is not a flag of mesh-agent-cni uninstall"#),
    ])
    func aBadCommandLineSaysWhy(arguments: [String], problem: String) {
        let error = failure { () throws(ChainInstallationError) in _ = try InstallCommand.parse(arguments) }
        #expect(error?.problem == problem)
    }
}

extension ChainInstallation.Step {
    fileprivate var file: String {
        switch self {
        case .write(let file, _, _), .remove(let file): return file
        }
    }
}
