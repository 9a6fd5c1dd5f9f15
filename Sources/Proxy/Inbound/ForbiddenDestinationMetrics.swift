import Metrics
import Workloads

/// Refusals of forbidden destinations, by kind and by the path that refused
/// them: a peer probing the tunnel for loopback services shows up here.
struct ForbiddenDestinationMetrics: Sendable {
    private let counters: [ForbiddenDestination: Counter]

    init(path: String) {
        var counters: [ForbiddenDestination: Counter] = [:]
        for kind in ForbiddenDestination.allCases {
            counters[kind] = Counter(label: "mesh_agent_forbidden_destinations_total", dimensions: [("kind", kind.rawValue), ("path", path)])
        }
        self.counters = counters
    }

    func refused(_ kind: ForbiddenDestination) {
        counters[kind]?.increment()
    }
}
