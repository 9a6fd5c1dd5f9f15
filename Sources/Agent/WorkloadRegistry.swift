import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Proxy
import TLS

/// The workloads this node's agent speaks for, by cgroup.
///
/// The config names each workload's cgroup by path; the kernel tells the agent a
/// socket's cgroup by id (the directory's inode). The registry keeps the map
/// between them current: a cgroup that does not exist yet (a service not started)
/// is picked up when it appears, one that disappears is dropped, and one that is
/// re-created gets its new id.
public final class WorkloadRegistry: Sendable {
    /// One configured workload and, when its cgroup exists, the cgroup's id.
    public struct Member: Sendable, Equatable {
        public var workload: Workload
        public var cgroup: CgroupPath
        public var cgroupID: CgroupID?
    }

    /// What changed in the capture sets: ids to add and remove, by cgroup level.
    public struct Changes: Equatable, Sendable {
        public var added: [Int: [CgroupID]] = [:]
        public var removed: [Int: [CgroupID]] = [:]
        public var isEmpty: Bool { added.isEmpty && removed.isEmpty }
    }

    private struct State {
        var members: [Member] = []
        /// Every cgroup id known to belong to a workload: its own cgroup and the
        /// cgroups nested inside it.
        var owners: [CgroupID: Int] = [:]
        /// When a lookup miss last made us walk the cgroup trees.
        var lastMissRescan: ContinuousClock.Instant?
        /// The present workload serving each port (per-connection lookups must not
        /// scan every member).
        var servingPort: [UInt16: Int] = [:]
    }

    /// Lookups run on event loops; a burst of misses must not turn into a burst
    /// of cgroup tree walks.
    static let missRescanInterval: Duration = .milliseconds(200)

    /// A cgroup and every cgroup below it, with their ids, as
    /// `CgroupV2Mount.subtree(of:)` reads them.
    package typealias SubtreeReader = @Sendable (CgroupPath) throws -> [(path: CgroupPath, id: CgroupID)]

    private let readSubtree: SubtreeReader
    private let state = NIOLockedValueBox(State())
    private let logger: Logger

    public convenience init(mount: CgroupV2Mount, logger: Logger) {
        self.init(logger: logger) { cgroup in try mount.subtree(of: cgroup) }
    }

    /// A registry that learns cgroup ids from `readSubtree` rather than from the
    /// kernel: micro-bench fills it with thousands of workloads this way, and
    /// then measures the lookup the data path makes.
    package init(logger: Logger, readSubtree: @escaping SubtreeReader) {
        self.readSubtree = readSubtree
        self.logger = logger
    }

    public var members: [Member] {
        state.withLockedValue { $0.members }
    }

    /// The cgroup depths the configured workloads live at (one capture set each).
    public var levels: [Int] {
        Array(Set(members.map(\.cgroup.level))).sorted()
    }

    /// The identities of the workloads whose cgroups exist: those the node holds
    /// certificates for.
    public var presentIdentities: Set<SpiffeID> {
        Set(members.filter { $0.cgroupID != nil }.map(\.workload.identity))
    }

    /// The present workload that serves `port` on this node, if any.
    public func presentWorkload(servingPort port: UInt16) -> Workload? {
        state.withLockedValue { state in
            guard let index = state.servingPort[port], index < state.members.count else { return nil }
            return state.members[index].workload
        }
    }

    /// The capture-set elements for the workloads whose cgroups exist, by level.
    public var elementsByLevel: [Int: [CgroupID]] {
        var result: [Int: [CgroupID]] = [:]
        for member in members {
            if let id = member.cgroupID {
                result[member.cgroup.level, default: []].append(id)
            }
        }
        return result.mapValues { $0.sorted() }
    }

    /// Replaces the configured workloads (start and reload) and looks their cgroups up.
    public func configure(_ entries: [AgentConfig.WorkloadEntry]) {
        state.withLockedValue { state in
            let previous = Dictionary(state.members.map { ($0.cgroup, $0.cgroupID) }, uniquingKeysWith: { first, _ in first })
            state.members = entries.map { entry in
                Member(
                    workload: Workload(
                        name: entry.name, namespace: entry.namespace, serviceAccount: entry.serviceAccount,
                        identity: entry.identity, labels: entry.labels, ports: entry.ports, tcpPorts: entry.tcpPorts
                    ),
                    cgroup: entry.cgroup,
                    cgroupID: previous[entry.cgroup] ?? nil
                )
            }
            // The indexes point into the old member list; until the rescan below
            // rebuilds them, a lookup must miss (and refuse) rather than land on
            // whichever workload now sits at that position.
            state.owners = [:]
            state.servingPort = [:]
        }
        rescan()
    }

