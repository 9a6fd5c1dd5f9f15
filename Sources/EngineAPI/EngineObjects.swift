import Foundation
import NIOCore

/// A pod as Podman's `GET /libpod/pods/json` lists it.
public struct EnginePodSummary: Hashable, Sendable {
    public var id: String
    public var name: String
    /// `Running`, `Degraded` (some containers stopped), `Created`, `Exited`, …
    public var status: String
    /// The container that holds the pod's namespaces; nil for a pod made
    /// with `--infra=false`, whose containers share no network namespace.
    public var infraContainerID: String?
    public var labels: [String: String]

    public init(id: String, name: String, status: String, infraContainerID: String?, labels: [String: String]) {
        self.id = id
        self.name = name
        self.status = status
        self.infraContainerID = infraContainerID
        self.labels = labels
    }
}

/// A container as a list shows it (`GET /libpod/containers/json?all=true`
/// or the Docker-compatible `GET /containers/json?all=true`).
public struct EngineContainerSummary: Hashable, Sendable {
    public var id: String
    /// Without Docker's leading `/`.
    public var name: String
    public var labels: [String: String]
    /// `running`, `created`, `exited`, `paused`, … (lowercase in both APIs).
    public var state: String
    /// The Podman pod it belongs to; nil for a standalone container and in
    /// the Docker API.
    public var podID: String?
    public var isInfra: Bool
    /// The TCP ports it publishes (the list shows no merely exposed ones).
    public var tcpPorts: Set<UInt16>
    /// Its addresses, where the list shows them (Docker's list does,
    /// libpod's does not).
    public var addresses: [String]

    public var isRunning: Bool { state == "running" }

    public init(
        id: String, name: String, labels: [String: String], state: String, podID: String?, isInfra: Bool,
        tcpPorts: Set<UInt16>, addresses: [String]
    ) {
        self.id = id
        self.name = name
        self.labels = labels
        self.state = state
        self.podID = podID
        self.isInfra = isInfra
        self.tcpPorts = tcpPorts
        self.addresses = addresses
    }
}

/// What `GET /containers/{id}/json` (either API) says about a container that
/// the lists do not: where its network namespace and cgroup are, its
/// addresses and every port it exposes.
public struct EngineContainerDetails: Hashable, Sendable {
    public var id: String
    public var running: Bool
    /// The pid of its first process; nil when it is not running.
    public var pid: Int32?
    /// `State.CgroupPath` (Podman only), as Podman writes it: absolute for
    /// the cgroupfs manager, relative to the root for systemd's.
    public var cgroupPath: String?
    /// `NetworkSettings.SandboxKey`: the bind mount that names its network
    /// namespace; nil when it has none of its own (host network, or a
    /// namespace borrowed from another container), or when the key is not an
    /// absolute path.
    public var sandboxKey: String?
    /// `HostConfig.NetworkMode`: `bridge`, `host`, `container:ID`, a network name, …
    public var networkMode: String?
    public var addresses: [String]
    /// Exposed and published TCP ports.
    public var tcpPorts: Set<UInt16>

    public init(
        id: String, running: Bool, pid: Int32?, cgroupPath: String?, sandboxKey: String?, networkMode: String?,
        addresses: [String], tcpPorts: Set<UInt16>
    ) {
        self.id = id
        self.running = running
        self.pid = pid
        self.cgroupPath = cgroupPath
        self.sandboxKey = sandboxKey
        self.networkMode = networkMode
        self.addresses = addresses
        self.tcpPorts = tcpPorts
    }

    /// Shares the node's network namespace: captured by cgroup, not in a netns
    /// of its own.
    public var usesHostNetwork: Bool { networkMode == "host" }
}

/// What Podman's `GET /libpod/pods/{id}/json` says about a pod that its list
/// does not: the pod's own cgroup.
public struct EnginePodDetails: Hashable, Sendable {
    public var id: String
    /// `CgroupPath`: `/libpod_parent/<pod-id>` (cgroupfs manager) or
    /// `machine.slice/machine-libpod_pod_<pod-id>.slice` (systemd's).
    public var cgroupPath: String?
    public var infraContainerID: String?

    public init(id: String, cgroupPath: String?, infraContainerID: String?) {
        self.id = id
        self.cgroupPath = cgroupPath
        self.infraContainerID = infraContainerID
    }
}

// MARK: - Decoding

/// The decoders of the engines' list and inspect answers. Pure: bytes in,
/// values out; any input either decodes or throws `EngineAPIError.undecodable`
/// naming the document and the field.
///
/// A list entry with an empty `Id` is left out: no event names it, and its
/// inspection would ask for `/containers//json`, which is no container's
/// (a router that cleans paths makes it the list), so every relist failed.
public enum EngineDecoding {
    public static func libpodPods(_ bytes: some Collection<UInt8>) throws -> [EnginePodSummary] {
        try decode([RawPodSummary].self, bytes, what: "the libpod pod list").filter { !$0.Id.isEmpty }.map { raw in
            EnginePodSummary(
                id: raw.Id, name: raw.Name ?? "", status: raw.Status ?? "",
                infraContainerID: raw.InfraId.flatMap { $0.isEmpty ? nil : $0 }, labels: raw.Labels ?? [:])
        }
    }

