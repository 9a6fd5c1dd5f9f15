import Foundation
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Workloads

/// How a source is doing, for `agentctl status` and the metrics.
public struct EngineSourceStatus: Hashable, Sendable {
    public var source: WorkloadSource
    public var socketPath: String
    /// Listed and following the event stream right now. While it is false,
    /// the last report stands: pods already enrolled stay as they were.
    public var connected: Bool
    public var lastError: String?
    public var lastErrorAt: Date?
    /// Connection attempts after the first one.
    public var reconnects: Int
    /// Complete listings since the source started.
    public var listings: Int
    public var lastListedAt: Date?
    /// In the last listing: everything found, and what of it is enrolled.
    public var workloads: Int
    public var enrolled: Int

    public init(source: WorkloadSource, socketPath: String) {
        self.source = source
        self.socketPath = socketPath
        self.connected = false
        self.reconnects = 0
        self.listings = 0
        self.workloads = 0
        self.enrolled = 0
    }
}

/// A container engine (Podman, Docker) as a workload source: lists pods and
/// containers, then follows the engine's event stream and lists again after
/// each change that matters, and reports the whole current set each time it
/// differs from the last report. When the socket is missing or the stream
/// ends, it waits (bounded exponential backoff) and starts over: connect,
/// follow, list.
///
/// The event stream is opened before listing, so a change between the listing
/// and the first event cannot be missed. Events are only a trigger: what is
/// reported always comes from a fresh listing, so a lost or reordered event
/// cannot leave a wrong state behind. Inspections, which say where a workload's
/// namespace and cgroup are, are remembered until an event names the
/// container or pod again.
public final class EngineWorkloadSource: Sendable {
    public struct Configuration: Sendable {
        /// For each request and for the event stream's response head.
        public var requestTimeout: Duration
        /// After an event, how long to wait for the rest of its burst (a pod
        /// start is about ten events) before listing once for all of them.
        public var settleDelay: Duration
        public var backoff: ReconnectBackoff
        /// A connection that stayed up this long resets the backoff; one that
        /// drops sooner keeps backing off, so a flapping engine is not listed
        /// in a tight loop.
        public var stableAfter: Duration
        public var maxResponseBytes: Int
        public var maxEventLineBytes: Int

        public init(
            requestTimeout: Duration = .seconds(30), settleDelay: Duration = .milliseconds(100),
            backoff: ReconnectBackoff = ReconnectBackoff(), stableAfter: Duration = .seconds(10),
            maxResponseBytes: Int = 64 << 20, maxEventLineBytes: Int = EventLineSplitter.defaultMaxLineBytes
        ) {
            self.requestTimeout = requestTimeout
            self.settleDelay = settleDelay
            self.backoff = backoff
            self.stableAfter = stableAfter
            self.maxResponseBytes = maxResponseBytes
            self.maxEventLineBytes = maxEventLineBytes
        }
    }

    public let flavor: EngineFlavor
    public let socketPath: String
    let configuration: Configuration
    let group: EventLoopGroup
    let logger: Logger
    let processCgroup: @Sendable (Int32) -> CgroupPath?

    private struct State {
        var status: EngineSourceStatus
        var reported: [DiscoveredPod]?
        var connectedAt: ContinuousClock.Instant?
    }
    private let state: NIOLockedValueBox<State>

    /// - Parameter processCgroup: the cgroup of a process (by default from
    ///   `/proc/PID/cgroup`), for engines that do not name a container's
    ///   cgroup (Docker).
    public init(
        flavor: EngineFlavor, socketPath: String, configuration: Configuration = Configuration(),
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        processCgroup: @escaping @Sendable (Int32) -> CgroupPath? = EngineWorkloadSource.cgroupOfProcess
    ) {
        self.flavor = flavor
        self.socketPath = socketPath
        self.configuration = configuration
        self.group = group
        var logger = logger
        logger[metadataKey: "source"] = "\(flavor.source)"
        self.logger = logger
        self.processCgroup = processCgroup
        self.state = NIOLockedValueBox(State(status: EngineSourceStatus(source: flavor.source, socketPath: socketPath)))
    }

    public var status: EngineSourceStatus { state.withLockedValue { $0.status } }

    /// What the last report said; empty before the first listing.
    public var pods: [DiscoveredPod] { state.withLockedValue { $0.reported ?? [] } }

