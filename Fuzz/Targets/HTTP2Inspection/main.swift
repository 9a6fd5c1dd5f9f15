import FuzzSupport

/// HTTP/2 frames from a client with prior knowledge (the preface is added
/// here, so every input is a frame sequence) through the agent's inspected
/// HTTP/2 path: swift-nio-http2's parser and HPACK, `HTTP2Request.parse` on
/// each header block, the request decision, and the per-stream exchange with
/// an HTTP/2 workload. Only requests policy allows may reach the workload.
Fuzzing.run { bytes in
    InspectedConnectionHarness.run(clientBytes: Fuzzing.http2Preface + bytes, workload: .http2)
}