    /// Looks every workload's cgroup up again and logs what came and went.
    public func rescan() {
        let before = elementsByLevel
        let snapshot = members
        var found: [CgroupID?] = []
        var owners: [CgroupID: Int] = [:]
        for (index, member) in snapshot.enumerated() {
            do {
                let tree = try readSubtree(member.cgroup)
                let id = tree.first(where: { $0.path == member.cgroup })?.id
                found.append(id)
                for node in tree { owners[node.id] = index }
            } catch {
                if case CgroupError.notFound = error {} else {
                    logger.warning("cannot read cgroup \(member.cgroup) of workload \(member.workload.qualifiedName): \(error)")
                }
                found.append(nil)
            }
        }
        state.withLockedValue { state in
            // A reload may have replaced the members while we looked; then the next
            // scan (which the reload triggers) is the one that counts.
            guard state.members.map(\.cgroup) == snapshot.map(\.cgroup) else { return }
            var servingPort: [UInt16: Int] = [:]
            for index in state.members.indices {
                state.members[index].cgroupID = found[index]
                if found[index] != nil {
                    for port in state.members[index].workload.ports { servingPort[port] = index }
                }
            }
            state.owners = owners
            state.servingPort = servingPort
        }
        let changes = Self.difference(from: before, to: elementsByLevel)
        for (level, ids) in changes.added {
            for id in ids {
                if let member = members.first(where: { $0.cgroupID == id && $0.cgroup.level == level }) {
                    logger.info("workload \(member.workload.qualifiedName) is present: cgroup \(member.cgroup) (id \(id)), identity \(member.workload.identity)")
                }
            }
        }
        for (_, ids) in changes.removed {
            logger.info("cgroup ids \(ids.map(\.description).joined(separator: ", ")) left the registry (cgroup removed or workload unconfigured)")
        }
    }

    /// The workload that owns the cgroup with this id, if any. A socket made in a
    /// cgroup nested below a workload's cgroup belongs to that workload.
    public func workload(forCgroup id: CgroupID) -> Workload? {
        if let found = lookup(id) { return found }
        // Perhaps a nested cgroup created since the last scan: look once more,
        // unless a miss did so very recently.
        let now = ContinuousClock.now
        let mayRescan = state.withLockedValue { state -> Bool in
            if let last = state.lastMissRescan, now - last < Self.missRescanInterval { return false }
            state.lastMissRescan = now
            return true
        }
        guard mayRescan else { return nil }
        rescan()
        return lookup(id)
    }

    private func lookup(_ id: CgroupID) -> Workload? {
        state.withLockedValue { state in
            guard let index = state.owners[id], index < state.members.count else { return nil }
            return state.members[index].workload
        }
    }

    static func difference(from before: [Int: [CgroupID]], to after: [Int: [CgroupID]]) -> Changes {
        var changes = Changes()
        for level in Set(before.keys).union(after.keys) {
            let old = Set(before[level] ?? [])
            let new = Set(after[level] ?? [])
            let added = new.subtracting(old).sorted()
            let removed = old.subtracting(new).sorted()
            if !added.isEmpty { changes.added[level] = added }
            if !removed.isEmpty { changes.removed[level] = removed }
        }
        return changes
    }
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

/// Identifies the workload behind a captured connection from its client socket's
/// cgroup, as the kernel reports it.
///
/// NAT may have changed the client's port: when a client reuses a source port
/// for another destination while conntrack still remembers the first
/// connection, both would have the same reply tuple (listener ↔ client), so the
/// kernel picks another port for the second. The socket is then not found under
/// the port the agent sees, and conntrack tells the real one.
public struct CgroupSourceIdentifier: SourceIdentifier {
    let sockDiag: SockDiagClient
    let conntrack: ConntrackClient?
    let registry: WorkloadRegistry

    public init(sockDiag: SockDiagClient, conntrack: ConntrackClient?, registry: WorkloadRegistry) {
        self.sockDiag = sockDiag
        self.conntrack = conntrack
        self.registry = registry
    }

    public func identify(client: SocketAddress, listener: SocketAddress?, originalDestination: SocketAddress) throws -> IdentifiedSource {
        var address = client
        let id: CgroupID
        do {
            id = try sockDiag.cgroupID(ofClient: client, connectedTo: originalDestination)
        } catch SockDiagError.notFound {
            guard let conntrack, let listener else { throw SockDiagError.notFound }
            address = try conntrack.originalSource(ofReplyFrom: listener, to: client)
            guard address != client else { throw SockDiagError.notFound }
            id = try sockDiag.cgroupID(ofClient: address, connectedTo: originalDestination)
        }
        guard let workload = registry.workload(forCgroup: id) else {
            throw IdentificationError.noWorkload(cgroup: id)
        }
        return IdentifiedSource(workload: workload, address: address)
    }
}

public enum IdentificationError: Error, CustomStringConvertible {
    case noWorkload(cgroup: CgroupID)

    public var description: String {
        switch self {
        case .noWorkload(let id):
            return "cgroup id \(id) belongs to no configured workload"
        }
    }
}