    /// Lists, follows and reconnects until the task is cancelled. `onChange`
    /// gets every pod and container of this source (enrolled or not) after
    /// the first listing and after every listing that differs; calls do not
    /// overlap.
    public func run(onChange: @escaping @Sendable ([DiscoveredPod]) async -> Void) async {
        var backoff = configuration.backoff
        var attempts = 0
        while !Task.isCancelled {
            if attempts > 0 { state.withLockedValue { $0.status.reconnects += 1 } }
            attempts += 1
            do {
                try await session(onChange: onChange)
            } catch {
                if Task.isCancelled { break }
                let text = (error as? EngineAPIError)?.description ?? "\(error)"
                state.withLockedValue {
                    $0.status.lastError = text
                    $0.status.lastErrorAt = Date()
                }
                logger.warning("engine API: \(text)")
            }
            let stable = state.withLockedValue { state -> Bool in
                defer {
                    state.status.connected = false
                    state.connectedAt = nil
                }
                guard let since = state.connectedAt else { return false }
                return ContinuousClock.now - since >= configuration.stableAfter
            }
            if stable { backoff.reset() }
            let delay = backoff.nextDelay(random: Double.random(in: 0..<1))
            logger.info("engine API: connecting again in \(delay); the pods already reported stay as they are until then")
            do {
                try await Task.sleep(for: delay)
            } catch {
                break
            }
        }
        state.withLockedValue {
            $0.status.connected = false
            $0.connectedAt = nil
        }
    }

    // MARK: One connection's life

    /// Follows events in one task and lists in another, until either fails;
    /// it never returns normally.
    private func session(onChange: @escaping @Sendable ([DiscoveredPod]) async -> Void) async throws {
        let changed = NIOLockedValueBox(Set<String>())
        let (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        defer { signal.finish() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.followEvents(changed: changed, signal: signal) }
            group.addTask { try await self.keepListing(signals: signals, changed: changed, onChange: onChange) }
            _ = try await group.next()
            throw EngineAPIError.eventStreamEnded(request: "GET \(flavor.eventsPath)")
        }
    }

    /// Opens the event stream, asks for the first listing once it is open,
    /// then asks for another after each event that can change a workload.
    private func followEvents(changed: NIOLockedValueBox<Set<String>>, signal: AsyncStream<Void>.Continuation) async throws {
        let path = flavor.eventsPath
        let request = "GET \(path)"
        try await EngineConnection.with(socketPath: socketPath, group: group) { connection in
            let head = try await connection.openStream(path, timeout: configuration.requestTimeout)
            guard head.status == .ok else {
                let body = try? await connection.readBody(request: request, limit: 1 << 16, timeout: configuration.requestTimeout)
                throw EngineAPIError.status(code: Int(head.status.code), request: request, message: body.flatMap { EngineDecoding.errorMessage($0) })
            }
            signal.yield()
            var splitter = EventLineSplitter(maxLineBytes: configuration.maxEventLineBytes)
            while let part = try await connection.nextBodyPart(request: request) {
                let lines: [[UInt8]]
                do throws(EventStreamError) {
                    lines = try splitter.append(part.readableBytesView)
                } catch {
                    throw EngineAPIError.eventStream(error)
                }
                for line in lines {
                    let event: EngineEvent
                    do throws(EventStreamError) {
                        event = try EngineEvent.decode(line: line)
                    } catch {
                        throw EngineAPIError.eventStream(error)
                    }
                    guard event.changesWorkloads else { continue }
                    logger.debug("engine API: event \(event.kind) \(EngineText.quoted(event.action)) \(EngineText.quoted(event.id))")
                    changed.withLockedValue { $0.formUnion(event.affectedIDs) }
                    signal.yield()
                }
            }
            do throws(EventStreamError) {
                try splitter.finish()
            } catch {
                throw EngineAPIError.eventStream(error)
            }
            throw EngineAPIError.eventStreamEnded(request: request)
        }
    }

    private func keepListing(
        signals: AsyncStream<Void>, changed: NIOLockedValueBox<Set<String>>,
        onChange: @escaping @Sendable ([DiscoveredPod]) async -> Void
    ) async throws {
        var cache = EngineDetails()
        var first = true
        for await _ in signals {
            if !first { try await Task.sleep(for: configuration.settleDelay) }
            let stale = changed.withLockedValue { ids in
                defer { ids = [] }
                return ids
            }
            let listed = try await list(cache: cache, stale: stale)
            cache = listed.details
            if first {
                first = false
                state.withLockedValue {
                    $0.status.connected = true
                    $0.connectedAt = .now
                }
                logger.info("engine API: connected to \(socketPath), following events")
            }
            await publish(listed.pods, onChange: onChange)
        }
        try Task.checkCancellation()
    }

