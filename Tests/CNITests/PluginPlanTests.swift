import CNI
import Testing

/// The plugin's decisions, without a process or a socket: what it prints for
/// each command, and for each way the agent answers or does not.
@Suite("mesh-agent-cni decisions")
struct PluginPlanTests {
    static let kubernetesArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=8e2b6f1c"

    static func environment(_ command: String, args: String = kubernetesArgs) -> [String: String] {
        ["CNI_COMMAND": command, "CNI_CONTAINERID": "4f3a9c", "CNI_NETNS": "/var/run/netns/blue", "CNI_IFNAME": "eth0", "CNI_ARGS": args]
    }

    static func config(_ example: String = SpecExamples.addPortmap, _ settings: [String: JSONValue] = [:]) -> [UInt8] {
        SpecExamples.asMeshAgentCNI(example, settings: settings)
    }

    private func agentCall(_ command: String, args: String = kubernetesArgs, stdin: [UInt8] = config()) -> AgentCall? {
        guard case .askAgent(let call) = CNIPlugin.plan(environment: Self.environment(command, args: args), stdin: stdin) else { return nil }
        return call
    }

    private func finished(_ environment: [String: String], _ stdin: [UInt8]) -> PluginOutput? {
        guard case .finish(let output) = CNIPlugin.plan(environment: environment, stdin: stdin) else { return nil }
        return output
    }

    private func json(_ bytes: [UInt8]) -> JSONValue? {
        try? JSONValue.parse(bytes)
    }

    private func prevResultWithVersion() -> JSONValue? {
        guard case .object(var members)? = json(Self.config())?["prevResult"] else { return nil }
        members["cniVersion"] = .string("1.0.0")
        return .object(members)
    }

