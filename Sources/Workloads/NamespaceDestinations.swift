import LinuxNet
import NIOConcurrencyHelpers
import NIOCore

/// Which destinations, seen from inside a workload's own network namespace,
/// are that workload: its own routable addresses there, at any port but the
/// agent's. Everything in the namespace belongs to the one workload, so no
/// port has to be declared for a tunnel peer or a plaintext client to reach it;
/// everything else is elsewhere (other pods, other nodes), reached through the
/// tunnel or passed through.
public final class NamespaceDestinations: LocalDestinations {
    public let workload: Workload
    private let agentPorts: Set<UInt16>
    private let addresses = NIOLockedValueBox(OwnAddresses())

    public init(workload: Workload, agentPorts: Set<UInt16>) {
        self.workload = workload
        self.agentPorts = agentPorts
    }

    /// Takes the namespace's interface addresses, read inside it.
    public func update(_ interfaces: InterfaceAddresses) {
        let own = OwnAddresses(interfaces)
        addresses.withLockedValue { $0 = own }
    }

    /// The workload's own routable addresses, as text.
    public var ownAddresses: [String] {
        addresses.withLockedValue { $0.addresses }.sorted()
    }

    public func resolve(_ destination: SocketAddress) -> LocalDestination {
        switch addresses.withLockedValue({ $0 }).match(destination, agentPorts: agentPorts) {
        case .forbidden(let kind): return .forbidden(kind)
        case .elsewhere: return .elsewhere
        case .own: return .workload(workload)
        }
    }
}