    /// Lists, inspects what needs it (unless `cache` has it and no event made
    /// it stale), and maps the result. Returns the inspections to remember.
    func list(cache: EngineDetails, stale: Set<String>) async throws -> (pods: [DiscoveredPod], details: EngineDetails) {
        let flavor = flavor
        let limit = configuration.maxResponseBytes
        let timeout = configuration.requestTimeout
        let details = try await EngineConnection.with(socketPath: socketPath, group: group) { connection in
            func fetch(_ path: String, missingIsNil: Bool) async throws -> [UInt8]? {
                let (status, body) = try await connection.get(path, limit: limit, timeout: timeout)
                if status == 200 { return body }
                if missingIsNil && EngineDecoding.saysMissing(status: status, body: body) { return nil }
                throw EngineAPIError.status(code: status, request: "GET \(path)", message: EngineDecoding.errorMessage(body))
            }
            var pods: [EnginePodSummary] = []
            if let path = flavor.podListPath, let body = try await fetch(path, missingIsNil: false) {
                pods = try EngineDecoding.libpodPods(body)
            }
            var containers: [EngineContainerSummary] = []
            if let body = try await fetch(flavor.containerListPath, missingIsNil: false) {
                containers = flavor == .podman ? try EngineDecoding.libpodContainers(body) : try EngineDecoding.dockerContainers(body)
            }
            let listing = EngineListing(flavor: flavor, pods: pods, containers: containers)
            let needed = EngineWorkloads.inspectionsNeeded(listing)
            // What was removed between the listing and its inspection answers
            // that it is missing and is left out; its removal event lists again.
            var details = EngineDetails()
            for id in needed.pods.sorted() {
                if !stale.contains(id), let known = cache.pods[id] {
                    details.pods[id] = known
                } else if let body = try await fetch(flavor.podInspectPath(id), missingIsNil: true) {
                    details.pods[id] = try EngineDecoding.libpodPodDetails(body)
                }
            }
            for id in needed.containers.sorted() {
                if !stale.contains(id), let known = cache.containers[id] {
                    details.containers[id] = known
                } else if let body = try await fetch(flavor.containerInspectPath(id), missingIsNil: true) {
                    details.containers[id] = try EngineDecoding.containerDetails(body)
                }
            }
            return (listing, details)
        }
        var result = details.1
        // Podman says where a container's cgroup is; for Docker it is read
        // from the container's first process, every time, so that a reused
        // pid cannot carry an old answer.
        for container in result.containers.values where container.cgroupPath == nil {
            if let pid = container.pid, let cgroup = processCgroup(pid) { result.processCgroups[pid] = cgroup }
        }
        return (EngineWorkloads.discoveredPods(details.0, details: result), result)
    }

    private func publish(_ pods: [DiscoveredPod], onChange: @Sendable ([DiscoveredPod]) async -> Void) async {
        let changed = state.withLockedValue { state -> Bool in
            state.status.listings += 1
            state.status.lastListedAt = Date()
            state.status.workloads = pods.count
            state.status.enrolled = pods.count { $0.enrollment.isEnrolled }
            guard state.reported != pods else { return false }
            state.reported = pods
            return true
        }
        guard changed else { return }
        logger.info("engine API: \(pods.count) pods and containers, \(pods.count { $0.enrollment.isEnrolled }) enrolled")
        for pod in pods {
            if case .notEnrolled(let reason) = pod.enrollment {
                logger.debug("engine API: \(EngineText.quoted(pod.name)) (\(EngineWorkloads.short(pod.id))) not enrolled: \(reason)")
            }
        }
        await onChange(pods)
    }

    /// The cgroup v2 path of a process, from `/proc/PID/cgroup`; nil if the
    /// process is gone or the file has no cgroup v2 line.
    @Sendable public static func cgroupOfProcess(_ pid: Int32) -> CgroupPath? {
        guard pid > 0, let handle = FileHandle(forReadingAtPath: "/proc/\(pid)/cgroup") else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 1 << 16) else { return nil }
        return try? CgroupV2Mount.parseOwnCgroup(procSelfCgroup: String(decoding: data, as: UTF8.self))
    }
}
