import Workloads
import Policy
import Testing
@testable import Config

@Suite struct ConfigTests {
    static let minimal = "trustDomain: cluster.local\n"

    @Test func theGraphIsOnByDefaultAndItsKeysAreRead() throws {
        let defaults = try AgentConfig.parse(Self.minimal, file: "agent.yaml", defaultNode: "node-x").graph
        #expect(defaults.enabled)
        #expect(defaults.database == "/var/lib/mesh-agent/graph.db")
        #expect(defaults.retention == .seconds(30 * 86400))
        #expect(defaults.learningPeriod == .seconds(7 * 86400))
        #expect(!defaults.http)
        let text = Self.minimal + "graph: {enabled: false, database: /srv/graph.db, retention: 7d, http: true, learningPeriod: 0d}\n"
        let graph = try AgentConfig.parse(text, file: "agent.yaml", defaultNode: "node-x").graph
        #expect(!graph.enabled)
        #expect(graph.database == "/srv/graph.db")
        #expect(graph.retention == .seconds(7 * 86400))
        #expect(graph.learningPeriod == .zero)
        #expect(graph.http)
        let hours = try AgentConfig.parse(Self.minimal + "graph: {retention: 36h}\n", file: "agent.yaml", defaultNode: "node-x").graph
        #expect(hours.retention == .seconds(36 * 3600))
    }

    @Test func defaultsFillEverythingButTheTrustDomain() throws {
        let config = try AgentConfig.parse(Self.minimal, file: "agent.yaml", defaultNode: "node-x")
        #expect(config.trustDomain == "cluster.local")
        #expect(config.node == "node-x")
        #expect(config.captureMode == .host)
        #expect(config.mark == 0x539)
        #expect(config.markMask == 0xfff)
        #expect(config.failureMode == .open)
        #expect(config.ports.outbound == 15001)
        #expect(config.ports.inboundPlaintext == 15006)
        #expect(config.ports.tunnel == 15008)
        #expect(config.ports.metrics == 15020)
        #expect(config.ports.readiness == 15021)
        #expect(config.adminSocket == "/run/mesh-agent/admin.sock")
        #expect(config.certificateTTL == .seconds(86400))
        #expect(config.drainTimeout == .seconds(30))
        #expect(config.mtlsMode == .PERMISSIVE)
        #expect(config.workloads.isEmpty)
        #expect(config.limits.eventLoops == nil)
        #expect(config.limits.eventLoopCount(cores: 2) == 2, "one event loop per core unless limits.eventLoops says otherwise")
        #expect(config.limits.kernelSplice, "plain socket pairs are spliced by the kernel unless turned off")
    }

