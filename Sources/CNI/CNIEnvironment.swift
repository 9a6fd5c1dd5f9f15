/// What the runtime asks, from the environment it runs the plugin with.
public enum CNICommand: String, CaseIterable, Sendable {
    case add = "ADD"
    case del = "DEL"
    case check = "CHECK"
    case version = "VERSION"
    /// CNI 1.1: free what attachments not in `cni.dev/valid-attachments` hold.
    case gc = "GC"
    /// CNI 1.1: can the plugin serve ADD now?
    case status = "STATUS"
}

/// The CNI_* variables of one invocation, checked.
///
/// Required per command as the spec says: ADD and CHECK need
/// `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL needs the container id
/// and interface (the namespace may already be gone); VERSION, GC and STATUS
/// need none. `CNI_PATH` is not read: this plugin delegates to no other.
public struct CNIEnvironment: Equatable, Sendable {
    public var command: CNICommand
    /// Set for ADD, DEL and CHECK.
    public var containerID: String?
    /// Set for ADD and CHECK; for DEL when the runtime still has it.
    public var netns: String?
    /// Set for ADD, DEL and CHECK.
    public var ifName: String?
    public var args: CNIArgs

    public init(command: CNICommand, containerID: String? = nil, netns: String? = nil, ifName: String? = nil, args: CNIArgs = CNIArgs()) {
        self.command = command
        self.containerID = containerID
        self.netns = netns
        self.ifName = ifName
        self.args = args
    }

    public init(_ environment: [String: String]) throws(CNIError) {
        guard let text = environment["CNI_COMMAND"], !text.isEmpty else {
            throw CNIError(
                .invalidEnvironment, "CNI_COMMAND is not set",
                details: "mesh-agent-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND (ADD, DEL, CHECK, VERSION, GC or STATUS) and the network config on stdin; to put it on a node, run mesh-agent-cni install (see mesh-agent-cni --help)")
        }
        guard let command = CNICommand(rawValue: text) else {
            throw CNIError(
                .invalidEnvironment, "CNI_COMMAND \(Self.quoted(text)) is not a CNI command",
                details: "expected one of \(CNICommand.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.command = command
        self.args = CNIArgs()
        guard [.add, .del, .check].contains(command) else { return }

        containerID = try Self.required("CNI_CONTAINERID", environment, for: command, check: Names.containerIDProblem)
        ifName = try Self.required("CNI_IFNAME", environment, for: command, check: Names.interfaceNameProblem)
        if command == .del {
            // A DEL may come after the namespace is gone, with CNI_NETNS empty.
            if let path = environment["CNI_NETNS"], !path.isEmpty {
                netns = try Self.checked("CNI_NETNS", path, check: Names.namespacePathProblem)
            }
        } else {
            netns = try Self.required("CNI_NETNS", environment, for: command, check: Names.namespacePathProblem)
        }
        args = try CNIArgs(environment["CNI_ARGS"] ?? "")
    }

    private static func required(
        _ name: String, _ environment: [String: String], for command: CNICommand, check: (String) -> String?
    ) throws(CNIError) -> String {
        guard let value = environment[name], !value.isEmpty else {
            throw CNIError(.invalidEnvironment, "\(name) is not set", details: "the runtime must set \(name) for \(command.rawValue)")
        }
        return try checked(name, value, check: check)
    }

    private static func checked(_ name: String, _ value: String, check: (String) -> String?) throws(CNIError) -> String {
        if let problem = check(value) {
            throw CNIError(.invalidEnvironment, "\(name) \(quoted(value)) is not valid", details: problem)
        }
        return value
    }

    /// Values from outside, shown in messages: quoted and escaped, and cut
    /// short so that a huge variable cannot make a huge error. C1 control
    /// characters are escaped too (`debugDescription` leaves them): the agent
    /// logs these messages, and a NEL there would break its log line.
    static func quoted(_ value: String) -> String {
        let limit = 128
        var out = "\""
        for scalar in value.unicodeScalars.prefix(limit) {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value):
                out += "\\u{\(String(scalar.value, radix: 16))}"
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        if value.unicodeScalars.count > limit { out += "…" }
        return out + "\""
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Kubernetes runtimes pass
/// the pod's identity here (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`, `K8S_POD_INFRA_CONTAINER_ID`); other keys are kept and ignored.
public struct CNIArgs: Equatable, Sendable {
    public var pairs: [(key: String, value: String)]

    public var podNamespace: String? { nonEmpty("K8S_POD_NAMESPACE") }
    public var podName: String? { nonEmpty("K8S_POD_NAME") }
    public var podUID: String? { nonEmpty("K8S_POD_UID") }

    /// Far above what a runtime passes (a few hundred bytes).
    public static let maximumLength = 16 * 1024

    public init(pairs: [(key: String, value: String)] = []) {
        self.pairs = pairs
    }

    public init(_ text: String) throws(CNIError) {
        pairs = []
        guard !text.isEmpty else { return }
        guard text.utf8.count <= Self.maximumLength else {
            throw CNIError(.invalidEnvironment, "CNI_ARGS is \(text.utf8.count) bytes long", details: "at most \(Self.maximumLength) are accepted")
        }
        for pair in text.split(separator: ";") {
            let halves = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard halves.count == 2, !halves[0].isEmpty else {
                throw CNIError(
                    .invalidEnvironment, "CNI_ARGS has \(CNIEnvironment.quoted(String(pair))), which is not KEY=VALUE",
                    details: "CNI_ARGS is KEY=VALUE pairs separated by ;")
            }
            pairs.append((String(halves[0]), String(halves[1])))
        }
        let checks: [(String, (String) -> String?)] = [
            ("K8S_POD_NAMESPACE", Names.kubernetesNamespaceProblem),
            ("K8S_POD_NAME", Names.kubernetesNameProblem),
            ("K8S_POD_UID", Names.kubernetesUIDProblem),
        ]
        for (key, check) in checks {
            guard let value = nonEmpty(key) else { continue }
            if let problem = check(value) {
                throw CNIError(.invalidEnvironment, "CNI_ARGS has \(key)=\(CNIEnvironment.quoted(value)), which is not valid", details: problem)
            }
        }
    }

    /// The last value of `key` (a runtime that repeats a key means the last).
    public subscript(key: String) -> String? {
        pairs.last { $0.key == key }?.value
    }

    /// Runtimes outside Kubernetes may pass the keys with no value.
    private func nonEmpty(_ key: String) -> String? {
        self[key].flatMap { $0.isEmpty ? nil : $0 }
    }

    public static func == (lhs: CNIArgs, rhs: CNIArgs) -> Bool {
        lhs.pairs.elementsEqual(rhs.pairs) { $0.key == $1.key && $0.value == $1.value }
    }
}
