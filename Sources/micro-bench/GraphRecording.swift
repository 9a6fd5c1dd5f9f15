import Agent
import Graph
import NIOCore
import NIOEmbedded
import Proxy

/// What the service graph costs the data path: counting one connection's and
/// one request's edge on an event loop (the key built from the access-log
/// entry, the path template, the aggregate's lookup), and, for
/// `graph.http: true`, finding one request head in a spliced connection's bytes.
func measureGraphRecording() throws {
    var connection = AccessLogEntry(time: 1_700_000_000, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
    connection.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/checkout"
    connection.sourceAddress = try SocketAddress(ipAddress: "10.77.0.1", port: 41234)
    connection.destinationAddress = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
    connection.destinationWorkload = "shop/orders"
    connection.destinationIdentity = "spiffe://cluster.local/ns/shop/sa/orders"
    connection.policy = "shop/orders-allow"
    connection.rule = 0
    var request = connection
    request.protocol = "http"
    request.isRequest = true
    request.method = "GET"
    request.path = "/orders/12345"

    // The aggregate one loop keeps between flushes, as GraphTally's are.
    var aggregate = EdgeAggregate()
    measure("graph: count a connection's edge", per: "connection", iterations: 1_000_000, counting: "counted") {
        guard let observation = EdgeObservation(connection) else { return false }
        aggregate.add(observation)
        return true
    }
    measure("graph: count a request's edge", per: "request", iterations: 1_000_000, counting: "counted") {
        guard let observation = EdgeObservation(request) else { return false }
        aggregate.add(observation)
        return true
    }

    let head = Array("GET /orders/12345 HTTP/1.1\r\nHost: 10.77.0.2:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n".utf8)
    var framing = HTTPRequestFraming(maximumHeadBytes: 64 * 1024)
    measure("graph.http: find a request head", per: "request", iterations: 1_000_000, counting: "found") {
        var found = false
        head.withUnsafeBytes { bytes in framing.read(bytes) { _ in found = true } }
        return found
    }
    // The tap as the agent installs it on a spliced connection: the head
    // found, its path normalized, the request's entry and its edge counted.
    let sink = EdgeCountingSink()
    let tapped = EmbeddedChannel(handler: HTTPRequestTap(.countingRequests(of: connection, in: sink, pathRules: .standard)))
    let bytes = ByteBuffer(bytes: head)
    measureEvery("graph.http: a request through the tap", per: "request", iterations: 1_000_000, counting: "counted") {
        let before = sink.counted
        try tapped.writeInbound(bytes)
        _ = try tapped.readInbound(as: ByteBuffer.self)
        return sink.counted == before + 1
    }
}

/// Counts what it observes into one aggregate, as the access-log writer does
/// into an event loop's (the benchmark runs on one thread).
private final class EdgeCountingSink: AccessLogSink, @unchecked Sendable {
    private var aggregate = EdgeAggregate()
    private(set) var counted = 0
    let observesRequests = true

    func record(_ entry: AccessLogEntry) {}

    func observe(_ entry: AccessLogEntry) {
        guard let observation = EdgeObservation(entry) else { return }
        aggregate.add(observation)
        counted += 1
    }
}
