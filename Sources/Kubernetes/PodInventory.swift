import Workloads

/// The pods of this node and the labels of every namespace, as the API server
/// last described them: replaced whole by each list, changed by each watch
/// event. A value: the source feeds it, tests drive it directly.
public struct PodInventory: Sendable {
    public let node: String
    private(set) var pods: [String: Pod] = [:]
    private(set) var namespaceLabels: [String: [String: String]] = [:]
    /// Both lists have been read at least once. Before that a pod's
    /// enrollment could be decided on a namespace not yet seen.
    public private(set) var podsListed = false
    public private(set) var namespacesListed = false
    /// Objects skipped since the start because they lacked what every object
    /// has, with the last reason.
    public private(set) var skippedObjects = 0
    public private(set) var lastSkipReason: String?

    public init(node: String) {
        self.node = node
    }

    public var isSynced: Bool { podsListed && namespacesListed }

    /// The pods as a list read them.
    public mutating func replacePods(_ items: [Pod]) {
        pods = [:]
        for pod in items {
            upsert(pod)
        }
        podsListed = true
    }

    /// The namespaces as a list read them.
    public mutating func replaceNamespaces(_ items: [Namespace]) {
        namespaceLabels = [:]
        for namespace in items {
            upsert(namespace)
        }
        namespacesListed = true
    }

    /// Applies an object event; bookmarks, errors and unknown types change
    /// nothing here (the watch loop handles them).
    public mutating func apply(_ event: WatchEvent<Pod>) {
        switch event {
        case .added(let pod), .modified(let pod): upsert(pod)
        case .deleted(let pod):
            if let uid = pod.metadata?.uid { pods[uid] = nil } else { skip("a deleted pod without metadata.uid") }
        case .bookmark, .error, .unknown: break
        }
    }

    public mutating func apply(_ event: WatchEvent<Namespace>) {
        switch event {
        case .added(let namespace), .modified(let namespace): upsert(namespace)
        case .deleted(let namespace):
            if let name = namespace.metadata?.name { namespaceLabels[name] = nil } else { skip("a deleted namespace without metadata.name") }
        case .bookmark, .error, .unknown: break
        }
    }

    /// Every pod of this node that is not finished, sorted by namespace and name.
    public func discoveredPods(layout: KubeletCgroupLayout?) -> [DiscoveredPod] {
        var result: [DiscoveredPod] = []
        for pod in pods.values {
            let namespace = pod.metadata?.namespace ?? ""
            if case .present(let discovered) = PodMapper.map(pod, node: node, namespaceLabels: namespaceLabels[namespace] ?? [:], layout: layout) {
                result.append(discovered)
            }
        }
        return result.sorted { ($0.namespace, $0.name, $0.id) < ($1.namespace, $1.name, $1.id) }
    }

    private mutating func upsert(_ pod: Pod) {
        guard let uid = pod.metadata?.uid, !uid.isEmpty else {
            skip("a pod without metadata.uid")
            return
        }
        // The field selector should keep other nodes' pods out; a pod
        // that is not (or no longer) here is forgotten, not kept.
        guard pod.spec?.nodeName == node else {
            pods[uid] = nil
            return
        }
        if case .malformed(let reason) = PodMapper.map(pod, node: node, namespaceLabels: [:], layout: nil) {
            pods[uid] = nil
            skip(reason)
            return
        }
        pods[uid] = pod
    }

    private mutating func upsert(_ namespace: Namespace) {
        guard let name = namespace.metadata?.name, !name.isEmpty else {
            skip("a namespace without metadata.name")
            return
        }
        namespaceLabels[name] = namespace.metadata?.labels ?? [:]
    }

    private mutating func skip(_ reason: String) {
        skippedObjects += 1
        lastSkipReason = reason
    }
}
