import Metrics
import NIOConcurrencyHelpers

/// Istio's standard TCP metrics, with its names and labels, so that Istio's
/// Grafana dashboards read the agent's numbers unchanged. Label values come
/// from bounded sets: identities and workloads of the mesh, never addresses.
///
/// Bytes are counted when a connection closes (Istio's proxies also report
/// periodically while it is open).
enum IstioTCPMetrics {
    /// The four counters of one label set. A connection's labels are fixed
    /// when it opens, so its counters are found once then, and kept per label
    /// set: asking the registry for a labelled counter validates and hashes
    /// every label, which cost more than the rest of a short connection's
    /// bookkeeping.
    final class Counters: Sendable {
        let opened: Counter
        let closed: Counter
        let sent: Counter
        let received: Counter

        init(_ labels: [(String, String)]) {
            opened = Counter(label: "istio_tcp_connections_opened_total", dimensions: labels)
            closed = Counter(label: "istio_tcp_connections_closed_total", dimensions: labels)
            sent = Counter(label: "istio_tcp_sent_bytes_total", dimensions: labels)
            received = Counter(label: "istio_tcp_received_bytes_total", dimensions: labels)
        }
    }

    private static let known = NIOLockedValueBox<[String: Counters]>([:])

    static func opened(_ entry: AccessLogEntry) -> Counters {
        let labels = labels(entry)
        let key = labels.map { "\($0.0)=\($0.1)" }.joined(separator: "\u{1}")
        let counters = known.withLockedValue { known in
            if let found = known[key] { return found }
            let made = Counters(labels)
            known[key] = made
            return made
        }
        counters.opened.increment()
        return counters
    }

    static func closed(_ entry: AccessLogEntry, counters: Counters) {
        counters.closed.increment()
        // Istio's "sent" is what the destination sent back, "received" what the source sent.
        counters.sent.increment(by: Int64(clamping: entry.bytesSent))
        counters.received.increment(by: Int64(clamping: entry.bytesReceived))
    }

    static func labels(_ entry: AccessLogEntry) -> [(String, String)] {
        let source = split(entry.sourceWorkload)
        let destination = split(entry.destinationWorkload)
        return [
            ("reporter", entry.direction == .outbound ? "source" : "destination"),
            ("source_principal", entry.sourceIdentity ?? "unknown"),
            ("source_workload", source.name),
            ("source_workload_namespace", source.namespace),
            ("destination_principal", entry.destinationIdentity ?? "unknown"),
            ("destination_workload", destination.name),
            ("destination_workload_namespace", destination.namespace),
            ("connection_security_policy", entry.tls == .mutual ? "mutual_tls" : "none"),
            ("request_protocol", "tcp"),
            ("response_flags", "-"),
        ]
    }

    /// `namespace/name` as the access log writes a workload.
    private static func split(_ qualified: String?) -> (namespace: String, name: String) {
        guard let qualified, let slash = qualified.firstIndex(of: "/") else { return ("unknown", "unknown") }
        return (String(qualified[..<slash]), String(qualified[qualified.index(after: slash)...]))
    }
}