    @Test func addAsksTheAgentWithThePodsAddresses() throws {
        let call = try #require(agentCall("ADD"))
        #expect(call.socketPath == "/run/mesh-agent/cni.sock")
        #expect(call.timeoutMilliseconds == 10_000)
        #expect(call.request == EnrollmentRequest(
            command: .add, containerID: "4f3a9c", netns: "/var/run/netns/blue", ifName: "eth0", network: "dbnet", podNamespace: "shop",
            podName: "web-0", podUID: "8e2b6f1c", addresses: ["10.1.0.5"], cniVersion: "1.0.0"))
    }

    @Test func addCapturedPassesPrevResultThrough() throws {
        let output = try #require(agentCall("ADD")).finish(.answered(Array(#"{"version":1,"ok":true,"captured":true}"#.utf8)))
        #expect(output.exitCode == 0)
        #expect(json(output.stdout) == prevResultWithVersion())
        #expect(output.log == ["ADD shop/web-0 (container 4f3a9c): captured"])
    }

    @Test func addNotEnrolledStillStartsThePod() throws {
        let output = try #require(agentCall("ADD")).finish(.answered(Array(#"{"version":1,"ok":true,"captured":false,"reason":"labelled none"}"#.utf8)))
        #expect(output.exitCode == 0)
        #expect(json(output.stdout) == prevResultWithVersion())
        #expect(output.log == ["ADD shop/web-0 (container 4f3a9c): not captured: labelled none"])
    }

    @Test func addFailsWhenTheAgentFails() throws {
        let output = try #require(agentCall("ADD")).finish(.answered(Array(#"{"version":1,"ok":false,"error":"nft: no such table\nat line 2"}"#.utf8)))
        #expect(output.exitCode == 1)
        #expect(json(output.stdout) == .object([
            "cniVersion": .string("1.0.0"), "code": .integer(100),
            "msg": .string("ADD shop/web-0 (container 4f3a9c): the mesh agent could not enroll the pod"),
            "details": .string("nft: no such table\nat line 2"),
        ]))
        // Each log entry stays one line.
        #expect(output.log.allSatisfy { !$0.contains("\n") })
    }

    @Test func addFailsClosedWithoutTheAgent() throws {
        let output = try #require(agentCall("ADD")).finish(.unreachable("no socket at /run/mesh-agent/cni.sock"))
        #expect(output.exitCode == 1)
        let error = try #require(json(output.stdout))
        #expect(error["code"] == .integer(11))
        #expect(error["msg"] == .string("ADD shop/web-0 (container 4f3a9c): the mesh agent is not running"))
        #expect(error["details"]?.stringValue?.hasPrefix("no socket at /run/mesh-agent/cni.sock (agentSocket /run/mesh-agent/cni.sock). The pod waits") == true)
        #expect(error["details"]?.stringValue?.contains(#""requireAgent": false"#) == true)
    }

    @Test func addFailsWhenTheAgentDoesNotAnswer() throws {
        let output = try #require(agentCall("ADD")).finish(.failed("no answer within 10000 ms"))
        #expect(output.exitCode == 1)
        #expect(json(output.stdout)?["code"] == .integer(11))
        #expect(json(output.stdout)?["msg"] == .string("ADD shop/web-0 (container 4f3a9c): the mesh agent did not answer"))
    }

    @Test func addFailsOnAnAnswerItDoesNotUnderstand() throws {
        let output = try #require(agentCall("ADD")).finish(.answered(Array(#"{"version":2,"ok":true}"#.utf8)))
        #expect(output.exitCode == 1)
        #expect(json(output.stdout)?["code"] == .integer(100))
        #expect(json(output.stdout)?["details"]?.stringValue?.contains("enrollment protocol version 2") == true)
    }

    @Test func requireAgentFalseStartsPodsWhileTheAgentIsDown() throws {
        let stdin = Self.config(SpecExamples.addPortmap, ["requireAgent": .bool(false)])
        for exchange in [AgentExchange.unreachable("no socket"), .failed("no answer within 10000 ms")] {
            let output = try #require(agentCall("ADD", stdin: stdin)).finish(exchange)
            #expect(output.exitCode == 0)
            #expect(json(output.stdout) == prevResultWithVersion())
            #expect(output.log.first?.contains("going on without it because requireAgent is false") == true)
        }
        // An agent that answers and fails still fails the pod.
        let refused = try #require(agentCall("ADD", stdin: stdin)).finish(.answered(Array(#"{"version":1,"ok":false,"error":"x"}"#.utf8)))
        #expect(refused.exitCode == 1)
    }

    @Test func excludedNamespacesDoNotWaitForTheAgent() throws {
        let args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1"
        for command in ["ADD", "DEL", "CHECK"] {
            let output = try #require(finished(Self.environment(command, args: args), Self.config()))
            #expect(output.exitCode == 0)
            #expect(output.log == ["\(command) kube-system/coredns-1 (container 4f3a9c): namespace kube-system is in excludeNamespaces; not asking the agent"])
            #expect(command == "ADD" ? json(output.stdout) == prevResultWithVersion() : output.stdout.isEmpty)
        }
        // An empty list exempts no one.
        let stdin = Self.config(SpecExamples.addPortmap, ["excludeNamespaces": .array([])])
        #expect(agentCall("ADD", args: args, stdin: stdin) != nil)
    }

    @Test func addWithoutPrevResultIsAConfigError() throws {
        let output = try #require(finished(Self.environment("ADD"), Self.config(SpecExamples.addBridge)))
        #expect(output.exitCode == 1)
        #expect(json(output.stdout)?["code"] == .integer(7))
        #expect(json(output.stdout)?["msg"] == .string("mesh-agent-cni got no prevResult"))
    }

    @Test func delIsIdempotentWhenTheAgentIsGone() throws {
        let del = try #require(agentCall("DEL"))
        #expect(del.request?.command == .del)
        let gone = del.finish(.unreachable("no socket at /run/mesh-agent/cni.sock"))
        #expect(gone.exitCode == 0)
        #expect(gone.stdout.isEmpty)
        #expect(del.finish(.answered(Array(#"{"version":1,"ok":true}"#.utf8))) == PluginOutput(stdout: [], exitCode: 0, log: ["DEL shop/web-0 (container 4f3a9c): removed by the agent"]))
        // An agent that is there but does not answer may still hold the pod: retry.
        #expect(del.finish(.failed("no answer")).exitCode == 1)
        #expect(del.finish(.answered(Array(#"{"version":1,"ok":false,"error":"x"}"#.utf8))).exitCode == 1)
    }

    @Test func delWithoutNamespaceOrPrevResult() throws {
        var environment = Self.environment("DEL")
        environment["CNI_NETNS"] = nil
        let stdin = Array(#"{"cniVersion":"1.0.0","name":"dbnet","type":"mesh-agent-cni","prevResult":{"ips":"broken"}}"#.utf8)
        guard case .askAgent(let call) = CNIPlugin.plan(environment: environment, stdin: stdin) else {
            Issue.record("DEL did not ask the agent")
            return
        }
        #expect(call.request?.netns == nil)
        #expect(call.request?.addresses == [])
    }

    @Test func check() throws {
        let check = try #require(agentCall("CHECK", stdin: Self.config(SpecExamples.checkBridge)))
        #expect(check.request?.command == .check)
        #expect(check.finish(.answered(Array(#"{"version":1,"ok":true,"captured":true}"#.utf8))).stdout.isEmpty)
        #expect(check.finish(.answered(Array(#"{"version":1,"ok":true,"captured":true}"#.utf8))).exitCode == 0)
        let broken = check.finish(.answered(Array(#"{"version":1,"ok":false,"error":"no table in the pod's namespace"}"#.utf8)))
        #expect(json(broken.stdout)?["msg"] == .string("CHECK shop/web-0 (container 4f3a9c): the mesh agent reports the pod is not captured as it should be"))
        #expect(check.finish(.unreachable("no socket")).exitCode == 1)
    }

    @Test func checkNeedsVersion040() throws {
        var stdin = try #require(json(Self.config(SpecExamples.checkBridge))?.objectValue)
        stdin["cniVersion"] = .string("0.3.1")
        let output = try #require(finished(Self.environment("CHECK"), JSONValue.object(stdin).encoded()))
        #expect(json(output.stdout)?["code"] == .integer(1))
        #expect(json(output.stdout)?["cniVersion"] == .string("0.3.1"))
        #expect(json(output.stdout)?["msg"] == .string("CHECK is not part of CNI 0.3.1"))
    }

    @Test func version() throws {
        let output = try #require(finished(["CNI_COMMAND": "VERSION"], Array(#"{"cniVersion":"1.0.0"}"#.utf8)))
        #expect(output.exitCode == 0)
        #expect(String(decoding: output.stdout, as: UTF8.self) == #"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#)
        for stdin in ["", "garbage", #"{"cniVersion":"9"}"#] {
            let lenient = try #require(finished(["CNI_COMMAND": "VERSION"], Array(stdin.utf8)))
            #expect(lenient.exitCode == 0)
            #expect(json(lenient.stdout)?["cniVersion"] == .string("1.1.0"))
        }
    }

    @Test func statusAndGC() throws {
        let stdin = Array(#"{"cniVersion":"1.1.0","name":"pods","type":"mesh-agent-cni","cni.dev/valid-attachments":[]}"#.utf8)
        let gc = try #require(finished(["CNI_COMMAND": "GC"], stdin))
        #expect(gc.exitCode == 0 && gc.stdout.isEmpty)
        guard case .askAgent(let status) = CNIPlugin.plan(environment: ["CNI_COMMAND": "STATUS"], stdin: stdin) else {
            Issue.record("STATUS did not probe the agent")
            return
        }
        #expect(status.request == nil)
        #expect(status.finish(.connected) == PluginOutput(stdout: [], exitCode: 0, log: []))
        let down = status.finish(.unreachable("no socket at /run/mesh-agent/cni.sock"))
        #expect(json(down.stdout)?["code"] == .integer(50))
        #expect(json(down.stdout)?["msg"] == .string("mesh-agent-cni cannot serve ADD: the mesh agent is not running"))
        #expect(json(status.finish(.failed("timed out")).stdout)?["code"] == .integer(50))
        let old = try #require(finished(["CNI_COMMAND": "STATUS"], Self.config()))
        #expect(json(old.stdout)?["msg"] == .string("STATUS is not part of CNI 1.0.0"))
        let relaxed = Array(#"{"cniVersion":"1.1.0","name":"pods","type":"mesh-agent-cni","requireAgent":false}"#.utf8)
        #expect(finished(["CNI_COMMAND": "STATUS"], relaxed)?.exitCode == 0)
    }

    /// Errors are reported in the config's cniVersion, even when the error
    /// is in the environment.
    @Test func errorsCarryTheConfigsVersion() throws {
        let stdin = Array(#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#.utf8)
        let output = try #require(finished(["CNI_COMMAND": "ADD"], stdin))
        #expect(json(output.stdout)?["cniVersion"] == .string("0.4.0"))
        #expect(json(output.stdout)?["code"] == .integer(4))
        #expect(json(output.stdout)?["msg"] == .string("CNI_CONTAINERID is not set"))
        let noConfig = try #require(finished(["CNI_COMMAND": "ADD"], []))
        #expect(json(noConfig.stdout)?["cniVersion"] == .string("1.0.0"))
    }

    @Test func badStdin() throws {
        let output = try #require(finished(Self.environment("ADD"), Array("{not json".utf8)))
        #expect(output.exitCode == 1)
        #expect(json(output.stdout)?["code"] == .integer(6))
        #expect(json(output.stdout)?["msg"] == .string("the network config on stdin is not valid JSON"))
        let empty = try #require(finished(Self.environment("DEL"), []))
        #expect(json(empty.stdout)?["msg"] == .string("the network config on stdin is empty"))
    }

    @Test func settingsReachTheCall() throws {
        let stdin = Self.config(SpecExamples.addPortmap, ["agentSocket": .string("/tmp/a.sock"), "timeoutSeconds": .number("0.25")])
        let call = try #require(agentCall("ADD", args: "", stdin: stdin))
        #expect(call.socketPath == "/tmp/a.sock")
        #expect(call.timeoutMilliseconds == 250)
        #expect(call.request?.podName == nil)
        #expect(call.finish(.answered(Array(#"{"version":1,"ok":true,"captured":true}"#.utf8))).log == ["ADD container 4f3a9c: captured"])
    }
}