    @Test func kernelSplicingCanBeTurnedOff() throws {
        let off = try AgentConfig.parse(Self.minimal + "limits: {kernelSplice: false}\n", file: "agent.yaml", defaultNode: "n")
        #expect(!off.limits.kernelSplice)
        #expect(throws: (any Error).self) {
            try AgentConfig.parse(Self.minimal + "limits: {kernelSplice: sometimes}\n", file: "agent.yaml", defaultNode: "n")
        }
    }

    @Test func theEventLoopCountIsChosenOrOnePerCore() throws {
        let chosen = try AgentConfig.parse(Self.minimal + "limits: {eventLoops: 1}\n", file: "agent.yaml", defaultNode: "n")
        #expect(chosen.limits.eventLoopCount(cores: 8) == 1)
        #expect(throws: (any Error).self) {
            try AgentConfig.parse(Self.minimal + "limits: {eventLoops: 0}\n", file: "agent.yaml", defaultNode: "n")
        }
    }

    @Test func theNodeComesFromNodeNameThenTheHostName() throws {
        #expect(AgentConfig.defaultNode(environment: ["NODE_NAME": "worker-3"], hostName: "ip-10-0-1-7") == "worker-3")
        #expect(AgentConfig.defaultNode(environment: ["NODE_NAME": ""], hostName: "ip-10-0-1-7") == "ip-10-0-1-7")
        #expect(AgentConfig.defaultNode(environment: [:], hostName: "ip-10-0-1-7") == "ip-10-0-1-7")

        let fromEnvironment = AgentConfig.defaultNode(environment: ["NODE_NAME": "worker-3"], hostName: "h")
        #expect(try AgentConfig.parse(Self.minimal, file: "agent.yaml", defaultNode: fromEnvironment).node == "worker-3")
        // The node's pods are selected by it, as is kubernetes.node by default.
        let sources = try AgentConfig.parse(Self.minimal + "workloadSources: {kubernetes: {}}\n", file: "agent.yaml", defaultNode: fromEnvironment)
        #expect(sources.workloadSources.kubernetes?.node == "worker-3")
        // The config's own node: wins.
        #expect(try AgentConfig.parse(Self.minimal + "node: node-a\n", file: "agent.yaml", defaultNode: fromEnvironment).node == "node-a")
    }

    @Test func aDefaultNodeThatIsNoNodeNameIsRefused() {
        #expect {
            _ = try AgentConfig.parse(Self.minimal, file: "agent.yaml", defaultNode: "worker 3")
        } throws: { error in
            "\(error)" == #"agent.yaml: node: not set, and the default "worker 3" (NODE_NAME, else the host name) is not a valid node name: set node, or NODE_NAME to the node's name"#
        }
        #expect(throws: Never.self) { try AgentConfig.parse(Self.minimal + "node: node-a\n", file: "agent.yaml", defaultNode: "worker 3") }
    }

    @Test func portsMayBeDeclaredTCPOnly() throws {
        let config = try AgentConfig.parse(
            "trustDomain: td\nworkloads:\n  - {name: db, namespace: ns, cgroup: /db, ports: [8080, {port: 5432, protocol: tcp}, {port: 9000, protocol: http}]}\n",
            file: "agent.yaml")
        #expect(config.workloads[0].workload.ports == [8080, 5432, 9000])
        #expect(config.workloads[0].workload.tcpPorts == [5432])
        for (text, expected) in [
            ("{port: 5432, protocol: udp}", "agent.yaml:3: workloads[0].ports[0].protocol: must be tcp or http, got \"udp\""),
            ("{protocol: tcp}", "agent.yaml:3: workloads[0].ports[0].port: is required"),
            ("{port: 5432, proto: tcp}", "agent.yaml:3: workloads[0].ports[0].proto: unknown key"),
        ] {
            #expect(throws: (any Error).self) {
                try AgentConfig.parse("trustDomain: td\nworkloads:\n  - {name: db, namespace: ns, cgroup: /db, ports: [\(text)]}\n", file: "agent.yaml")
            }
            do {
                _ = try AgentConfig.parse("trustDomain: td\nworkloads:\n  - {name: db, namespace: ns, cgroup: /db, ports: [\(text)]}\n", file: "agent.yaml")
            } catch {
                #expect("\(error)".hasPrefix(expected), "\(error)")
            }
        }
    }

    @Test func theInterfacesExampleParses() throws {
        let text = """
            trustDomain: cluster.local          # required
            node: node-a
            captureMode: host
            mark: 0x539
            markMask: 0xfff
            failureMode: closed
            ports: {outbound: 15001, inboundPlaintext: 15006, tunnel: 15008, metrics: 15020, readiness: 15021}
            adminSocket: /run/mesh-agent/admin.sock
            accessLog: /var/log/mesh-agent/access.log
            policyDir: /etc/mesh-agent/policies
            rootNamespace: istio-system
            certificateTTL: 24h
            mtlsMode: STRICT
            drainTimeout: 1m30s
            ca:
              mode: local
              certificate: /etc/mesh-agent/ca/intermediate.pem
              key: /etc/mesh-agent/ca/intermediate.key
              trustBundle: /etc/mesh-agent/ca/bundle.pem
            meshNetworks: [10.77.0.0/16, "fd77::/64"]
            workloads:
              - name: orders
                namespace: shop
                serviceAccount: orders-sa
                cgroup: /system.slice/orders.service
                labels: {app: orders}
                ports: [8080]
              - name: checkout
                namespace: shop
                cgroup: /system.slice/checkout.service
            """
        let config = try AgentConfig.parse(text, file: "agent.yaml")
        #expect(config.node == "node-a")
        #expect(config.failureMode == .closed)
        #expect(config.mtlsMode == .STRICT)
        #expect(config.drainTimeout == .seconds(90))
        #expect(config.meshNetworks.map(\.description) == ["10.77.0.0/16", "fd77::/64"])
        #expect(config.workloads.count == 2)
        #expect(config.workloads[0].workload.serviceAccount == "orders-sa")
        #expect(config.workloads[0].cgroup.string == "/system.slice/orders.service")
        #expect(config.workloads[0].workload.labels == ["app": "orders"])
        #expect(config.workloads[0].workload.ports == [8080])
        #expect(config.workloads[1].workload.serviceAccount == "checkout", "the service account defaults to the workload name")
    }

    /// Each bad config must fail with the file, the line and the key path.
    @Test(arguments: [
        ("node: a\n", "agent.yaml:1: trustDomain: is required"),
        ("trustDomain: cluster.local\ntrustdomain: x\n", "agent.yaml:2: trustdomain: unknown key"),
        ("trustDomain: Cluster.Local\n", "agent.yaml:1: trustDomain: \"Cluster.Local\" is not a SPIFFE trust domain"),
        ("trustDomain: td\nmark: 0x1000\n", "agent.yaml:2: mark: mark 0x1000 has bits outside markMask 0xfff"),
        ("trustDomain: td\nmark: banana\n", "agent.yaml:2: mark: expected a whole number"),
        ("trustDomain: td\nports: {outbound: 15001, tunnel: 15001}\n", "ports.tunnel: port 15001 is already used by ports.outbound"),
        ("trustDomain: td\nports: {outbound: 70000}\n", "agent.yaml:2: ports.outbound: must be between 1 and 65535"),
        ("trustDomain: td\nports: {outbund: 1}\n", "agent.yaml:2: ports.outbund: unknown key"),
        ("trustDomain: td\nfailureMode: maybe\n", "agent.yaml:2: failureMode: must be one of open, closed"),
        ("trustDomain: td\ncaptureMode: pods\n", "agent.yaml:2: captureMode: must be one of host, netns"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, captureMode: host, netns: /run/netns/a}\n", "workloads[0].netns: netns names the namespace of a workload captured in it"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, netns: run/netns/a}\n", "workloads[0].netns: must be an absolute path"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, captureExclusions: {cidrs: [10.0.0.1/8]}}\n", "workloads[0].captureExclusions.cidrs[0]: \"10.0.0.1/8\" is not a network"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, captureExclusions: {ports: [0]}}\n", "workloads[0].captureExclusions.ports[0]: must be between 1 and 65535"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, captureExclusions: {hosts: []}}\n", "workloads[0].captureExclusions.hosts: unknown key"),
        ("trustDomain: td\ndrainTimeout: 10 minutes\n", "agent.yaml:2: drainTimeout: \"10 minutes\" is not a duration"),
        ("trustDomain: td\nmeshNetworks: [10.77.0.1/16]\n", "agent.yaml:2: meshNetworks[0]: \"10.77.0.1/16\" is not a network: host bits are set"),
        ("trustDomain: td\naccessLog: relative.log\n", "agent.yaml:2: accessLog: must be an absolute path"),
        ("trustDomain: td\nworkloads:\n  - name: a\n    namespace: ns\n", "agent.yaml:3: workloads[0].cgroup: is required"),
        ("trustDomain: td\nworkloads:\n  - name: a\n    namespace: ns\n    cgroup: system.slice/a\n", "agent.yaml:5: workloads[0].cgroup:"),
        ("trustDomain: td\nworkloads:\n  - name: a\n    namespace: ns\n    cgroup: /a/../b\n", "agent.yaml:5: workloads[0].cgroup:"),
        ("trustDomain: td\nworkloads:\n  - name: a\n    namespace: ns\n    cgroup: /\n", "workloads[0].cgroup: the cgroup v2 root holds every process"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x}\n  - {name: a, namespace: ns, cgroup: /y}\n", "workloads[1].name: workload ns/a is already defined by workloads[0]"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x}\n  - {name: b, namespace: ns, cgroup: /x}\n", "workloads[1].cgroup: cgroup /x is already the cgroup of workloads[0]"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x}\n  - {name: b, namespace: ns, cgroup: /x/y}\n", "are nested"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, ports: [80, 8080]}\n  - {name: b, namespace: ns, cgroup: /y, ports: [8080]}\n", "workloads[1].name: port 8080 is already served by workloads[0]"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, ports: [8080, 15008]}\n", "workloads[0].ports[1]: port 15008 is the agent's own ports.tunnel"),
        ("trustDomain: td\nports: {metrics: 9000}\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, ports: [{port: 9000}]}\n", "port 9000 is the agent's own ports.metrics"),
        ("trustDomain: td\nworkloads:\n  - {name: A_B, namespace: ns, cgroup: /x}\n", "workloads[0].name: \"A_B\" is not a valid name"),
        ("trustDomain: td\nworkloads:\n  - {name: a, namespace: ns, cgroup: /x, port: [1]}\n", "workloads[0].port: unknown key"),
        ("trustDomain: [td\n", "agent.yaml:2: not valid YAML"),
        ("", "agent.yaml: the config is empty"),
        ("- a\n- b\n", "agent.yaml:1: expected a mapping"),
        ("trustDomain: td\ngraph: {database: graph.db}\n", "agent.yaml:2: graph.database: must be an absolute path"),
        ("trustDomain: td\ngraph: {retention: 30 days}\n", "graph.retention: \"30 days\" is not a retention; write it in days like 30d"),
        ("trustDomain: td\ngraph: {retention: 10m}\n", "graph.retention: must be at least 1h"),
        ("trustDomain: td\ngraph: {enabled: maybe}\n", "graph.enabled:"),
        ("trustDomain: td\ngraph: {http: yes please}\n", "graph.http:"),
        ("trustDomain: td\ngraph: {path: /x.db}\n", "graph.path: unknown key"),
        ("trustDomain: td\ngraph: {learningPeriod: a week}\n", "graph.learningPeriod: \"a week\" is not a duration"),
    ])
    func invalidConfigsSayWhereAndWhy(text: String, expected: String) {
        #expect {
            _ = try AgentConfig.parse(text, file: "agent.yaml", defaultNode: "n")
        } throws: { error in
            let message = "\(error)"
            let matches = message.contains(expected)
            if !matches { Issue.record("got: \(message)") }
            return matches
        }
    }

    @Test(arguments: [
        ("30s", Duration.seconds(30)), ("500ms", .milliseconds(500)), ("5m", .seconds(300)),
        ("24h", .seconds(86400)), ("1h30m", .seconds(5400)), ("0s", .zero),
    ])
    func durationsParse(text: String, expected: Duration) {
        #expect(parseDuration(text) == expected)
    }

    @Test(arguments: ["", "10", "s", "5 m", "1d", "-5s", "1h30", "99999999999999s"])
    func badDurationsAreRefused(text: String) {
        #expect(parseDuration(text) == nil)
    }

    @Test func pathRulesComeFromTheHTTPSection() throws {
        let standard = try AgentConfig.parse("trustDomain: td\n", file: "agent.yaml", defaultNode: "n")
        #expect(standard.http == HTTPPath.Rules(normalization: .MERGE_SLASHES, parameters: .reject))
        let set = try AgentConfig.parse(
            "trustDomain: td\nhttp: {pathNormalization: DECODE_AND_MERGE_SLASHES, pathParameters: strip}\n", file: "agent.yaml", defaultNode: "n")
        #expect(set.http == HTTPPath.Rules(normalization: .DECODE_AND_MERGE_SLASHES, parameters: .strip))
        for (text, expected) in [
            ("http: {pathNormalization: NONE}", "agent.yaml:2: http.pathNormalization: pathNormalization NONE would let policy match one path"),
            ("http: {pathParameters: drop}", "http.pathParameters: must be one of keep, strip, reject"),
            ("http: {pathNormalisation: BASE}", "http.pathNormalisation: unknown key"),
        ] {
            #expect {
                _ = try AgentConfig.parse("trustDomain: td\n\(text)\n", file: "agent.yaml", defaultNode: "n")
            } throws: { error in
                let matches = "\(error)".contains(expected)
                if !matches { Issue.record("got: \(error)") }
                return matches
            }
        }
    }

    /// `captureMode: netns` is the node's default for workloads that say
    /// nothing; `netns:` names the namespace, else the cgroup's processes do.
    /// Ports are per namespace: two pods may serve the same one.
    @Test func netnsWorkloadsAndTheirExclusions() throws {
        let config = try AgentConfig.parse(
            """
            trustDomain: td
            captureMode: netns
            workloads:
              - {name: a, namespace: ns, cgroup: /pods/a, ports: [8080], netns: /run/netns/a, captureExclusions: {ports: [9090, 9090, 22], cidrs: [10.0.0.0/8, "fd00::/8"]}}
              - {name: b, namespace: ns, cgroup: /pods/b, ports: [8080]}
              - {name: c, namespace: ns, cgroup: /system.slice/c.service, ports: [8080], captureMode: host}
            """, file: "agent.yaml", defaultNode: "n")
        #expect(config.captureMode == .netns)
        #expect(config.workloads.map(\.network) == [.namespace(.path("/run/netns/a")), .namespace(.ofCgroup), .host])
        #expect(config.workloads[0].exclusions == CaptureExclusions(ports: [22, 9090], networks: ["10.0.0.0/8", "fd00::/8"]))
        #expect(config.workloads[1].exclusions.isEmpty)
    }

    @Test func workloadSourcesTakeDefaultsAndTheirOwnSettings() throws {
        let config = try AgentConfig.parse(
            """
            trustDomain: td
            node: node-a
            workloadSources:
              podman: {}
              docker: {socket: /run/docker.sock}
              kubernetes: {apiServer: "https://10.96.0.1:443", caFile: /etc/k8s/ca.crt}
              cni:
            """, file: "agent.yaml", defaultNode: "n")
        let sources = config.workloadSources
        #expect(sources.podman?.socket == "/run/podman/podman.sock")
        #expect(sources.docker?.socket == "/run/docker.sock")
        #expect(sources.cni?.socket == "/run/mesh-agent/cni.sock")
        #expect(sources.kubernetes == .init(node: "node-a", apiServer: "https://10.96.0.1:443", tokenFile: nil, caFile: "/etc/k8s/ca.crt"))
        #expect(try AgentConfig.parse("trustDomain: td\n", file: "agent.yaml", defaultNode: "n").workloadSources.isEmpty)
    }

    @Test(arguments: [
        ("trustDomain: td\nworkloadSources: {crio: {}}\n", "workloadSources.crio: unknown key"),
        ("trustDomain: td\nworkloadSources: {podman: {socket: podman.sock}}\n", "workloadSources.podman.socket: must be an absolute path"),
        ("trustDomain: td\nworkloadSources: {kubernetes: {apiServer: 10.96.0.1}}\n", "workloadSources.kubernetes.apiServer: must be an https:// (or http://) URL"),
        ("trustDomain: td\nworkloadSources: {kubernetes: {nodeName: a}}\n", "workloadSources.kubernetes.nodeName: unknown key"),
    ])
    func badWorkloadSourcesSayWhy(text: String, expected: String) {
        #expect {
            _ = try AgentConfig.parse(text, file: "agent.yaml", defaultNode: "n")
        } throws: { error in
            let matches = "\(error)".contains(expected)
            if !matches { Issue.record("got: \(error)") }
            return matches
        }
    }

    @Test func theShippedExampleConfigIsValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let config = try AgentConfig.load(path: root.appendingPathComponent("deploy/examples/agent.yaml").path)
        #expect(!config.workloads.isEmpty)
    }
}

import Foundation
