import CNI
import Testing

@Suite("network config on stdin (CNI 1.0 examples)")
struct NetworkConfigTests {
    private func config(_ text: String) throws -> NetworkConfig {
        try NetworkConfig(NetworkConfig.parse(Array(text.utf8)))
    }

    private func error(_ text: String) -> CNIError? {
        do {
            _ = try config(text)
            return nil
        } catch {
            return error as? CNIError
        }
    }

    @Test func specAddExampleDecodes() throws {
        let decoded = try config(SpecExamples.addPortmap)
        #expect(decoded.cniVersion == CNIVersion(1, 0, 0))
        #expect(decoded.name == "dbnet")
        #expect(decoded.type == "portmap")
        #expect(decoded.settings == PluginSettings())
        #expect(decoded.raw["runtimeConfig"]?["portMappings"] != nil)
        #expect(try decoded.podAddresses() == ["10.1.0.5"])
    }

    /// A chained plugin that adds no interface outputs `prevResult` as it got
    /// it; the spec's `prevResult` has no `cniVersion`, which a result needs.
    @Test(arguments: [SpecExamples.addPortmap, SpecExamples.addTuning, SpecExamples.checkBridge])
    func passThroughKeepsEveryField(example: String) throws {
        let decoded = try config(example)
        let result = try JSONValue.parse(decoded.passThroughResult())
        guard case .object(var members)? = decoded.prevResult else {
            Issue.record("no prevResult")
            return
        }
        members["cniVersion"] = .string("1.0.0")
        #expect(result == .object(members))
        #expect(result["interfaces"]?.encoded() == decoded.prevResult?["interfaces"]?.encoded())
        #expect(result["ips"] == .array([.object(["address": .string("10.1.0.5/16"), "gateway": .string("10.1.0.1"), "interface": .integer(2)])]))
    }

    @Test func aResultVersionIsKept() throws {
        let text = #"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"cniVersion":"1.0.0","ips":[]}}"#
        #expect(try JSONValue.parse(config(text).passThroughResult()) == .object(["cniVersion": .string("1.0.0"), "ips": .array([])]))
    }

    @Test func numbersKeepTheirMeaning() throws {
        let text = #"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"a":2,"b":-0.5,"c":1e300,"d":12345678901234567890,"e":true,"f":null,"g":"\u00e9\n"}}"#
        let prevResult = try config(text).prevResult
        #expect(prevResult?["a"] == .integer(2))
        #expect(prevResult?["b"] == .number("-0.5"))
        #expect(prevResult?["c"] == .number("1e300"))
        // Beyond 64 bits, and kept to the last digit.
        #expect(prevResult?["d"] == .number("12345678901234567890"))
        #expect(prevResult?["e"] == .bool(true))
        #expect(prevResult?["f"] == .null)
        #expect(prevResult?["g"] == .string("é\n"))
        let again = try JSONValue.parse(config(text).passThroughResult())
        #expect(again["d"] == prevResult?["d"])
        #expect(String(decoding: try config(text).passThroughResult(), as: UTF8.self).contains(#""d":12345678901234567890"#))
    }

    @Test func pluginSettings() throws {
        let text = """
            {"cniVersion":"1.0.0","name":"pods","type":"mesh-agent-cni","agentSocket":"/run/x/cni.sock",
             "timeoutSeconds":2.5,"requireAgent":false,"excludeNamespaces":["kube-system","istio-system"]}
            """
        let settings = try config(text).settings
        #expect(settings.agentSocket == "/run/x/cni.sock")
        #expect(settings.timeoutMilliseconds == 2500)
        #expect(settings.requireAgent == false)
        #expect(settings.excludeNamespaces == ["kube-system", "istio-system"])
    }

