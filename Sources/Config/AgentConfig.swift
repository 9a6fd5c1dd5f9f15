import Foundation
import LinuxNet
import Policy
import TLS
import Workloads

/// The agent's configuration file (`/etc/mesh-agent/agent.yaml`). Every field but
/// `trustDomain` has a default; unknown keys are errors with their key path.
public struct AgentConfig: Equatable, Sendable {
    public enum CaptureMode: String, Sendable { case host, netns }
    public enum FailureMode: String, Sendable { case open, closed }
    public typealias MTLSMode = Policy.MTLSMode

    public struct Ports: Equatable, Sendable {
        public var outbound: UInt16 = 15001
        public var inboundPlaintext: UInt16 = 15006
        public var tunnel: UInt16 = 15008
        public var metrics: UInt16 = 15020
        public var readiness: UInt16 = 15021

        /// Every port the agent listens on.
        public var all: Set<UInt16> { [outbound, inboundPlaintext, tunnel, metrics, readiness] }

        /// The config key of the agent listener on `port`, if one is.
        func name(of port: UInt16) -> String? {
            [("outbound", outbound), ("inboundPlaintext", inboundPlaintext), ("tunnel", tunnel), ("metrics", metrics), ("readiness", readiness)]
                .first { $0.1 == port }?.0
        }
    }

    public struct CertificateAuthority: Equatable, Sendable {
        public enum Mode: String, Sendable { case local }
        public var mode: Mode = .local
        public var certificate = "/etc/mesh-agent/ca/intermediate.pem"
        public var key = "/etc/mesh-agent/ca/intermediate.key"
        public var trustBundle = "/etc/mesh-agent/ca/bundle.pem"
    }

    public struct Limits: Equatable, Sendable {
        /// Connections proxied at once; beyond it new captured connections are refused.
        public var maxConnections = 65_536
        /// How long dialling an original destination may take.
        public var connectTimeout: Duration = .seconds(10)
        /// Event-loop threads that carry the data path; nil for one per core.
        public var eventLoops: Int?
        /// Whether plain socket-to-socket connections (passthrough, same-node
        /// and inbound plaintext ones that no policy inspects) are relayed by
        /// the kernel with splice(2) instead of through the event loops.
        public var kernelSplice = true

        /// The number of event loops to run on a machine with `cores` cores.
        public func eventLoopCount(cores: Int) -> Int {
            eventLoops ?? max(1, cores)
        }
    }

    /// Where workloads come from besides `workloads:` (`workloadSources:`);
    /// each one present is on, several at once.
    public struct WorkloadSources: Equatable, Sendable {
        /// A container engine's API on its Unix socket.
        public struct Engine: Equatable, Sendable {
            public var socket: String
        }

        public struct Kubernetes: Equatable, Sendable {
            /// The node whose pods this agent captures (`spec.nodeName`).
            public var node: String
            /// Default: the in-cluster address (KUBERNETES_SERVICE_HOST and _PORT).
            public var apiServer: String?
            /// Default: the pod's service-account token and CA.
            public var tokenFile: String?
            public var caFile: String?
        }

        /// Where the CNI plugin asks the agent to enroll a new namespace.
        public struct CNI: Equatable, Sendable {
            public var socket: String
        }

        public var podman: Engine?
        public var docker: Engine?
        public var kubernetes: Kubernetes?
        public var cni: CNI?

        public var isEmpty: Bool { podman == nil && docker == nil && kubernetes == nil && cni == nil }

        public static let defaultPodmanSocket = "/run/podman/podman.sock"
        public static let defaultDockerSocket = "/var/run/docker.sock"
        public static let defaultCNISocket = "/run/mesh-agent/cni.sock"
    }

