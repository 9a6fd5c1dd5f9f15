import CNI
import Metrics

/// `mesh_agent_cni_requests_total{command, result}`: every connection on the
/// enrollment socket, by the request's command (`none` when it never got to
/// one) and how it ended (`EnrollmentResult`). Made up front: the set is
/// small and fixed.
struct EnrollmentMetrics: Sendable {
    private let counters: [String: Counter]

    static let label = "mesh_agent_cni_requests_total"

    init(factory: any MetricsFactory) {
        var counters: [String: Counter] = [:]
        for command in EnrollmentRequest.Command.allCases.map(\.rawValue) + ["none"] {
            for result in EnrollmentResult.allCases {
                counters[Self.key(command, result)] = Counter(label: Self.label, dimensions: [("command", command), ("result", result.rawValue)], factory: factory)
            }
        }
        self.counters = counters
    }

    func record(_ result: EnrollmentResult, command: EnrollmentRequest.Command?) {
        counters[Self.key(command?.rawValue ?? "none", result)]?.increment()
    }

    private static func key(_ command: String, _ result: EnrollmentResult) -> String {
        "\(command) \(result.rawValue)"
    }
}