    @Test func defaults() throws {
        let settings = try config(#"{"cniVersion":"1.1.0","name":"pods","type":"mesh-agent-cni"}"#).settings
        #expect(settings.agentSocket == "/run/mesh-agent/cni.sock")
        #expect(settings.timeoutMilliseconds == 10_000)
        #expect(settings.requireAgent)
        #expect(settings.excludeNamespaces == ["kube-system"])
    }

    @Test func badJSON() {
        let trailing = error(SpecExamples.delWithTrailingCommas)
        #expect(trailing?.code == .decodingFailure)
        #expect(trailing?.msg == "the network config on stdin is not valid JSON")
        #expect(error("")?.msg == "the network config on stdin is empty")
        #expect(error(" \n")?.code == .decodingFailure)
        #expect(error("{\"cniVersion\":")?.code == .decodingFailure)
        #expect(error("[1]")?.msg == "the network config on stdin is an array, not an object")
        #expect(error(String(repeating: "[", count: 10_000))?.code == .decodingFailure)
    }

    @Test func oversizedStdin() {
        let big = "{\"cniVersion\":\"1.0.0\",\"pad\":\"" + String(repeating: "x", count: NetworkConfig.maximumSize) + "\"}"
        #expect(error(big)?.code == .invalidNetworkConfig)
        #expect(error(big)?.msg.contains("larger than 1048576 bytes") == true)
    }

    @Test func versions() {
        #expect(error(#"{"name":"n","type":"t"}"#)?.msg == "the network config has no cniVersion")
        #expect(error(#"{"cniVersion":1,"name":"n","type":"t"}"#)?.msg == "cniVersion is a number, not a string")
        let old = error(#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#)
        #expect(old?.code == .incompatibleVersion)
        #expect(old?.msg == #"CNI version "0.2.0" is not supported"#)
        #expect(old?.details == "mesh-agent-cni supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0; set cniVersion in the conflist to one of them")
        #expect(error(#"{"cniVersion":"0.1","name":"n","type":"t"}"#)?.code == .incompatibleVersion)
        #expect(error(#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#)?.code == .incompatibleVersion)
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            #expect(error(#"{"cniVersion":"\#(version)","name":"n","type":"t"}"#) == nil)
        }
    }

    @Test func requiredKeys() {
        #expect(error(#"{"cniVersion":"1.0.0","type":"t"}"#)?.msg == "the network config has no name")
        #expect(error(#"{"cniVersion":"1.0.0","name":"n"}"#)?.msg == "the network config has no type")
        #expect(error(#"{"cniVersion":"1.0.0","name":"-n","type":"t"}"#)?.details == #"it starts with "-", not a letter or digit"#)
        #expect(error(#"{"cniVersion":"1.0.0","name":"n","type":""}"#)?.details == "it is empty")
        #expect(error(#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":[]}"#)?.msg == "prevResult is an array, not an object")
        #expect(error(#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":null}"#) == nil)
    }

    @Test func badSettings() {
        func settingError(_ key: String, _ value: String) -> String? {
            error(#"{"cniVersion":"1.0.0","name":"n","type":"t","\#(key)":\#(value)}"#)?.msg
        }
        #expect(settingError("agentSocket", "5") == "agentSocket is a number, not a string")
        #expect(settingError("agentSocket", #""relative.sock""#) == #"agentSocket "relative.sock" is not valid"#)
        #expect(settingError("agentSocket", "\"/\(String(repeating: "a", count: 120))\"")?.hasPrefix("agentSocket") == true)
        #expect(settingError("timeoutSeconds", "0") == "timeoutSeconds is 0, not a number of seconds above 0 and at most 300")
        #expect(settingError("timeoutSeconds", "301") != nil)
        #expect(settingError("timeoutSeconds", #""10""#) == #"timeoutSeconds is "10", not a number of seconds above 0 and at most 300"#)
        #expect(settingError("requireAgent", #""no""#) == #"requireAgent is "no", not true or false"#)
        #expect(settingError("excludeNamespaces", #""kube-system""#) == "excludeNamespaces is a string, not an array of Kubernetes namespaces")
        #expect(settingError("excludeNamespaces", #"["Kube"]"#) == #"excludeNamespaces[0] "Kube" is not a Kubernetes namespace"#)
        #expect(settingError("excludeNamespaces", "[1]") == "excludeNamespaces[0] is a number, not a string")
    }

    @Test func addressesFromIPAMResultWithoutInterfaces() throws {
        let text = #"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":\#(SpecExamples.ipamResult)}"#
        #expect(try config(text).podAddresses() == ["10.1.0.5"])
    }

    /// Host-side addresses (an interface without a sandbox) are not the pod's.
    @Test func hostSideAddressesAreLeftOut() throws {
        let text = """
            {"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{
              "interfaces":[{"name":"cni0"},{"name":"veth1","sandbox":""},{"name":"eth0","sandbox":"/run/netns/p"}],
              "ips":[{"address":"10.1.0.1/16","interface":0},{"address":"10.1.0.9/16","interface":1},
                     {"address":"10.1.0.5/16","interface":2},{"address":"fd00::5/64","interface":2},
                     {"address":"10.1.0.5/16","interface":2},{"address":"10.1.0.6/16","interface":7},{"address":"10.1.0.7/16"}]}}
            """
        #expect(try config(text).podAddresses() == ["10.1.0.5", "fd00::5", "10.1.0.6", "10.1.0.7"])
    }

    @Test func badPrevResultAddresses() {
        func addressError(_ prevResult: String) -> String? {
            do {
                _ = try config(#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":\#(prevResult)}"#).podAddresses()
                return nil
            } catch {
                return (error as? CNIError)?.msg
            }
        }
        #expect(addressError(#"{"ips":{}}"#) == "prevResult.ips is an object, not an array")
        #expect(addressError(#"{"ips":[1]}"#) == "prevResult.ips[0] is a number, not an object")
        #expect(addressError(#"{"ips":[{"gateway":"10.0.0.1"}]}"#) == "prevResult.ips[0] has no address")
        #expect(addressError(#"{"ips":[{"address":"10.0.0.5"}]}"#) == #"prevResult.ips[0].address "10.0.0.5" is not an address in CIDR notation"#)
        #expect(addressError(#"{"ips":[{"address":"10.0.0.256/24"}]}"#) != nil)
        #expect(addressError(#"{"ips":[{"address":"10.0.0.5/33"}]}"#) != nil)
        #expect(addressError(#"{"interfaces":5,"ips":[]}"#) == "prevResult.interfaces is a number, not an array")
        #expect(addressError(#"{"ips":[]}"#) == nil)
        let many = "[" + Array(repeating: #"{"address":"10.0.0.5/24"}"#, count: 65).joined(separator: ",") + "]"
        #expect(addressError(#"{"ips":\#(many)}"#) == "prevResult.ips has 65 entries")
    }
}