    public static func libpodContainers(_ bytes: some Collection<UInt8>) throws -> [EngineContainerSummary] {
        try decode([RawLibpodContainer].self, bytes, what: "the libpod container list").filter { !$0.Id.isEmpty }.map { raw in
            var ports = Set<UInt16>()
            for port in raw.Ports ?? [] where (port.protocol ?? "tcp").lowercased() == "tcp" {
                ports.formUnion(portRange(first: port.container_port, count: port.range ?? 1))
            }
            return EngineContainerSummary(
                id: raw.Id, name: raw.Names?.first ?? "", labels: raw.Labels ?? [:], state: (raw.State ?? "").lowercased(),
                podID: raw.Pod.flatMap { $0.isEmpty ? nil : $0 }, isInfra: raw.IsInfra ?? false, tcpPorts: ports, addresses: [])
        }
    }

    public static func dockerContainers(_ bytes: some Collection<UInt8>) throws -> [EngineContainerSummary] {
        try decode([RawDockerContainer].self, bytes, what: "the container list").filter { !$0.Id.isEmpty }.map { raw in
            var ports = Set<UInt16>()
            for port in raw.Ports ?? [] where (port.Type ?? "tcp").lowercased() == "tcp" {
                if let number = port.PrivatePort, let port = UInt16(exactly: number), port > 0 { ports.insert(port) }
            }
            let name = raw.Names?.first.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 } ?? ""
            return EngineContainerSummary(
                id: raw.Id, name: name, labels: raw.Labels ?? [:], state: (raw.State ?? "").lowercased(), podID: nil,
                isInfra: false, tcpPorts: ports, addresses: addresses(raw.NetworkSettings))
        }
    }

    /// `GET /containers/{id}/json` of either API.
    public static func containerDetails(_ bytes: some Collection<UInt8>) throws -> EngineContainerDetails {
        let raw = try decode(RawContainerInspect.self, bytes, what: "the container inspection")
        var ports = Set<UInt16>()
        for key in (raw.Config?.ExposedPorts ?? [:]).keys { ports.formUnion(tcpPort(key: key)) }
        for key in (raw.HostConfig?.PortBindings ?? [:]).keys { ports.formUnion(tcpPort(key: key)) }
        for key in (raw.NetworkSettings?.Ports ?? [:]).keys { ports.formUnion(tcpPort(key: key)) }
        let running = raw.State?.Running ?? false
        let pid = raw.State?.Pid.flatMap { Int32(exactly: $0) }.flatMap { $0 > 0 ? $0 : nil }
        return EngineContainerDetails(
            id: raw.Id, running: running, pid: running ? pid : nil, cgroupPath: nonEmpty(raw.State?.CgroupPath),
            sandboxKey: namespaceFile(raw.NetworkSettings?.SandboxKey), networkMode: nonEmpty(raw.HostConfig?.NetworkMode),
            addresses: addresses(raw.NetworkSettings), tcpPorts: ports)
    }

    /// Podman's `GET /libpod/pods/{id}/json`.
    public static func libpodPodDetails(_ bytes: some Collection<UInt8>) throws -> EnginePodDetails {
        let raw = try decode(RawPodInspect.self, bytes, what: "the libpod pod inspection")
        return EnginePodDetails(id: raw.Id, cgroupPath: nonEmpty(raw.CgroupPath), infraContainerID: nonEmpty(raw.InfraContainerID))
    }

    /// Whether an inspection's answer says the object is gone: 404, or the 500
    /// with `"cause":"no such pod"` (or container) that Podman gives for a pod
    /// removed between a listing or event and its inspection. Anything else is
    /// a real failure.
    public static func saysMissing(status: Int, body: some Collection<UInt8>) -> Bool {
        if status == 404 { return true }
        guard status == 500, let raw = try? JSONDecoder().decode(RawError.self, from: Data(body)) else { return false }
        return ["no such pod", "no such container"].contains(raw.cause ?? "")
    }

    /// The `message` of an error answer (`{"cause":…,"message":…,"response":404}`
    /// from Podman, `{"message":…}` from Docker); nil if there is none.
    public static func errorMessage(_ bytes: some Collection<UInt8>) -> String? {
        (try? JSONDecoder().decode(RawError.self, from: Data(bytes)))?.message
    }

    // MARK: Helpers

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: some Collection<UInt8>, what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch let error as DecodingError {
            throw EngineAPIError.undecodable(what: what, reason: describe(error))
        } catch {
            throw EngineAPIError.undecodable(what: what, reason: EngineText.escaped("\(error)", limit: 400))
        }
    }

    /// A `DecodingError` as one line: where in the document, and what. The
    /// keys come from the document, so the line is escaped.
    static func describe(_ error: DecodingError) -> String {
        EngineText.escaped(describeUnescaped(error), limit: 400)
    }

    private static func describeUnescaped(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { key in key.intValue.map { "[\($0)]" } ?? ".\(key.stringValue)" }.joined()
            return keys.isEmpty ? "the document" : String(keys.drop { $0 == "." })
        }
        switch error {
        case .typeMismatch(let type, let context):
            return "\(path(context)) is not \(type == String.self ? "a string" : "a \(type)")"
        case .valueNotFound(let type, let context):
            return "\(path(context)) is null, expected \(type)"
        case .keyNotFound(let key, let context):
            let at = context.codingPath.isEmpty ? "" : " in \(path(context))"
            return "field \"\(key.stringValue)\" is missing\(at)"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not valid JSON" : "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    /// The sandbox key as a file the agent may open: an absolute path with
    /// no control characters. Anything else is left out, and the container's
    /// namespace is found through its first process instead: a relative path
    /// would be opened from the agent's working directory, and a NUL would
    /// end the path where the kernel reads it, naming another namespace.
    static func namespaceFile(_ text: String?) -> String? {
        guard let text, text.hasPrefix("/"),
            !text.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) })
        else { return nil }
        return text
    }

    static func nonEmpty(_ text: String?) -> String? {
        guard let text, !text.isEmpty else { return nil }
        return text
    }

    /// `8080/tcp` or `8080` (TCP unless said otherwise); nothing for UDP,
    /// SCTP or a key that is not a port.
    static func tcpPort(key: String) -> Set<UInt16> {
        let parts = key.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 1 || parts[1].lowercased() == "tcp", let port = UInt16(parts[0]), port > 0 else { return [] }
        return [port]
    }

    /// Podman lists a published range as its first port and a count.
    static func portRange(first: Int?, count: Int) -> Set<UInt16> {
        guard let first, first > 0, first <= Int(UInt16.max) else { return [] }
        // The count is clamped before adding, so a huge one cannot overflow.
        let last = min(Int(UInt16.max), first + min(max(count, 1), Int(UInt16.max)) - 1)
        return Set((first...last).map { UInt16($0) })
    }

    /// Every address of every network, sorted by network name so that the
    /// same container always reads the same. Each is written as NIO writes
    /// it and what is not an address is left out, as the Kubernetes source
    /// does: a pod's addresses are shown and logged as the agent's own text,
    /// not the engine's.
    static func addresses(_ settings: RawNetworkSettings?) -> [String] {
        guard let settings else { return [] }
        var out: [String] = []
        func add(_ text: String?) {
            guard let text, text.utf8.count <= 64, let address = try? SocketAddress(ipAddress: text, port: 0),
                let written = address.ipAddress, !out.contains(written)
            else { return }
            out.append(written)
        }
        add(settings.IPAddress)
        add(settings.GlobalIPv6Address)
        for name in (settings.Networks ?? [:]).keys.sorted() {
            add(settings.Networks?[name]?.IPAddress)
            add(settings.Networks?[name]?.GlobalIPv6Address)
        }
        return out
    }
}

