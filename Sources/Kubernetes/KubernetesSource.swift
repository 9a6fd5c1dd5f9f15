import Foundation
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Workloads

/// How the Kubernetes source is doing, for `agentctl status` and metrics.
public struct KubernetesSourceStatus: Hashable, Sendable {
    public var apiServer: String
    public var node: String
    /// Both watches (pods, namespaces) are open.
    public var connected = false
    /// Pods and namespaces have each been listed once; only then are pods
    /// reported.
    public var synced = false
    /// When the API server last told the agent something current (a list,
    /// an event, a bookmark).
    public var lastSync: Date?
    public var lastError: String?
    public var lastErrorTime: Date?
    /// Watches started again after one ended, for any reason.
    public var watchRestarts = 0
    /// Lists after the first of each resource (410 Gone, lost events, errors).
    public var relists = 0
    /// Pods in the last report, and how many of them are enrolled.
    public var pods = 0
    public var enrolledPods = 0
    /// Objects left out because they lack a uid, name or namespace.
    public var skippedObjects = 0
    /// The version each resource is watched from (`pods`, `namespaces`).
    public var resourceVersions: [String: String] = [:]
    /// Where pod cgroups are taken to be; nil while unknown.
    public var cgroupLayout: String?
}

/// The pods on this node, from the Kubernetes API: lists, then watches, pods
/// (`spec.nodeName` = this node) and namespaces (their labels enroll pods),
/// and reports the full set of `DiscoveredPod` after every change.
///
/// When the API server is lost the last known set stays as it is (nothing is
/// reported until the API server is back and says otherwise); `status` says
/// so. Reports start once both lists are in.
public final class KubernetesSource: Sendable {
    public let configuration: KubernetesSourceConfiguration
    public let endpoint: APIServerEndpoint
    /// Each element is the whole current set, sorted by namespace and name.
    /// Only the newest matters, so older ones not yet taken are dropped.
    public let updates: AsyncStream<[DiscoveredPod]>

    private struct State {
        var inventory: PodInventory
        var status: KubernetesSourceStatus
        var layout: KubeletCgroupLayout?
        var lastReported: [DiscoveredPod]?
        var watching: Set<String> = []
        /// Since when the API server has failed the agent, until both watches are open again.
        var troubledSince: ContinuousClock.Instant?
        var restartsByResource: [String: Int] = [:]
        var relistsByResource: [String: Int] = [:]
    }

    private let continuation: AsyncStream<[DiscoveredPod]>.Continuation
    private let state: NIOLockedValueBox<State>
    private let client: APIServerClient
    private let logger: Logger
    private let cgroupExists: @Sendable (CgroupPath) -> Bool

    /// A watch that lasts this long before it ends was working, even without events.
    static let healthyWatch: Duration = .seconds(5)

    /// - Parameters:
    ///   - environment: where the in-cluster API server address comes from.
    ///   - cgroupExists: whether a cgroup exists, to find the kubelet layout
    ///     when the configuration does not give one; by default, a look below
    ///     the cgroup v2 mount.
    public init(
        configuration: KubernetesSourceConfiguration, environment: [String: String] = ProcessInfo.processInfo.environment,
        group: any EventLoopGroup, logger: Logger, cgroupExists: (@Sendable (CgroupPath) -> Bool)? = nil
    ) throws {
        try configuration.validate()
        self.configuration = configuration
        self.endpoint = try configuration.endpoint(environment: environment)
        self.client = APIServerClient(endpoint: endpoint, configuration: configuration, group: group)
        self.logger = logger
        if let cgroupExists {
            self.cgroupExists = cgroupExists
        } else {
            let mount = try? CgroupV2Mount.discover()
            self.cgroupExists = { cgroup in mount.map { (try? $0.id(of: cgroup)) != nil } ?? false }
        }
        (updates, continuation) = AsyncStream.makeStream(of: [DiscoveredPod].self, bufferingPolicy: .bufferingNewest(1))
        state = NIOLockedValueBox(State(
            inventory: PodInventory(node: configuration.node),
            status: KubernetesSourceStatus(apiServer: endpoint.description, node: configuration.node),
            layout: configuration.cgroupLayout))
    }

    public var status: KubernetesSourceStatus {
        state.withLockedValue { $0.status }
    }

    /// The last set reported; nil before the first.
    public var currentPods: [DiscoveredPod]? {
        state.withLockedValue { $0.lastReported }
    }

