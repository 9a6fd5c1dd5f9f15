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
    private let registry: WorkloadRegistry
    private let agentPorts: Set<UInt16>
    private let addresses = NIOLockedValueBox(OwnAddresses())
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
            let own = OwnAddresses(try InterfaceAddresses.current())
            addresses.withLockedValue { $0 = own }
        } catch {
            logger.warning("\(error); same-node destinations are recognised by the last known addresses")
        }
    }

    public func resolve(_ destination: SocketAddress) -> LocalDestination {
        switch addresses.withLockedValue({ $0 }).match(destination, agentPorts: agentPorts) {
        case .forbidden(let kind): return .forbidden(kind)
        case .elsewhere: return .elsewhere
        case .own(let port): return registry.presentWorkload(servingPort: port).map(LocalDestination.workload) ?? .elsewhere
        }
    }
}

/// The routable addresses of one network namespace (the node's, or a
/// workload's own), and what a destination is to them.
struct OwnAddresses: Sendable {
    enum Match: Equatable {
        case forbidden(ForbiddenDestination)
        case elsewhere
        /// One of the addresses, at this port (never one of the agent's).
        case own(port: UInt16)
    }

    private(set) var addresses: Set<String> = []
    private var broadcast: Set<UInt32> = []

    init() {}

    /// Loopback and link-local addresses are on interfaces too, but no
    /// connection is ever sent to a workload there.
    init(_ interfaces: InterfaceAddresses) {
        broadcast = Set(interfaces.broadcast)
        addresses = Set(interfaces.addresses.filter { [broadcast] in
            ForbiddenDestination.classify($0, agentPorts: [], broadcastAddresses: broadcast) == nil
        }.compactMap(\.ipAddress))
    }

    func match(_ destination: SocketAddress, agentPorts: Set<UInt16>) -> Match {
        if let kind = ForbiddenDestination.classify(destination, agentPorts: [], broadcastAddresses: broadcast) {
            return .forbidden(kind)
        }
        guard let port = destination.port.map({ UInt16(clamping: $0) }), let ip = destination.ipAddress, addresses.contains(ip) else {
            return .elsewhere
        }
        return agentPorts.contains(port) ? .forbidden(.agentPort) : .own(port: port)
    }
}
