/// A workload as the data path sees it: who it is and what it serves.
public struct Workload: Hashable, Sendable {
    public var name: String
    public var namespace: String
    public var serviceAccount: String
    /// The SPIFFE ID the agent speaks for it with: `spiffe://TD/ns/NS/sa/SA`.
    public var identity: String
    public var labels: [String: String]
    public var ports: [UInt16]

    public init(name: String, namespace: String, serviceAccount: String, trustDomain: String, labels: [String: String] = [:], ports: [UInt16] = []) {
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
        self.identity = "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)"
        self.labels = labels
        self.ports = ports
    }

    /// `namespace/name`, how logs and tables name a workload.
    public var qualifiedName: String { "\(namespace)/\(name)" }
}