    public var trustDomain: String
    public var node: String
    public var captureMode: CaptureMode = .host
    public var mark: UInt32 = 0x539
    public var markMask: UInt32 = 0xfff
    public var failureMode: FailureMode = .open
    public var ports = Ports()
    public var adminSocket = "/run/mesh-agent/admin.sock"
    public var accessLog = "/var/log/mesh-agent/access.log"
    public var accessLogLimit = AccessLogLimit.default
    /// Which inspected HTTP requests get an access-log line of their own.
    public var accessLogRequests = AccessLogRequests.all
    public var policyDir = "/etc/mesh-agent/policies"
    public var rootNamespace = "istio-system"
    public var certificateTTL: Duration = .seconds(24 * 3600)
    public var mtlsMode: MTLSMode = .PERMISSIVE
    public var drainTimeout: Duration = .seconds(30)
    public var ca = CertificateAuthority()
    public var meshNetworks: [IPPrefix] = []
    public var limits = Limits()
    /// How inspected HTTP requests' paths are normalized (`http:`).
    public var http = HTTPPath.Rules.standard
    /// The `workloads:` list: the config file's own workload source.
    public var workloads: [WorkloadSpec] = []
    public var workloadSources = WorkloadSources()
    /// The observed service graph (`graph:`).
    public var graph = Graph()

    /// `graph: {enabled: true, database: /var/lib/mesh-agent/graph.db, retention: 30d, learningPeriod: 7d}`.
    public struct Graph: Equatable, Sendable {
        public var enabled = true
        public var database = "/var/lib/mesh-agent/graph.db"
        public var retention: Duration = .seconds(30 * 86400)
        /// How long after the database was made edges are learned before a
        /// never-seen one is reported (`agentctl graph baseline` ends it at once).
        public var learningPeriod: Duration = .seconds(7 * 86400)
        /// Record the method and path of HTTP/1.x requests on connections no
        /// policy inspects, too (their bytes are watched, not changed).
        public var http = false

        public init() {}
    }

    public init(trustDomain: String, node: String) {
        self.trustDomain = trustDomain
        self.node = node
    }
}

