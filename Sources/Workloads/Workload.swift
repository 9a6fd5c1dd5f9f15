import TLS

/// A workload as the data path sees it: who it is and what it serves.
public struct Workload: Hashable, Sendable {
    public var name: String
    public var namespace: String
    public var serviceAccount: String
    /// The SPIFFE ID the agent speaks for it with: `spiffe://TD/ns/NS/sa/SA`.
    public var identity: SpiffeID
    public var labels: [String: String]
    public var ports: [UInt16]
    /// Ports that carry no HTTP (`protocol: tcp`): decided per connection only.
    public var tcpPorts: Set<UInt16>

    public init(
        name: String, namespace: String, serviceAccount: String, identity: SpiffeID, labels: [String: String] = [:], ports: [UInt16] = [],
        tcpPorts: Set<UInt16> = []
    ) {
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
        self.identity = identity
        self.labels = labels
        self.ports = ports
        self.tcpPorts = tcpPorts
    }

    /// `namespace/name`, how logs and tables name a workload.
    public var qualifiedName: String { "\(namespace)/\(name)" }
}
