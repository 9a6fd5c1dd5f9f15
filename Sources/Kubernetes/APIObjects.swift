import Foundation

// The parts of the Kubernetes core/v1 objects the agent reads, as the API
// server writes them in JSON. Every field is optional: the API server leaves
// out empty ones (and writes `null` for some), and what is missing is decided
// where it is used, not here. Fields not listed are ignored.

/// `metadata` of an object.
public struct ObjectMeta: Decodable, Hashable, Sendable {
    public var name: String?
    public var namespace: String?
    public var uid: String?
    public var resourceVersion: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?

    public init(
        name: String? = nil, namespace: String? = nil, uid: String? = nil, resourceVersion: String? = nil,
        labels: [String: String]? = nil, annotations: [String: String]? = nil
    ) {
        self.name = name
        self.namespace = namespace
        self.uid = uid
        self.resourceVersion = resourceVersion
        self.labels = labels
        self.annotations = annotations
    }
}

/// `metadata` of a list: the version the list was read at, and where the
/// next page starts.
public struct ListMeta: Decodable, Hashable, Sendable {
    public var resourceVersion: String?
    public var `continue`: String?
}

/// A `PodList`, `NamespaceList`, ….
public struct ObjectList<Item: Decodable & Sendable>: Decodable, Sendable {
    public var metadata: ListMeta?
    public var items: [Item]?
}

public struct Pod: Decodable, Hashable, Sendable {
    public var metadata: ObjectMeta?
    public var spec: PodSpec?
    public var status: PodStatus?

    public init(metadata: ObjectMeta? = nil, spec: PodSpec? = nil, status: PodStatus? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

public struct PodSpec: Decodable, Hashable, Sendable {
    public var nodeName: String?
    public var serviceAccountName: String?
    /// The deprecated spelling of `serviceAccountName`, still filled in by the
    /// API server.
    public var serviceAccount: String?
    public var hostNetwork: Bool?
    public var containers: [Container]?
    public var initContainers: [Container]?

    public init(
        nodeName: String? = nil, serviceAccountName: String? = nil, serviceAccount: String? = nil, hostNetwork: Bool? = nil,
        containers: [Container]? = nil, initContainers: [Container]? = nil
    ) {
        self.nodeName = nodeName
        self.serviceAccountName = serviceAccountName
        self.serviceAccount = serviceAccount
        self.hostNetwork = hostNetwork
        self.containers = containers
        self.initContainers = initContainers
    }
}

public struct Container: Decodable, Hashable, Sendable {
    public var name: String?
    public var ports: [ContainerPort]?
    /// `Always` on an init container makes it a sidecar that runs, and may
    /// serve, for the pod's whole life.
    public var restartPolicy: String?

    public init(name: String? = nil, ports: [ContainerPort]? = nil, restartPolicy: String? = nil) {
        self.name = name
        self.ports = ports
        self.restartPolicy = restartPolicy
    }
}

public struct ContainerPort: Decodable, Hashable, Sendable {
    public var containerPort: Int?
    /// `TCP` (the default when absent), `UDP` or `SCTP`.
    public var `protocol`: String?

    public init(containerPort: Int? = nil, protocol: String? = nil) {
        self.containerPort = containerPort
        self.protocol = `protocol`
    }
}

public struct PodStatus: Decodable, Hashable, Sendable {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    public var phase: String?
    public var podIP: String?
    public var podIPs: [PodIP]?
    /// `Guaranteed`, `Burstable`, `BestEffort`: where kubelet puts the pod's cgroup.
    public var qosClass: String?

    public init(phase: String? = nil, podIP: String? = nil, podIPs: [PodIP]? = nil, qosClass: String? = nil) {
        self.phase = phase
        self.podIP = podIP
        self.podIPs = podIPs
        self.qosClass = qosClass
    }
}

public struct PodIP: Decodable, Hashable, Sendable {
    public var ip: String?

    public init(ip: String?) {
        self.ip = ip
    }
}

public struct Namespace: Decodable, Hashable, Sendable {
    public var metadata: ObjectMeta?

    public init(metadata: ObjectMeta? = nil) {
        self.metadata = metadata
    }
}

/// What the API server answers instead of an object when something failed: an
/// HTTP error body, or the object of a watch `ERROR` event.
public struct Status: Decodable, Hashable, Sendable, CustomStringConvertible {
    public var status: String?
    public var message: String?
    /// `Expired`, `Gone`, `Unauthorized`, `Forbidden`, ….
    public var reason: String?
    public var code: Int?

    public init(status: String? = nil, message: String? = nil, reason: String? = nil, code: Int? = nil) {
        self.status = status
        self.message = message
        self.reason = reason
        self.code = code
    }

    /// The resource version asked for is older than the API server keeps
    /// (410 Gone; reason `Expired` or `Gone`): only a new list can continue.
    public var isGone: Bool { code == 410 }

    public var description: String {
        var parts: [String] = []
        if let code { parts.append(String(code)) }
        if let reason, !reason.isEmpty { parts.append(loggable(reason, limit: 64)) }
        let head = parts.isEmpty ? "status" : parts.joined(separator: " ")
        guard let message, !message.isEmpty else { return head }
        return "\(head): \(loggable(message))"
    }
}
