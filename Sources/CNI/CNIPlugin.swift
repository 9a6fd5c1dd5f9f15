/// `mesh-agent-cni`, a chained CNI plugin, as decisions without I/O: `plan`
/// reads the environment and stdin and says what to print or what to ask
/// the agent; `AgentCall.finish` turns the agent's answer (or its absence)
/// into what to print. The executable only reads, connects, writes and exits.
///
/// Fail closed, with two ways out:
/// - ADD asks the agent to enroll the pod and waits for its answer; the agent
///   answers once capture is installed, or that the pod is not meant to be
///   captured. The pod starts only then.
/// - If the agent cannot be reached (no socket, nothing listening, no answer
///   within `timeoutSeconds`), ADD fails with code 11 (try again later) and
///   the runtime retries, because only the agent knows whether the pod is to
///   be enrolled (it watches the Kubernetes API and the container engines).
/// - Unless the pod's Kubernetes namespace is in `excludeNamespaces`
///   (default `kube-system`): those pods never wait for the agent, so the
///   cluster's own pods start while it is down.
/// - Or `requireAgent: false`: an unreachable agent lets pods start uncaptured
///   (logged on stderr). An agent that answers and fails still fails ADD.
///
/// DEL succeeds when nothing listens at the socket: a pod's capture lives in
/// its network namespace and goes with it, and an agent that starts later
/// finds only the pods that still run. DEL fails only when the agent answers
/// and fails, or is there but does not answer in time (the runtime retries).
/// CHECK fails when the agent reports the pod uncaptured or cannot be
/// reached (with `requireAgent`). STATUS checks that the agent accepts
/// connections. GC does nothing: the enrollments are the agent's, which drops
/// a pod on DEL and re-finds running pods from their cgroups when it starts.
public enum CNIPlugin {
    public static func plan(environment: [String: String], stdin: [UInt8]) -> PluginPlan {
        // Read first, leniently, so that even an environment error is reported
        // in the config's cniVersion.
        let json = try? NetworkConfig.parse(stdin)
        let errorVersion = NetworkConfig.declaredVersion(in: json)
        do throws(CNIError) {
            let environment = try CNIEnvironment(environment)
            if environment.command == .version {
                return .finish(versionResult(json))
            }
            let config = try NetworkConfig(NetworkConfig.parse(stdin))
            return try plan(environment, config)
        } catch {
            return .finish(.failure(error, cniVersion: errorVersion))
        }
    }

    private static func plan(_ environment: CNIEnvironment, _ config: NetworkConfig) throws(CNIError) -> PluginPlan {
        let version = config.cniVersion
        switch environment.command {
        case .check where version < CNIVersion.check:
            throw CNIError(.incompatibleVersion, "CHECK is not part of CNI \(version)", details: "it came with CNI \(CNIVersion.check)")
        case .gc, .status:
            guard version >= CNIVersion.garbageCollection else {
                throw CNIError(.incompatibleVersion, "\(environment.command.rawValue) is not part of CNI \(version)", details: "it came with CNI \(CNIVersion.garbageCollection)")
            }
        default:
            break
        }
        let call = AgentCall(environment: environment, config: config, request: nil)
        switch environment.command {
        case .version:
            return .finish(versionResult(.object(config.raw)))
        case .gc:
            return .finish(.success(log: ["GC: nothing to collect; the agent drops pods on DEL and re-finds running ones when it starts"]))
        case .status:
            guard config.settings.requireAgent else {
                return .finish(.success(log: ["STATUS: ready (requireAgent is false, so ADD does not wait for the agent)"]))
            }
            return .askAgent(call)
        case .add, .del, .check:
            break
        }

        // Checked for ADD, DEL and CHECK by CNIEnvironment.
        let containerID = environment.containerID ?? ""
        let ifName = environment.ifName ?? ""
        guard environment.command != .add || config.prevResult != nil else {
            throw CNIError(
                .invalidNetworkConfig, "mesh-agent-cni got no prevResult",
                details: "it is a chained plugin: list it after the plugin that makes the pod's interface (bridge, ptp, …) in the conflist's plugins")
        }
        // DEL must clean up whatever it is given: a broken prevResult is no
        // reason to keep a pod enrolled.
        let addresses = environment.command == .del ? ((try? config.podAddresses()) ?? []) : try config.podAddresses()
        let command: EnrollmentRequest.Command = environment.command == .add ? .add : environment.command == .del ? .del : .check
        let request = EnrollmentRequest(
            command: command, containerID: containerID, netns: environment.netns, ifName: ifName, network: config.name,
            podNamespace: environment.args.podNamespace, podName: environment.args.podName, podUID: environment.args.podUID,
            addresses: addresses, cniVersion: config.cniVersion.description)

        if let namespace = request.podNamespace, config.settings.excludeNamespaces.contains(namespace) {
            let output = call.success(log: ["\(command.rawValue) \(request.podDescription): namespace \(namespace) is in excludeNamespaces; not asking the agent"])
            return .finish(output)
        }
        return .askAgent(AgentCall(environment: environment, config: config, request: request))
    }

    /// VERSION's answer, in the version the caller gave (the spec's rule),
    /// or the latest this plugin speaks.
    static func versionResult(_ json: JSONValue?) -> PluginOutput {
        let asked = json?["cniVersion"]?.stringValue.flatMap { CNIVersion($0) }
        let result = JSONValue.object([
            "cniVersion": .string((asked ?? CNIVersion.latest).description),
            "supportedVersions": .array(CNIVersion.supported.map { .string($0.description) }),
        ])
        return PluginOutput(stdout: result.encoded(), exitCode: 0, log: [])
    }
}