// MARK: - The documents, as far as they are read

// Field names are the engines' own, so the types spell them as they do.

struct RawPodSummary: Decodable {
    var Id: String
    var Name: String?
    var Status: String?
    var InfraId: String?
    var Labels: [String: String]?
}

struct RawLibpodContainer: Decodable {
    struct Port: Decodable {
        var container_port: Int?
        var `protocol`: String?
        var range: Int?
    }
    var Id: String
    var Names: [String]?
    var Labels: [String: String]?
    var State: String?
    var Pod: String?
    var IsInfra: Bool?
    var Ports: [Port]?
}

struct RawDockerContainer: Decodable {
    struct Port: Decodable {
        var PrivatePort: Int?
        var `Type`: String?
    }
    var Id: String
    var Names: [String]?
    var Labels: [String: String]?
    var State: String?
    var Ports: [Port]?
    var NetworkSettings: RawNetworkSettings?
}

struct RawNetworkSettings: Decodable {
    struct Endpoint: Decodable {
        var IPAddress: String?
        var GlobalIPv6Address: String?
    }
    /// Values are lists of bindings, or null for a port only exposed; only
    /// the keys are read.
    struct Ignored: Decodable {
        init(from decoder: Decoder) throws {}
    }
    var SandboxKey: String?
    var IPAddress: String?
    var GlobalIPv6Address: String?
    var Ports: [String: Ignored?]?
    var Networks: [String: Endpoint]?
}

struct RawContainerInspect: Decodable {
    struct State: Decodable {
        var Running: Bool?
        var Pid: Int?
        var CgroupPath: String?
    }
    struct Config: Decodable {
        var ExposedPorts: [String: RawNetworkSettings.Ignored?]?
    }
    struct HostConfig: Decodable {
        var NetworkMode: String?
        var PortBindings: [String: RawNetworkSettings.Ignored?]?
    }
    var Id: String
    var State: State?
    var Config: Config?
    var HostConfig: HostConfig?
    var NetworkSettings: RawNetworkSettings?
}

struct RawError: Decodable {
    var message: String?
    var cause: String?
}

struct RawPodInspect: Decodable {
    var Id: String
    var CgroupPath: String?
    var InfraContainerID: String?
}
