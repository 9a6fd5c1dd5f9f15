import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TLS

/// The workloads this node's agent speaks for, from every source, by cgroup.
///
/// Sources declare workloads by cgroup path; the kernel tells the agent a
/// socket's cgroup by id (the directory's inode). The registry keeps the map
/// between them current: a cgroup that does not exist yet (a service not
/// started) is picked up when it appears, one that disappears is dropped, and
/// one that is re-created gets its new id.
///
/// Lookups run on event loops and only read memory. Walking cgroup trees (a
/// directory read per cgroup) happens on the control loop's tick, or, when a
/// connection comes from a cgroup the last walk did not see, on a thread of
/// the blocking pool while that connection waits.
public final class WorkloadRegistry: Sendable {
    /// One declared workload and, when its cgroup exists, the cgroup's id.
    public struct Member: Sendable, Equatable {
        public var spec: WorkloadSpec
        public var cgroupID: CgroupID?

        public var workload: Workload { spec.workload }
        public var cgroup: CgroupPath { spec.cgroup }
        public var source: WorkloadSource { spec.source }
        /// Its cgroup exists: it may hold processes, and it has a certificate.
        public var isPresent: Bool { cgroupID != nil }
    }

    /// A workload a source declared that the registry did not take, and why.
    public struct Rejection: Sendable, Equatable, CustomStringConvertible {
        public var spec: WorkloadSpec
        public var reason: String

        public var description: String {
            "workload \(spec.workload.qualifiedName) from \(spec.source) is not registered: \(reason)"
        }
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
        /// The present workload serving each port (per-connection lookups must not
        /// scan every member).
        var servingPort: [UInt16: Int] = [:]
        /// When a lookup miss last asked for a walk, and the walk in flight.
        var lastMissRescan: ContinuousClock.Instant?
        var missRescan: EventLoopFuture<Void>?
    }

    /// A burst of connections from unknown cgroups must not turn into a burst
    /// of cgroup tree walks.
    static let missRescanInterval: Duration = .milliseconds(200)

    /// A cgroup and every cgroup below it, with their ids, as
    /// `CgroupV2Mount.subtree(of:)` reads them.
    package typealias SubtreeReader = @Sendable (CgroupPath) throws -> [(path: CgroupPath, id: CgroupID)]

    private let readSubtree: SubtreeReader
    private let state = NIOLockedValueBox(State())
    /// One walk at a time: the tick's and a miss's would otherwise race to
    /// publish their findings.
    private let walking = NIOLock()
    private let blockingPool: NIOThreadPool
    private let logger: Logger

    public convenience init(mount: CgroupV2Mount, blockingPool: NIOThreadPool = .singleton, logger: Logger) {
        self.init(blockingPool: blockingPool, logger: logger) { cgroup in try mount.subtree(of: cgroup) }
    }

    /// A registry that learns cgroup ids from `readSubtree` rather than from the
    /// kernel: micro-bench fills it with thousands of workloads this way, and
    /// then measures the lookup the data path makes.
    package init(blockingPool: NIOThreadPool = .singleton, logger: Logger, readSubtree: @escaping SubtreeReader) {
        self.readSubtree = readSubtree
        self.blockingPool = blockingPool
        self.logger = logger
    }

    public var members: [Member] {
        state.withLockedValue { $0.members }
    }

    /// The cgroup depths the declared workloads of the node's own namespace
    /// live at (one capture set each in the node's table).
    public var levels: [Int] {
        Array(Set(members.filter(\.spec.network.isHost).map(\.cgroup.level))).sorted()
    }

    /// The identities of the present workloads: those the node holds
    /// certificates for.
    public var presentIdentities: Set<SpiffeID> {
        Set(members.filter(\.isPresent).map(\.workload.identity))
    }

    /// The present workload in the node's own namespace that serves `port`
    /// on the node's addresses, if any.
    public func presentWorkload(servingPort port: UInt16) -> Workload? {
        state.withLockedValue { state in
            guard let index = state.servingPort[port], index < state.members.count else { return nil }
            return state.members[index].workload
        }
    }

    /// The node table's capture-set elements: the present workloads of the
    /// node's own namespace, by level. (A workload in a namespace of its own
    /// is captured by the table inside it.)
    public var elementsByLevel: [Int: [CgroupID]] {
        var result: [Int: [CgroupID]] = [:]
        for member in members where member.spec.network.isHost {
            if let id = member.cgroupID {
                result[member.cgroup.level, default: []].append(id)
            }
        }
        return result.mapValues { $0.sorted() }
    }

    // MARK: Sources

    /// `source` now declares exactly `specs`: its workloads that are not among
    /// them leave, those that stay keep their cgroup ids, and other sources'
    /// workloads are untouched. Then every cgroup is looked up again.
    ///
    /// On a node, a name, a port and a cgroup belong to one workload: a spec
    /// that clashes with one already registered (another source's, or an
    /// earlier one of this list) is not taken, and comes back with the reason.
    @discardableResult
    public func update(_ specs: [WorkloadSpec], from source: WorkloadSource) -> [Rejection] {
        let rejections = state.withLockedValue { state -> [Rejection] in
            let before = state.members
            let previousIDs = Dictionary(
                before.filter { $0.source == source }.map { ($0.cgroup, $0.cgroupID) }, uniquingKeysWith: { first, _ in first })
            var members = before.filter { $0.source != source }
            var rejections: [Rejection] = []
            for spec in specs {
                var candidate = spec
                candidate.source = source
                if let reason = Self.clash(of: candidate, with: members) {
                    rejections.append(Rejection(spec: candidate, reason: reason))
                    continue
                }
                members.append(Member(spec: candidate, cgroupID: previousIDs[spec.cgroup] ?? nil))
            }
            // The indexes pointed into the old list: carried over by cgroup, so
            // a lookup between now and the walk below still finds the workloads
            // that stayed, and never lands on whichever workload now sits at an
            // old position.
            var newIndex: [CgroupPath: Int] = [:]
            for (index, member) in members.enumerated() { newIndex[member.cgroup] = index }
            state.owners = state.owners.compactMapValues { old in old < before.count ? newIndex[before[old].cgroup] : nil }
            state.members = members
            state.servingPort = Self.servingPorts(members)
            return rejections
        }
        for rejection in rejections {
            logger.warning("\(rejection)")
        }
        rescan()
        return rejections
    }

