import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What a destination address is on this node.
public enum LocalDestination: Equatable, Sendable {
    /// A port a present workload serves, at one of the node's own addresses.
    case workload(Workload)
    /// An address or port no workload connection is ever sent to.
    case forbidden(ForbiddenDestination)
    /// Not on this node, or no present workload serves it.
    case elsewhere
}

/// Which workload on this node, if any, a destination address belongs to.
public protocol LocalDestinations: Sendable {
    func resolve(_ destination: SocketAddress) -> LocalDestination
}

/// Answers "is this destination a workload on this node?": the address must be
/// one of the node's own routable addresses (never loopback, link-local and the
/// like: `ForbiddenDestination`) and the port one that a present workload
/// serves, and never one of the agent's own.
public final class NodeDestinations: LocalDestinations {
    private struct Addresses {
        var node: Set<String> = []
        var broadcast: Set<UInt32> = []
    }

    private let registry: WorkloadRegistry
    private let agentPorts: Set<UInt16>
    private let addresses = NIOLockedValueBox(Addresses())
    private let logger: Logger

    public init(registry: WorkloadRegistry, agentPorts: Set<UInt16>, logger: Logger) {
        self.registry = registry
        self.agentPorts = agentPorts
        self.logger = logger
        refreshAddresses()
    }

    /// Re-reads the node's interface addresses (they change with DHCP, new
    /// interfaces, pods coming and going).
    public func refreshAddresses() {
        do {
            let interfaces = try InterfaceAddresses.current()
            let broadcast = Set(interfaces.broadcast)
            // Loopback and link-local addresses are on interfaces too, but no
            // connection is ever sent to a workload there.
            let node = Set(interfaces.addresses.filter {
                ForbiddenDestination.classify($0, agentPorts: [], broadcastAddresses: broadcast) == nil
            }.compactMap(\.ipAddress))
            addresses.withLockedValue { $0 = Addresses(node: node, broadcast: broadcast) }
        } catch {
            logger.warning("\(error); same-node destinations are recognised by the last known addresses")
        }
    }

    public func resolve(_ destination: SocketAddress) -> LocalDestination {
        let known = addresses.withLockedValue { $0 }
        if let kind = ForbiddenDestination.classify(destination, agentPorts: [], broadcastAddresses: known.broadcast) {
            return .forbidden(kind)
        }
        guard let port = destination.port.map({ UInt16(clamping: $0) }), let ip = destination.ipAddress, known.node.contains(ip) else {
            return .elsewhere
        }
        if agentPorts.contains(port) {
            return .forbidden(.agentPort)
        }
        return registry.presentWorkload(servingPort: port).map(LocalDestination.workload) ?? .elsewhere
    }
}