    /// Lists and watches until the task is cancelled, then finishes `updates`.
    public func run() async {
        logger.info("kubernetes: watching the pods of node \(configuration.node) at \(endpoint)")
        let node = configuration.node
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.listAndWatch(Resource<Pod>(
                    name: "pods", path: "/api/v1/pods", selector: "fieldSelector=spec.nodeName%3D\(node)",
                    replace: { $0.replacePods($1) }, apply: { $0.apply($1) }))
            }
            group.addTask {
                await self.listAndWatch(Resource<Namespace>(
                    name: "namespaces", path: "/api/v1/namespaces", selector: nil,
                    replace: { $0.replaceNamespaces($1) }, apply: { $0.apply($1) }))
            }
        }
        continuation.finish()
    }

    // MARK: - One resource

    private struct Resource<Object: KubernetesObject>: Sendable {
        let name: String
        let path: String
        let selector: String?
        let replace: @Sendable (inout PodInventory, [Object]) -> Void
        let apply: @Sendable (inout PodInventory, WatchEvent<Object>) -> Void

        func target(_ query: String) -> String {
            "\(path)?" + ([selector, query].compactMap { $0 }.joined(separator: "&"))
        }
    }

    private func listAndWatch<Object>(_ resource: Resource<Object>) async {
        var machine = ListWatchState(backoff: configuration.backoff)
        var action = machine.start()
        while !Task.isCancelled {
            switch action {
            case .list:
                do {
                    let (items, version) = try await list(resource, fromCache: machine.listsFromCache)
                    action = machine.listed(resourceVersion: version)
                    logger.info("kubernetes: listed \(items.count) \(resource.name) at version \(version)")
                    update(resource.name, machine) { state in
                        resource.replace(&state.inventory, items)
                        state.status.lastSync = Date()
                    }
                } catch is CancellationError {
                    return
                } catch {
                    failed(resource.name, error)
                    action = machine.listFailed(random: .random(in: 0..<1))
                }
            case .watch(let version):
                let end = await watch(resource, from: version, machine: &machine)
                state.withLockedValue { state in
                    state.watching.remove(resource.name)
                    state.status.connected = false
                }
                if Task.isCancelled { return }
                action = machine.watchEnded(end, random: .random(in: 0..<1))
                update(resource.name, machine) { _ in }
            case .wait(let delay):
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    return
                }
                action = machine.waited()
            }
        }
    }

    /// Every page of the list: its items and the version they were read at.
    private func list<Object>(_ resource: Resource<Object>, fromCache: Bool) async throws -> ([Object], String) {
        var items: [Object] = []
        var continueToken: String?
        var version: String?
        var total = 0
        repeat {
            // The watch cache answers in one piece; etcd reads come in pages.
            var query = fromCache ? "resourceVersion=0" : "limit=\(configuration.pageSize)"
            if let token = continueToken {
                query += "&continue=" + (token.addingPercentEncoding(withAllowedCharacters: Self.unreserved) ?? "")
            }
            let target = resource.target(query)
            var body: [UInt8] = []
            try await client.get(target, idleTimeout: configuration.readTimeout, onOK: {}) { buffer in
                total += buffer.readableBytes
                guard total <= configuration.maximumListBytes else {
                    throw KubernetesSourceError.responseTooLarge(request: target, limit: configuration.maximumListBytes)
                }
                body.append(contentsOf: buffer.readableBytesView)
            }
            let page: ObjectList<Object>
            do {
                page = try KubernetesDecoder.list(body, of: Object.self)
            } catch let error as KubernetesDecodingError {
                throw KubernetesSourceError.decoding(request: target, error)
            }
            items += page.items ?? []
            version = page.metadata?.resourceVersion
            continueToken = page.metadata?.continue.flatMap { $0.isEmpty ? nil : $0 }
        } while continueToken != nil
        guard let version, !version.isEmpty else {
            throw KubernetesSourceError.decoding(
                request: resource.target(""), KubernetesDecodingError(what: "\(Object.self) list", byteCount: total, detail: "metadata.resourceVersion is missing"))
        }
        return (items, version)
    }

    private func watch<Object>(_ resource: Resource<Object>, from version: String, machine: inout ListWatchState) async -> ListWatchState.WatchEnd {
        let seconds = configuration.watchTimeout.components.seconds
        let timeout = max(1, Int64.random(in: seconds...max(seconds, 2 * seconds - 1)))
        let target = resource.target(
            "watch=1&resourceVersion=\(version.addingPercentEncoding(withAllowedCharacters: Self.unreserved) ?? "")&allowWatchBookmarks=true&timeoutSeconds=\(timeout)")
        var splitter = WatchLineSplitter(maximumLineBytes: configuration.maximumLineBytes)
        var sawLines = false
        let started = ContinuousClock.now
        do {
            try await client.get(target, idleTimeout: .seconds(timeout) + configuration.readTimeout, onOK: {
                let recovered = state.withLockedValue { state -> Duration? in
                    state.watching.insert(resource.name)
                    state.status.connected = state.watching.count == 2
                    guard state.status.connected, let since = state.troubledSince else { return nil }
                    state.troubledSince = nil
                    return ContinuousClock.now - since
                }
                if let recovered {
                    logger.info("kubernetes: watching \(endpoint) again, \(recovered.components.seconds) s after the first failure")
                }
            }) { buffer in
                for line in splitter.append(buffer.readableBytesView) {
                    sawLines = true
                    switch line {
                    case .oversized(let bytes):
                        throw KubernetesSourceError.oversizedEvent(request: target, bytes: bytes, limit: configuration.maximumLineBytes)
                    case .complete(let bytes):
                        let event: WatchEvent<Object>
                        do {
                            event = try KubernetesDecoder.watchEvent(bytes, as: Object.self)
                        } catch let error as KubernetesDecodingError {
                            throw KubernetesSourceError.decoding(request: target, error)
                        }
                        try apply(event, resource: resource, request: target, machine: &machine)
                    }
                }
            }
            if let bytes = splitter.finish() {
                throw KubernetesSourceError.truncated(request: target, reason: "the stream ended inside an event (\(bytes) bytes)")
            }
            return .closed(worked: sawLines || ContinuousClock.now - started >= Self.healthyWatch)
        } catch is CancellationError {
            return .failed
        } catch let error as KubernetesSourceError {
            if error.isGone {
                logger.info("kubernetes: \(resource.name) version \(version) is gone (410); listing again")
                return .gone
            }
            switch error {
            case .decoding, .oversizedEvent:
                failed(resource.name, error)
                return .lostEvent
            default:
                failed(resource.name, error)
                return .failed
            }
        } catch {
            failed(resource.name, error)
            return .failed
        }
    }

    private func apply<Object>(_ event: WatchEvent<Object>, resource: Resource<Object>, request: String, machine: inout ListWatchState) throws {
        switch event {
        case .added(let object), .modified(let object), .deleted(let object):
            if let version = object.metadata?.resourceVersion { machine.observed(resourceVersion: version) }
            update(resource.name, machine) { state in
                resource.apply(&state.inventory, event)
                state.status.lastSync = Date()
            }
        case .bookmark(let version):
            machine.observed(resourceVersion: version)
            update(resource.name, machine) { state in state.status.lastSync = Date() }
        case .error(let status):
            throw KubernetesSourceError.watchError(request: request, status)
        case .unknown(let type):
            logger.debug("kubernetes: skipping a \(resource.name) watch event of unknown type \(type)")
        }
    }

    // MARK: - State and reports

    /// Changes the state, then reports the pods if the set changed. The report
    /// is made under the lock, so two resources' updates are reported in the
    /// order they were made.
    private func update(_ resource: String, _ machine: ListWatchState, _ change: (inout State) -> Void) {
        state.withLockedValue { state in
            change(&state)
            state.status.resourceVersions[resource] = machine.resourceVersion
            state.restartsByResource[resource] = machine.watchRestarts
            state.relistsByResource[resource] = machine.relists
            state.status.watchRestarts = state.restartsByResource.values.reduce(0, +)
            state.status.relists = state.relistsByResource.values.reduce(0, +)
            state.status.skippedObjects = state.inventory.skippedObjects
            state.status.synced = state.inventory.isSynced
            guard state.inventory.isSynced else { return }
            if state.layout == nil {
                state.layout = KubeletCgroupLayout.detect(exists: cgroupExists)
                if let layout = state.layout { logger.info("kubernetes: pod cgroups are in \(layout)") }
            }
            state.status.cgroupLayout = state.layout?.description
            let pods = state.inventory.discoveredPods(layout: state.layout)
            state.status.pods = pods.count
            state.status.enrolledPods = pods.count(where: \.enrollment.isEnrolled)
            guard pods != state.lastReported else { return }
            state.lastReported = pods
            continuation.yield(pods)
        }
    }

    private func failed(_ resource: String, _ error: any Error) {
        let message = "\(error)"
        state.withLockedValue { state in
            state.status.lastError = message
            state.status.lastErrorTime = Date()
            if state.troubledSince == nil { state.troubledSince = .now }
        }
        logger.warning("kubernetes: \(resource): \(message)")
    }

    private static let unreserved = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
}

/// What the source reads of every object it watches.
protocol KubernetesObject: Decodable, Sendable {
    var metadata: ObjectMeta? { get }
}

extension Pod: KubernetesObject {}
extension Namespace: KubernetesObject {}
