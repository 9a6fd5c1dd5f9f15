/// The network config a runtime passes on stdin: the conflist entry of this
/// plugin with `cniVersion`, `name` and, when chained, `prevResult` added.
///
/// The keys this plugin reads besides the spec's:
///
/// | key | default | meaning |
/// |---|---|---|
/// | `agentSocket` | `/run/mesh-agent/cni.sock` | the agent's enrollment socket (`workloadSources.cni.socket`) |
/// | `timeoutSeconds` | `10` | how long ADD, DEL and CHECK wait for the agent's answer (0 < t ≤ 300) |
/// | `requireAgent` | `true` | `false` lets pods start uncaptured while the agent is down |
/// | `excludeNamespaces` | `["kube-system"]` | Kubernetes namespaces whose pods never wait for the agent |
///
/// Other keys (`runtimeConfig`, `args`, other plugins' settings) are kept in
/// `raw` and not judged: the spec lets runtimes add keys.
public struct NetworkConfig: Equatable, Sendable {
    public var cniVersion: CNIVersion
    public var name: String
    public var type: String
    /// The result of the plugins before this one in the chain (an object).
    public var prevResult: JSONValue?
    public var settings: PluginSettings
    public var raw: [String: JSONValue]

    /// A config with a large `prevResult` is a few kilobytes; anything near
    /// this is not a network config.
    public static let maximumSize = 1 << 20

    /// Parses stdin as JSON, bounded in size; the config's own checks are
    /// `init(_:)`'s, so that a caller can read `cniVersion` for an error
    /// result even from a config that fails them.
    public static func parse(_ bytes: [UInt8]) throws(CNIError) -> JSONValue {
        guard bytes.count <= maximumSize else {
            throw CNIError(.invalidNetworkConfig, "the network config on stdin is larger than \(maximumSize) bytes", details: "a CNI network config is a few kilobytes; check what the runtime passes")
        }
        guard bytes.contains(where: { !isJSONWhitespace($0) }) else {
            throw CNIError(.decodingFailure, "the network config on stdin is empty", details: "the runtime must pass the plugin's network config as JSON on stdin")
        }
        do {
            return try JSONValue.parse(bytes)
        } catch {
            throw CNIError(.decodingFailure, "the network config on stdin is not valid JSON", details: error.reason)
        }
    }

    public init(_ json: JSONValue) throws(CNIError) {
        guard let members = json.objectValue else {
            throw CNIError(.invalidNetworkConfig, "the network config on stdin is \(json.kind), not an object")
        }
        raw = members
        guard let versionValue = members["cniVersion"] else {
            throw CNIError(.invalidNetworkConfig, "the network config has no cniVersion", details: "mesh-agent-cni supports \(CNIVersion.supportedList)")
        }
        guard let versionText = versionValue.stringValue else {
            throw CNIError(.invalidNetworkConfig, "cniVersion is \(versionValue.kind), not a string", details: "write it as \"1.0.0\"")
        }
        guard let version = CNIVersion(versionText), version.isSupported else {
            throw CNIError(
                .incompatibleVersion, "CNI version \(CNIEnvironment.quoted(versionText)) is not supported",
                details: "mesh-agent-cni supports \(CNIVersion.supportedList); set cniVersion in the conflist to one of them")
        }
        cniVersion = version
        name = try Self.string("name", in: members, check: Names.networkNameProblem)
        type = try Self.string("type", in: members) { $0.isEmpty ? "it is empty" : nil }
        switch members["prevResult"] {
        case nil, .null?:
            prevResult = nil
        case .object?:
            prevResult = members["prevResult"]
        case let other?:
            throw CNIError(.invalidNetworkConfig, "prevResult is \(other.kind), not an object", details: "prevResult must be the previous plugin's result")
        }
        settings = try PluginSettings(members)
    }

    /// The version to report an error in: the config's, as given, whatever it
    /// is, or the spec this plugin follows when there is none.
    public static func declaredVersion(in json: JSONValue?) -> String {
        json?["cniVersion"]?.stringValue.map { String($0.prefix(32)) } ?? CNIVersion.fallback.description
    }

    /// ADD's result for a plugin that adds no interface: the previous result,
    /// unchanged but for `cniVersion`, which a result must carry (the spec's
    /// examples of `prevResult` leave it out).
    public func passThroughResult() -> [UInt8] {
        var result = prevResult?.objectValue ?? [:]
        if result["cniVersion"] == nil {
            result["cniVersion"] = .string(cniVersion.description)
        }
        return JSONValue.object(result).encoded()
    }

