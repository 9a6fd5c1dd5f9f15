import CNI
import Testing

@Suite("CNI_* environment")
struct EnvironmentTests {
    static let add = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "4f3a9c", "CNI_NETNS": "/var/run/netns/blue", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"]

    private func error(_ environment: [String: String]) -> CNIError? {
        do {
            _ = try CNIEnvironment(environment)
            return nil
        } catch {
            return error
        }
    }

    @Test func add() throws {
        var variables = Self.add
        variables["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=4f3a9c;K8S_POD_UID=8e2b6f1c-4a2d-4f7e-9a51-3c0d2b7e1f00"
        let environment = try CNIEnvironment(variables)
        #expect(environment.command == .add)
        #expect(environment.containerID == "4f3a9c")
        #expect(environment.netns == "/var/run/netns/blue")
        #expect(environment.ifName == "eth0")
        #expect(environment.args.podNamespace == "shop")
        #expect(environment.args.podName == "web-0")
        #expect(environment.args.podUID == "8e2b6f1c-4a2d-4f7e-9a51-3c0d2b7e1f00")
        #expect(environment.args["IgnoreUnknown"] == "1")
        #expect(environment.args.pairs.count == 5)
    }

    @Test func commandIsRequiredAndKnown() {
        #expect(error([:])?.msg == "CNI_COMMAND is not set")
        #expect(error([:])?.code == .invalidEnvironment)
        let unknown = error(["CNI_COMMAND": "UPDATE"])
        #expect(unknown?.msg == #"CNI_COMMAND "UPDATE" is not a CNI command"#)
        #expect(unknown?.details == "expected one of ADD, DEL, CHECK, VERSION, GC, STATUS")
        #expect(error(["CNI_COMMAND": "add"]) != nil)
    }

    @Test func versionGCAndStatusNeedNothingElse() throws {
        for command in ["VERSION", "GC", "STATUS"] {
            #expect(try CNIEnvironment(["CNI_COMMAND": command]).containerID == nil)
        }
    }

    @Test(arguments: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
    func addNeeds(variable: String) {
        var variables = Self.add
        variables[variable] = nil
        #expect(error(variables)?.msg == "\(variable) is not set")
        #expect(error(variables)?.details == "the runtime must set \(variable) for ADD")
        variables[variable] = ""
        #expect(error(variables)?.msg == "\(variable) is not set")
        variables["CNI_COMMAND"] = "CHECK"
        #expect(error(variables)?.details == "the runtime must set \(variable) for CHECK")
    }

    /// The namespace may be gone by the time of DEL.
    @Test func delWithoutNamespace() throws {
        var variables = Self.add
        variables["CNI_COMMAND"] = "DEL"
        variables["CNI_NETNS"] = nil
        #expect(try CNIEnvironment(variables).netns == nil)
        variables["CNI_NETNS"] = ""
        #expect(try CNIEnvironment(variables).netns == nil)
        variables["CNI_IFNAME"] = nil
        #expect(error(variables)?.msg == "CNI_IFNAME is not set")
    }

    @Test func badValues() {
        func problem(_ variable: String, _ value: String) -> CNIError? {
            var variables = Self.add
            variables[variable] = value
            return error(variables)
        }
        #expect(problem("CNI_CONTAINERID", "_x")?.msg == #"CNI_CONTAINERID "_x" is not valid"#)
        #expect(problem("CNI_CONTAINERID", "a b")?.details == "it contains a space; only letters, digits, _, . and - are allowed")
        #expect(problem("CNI_CONTAINERID", String(repeating: "a", count: 257)) != nil)
        #expect(problem("CNI_IFNAME", "eth0:1")?.details == #"it contains ":", which Linux does not allow in an interface name"#)
        #expect(problem("CNI_IFNAME", "a-very-long-name0")?.details == "it is 17 bytes long; Linux allows at most 15")
        #expect(problem("CNI_IFNAME", "..")?.details == #"it is "..""#)
        #expect(problem("CNI_NETNS", "run/netns/x")?.details == "it is not an absolute path")
        #expect(problem("CNI_NETNS", "/run/netns/\n")?.details == "it contains the byte 0xa")
        #expect(problem("CNI_NETNS", "/run/netns/\n")?.msg == #"CNI_NETNS "/run/netns/\n" is not valid"#)
    }

    @Test func cniArgs() throws {
        #expect(try CNIArgs("").pairs.isEmpty)
        #expect(try CNIArgs("A=1;;B=;C=x=y;").pairs.map(\.key) == ["A", "B", "C"])
        #expect(try CNIArgs("C=x=y")["C"] == "x=y")
        #expect(try CNIArgs("K8S_POD_NAMESPACE=a;K8S_POD_NAMESPACE=b").podNamespace == "b")
        // Outside Kubernetes the keys may come without values.
        #expect(try CNIArgs("K8S_POD_NAMESPACE=;K8S_POD_NAME=").podNamespace == nil)
        #expect(throws: CNIError.self) { try CNIArgs("novalue") }
        #expect(throws: CNIError.self) { try CNIArgs("=1") }
        #expect(throws: CNIError.self) { try CNIArgs("K8S_POD_NAMESPACE=Shop") }
        #expect(throws: CNIError.self) { try CNIArgs("K8S_POD_NAME=web_0") }
        #expect(throws: CNIError.self) { try CNIArgs("K8S_POD_UID=8e2b/../x") }
        #expect(throws: CNIError.self) { try CNIArgs(String(repeating: "A=1;", count: 5000)) }
        do {
            _ = try CNIArgs("FOO")
        } catch {
            #expect(error.msg == #"CNI_ARGS has "FOO", which is not KEY=VALUE"#)
        }
    }

    /// What a value from outside looks like in a message: quoted, escaped, cut.
    @Test func longValuesAreCutInMessages() {
        var variables = Self.add
        variables["CNI_CONTAINERID"] = String(repeating: "x", count: 300) + "!"
        let message = error(variables)?.msg ?? ""
        #expect(message.count < 170)
        #expect(message.contains("…"))
    }
}

@Suite("names and addresses")
struct NamesTests {
    @Test(arguments: ["10.1.0.5", "0.0.0.0", "255.255.255.255", "::", "::1", "fd00::5", "1::", "1:2:3:4:5:6:7:8", "::ffff:10.1.0.5",
        "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4", "FE80::1", "1::2:3"])
    func validAddresses(text: String) {
        #expect(IPAddressText.isValid(text))
    }

    @Test(arguments: ["", "10.1.0", "10.1.0.5.6", "256.1.1.1", "01.1.1.1", "1.1.1.-1", " 10.1.0.5", "10.1.0.5/24", ":::", "1:::2", "1::2::3",
        ":1::", "1::2:", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::8", "12345::", "g::1", "fe80::1%eth0", "::1.2.3", "1.2.3.4::",
        "1:2:3:4:5:6:7:1.2.3.4", ":", "::ffff:256.1.1.1"])
    func invalidAddresses(text: String) {
        #expect(!IPAddressText.isValid(text))
    }

    @Test func cidr() {
        #expect(IPAddressText.addressOfCIDR("10.1.0.5/16") == "10.1.0.5")
        #expect(IPAddressText.addressOfCIDR("fd00::5/128") == "fd00::5")
        #expect(IPAddressText.addressOfCIDR("10.1.0.5/0") == "10.1.0.5")
        #expect(IPAddressText.addressOfCIDR("10.1.0.5") == nil)
        #expect(IPAddressText.addressOfCIDR("10.1.0.5/") == nil)
        #expect(IPAddressText.addressOfCIDR("10.1.0.5/33") == nil)
        #expect(IPAddressText.addressOfCIDR("fd00::5/129") == nil)
        #expect(IPAddressText.addressOfCIDR("10.1.0.5/16/1") == nil)
        #expect(IPAddressText.addressOfCIDR("10.1.0.5/+1") == nil)
    }

    @Test func kubernetesNames() {
        #expect(Names.kubernetesNamespaceProblem("kube-system") == nil)
        #expect(Names.kubernetesNamespaceProblem("a") == nil)
        #expect(Names.kubernetesNamespaceProblem("-a") == "a label starts or ends with -")
        #expect(Names.kubernetesNamespaceProblem("a.b") != nil)
        #expect(Names.kubernetesNamespaceProblem(String(repeating: "a", count: 64)) != nil)
        #expect(Names.kubernetesNameProblem("web-0.shard.1") == nil)
        #expect(Names.kubernetesNameProblem("web..0") == "it has an empty label")
        #expect(Names.kubernetesNameProblem(String(repeating: "a.", count: 127) + "a") != nil)
        #expect(Names.kubernetesUIDProblem("8e2b6f1c-4a2d-4f7e-9a51-3c0d2b7e1f00") == nil)
        #expect(Names.kubernetesUIDProblem("") == "it is empty")
    }

    @Test func versions() {
        #expect(CNIVersion("1.0.0") == CNIVersion(1, 0, 0))
        #expect(CNIVersion(0, 4, 0) < CNIVersion(1, 0, 0) && CNIVersion(0, 4, 0) > CNIVersion(0, 3, 1))
        #expect(CNIVersion("1.0") == nil)
        #expect(CNIVersion("v1.0.0") == nil)
        #expect(CNIVersion("1.0.0-rc1") == nil)
        #expect(CNIVersion("1.0.+0") == nil)
        #expect(CNIVersion("99999.0.0") == nil)
        #expect(CNIVersion("1..0") == nil)
    }
}