    private static func clash(of spec: WorkloadSpec, with members: [Member]) -> String? {
        for other in members {
            let owner = "\(other.workload.qualifiedName) (from \(other.source))"
            if other.workload.qualifiedName == spec.workload.qualifiedName {
                return "the name is already \(owner)'s"
            }
            // Ports are shared only in the node's namespace; each pod has its own.
            if spec.network.isHost, other.spec.network.isHost, let port = spec.workload.ports.first(where: other.workload.ports.contains) {
                return "port \(port) is already served by \(owner); in host mode a port on the node belongs to one workload"
            }
            if spec.cgroup.isDescendant(ofOrEqualTo: other.cgroup) || other.cgroup.isDescendant(ofOrEqualTo: spec.cgroup) {
                return "its cgroup \(spec.cgroup) is, or is nested with, the cgroup \(other.cgroup) of \(owner); a socket there would belong to both"
            }
        }
        return nil
    }

    private static func servingPorts(_ members: [Member]) -> [UInt16: Int] {
        var servingPort: [UInt16: Int] = [:]
        for (index, member) in members.enumerated() where member.isPresent && member.spec.network.isHost {
            for port in member.workload.ports { servingPort[port] = index }
        }
        return servingPort
    }

    // MARK: Cgroups

    /// Looks every workload's cgroup up again (a walk of each workload's
    /// cgroup tree) and logs what came and went. Blocking: never on an event loop.
    public func rescan() {
        walking.withLock {
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
                // A source may have changed the members while we looked; then the
                // walk its update starts is the one that counts.
                guard state.members.map(\.cgroup) == snapshot.map(\.cgroup) else { return }
                for index in state.members.indices {
                    state.members[index].cgroupID = found[index]
                }
                state.owners = owners
                state.servingPort = Self.servingPorts(state.members)
            }
            logChanges(from: snapshot)
        }
    }

    private func logChanges(from before: [Member]) {
        let present = { (members: [Member]) in Set(members.compactMap { member in member.cgroupID.map { PresentCgroup(path: member.cgroup, id: $0) } }) }
        let old = present(before)
        let now = members
        let new = present(now)
        for member in now {
            guard let id = member.cgroupID, !old.contains(PresentCgroup(path: member.cgroup, id: id)) else { continue }
            logger.info("workload \(member.workload.qualifiedName) is present: cgroup \(member.cgroup) (id \(id)), identity \(member.workload.identity), \(member.spec.network), from \(member.source)")
        }
        let gone = old.subtracting(new).sorted { $0.id < $1.id }
        if !gone.isEmpty {
            logger.info("cgroups \(gone.map { "\($0.path) (id \($0.id))" }.joined(separator: ", ")) left the registry (cgroup removed or workload no longer declared)")
        }
    }

    private struct PresentCgroup: Hashable {
        var path: CgroupPath
        var id: CgroupID
    }

    /// The workload that owns the cgroup with this id, as the last walk saw
    /// it. A socket made in a cgroup nested below a workload's cgroup belongs
    /// to that workload. Memory only: safe on an event loop.
    public func workload(forCgroup id: CgroupID) -> Workload? {
        state.withLockedValue { state in
            guard let index = state.owners[id], index < state.members.count else { return nil }
            return state.members[index].workload
        }
    }

    /// The workload that owns the cgroup with this id. A miss may be a nested
    /// cgroup made since the last walk: the registry walks again on the
    /// blocking pool (unless a miss made it walk very recently) and answers
    /// on `eventLoop` once it has.
    public func workload(forCgroup id: CgroupID, on eventLoop: EventLoop) -> EventLoopFuture<Workload?> {
        if let found = workload(forCgroup: id) {
            return eventLoop.makeSucceededFuture(found)
        }
        guard let walk = walkAfterMiss(on: eventLoop) else {
            return eventLoop.makeSucceededFuture(nil)
        }
        return walk.hop(to: eventLoop).map { self.workload(forCgroup: id) }
    }

    /// The walk a miss waits for: the one in flight, a new one, or none when
    /// a miss started one less than `missRescanInterval` ago.
    private func walkAfterMiss(on eventLoop: EventLoop) -> EventLoopFuture<Void>? {
        let now = ContinuousClock.now
        let (walk, started) = state.withLockedValue { state -> (EventLoopFuture<Void>?, Bool) in
            if let inFlight = state.missRescan { return (inFlight, false) }
            if let last = state.lastMissRescan, now - last < Self.missRescanInterval { return (nil, false) }
            state.lastMissRescan = now
            let walk = blockingPool.runIfActive(eventLoop: eventLoop) { self.rescan() }
            state.missRescan = walk
            return (walk, true)
        }
        if started, let walk {
            walk.whenComplete { _ in self.state.withLockedValue { $0.missRescan = nil } }
        }
        return walk
    }

    public static func difference(from before: [Int: [CgroupID]], to after: [Int: [CgroupID]]) -> Changes {
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
