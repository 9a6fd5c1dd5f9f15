import Agent
import LinuxNet
import NIOCore
import NIOEmbedded
import Policy
import Proxy
import TLS
import Workloads

/// One allowed request and its response through an inspected HTTP/1.1
/// connection, as the destination's agent carries it under an L7 policy:
/// the request read, decided and passed on, the response read and passed
/// back, its access-log line formatted and written (to /dev/null). Embedded
/// channels stand in for the two sockets; no graph is kept.
func measureInspectedRequests() throws {
    let policy = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: bench, namespace: shop}
        spec:
          rules:
          - from: [{source: {principals: ["cluster.local/ns/shop/sa/checkout"]}}]
            to: [{operation: {methods: ["GET"], paths: ["/", "/api/*"]}}]
        """
    let file = try PolicyFile.parse(policy, file: "bench.yaml")
    let workload = Workload(
        name: "orders", namespace: "shop", serviceAccount: "orders", identity: try SpiffeID("spiffe://cluster.local/ns/shop/sa/orders"),
        labels: ["app": "orders"], ports: [8080])
    let snapshot = AuthorizationSnapshot(
        generation: 1, policies: AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: "istio-system"), workloads: [workload])
    let source = try SocketAddress(ipAddress: "10.77.0.1", port: 40000)
    let destination = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
    var connection = AccessLogEntry(time: 1_700_000_000, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
    connection.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/checkout"
    connection.sourceAddress = source
    connection.destinationAddress = destination
    connection.destinationWorkload = "shop/orders"
    connection.destinationIdentity = "spiffe://cluster.local/ns/shop/sa/orders"
    connection.protocol = "http"
    let inspector = HTTPRequestInspector(
        workload: workload, connection: ConnectionAttributes(peer: try SpiffeID("spiffe://cluster.local/ns/shop/sa/checkout"), source: source, destination: destination),
        authorizer: InboundAuthorizer(snapshot), connectionEntry: connection.cachingParties())
    let accessLog = try AccessLogWriter(path: "/dev/null", limit: .unlimited)
    let handlers = HTTP1Inspection.handlers(
        inspector: inspector, accessLog: accessLog, limit: HTTPHeadSizeLimit(), received: ByteCounter(), sent: ByteCounter())

    let loop = EmbeddedEventLoop()
    let client = EmbeddedChannel(handler: handlers.client, loop: loop)
    let upstream = EmbeddedChannel(handler: handlers.upstream, loop: loop)
    try client.connect(to: source).wait()
    try upstream.connect(to: destination).wait()
    // What wrk sends, and a small response as the bench's nginx gives it.
    let request = ByteBuffer(string: "GET /api/orders HTTP/1.1\r\nHost: 10.77.0.2:8080\r\n\r\n")
    let response = ByteBuffer(
        string: "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 08 Dec 2026 01:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n")
    measureEvery("L7: an inspected request and its response", per: "request", iterations: 300_000, counting: "answered") {
        try client.writeInbound(request)
        guard try upstream.readOutbound(as: ByteBuffer.self) != nil else { return false }
        try upstream.writeInbound(response)
        var answered = 0
        while let part = try client.readOutbound(as: ByteBuffer.self) {
            answered += part.readableBytes
        }
        return answered == response.readableBytes
    }
    _ = try? client.finish()
    _ = try? upstream.finish()
}
