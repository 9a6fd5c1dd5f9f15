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
    private struct Addresses {
        var own: Set<String> = []
        var broadcast: Set<UInt32> = []
    }

    public let workload: Workload
    private let agentPorts: Set<UInt16>
    private let addresses = NIOLockedValueBox(Addresses())

    public init(workload: Workload, agentPorts: Set<UInt16>) {
        self.workload = workload
        self.agentPorts = agentPorts
    }

    /// Takes the namespace's interface addresses, read inside it.
    public func update(_ interfaces: InterfaceAddresses) {
        let broadcast = Set(interfaces.broadcast)
        let own = Set(interfaces.addresses.filter {
            ForbiddenDestination.classify($0, agentPorts: [], broadcastAddresses: broadcast) == nil
        }.compactMap(\.ipAddress))
        addresses.withLockedValue { $0 = Addresses(own: own, broadcast: broadcast) }
    }

    /// The workload's own routable addresses, as text.
    public var ownAddresses: [String] {
        addresses.withLockedValue { Array($0.own) }.sorted()
    }

    public func resolve(_ destination: SocketAddress) -> LocalDestination {
        let known = addresses.withLockedValue { $0 }
        if let kind = ForbiddenDestination.classify(destination, agentPorts: [], broadcastAddresses: known.broadcast) {
            return .forbidden(kind)
        }
        guard let port = destination.port.map({ UInt16(clamping: $0) }), let ip = destination.ipAddress, known.own.contains(ip) else {
            return .elsewhere
        }
        if agentPorts.contains(port) {
            return .forbidden(.agentPort)
        }
        return .workload(workload)
    }
}