    /// The pod's addresses from `prevResult.ips`, prefix removed, in order,
    /// without duplicates. An address on a host-side interface (one listed
    /// in `interfaces` without a `sandbox`, like a bridge's gateway address)
    /// is not the pod's and is left out; one whose interface is not given is
    /// kept, as the spec's IPAM results have none.
    public func podAddresses() throws(CNIError) -> [String] {
        guard let prevResult else { return [] }
        let interfaces: [JSONValue]
        switch prevResult["interfaces"] {
        case nil, .null?: interfaces = []
        case .array(let list)?: interfaces = list
        case let other?: throw CNIError(.invalidNetworkConfig, "prevResult.interfaces is \(other.kind), not an array")
        }
        let ips: [JSONValue]
        switch prevResult["ips"] {
        case nil, .null?: return []
        case .array(let list)?: ips = list
        case let other?: throw CNIError(.invalidNetworkConfig, "prevResult.ips is \(other.kind), not an array")
        }
        guard ips.count <= EnrollmentRequest.maximumAddresses else {
            throw CNIError(.invalidNetworkConfig, "prevResult.ips has \(ips.count) entries", details: "mesh-agent-cni accepts at most \(EnrollmentRequest.maximumAddresses) addresses per pod")
        }
        var addresses: [String] = []
        for (index, entry) in ips.enumerated() {
            guard case .object(let ip) = entry else {
                throw CNIError(.invalidNetworkConfig, "prevResult.ips[\(index)] is \(entry.kind), not an object")
            }
            guard let cidr = ip["address"]?.stringValue else {
                throw CNIError(.invalidNetworkConfig, "prevResult.ips[\(index)] has no address", details: "each entry of ips needs an address in CIDR notation (10.1.0.5/16)")
            }
            guard let address = IPAddressText.addressOfCIDR(cidr) else {
                throw CNIError(
                    .invalidNetworkConfig, "prevResult.ips[\(index)].address \(CNIEnvironment.quoted(cidr)) is not an address in CIDR notation",
                    details: "expected an address and prefix length, like 10.1.0.5/16 or fd00::5/64")
            }
            if let position = ip["interface"]?.integerValue, position >= 0, position < interfaces.count,
                case .object(let interface) = interfaces[Int(position)]
            {
                let sandbox = interface["sandbox"]?.stringValue ?? ""
                if sandbox.isEmpty { continue }
            }
            if !addresses.contains(address) { addresses.append(address) }
        }
        return addresses
    }

    private static func string(_ key: String, in members: [String: JSONValue], check: (String) -> String?) throws(CNIError) -> String {
        guard let value = members[key] else {
            throw CNIError(.invalidNetworkConfig, "the network config has no \(key)")
        }
        guard let text = value.stringValue else {
            throw CNIError(.invalidNetworkConfig, "\(key) is \(value.kind), not a string")
        }
        if let problem = check(text) {
            throw CNIError(.invalidNetworkConfig, "\(key) \(CNIEnvironment.quoted(text)) is not valid", details: problem)
        }
        return text
    }

    private static func isJSONWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}

/// This plugin's own keys in its conflist entry.
public struct PluginSettings: Equatable, Sendable {
    public var agentSocket: String
    public var timeoutMilliseconds: Int
    /// When the agent cannot be reached: `true` fails ADD (and CHECK) so the
    /// pod waits for capture; `false` lets the pod start uncaptured.
    public var requireAgent: Bool
    /// Kubernetes namespaces (from `K8S_POD_NAMESPACE`) whose pods are never
    /// sent to the agent, so that they start while it is down: the cluster's
    /// own pods, which the agent may need to run at all.
    public var excludeNamespaces: [String]

    public static let defaultAgentSocket = "/run/mesh-agent/cni.sock"
    public static let defaultTimeoutMilliseconds = 10_000
    public static let maximumTimeoutSeconds = 300.0
    public static let defaultExcludeNamespaces = ["kube-system"]

    public init(
        agentSocket: String = defaultAgentSocket, timeoutMilliseconds: Int = defaultTimeoutMilliseconds, requireAgent: Bool = true,
        excludeNamespaces: [String] = defaultExcludeNamespaces
    ) {
        self.agentSocket = agentSocket
        self.timeoutMilliseconds = timeoutMilliseconds
        self.requireAgent = requireAgent
        self.excludeNamespaces = excludeNamespaces
    }

    init(_ members: [String: JSONValue]) throws(CNIError) {
        self.init()
        if let value = members["agentSocket"] {
            guard let path = value.stringValue else {
                throw CNIError(.invalidNetworkConfig, "agentSocket is \(value.kind), not a string", details: "set it to the agent's workloadSources.cni.socket path")
            }
            if let problem = Names.socketPathProblem(path) {
                throw CNIError(.invalidNetworkConfig, "agentSocket \(CNIEnvironment.quoted(path)) is not valid", details: problem)
            }
            agentSocket = path
        }
        if let value = members["timeoutSeconds"] {
            guard let seconds = value.numberValue, seconds > 0, seconds <= Self.maximumTimeoutSeconds else {
                throw CNIError(
                    .invalidNetworkConfig, "timeoutSeconds is \(Self.shown(value)), not a number of seconds above 0 and at most \(Int(Self.maximumTimeoutSeconds))")
            }
            timeoutMilliseconds = max(1, Int((seconds * 1000).rounded()))
        }
        if let value = members["requireAgent"] {
            guard case .bool(let flag) = value else {
                throw CNIError(.invalidNetworkConfig, "requireAgent is \(Self.shown(value)), not true or false")
            }
            requireAgent = flag
        }
        if let value = members["excludeNamespaces"] {
            guard case .array(let list) = value else {
                throw CNIError(.invalidNetworkConfig, "excludeNamespaces is \(value.kind), not an array of Kubernetes namespaces")
            }
            excludeNamespaces = []
            for (index, entry) in list.enumerated() {
                guard let namespace = entry.stringValue else {
                    throw CNIError(.invalidNetworkConfig, "excludeNamespaces[\(index)] is \(entry.kind), not a string")
                }
                if let problem = Names.kubernetesNamespaceProblem(namespace) {
                    throw CNIError(.invalidNetworkConfig, "excludeNamespaces[\(index)] \(CNIEnvironment.quoted(namespace)) is not a Kubernetes namespace", details: problem)
                }
                excludeNamespaces.append(namespace)
            }
        }
    }

    private static func shown(_ value: JSONValue) -> String {
        let text = String(decoding: value.encoded(), as: UTF8.self)
        return text.count > 64 ? "\(value.kind)" : text
    }
}
