import FuzzSupport

/// The client's bytes of a whole inspected connection: the protocol sniffer,
/// the request-line guard, NIOHTTP1's decoder as the agent configures it, the
/// request gate and its exchange state, and the relay to an HTTP/1.1 workload.
/// Only requests policy allows may reach the workload, however the bytes frame
/// them (see `InspectedConnectionHarness`).
Fuzzing.run { bytes in
    InspectedConnectionHarness.run(clientBytes: bytes, workload: .http1)
}