public enum PluginPlan: Sendable {
    /// Print this and exit.
    case finish(PluginOutput)
    /// Exchange `call.request` with the agent (or, without a request, only
    /// connect), then print what `call.finish` says.
    case askAgent(AgentCall)
}

/// What the plugin prints and how it exits.
public struct PluginOutput: Equatable, Sendable {
    public var stdout: [UInt8]
    public var exitCode: Int32
    /// Lines for stderr, which runtimes log; stdout is the protocol.
    public var log: [String]

    public init(stdout: [UInt8], exitCode: Int32, log: [String]) {
        self.stdout = stdout
        self.exitCode = exitCode
        self.log = log.map(Self.loggable)
    }

    static func success(stdout: [UInt8] = [], log: [String] = []) -> PluginOutput {
        PluginOutput(stdout: stdout, exitCode: 0, log: log)
    }

    static func failure(_ error: CNIError, cniVersion: String, log: [String] = []) -> PluginOutput {
        PluginOutput(stdout: error.result(cniVersion: cniVersion), exitCode: 1, log: log + ["error \(error.code): \(error)"])
    }

    /// One line each, whatever the agent or the runtime put in them.
    static func loggable(_ line: String) -> String {
        var view = String.UnicodeScalarView()
        for scalar in line.unicodeScalars {
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
                view.append(contentsOf: "\\u{\(String(scalar.value, radix: 16))}".unicodeScalars)
            } else {
                view.append(scalar)
            }
        }
        return String(view)
    }
}

/// How an exchange with the agent went, as the executable saw it.
public enum AgentExchange: Equatable, Sendable {
    /// The agent's response line, without its `\n`.
    case answered([UInt8])
    /// Connected, for a call without a request (STATUS).
    case connected
    /// Nothing listens at the socket: no such file, or a file an agent that
    /// is gone left behind.
    case unreachable(String)
    /// Something listens but gave no answer: a timeout, a closed connection,
    /// a line too long.
    case failed(String)
}

/// A question for the agent and everything needed to turn its answer into
/// the plugin's output.
public struct AgentCall: Sendable {
    public let socketPath: String
    public let timeoutMilliseconds: Int
    /// Nil for STATUS, which only connects.
    public let request: EnrollmentRequest?
    let command: CNICommand
    let config: NetworkConfig

    init(environment: CNIEnvironment, config: NetworkConfig, request: EnrollmentRequest?) {
        socketPath = config.settings.agentSocket
        timeoutMilliseconds = config.settings.timeoutMilliseconds
        self.request = request
        self.command = environment.command
        self.config = config
    }

    public func finish(_ exchange: AgentExchange) -> PluginOutput {
        let subject = request.map { "\(command.rawValue) \($0.podDescription)" } ?? command.rawValue
        let where_ = "agentSocket \(socketPath)"
        let requireAgent = config.settings.requireAgent
        let response: EnrollmentResponse
        switch exchange {
        case .connected:
            return success(log: [])
        case .unreachable(let reason) where command == .del:
            return success(log: ["\(subject): the agent is not running (\(reason), \(where_)); nothing of the pod to remove"])
        case .unreachable(let reason) where !requireAgent, .failed(let reason) where !requireAgent:
            return success(log: ["\(subject): the agent did not answer (\(reason), \(where_)); going on without it because requireAgent is false"])
        case .unreachable(let reason):
            return failure(unreachable(reason, subject: subject))
        case .failed(let reason) where command == .status:
            return failure(unreachable(reason, subject: subject))
        case .failed(let reason):
            return failure(
                CNIError(
                    .tryAgainLater, "\(subject): the mesh agent did not answer",
                    details: "\(reason) (\(where_)); the runtime retries; the agent's log says what held it up"))
        case .answered(let line):
            do {
                response = try EnrollmentResponse.decode(line: line)
            } catch {
                return failure(CNIError(.agentFailed, "\(subject): the mesh agent's answer is not understood", details: "\(error) (\(where_))"))
            }
        }
        guard response.ok else {
            let what: String
            switch command {
            case .add: what = "the mesh agent could not enroll the pod"
            case .del: what = "the mesh agent could not remove the pod"
            default: what = "the mesh agent reports the pod is not captured as it should be"
            }
            return failure(CNIError(.agentFailed, "\(subject): \(what)", details: response.error ?? "no reason given"))
        }
        switch (command, response.captured) {
        case (.del, _):
            return success(log: ["\(subject): removed by the agent"])
        case (_, true?):
            return success(log: ["\(subject): captured"])
        default:
            return success(log: ["\(subject): not captured: \(response.reason ?? "the agent does not enroll it")"])
        }
    }

    /// Success for this command: ADD passes the previous result on.
    func success(log: [String]) -> PluginOutput {
        .success(stdout: command == .add ? config.passThroughResult() : [], log: log)
    }

    private func failure(_ error: CNIError) -> PluginOutput {
        .failure(error, cniVersion: config.cniVersion.description)
    }

    private func unreachable(_ reason: String, subject: String) -> CNIError {
        if command == .status {
            return CNIError(
                .notAvailable, "mesh-agent-cni cannot serve ADD: the mesh agent is not running",
                details: "\(reason) (agentSocket \(socketPath)); start mesh-agent with workloadSources.cni.socket: \(socketPath)")
        }
        return CNIError(
            .tryAgainLater, "\(subject): the mesh agent is not running",
            details: """
                \(reason) (agentSocket \(socketPath)). The pod waits until the agent captures it: start mesh-agent with \
                workloadSources.cni.socket: \(socketPath). To let pods start uncaptured while the agent is down, set \
                "requireAgent": false in this plugin's conflist entry; to exempt a Kubernetes namespace, add it to excludeNamespaces
                """)
    }
}
