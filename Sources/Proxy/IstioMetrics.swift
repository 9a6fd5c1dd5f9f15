import Metrics

/// Istio's standard TCP metrics, with its names and labels, so that Istio's
/// Grafana dashboards read the agent's numbers unchanged. Label values come
/// from bounded sets: identities and workloads of the mesh, never addresses.
///
/// Bytes are counted when a connection closes (Istio's proxies also report
/// periodically while it is open).
enum IstioTCPMetrics {
    /// A connection's labels are fixed when it opens; they are built once and
    /// used again when it closes.
    static func opened(_ entry: AccessLogEntry) -> [(String, String)] {
        let labels = labels(entry)
        Counter(label: "istio_tcp_connections_opened_total", dimensions: labels).increment()
        return labels
    }

    static func closed(_ entry: AccessLogEntry, labels: [(String, String)]) {
        Counter(label: "istio_tcp_connections_closed_total", dimensions: labels).increment()
        // Istio's "sent" is what the destination sent back, "received" what the source sent.
        Counter(label: "istio_tcp_sent_bytes_total", dimensions: labels).increment(by: Int64(clamping: entry.bytesSent))
        Counter(label: "istio_tcp_received_bytes_total", dimensions: labels).increment(by: Int64(clamping: entry.bytesReceived))
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
