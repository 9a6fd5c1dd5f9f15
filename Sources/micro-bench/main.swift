/// Micro-benchmarks of the hot pure pieces of the data path, in memory and in
/// one process: an authorization decision (per connection and per request), the
/// lookup that names the workload behind a connection, an inspected HTTP/1.1
/// request through the gate, the opening and closing
/// of one HBONE tunnel stream, and counting the service graph's edges. Prints
/// one line per measurement, `NAME  N ns/UNIT  (...)`, which bench/run.py
/// reads; `make bench-micro` runs it in release. `micro-bench allocations`
/// counts heap allocations per tunnel chunk instead (Allocations.swift);
/// `micro-bench streams` measures the tunnel's streams only, `micro-bench
/// inspection` the inspected requests only.

do {
    switch CommandLine.arguments.dropFirst().first {
    case "allocations":
        // Counts heap allocations per chunk, under the preloaded malloc counter.
        try measureAllocations()
    case "streams":
        // The tunnel's streams alone, e.g. under a profiler.
        try measureTunnelStreams()
    case "inspection":
        // Inspected HTTP/1.1 requests alone, e.g. under a profiler.
        try measureInspectedRequests()
    default:
        try measurePolicyDecisions()
        try measureInspectedRequests()
        try measureIdentityLookups()
        try measureTunnelStreams()
        try measureGraphRecording()
    }
} catch {
    fail("\(error)")
}
