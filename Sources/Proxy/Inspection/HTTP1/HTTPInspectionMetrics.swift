import Metrics
import NIOCore

enum HTTPInspectionMetrics {
    static let malformed = Counter(label: "mesh_agent_http_requests_refused_total", dimensions: [("reason", "malformed")])
    static let upstreamReset = Counter(label: "mesh_agent_http_upstream_resets_total")
    /// Responses a workload framed so that the client could read them differently.
    static let malformedResponse = Counter(label: "mesh_agent_http_malformed_responses_total")

    static func labels(_ entry: AccessLogEntry) -> [(String, String)] {
        var labels = IstioTCPMetrics.labels(entry)
        for index in labels.indices where labels[index].0 == "request_protocol" {
            labels[index].1 = "http"
        }
        return labels
    }

    static func counter(_ labels: [(String, String)], status: Int) -> Counter {
        Counter(label: "istio_requests_total", dimensions: labels + [("response_code", String(status))])
    }
}

/// `istio_requests_total` for one connection: its labels are fixed but for the
/// status, so each status's counter is looked up once, not per request.
struct ConnectionRequestCounters {
    private var labels: [(String, String)]?
    private var counters: [Int: Counter] = [:]
    /// The last status counted, and its counter: most requests of a
    /// connection get the status the one before got.
    private var last: (status: Int, counter: Counter)?

    mutating func record(_ entry: AccessLogEntry) {
        let status = entry.status ?? 0
        if let last, last.status == status {
            last.counter.increment()
            return
        }
        if let counter = counters[status] {
            last = (status, counter)
            counter.increment()
            return
        }
        let labels = self.labels ?? HTTPInspectionMetrics.labels(entry)
        self.labels = labels
        let counter = HTTPInspectionMetrics.counter(labels, status: status)
        counters[status] = counter
        last = (status, counter)
        counter.increment()
    }
}