extension AgentConfig {
    /// Reads and validates a config file. Errors name the file, line and key.
    public static func load(path: String) throws -> AgentConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw YAMLError(file: path, line: nil, keyPath: "", reason: "cannot read the config file: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    /// The node name when the config has no `node:`: `NODE_NAME` when it is
    /// set, else the host name. A DaemonSet sets `NODE_NAME` from
    /// `spec.nodeName` (the downward API), because the name pods are
    /// scheduled by, which the Kubernetes source selects pods with, need not
    /// be the host's.
    public static func defaultNode(
        environment: [String: String] = ProcessInfo.processInfo.environment, hostName: String = ProcessInfo.processInfo.hostName
    ) -> String {
        if let name = environment["NODE_NAME"], !name.isEmpty { return name }
        return hostName
    }

    public static func parse(_ text: String, file: String, defaultNode: String = AgentConfig.defaultNode()) throws -> AgentConfig {
        guard let root = try YAMLNode.parse(text, file: file) else {
            throw YAMLError(file: file, line: nil, keyPath: "", reason: "the config is empty; trustDomain is required")
        }
        var top = try root.mapping()
        let trustDomain = try validTrustDomain(try top.require("trustDomain"))
        let workloadsNode = top.take("workloads")
        var config = AgentConfig(trustDomain: trustDomain, node: defaultNode)
        if let node = top.take("node") {
            config.node = try validDNSName(node)
        } else if !isValidNodeName(defaultNode) {
            // Selecting pods by a name no node has would capture nothing, silently.
            throw YAMLError(
                file: file, line: nil, keyPath: "node",
                reason: "not set, and the default \"\(defaultNode)\" (NODE_NAME, else the host name) is not a valid node name: set node, or NODE_NAME to the node's name")
        }
        if let node = top.take("captureMode") {
            config.captureMode = try node.oneOf(CaptureMode.self, [.host, .netns])
        }
        let markNode = top.take("mark")
        if let markNode { config.mark = try markNode.unsigned(UInt32.self, in: 1...UInt32.max) }
        if let node = top.take("markMask") { config.markMask = try node.unsigned(UInt32.self, in: 1...UInt32.max) }
        if config.mark & ~config.markMask != 0 {
            let reason = "mark 0x\(String(config.mark, radix: 16)) has bits outside markMask 0x\(String(config.markMask, radix: 16)); the agent could not recognise its own traffic"
            throw markNode?.error(reason) ?? YAMLError(file: file, line: nil, keyPath: "mark", reason: reason)
        }
        if let node = top.take("failureMode") { config.failureMode = try node.oneOf(FailureMode.self, [.open, .closed]) }
        if let node = top.take("ports") { config.ports = try parsePorts(node) }
        if let node = top.take("adminSocket") { config.adminSocket = try absolutePath(node) }
        if let node = top.take("accessLog") { try parseAccessLog(node, into: &config) }
        if let node = top.take("accessLogLimit") { config.accessLogLimit = try parseAccessLogLimit(node) }
        if let node = top.take("policyDir") { config.policyDir = try absolutePath(node) }
        if let node = top.take("rootNamespace") { config.rootNamespace = try validLabel(node) }
        if let node = top.take("certificateTTL") {
            config.certificateTTL = try duration(node, atLeast: .seconds(1))
        }
        if let node = top.take("mtlsMode") { config.mtlsMode = try node.oneOf(MTLSMode.self, [.PERMISSIVE, .STRICT]) }
        if let node = top.take("drainTimeout") { config.drainTimeout = try duration(node, atLeast: .zero) }
        if let node = top.take("ca") { config.ca = try parseCA(node) }
        if let node = top.take("meshNetworks") {
            config.meshNetworks = try node.sequence().map { item in
                do { return try IPPrefix(item.string()) } catch let error as IPPrefixError { throw item.error(error.description) }
            }
        }
        if let node = top.take("limits") { config.limits = try parseLimits(node) }
        if let node = top.take("http") { config.http = try parseHTTP(node) }
        if let node = top.take("graph") { config.graph = try parseGraph(node) }
        if let node = top.take("workloadSources") { config.workloadSources = try parseWorkloadSources(node, node: config.node) }
        if let node = workloadsNode { config.workloads = try parseWorkloads(node, trustDomain: trustDomain, agentPorts: config.ports, captureMode: config.captureMode) }
        try top.finish(allowed: [
            "trustDomain", "node", "captureMode", "mark", "markMask", "failureMode", "ports", "adminSocket",
            "accessLog", "accessLogLimit", "policyDir", "rootNamespace", "certificateTTL", "mtlsMode", "drainTimeout", "ca",
            "meshNetworks", "limits", "http", "workloads", "workloadSources", "graph",
        ])
        return config
    }

    private static func parsePorts(_ node: YAMLNode) throws -> Ports {
        var map = try node.mapping()
        var ports = Ports()
        let fields: [(String, WritableKeyPath<Ports, UInt16>)] = [
            ("outbound", \.outbound), ("inboundPlaintext", \.inboundPlaintext), ("tunnel", \.tunnel),
            ("metrics", \.metrics), ("readiness", \.readiness),
        ]
        var used: [UInt16: String] = [:]
        for (key, path) in fields {
            if let value = map.take(key) {
                ports[keyPath: path] = try value.unsigned(UInt16.self, in: 1...65535)
            }
            if let other = used[ports[keyPath: path]] {
                throw YAMLError(
                    file: node.file, line: map.take(key)?.line ?? node.line, keyPath: "ports.\(key)",
                    reason: "port \(ports[keyPath: path]) is already used by ports.\(other)"
                )
            }
            used[ports[keyPath: path]] = key
        }
        try map.finish(allowed: fields.map(\.0))
        return ports
    }

    private static func parseCA(_ node: YAMLNode) throws -> CertificateAuthority {
        var map = try node.mapping()
        var ca = CertificateAuthority()
        if let value = map.take("mode") { ca.mode = try value.oneOf(CertificateAuthority.Mode.self, [.local]) }
        if let value = map.take("certificate") { ca.certificate = try absolutePath(value) }
        if let value = map.take("key") { ca.key = try absolutePath(value) }
        if let value = map.take("trustBundle") { ca.trustBundle = try absolutePath(value) }
        try map.finish(allowed: ["mode", "certificate", "key", "trustBundle"])
        return ca
    }

    private static func parseLimits(_ node: YAMLNode) throws -> Limits {
        var map = try node.mapping()
        var limits = Limits()
        if let value = map.take("maxConnections") { limits.maxConnections = Int(try value.unsigned(UInt32.self, in: 1...10_000_000)) }
        if let value = map.take("connectTimeout") { limits.connectTimeout = try duration(value, atLeast: .milliseconds(1)) }
        if let value = map.take("eventLoops") { limits.eventLoops = Int(try value.unsigned(UInt16.self, in: 1...256)) }
        if let value = map.take("kernelSplice") { limits.kernelSplice = try value.bool() }
        try map.finish(allowed: ["maxConnections", "connectTimeout", "eventLoops", "kernelSplice"])
        return limits
    }

    /// `http: {pathNormalization: MERGE_SLASHES, pathParameters: reject}`.
    private static func parseHTTP(_ node: YAMLNode) throws -> HTTPPath.Rules {
        var map = try node.mapping()
        var rules = HTTPPath.Rules.standard
        if let value = map.take("pathNormalization") {
            if (try? value.string()) == "NONE" {
                throw value.error("pathNormalization NONE would let policy match one path while the workload serves another; use BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
            }
            rules.normalization = try value.oneOf(HTTPPath.Rules.Normalization.self, HTTPPath.Rules.Normalization.allCases)
        }
        if let value = map.take("pathParameters") {
            rules.parameters = try value.oneOf(HTTPPath.Rules.Parameters.self, HTTPPath.Rules.Parameters.allCases)
        }
        try map.finish(allowed: ["pathNormalization", "pathParameters"])
        return rules
    }

    private static func parseGraph(_ node: YAMLNode) throws -> Graph {
        var map = try node.mapping()
        var graph = Graph()
        if let value = map.take("enabled") { graph.enabled = try value.bool() }
        if let value = map.take("database") { graph.database = try absolutePath(value) }
        // Under an hour the window would be shorter than one stored bucket.
        if let value = map.take("retention") { graph.retention = try retention(value) }
        if let value = map.take("learningPeriod") {
            let text = try value.string()
            guard let period = parseWindow(text) else {
                throw value.error("\"\(text)\" is not a duration; write it in days like 7d, or like 12h")
            }
            graph.learningPeriod = period
        }
        if let value = map.take("http") { graph.http = try value.bool() }
        try map.finish(allowed: ["enabled", "database", "retention", "http", "learningPeriod"])
        return graph
    }

    /// Retention is counted in days (`30d`), or written as any other duration;
    /// at least an hour, the graph's smallest stored window.
    private static func retention(_ node: YAMLNode) throws -> Duration {
        let text = try node.string()
        guard let value = parseWindow(text) else {
            throw node.error("\"\(text)\" is not a retention; write it in days like 30d, or like 12h")
        }
        guard value >= .seconds(3600) else { throw node.error("must be at least 1h, the graph's smallest stored window") }
        return value
    }

    /// `accessLog: PATH` (or "-" for stdout), or `accessLog: {path: PATH,
    /// requests: denied|all}`.
    private static func parseAccessLog(_ node: YAMLNode, into config: inout AgentConfig) throws {
        guard node.isMapping else {
            config.accessLog = try accessLogPath(node)
            return
        }
        var map = try node.mapping()
        if let value = map.take("path") { config.accessLog = try accessLogPath(value) }
        if let value = map.take("requests") {
            config.accessLogRequests = try value.oneOf(AccessLogRequests.self, AccessLogRequests.allCases)
        }
        try map.finish(allowed: ["path", "requests"])
    }

    private static func accessLogPath(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        return value == "-" ? value : try absolutePath(node)
    }

    /// `accessLogLimit: {linesPerSecond: 5000, burst: 20000}`; `linesPerSecond: 0`
    /// writes every line.
    private static func parseAccessLogLimit(_ node: YAMLNode) throws -> AccessLogLimit {
        var map = try node.mapping()
        var limit = AccessLogLimit.default
        if let value = map.take("linesPerSecond") { limit.linesPerSecond = try value.unsigned(UInt32.self, in: 0...1_000_000) }
        // At least 4: a quarter of the burst is kept for deny lines, and that
        // share must hold a whole line.
        if let value = map.take("burst") { limit.burst = try value.unsigned(UInt32.self, in: 4...10_000_000) }
        try map.finish(allowed: ["linesPerSecond", "burst"])
        return limit
    }

    private static func parseWorkloads(_ node: YAMLNode, trustDomain: String, agentPorts: Ports, captureMode nodeCaptureMode: CaptureMode) throws -> [WorkloadSpec] {
        var workloads: [WorkloadSpec] = []
        var names: [String: Int] = [:]
        for item in try node.sequence() {
            var map = try item.mapping()
            let nameNode = try map.require("name")
            let name = try validLabel(nameNode)
            let namespace = try validLabel(try map.require("namespace"))
            let serviceAccount = try map.take("serviceAccount").map(validLabel) ?? name
            let cgroupNode = try map.require("cgroup")
            let cgroup: CgroupPath
            do {
                cgroup = try CgroupPath(validating: cgroupNode.string())
            } catch {
                throw cgroupNode.error("\(error); write the path below the cgroup v2 mount, e.g. /system.slice/orders.service")
            }
            if cgroup.level == 0 {
                throw cgroupNode.error("the cgroup v2 root holds every process on the node; name the workload's own cgroup")
            }
            let labels = try map.take("labels")?.stringMap() ?? [:]
            var ports: [UInt16] = []
            var tcpPorts = Set<UInt16>()
            for item in try map.take("ports")?.sequence() ?? [] {
                let (port, protocolName) = try workloadPort(item)
                if let listener = agentPorts.name(of: port) {
                    throw item.error("port \(port) is the agent's own ports.\(listener); a workload cannot serve it (the agent never forwards to its own ports)")
                }
                ports.append(port)
                if protocolName == "tcp" { tcpPorts.insert(port) }
            }
            let network = try workloadNetwork(mode: map.take("captureMode"), netns: map.take("netns"), nodeDefault: nodeCaptureMode)
            let exclusions = try map.take("captureExclusions").map(parseExclusions) ?? CaptureExclusions()
            try map.finish(allowed: ["name", "namespace", "serviceAccount", "cgroup", "labels", "ports", "captureMode", "netns", "captureExclusions"])

            let key = "\(namespace)/\(name)"
            if let first = names[key] {
                throw nameNode.error("workload \(key) is already defined by workloads[\(first)]")
            }
            for (index, spec) in workloads.enumerated() {
                let other = spec.workload
                if network.isHost, spec.network.isHost, let shared = ports.first(where: other.ports.contains) {
                    throw nameNode.error("port \(shared) is already served by workloads[\(index)] (\(other.namespace)/\(other.name)); in host mode a port on the node belongs to one workload")
                }
                if spec.cgroup == cgroup {
                    throw cgroupNode.error("cgroup \(cgroup) is already the cgroup of workloads[\(index)] (\(other.namespace)/\(other.name))")
                }
                if cgroup.isDescendant(ofOrEqualTo: spec.cgroup) || spec.cgroup.isDescendant(ofOrEqualTo: cgroup) {
                    throw cgroupNode.error("cgroup \(cgroup) and the cgroup \(spec.cgroup) of workloads[\(index)] are nested; a socket in the inner one would belong to both")
                }
            }
            let identity: SpiffeID
            do {
                identity = try SpiffeID(trustDomain: trustDomain, namespace: namespace, serviceAccount: serviceAccount)
            } catch {
                throw nameNode.error("\(error)")
            }
            names[key] = workloads.count
            workloads.append(WorkloadSpec(
                workload: Workload(
                    name: name, namespace: namespace, serviceAccount: serviceAccount, identity: identity, labels: labels, ports: ports, tcpPorts: tcpPorts),
                cgroup: cgroup, source: .config, network: network, exclusions: exclusions))
        }
        return workloads
    }

    /// `workloadSources: {podman: {socket: PATH}, docker: {…}, kubernetes: {node: NAME, …}, cni: {socket: PATH}}`;
    /// `podman: {}` takes the default socket.
    private static func parseWorkloadSources(_ node: YAMLNode, node nodeName: String) throws -> WorkloadSources {
        var map = try node.mapping()
        var sources = WorkloadSources()
        func socket(_ item: YAMLNode, default path: String) throws -> String {
            guard !item.isNull else { return path }
            var fields = try item.mapping()
            let socket = try fields.take("socket").map(absolutePath) ?? path
            try fields.finish(allowed: ["socket"])
            return socket
        }
        if let item = map.take("podman") { sources.podman = .init(socket: try socket(item, default: WorkloadSources.defaultPodmanSocket)) }
        if let item = map.take("docker") { sources.docker = .init(socket: try socket(item, default: WorkloadSources.defaultDockerSocket)) }
        if let item = map.take("cni") { sources.cni = .init(socket: try socket(item, default: WorkloadSources.defaultCNISocket)) }
        if let item = map.take("kubernetes") {
            var kubernetes = WorkloadSources.Kubernetes(node: nodeName)
            if !item.isNull {
                var fields = try item.mapping()
                if let value = fields.take("node") { kubernetes.node = try validDNSName(value) }
                if let value = fields.take("apiServer") {
                    let url = try value.nonEmptyString()
                    guard url.hasPrefix("https://") || url.hasPrefix("http://") else {
                        throw value.error("must be an https:// (or http://) URL, got \"\(url)\"")
                    }
                    kubernetes.apiServer = url
                }
                if let value = fields.take("tokenFile") { kubernetes.tokenFile = try absolutePath(value) }
                if let value = fields.take("caFile") { kubernetes.caFile = try absolutePath(value) }
                try fields.finish(allowed: ["node", "apiServer", "tokenFile", "caFile"])
            }
            sources.kubernetes = kubernetes
        }
        try map.finish(allowed: ["podman", "docker", "kubernetes", "cni"])
        return sources
    }

    /// `captureMode:` (the node's by default) and `netns:`: a workload in a
    /// namespace of its own is found by its file, or else by its cgroup's processes.
    private static func workloadNetwork(mode modeNode: YAMLNode?, netns netnsNode: YAMLNode?, nodeDefault: CaptureMode) throws -> WorkloadNetwork {
        let mode = try modeNode.map { try $0.oneOf(CaptureMode.self, [.host, .netns]) } ?? (netnsNode == nil ? nodeDefault : .netns)
        switch mode {
        case .host:
            if let netnsNode {
                throw netnsNode.error("netns names the namespace of a workload captured in it (captureMode netns), but this one has captureMode host")
            }
            return .host
        case .netns:
            guard let netnsNode else { return .namespace(.ofCgroup) }
            return .namespace(.path(try absolutePath(netnsNode)))
        }
    }

    /// `captureExclusions: {ports: [9090], cidrs: [10.0.0.0/8]}`: never captured, either way.
    private static func parseExclusions(_ node: YAMLNode) throws -> CaptureExclusions {
        var map = try node.mapping()
        let ports = try map.take("ports")?.sequence().map { try $0.unsigned(UInt16.self, in: 1...65535) } ?? []
        let networks = try map.take("cidrs")?.sequence().map { item -> String in
            do { return try IPPrefix(item.string()).description } catch let error as IPPrefixError { throw item.error(error.description) }
        } ?? []
        try map.finish(allowed: ["ports", "cidrs"])
        return CaptureExclusions(ports: ports, networks: networks)
    }

    /// A workload port: `8080`, or `{port: 5432, protocol: tcp}` for a port that
    /// carries no HTTP (as Istio's `appProtocol: tcp`).
    private static func workloadPort(_ node: YAMLNode) throws -> (UInt16, String?) {
        guard node.isMapping else {
            return (try node.unsigned(UInt16.self, in: 1...65535), nil)
        }
        var map = try node.mapping()
        let port = try map.require("port").unsigned(UInt16.self, in: 1...65535)
        let protocolName = try map.take("protocol").map { item -> String in
            let text = try item.string()
            guard ["tcp", "http"].contains(text) else { throw item.error("must be tcp or http, got \"\(text)\"") }
            return text
        }
        try map.finish(allowed: ["port", "protocol"])
        return (port, protocolName)
    }

    // MARK: - Value rules

    private static func absolutePath(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        guard value.hasPrefix("/") else { throw node.error("must be an absolute path, got \"\(value)\"") }
        return value
    }

    /// SPIFFE trust domains: lowercase letters, digits, dots, dashes and underscores.
    private static func validTrustDomain(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        do {
            try SpiffeID.validateTrustDomain(value)
        } catch {
            throw node.error("\"\(value)\" is not a SPIFFE trust domain: use lowercase letters, digits, '.', '-' and '_'")
        }
        return value
    }

    /// Kubernetes-style names (RFC 1123 labels), used for namespaces, service accounts and workloads.
    private static func validLabel(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
        guard value.count <= 63, value.allSatisfy(allowed.contains), value.first != "-", value.last != "-" else {
            throw node.error("\"\(value)\" is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
        }
        return value
    }

    private static func validDNSName(_ node: YAMLNode) throws -> String {
        let value = try node.nonEmptyString()
        guard isValidNodeName(value) else {
            throw node.error("\"\(value)\" is not a valid node name: use letters, digits, '.', '-' and '_'")
        }
        return value
    }

    private static func isValidNodeName(_ value: String) -> Bool {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
        return !value.isEmpty && value.count <= 253 && value.allSatisfy(allowed.contains)
    }

    private static func duration(_ node: YAMLNode, atLeast minimum: Duration) throws -> Duration {
        let text = try node.string()
        guard let value = parseDuration(text) else {
            throw node.error("\"\(text)\" is not a duration; write it like 30s, 5m, 24h or 1h30m (units: ms, s, m, h)")
        }
        guard value >= minimum else { throw node.error("must be at least \(minimum)") }
        return value
    }
}

/// Parses durations written as Go and Kubernetes users write them: `500ms`, `30s`,
/// `5m`, `24h`, `1h30m`.
func parseDuration(_ text: String) -> Duration? {
    var total = Duration.zero
    var digits = ""
    var index = text.startIndex
    guard !text.isEmpty else { return nil }
    while index < text.endIndex {
        let character = text[index]
        if character.isASCII, character.isNumber {
            digits.append(character)
            index = text.index(after: index)
            continue
        }
        guard let amount = Int64(digits), digits.count <= 12 else { return nil }
        digits = ""
        let rest = text[index...]
        if rest.hasPrefix("ms") {
            total += .milliseconds(amount)
            index = text.index(index, offsetBy: 2)
        } else {
            switch character {
            case "s": total += .seconds(amount)
            case "m": total += .seconds(amount * 60)
            case "h": total += .seconds(amount * 3600)
            default: return nil
            }
            index = text.index(after: index)
        }
    }
    return digits.isEmpty ? total : nil
}

/// A span of observed history: whole days (`30d`, `7d`) or a duration as
/// `parseDuration` reads it (`24h`, `90m`). Days are only for windows and
/// retention, where they are the natural unit; timeouts stay in h/m/s/ms.
public func parseWindow(_ text: String) -> Duration? {
    if text.hasSuffix("d") {
        guard let days = Int64(text.dropLast()), (0...36_500).contains(days) else { return nil }
        return .seconds(days * 86400)
    }
    return parseDuration(text)
}

extension AgentConfig {
    /// The identity the agent answers tunnel connections with, and the only one
    /// a source agent accepts at the other end of a tunnel:
    /// `spiffe://TD/ns/ROOT_NAMESPACE/sa/mesh-agent`. A workload certificate, even
    /// a stolen one, cannot pose as a node's tunnel endpoint.
    public var agentIdentity: SpiffeID {
        get throws { try SpiffeID(trustDomain: trustDomain, namespace: rootNamespace, serviceAccount: "mesh-agent") }
    }
}
