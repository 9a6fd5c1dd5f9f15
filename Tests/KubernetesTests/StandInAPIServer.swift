import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import TLS

/// A Kubernetes API server for the tests, on 127.0.0.1 only: pods and
/// namespaces the test scripts, served as the real one serves them — lists
/// (`limit`/`continue` pages), chunked watch streams from a resource version
/// with replay of what happened since, `BOOKMARK`s, `ERROR` 410 once history
/// is compacted — and the faults a client must live through: dropped
/// connections, a stop and a start on the same port, a wrong token.
final class StandInAPIServer: @unchecked Sendable {
    struct PodFixture: Sendable {
        var uid: String
        var name: String
        var namespace: String
        var node: String
        var labels: [String: String] = [:]
        var serviceAccount: String? = nil
        var qosClass = "Burstable"
        var hostNetwork = false
        var ports: [Int] = [8080]
        var ips: [String] = []
        var phase = "Running"
    }

    struct RecordedRequest: Sendable {
        var uri: String
        var authorization: String?

        var query: [String: String] {
            var items: [String: String] = [:]
            for item in URLComponents(string: uri)?.queryItems ?? [] { items[item.name] = item.value ?? "" }
            return items
        }
        var isWatch: Bool { query["watch"] == "1" }
        var path: String { String(uri.prefix { $0 != "?" }) }
    }

    private struct Event {
        var resource: String
        var revision: Int
        var node: String?
        var line: String
    }

    private let lock = NIOLock()
    private var revision = 1000
    private var pods: [String: (fixture: PodFixture, revision: Int)] = [:]
    private var namespaces: [String: (labels: [String: String], revision: Int)] = [:]
    private var history: [Event] = []
    /// Watches from a version below this get 410: history before it is gone.
    private var oldestWatchable = 0
    private var watchers: [(resource: String, node: String?, channel: any Channel)] = []
    private var connections: [ObjectIdentifier: any Channel] = [:]
    private var recorded: [RecordedRequest] = []
    private var listener: (any Channel)?

    let group: any EventLoopGroup
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    var requiredToken: String? {
        get { lock.withLock { _requiredToken } }
        set { lock.withLock { _requiredToken = newValue } }
    }
    private var _requiredToken: String?
    /// Answer a watch from a too old version with HTTP 410 instead of an
    /// `ERROR` event in a 200 stream (real servers have done both).
    var goneAsHTTPStatus: Bool {
        get { lock.withLock { _goneAsHTTPStatus } }
        set { lock.withLock { _goneAsHTTPStatus = newValue } }
    }
    private var _goneAsHTTPStatus = false
    /// TLS for `https://`; nil for plain HTTP.
    let tls: TLSContext?
    private(set) var port = 0

    init(group: any EventLoopGroup, tls: TLSContext? = nil) {
        self.group = group
        self.tls = tls
    }

    var url: URL {
        // The scheme and address are fixed and valid.
        URL(string: "\(tls == nil ? "http" : "https")://127.0.0.1:\(port)") ?? URL(fileURLWithPath: "/")
    }

    var requests: [RecordedRequest] { lock.withLock { recorded } }

    // MARK: Running

    /// Listens on 127.0.0.1, on `port` (0: any free one; the same port again
    /// after `stop`, as a restarted API server).
    func start(port requested: Int? = nil) async throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    if let tls {
                        try operations.addHandler(TLSHandler(context: tls))
                    }
                    try operations.configureHTTPServerPipeline()
                    try operations.addHandler(Handler(server: self))
                    lock.withLock { connections[ObjectIdentifier(channel)] = channel }
                    channel.closeFuture.whenComplete { [self] _ in
                        lock.withLock {
                            connections[ObjectIdentifier(channel)] = nil
                            watchers.removeAll { $0.channel === channel }
                        }
                    }
                }
            }
        let channel = try await bootstrap.bind(host: "127.0.0.1", port: requested ?? port).get()
        port = channel.localAddress?.port ?? 0
        lock.withLock { listener = channel }
    }

    /// Stops listening and drops every connection, as a crashed API server.
    func stop() async throws {
        let (listener, open) = lock.withLock { () -> ((any Channel)?, [any Channel]) in
            defer {
                self.listener = nil
                watchers = []
            }
            return (self.listener, Array(connections.values))
        }
        try await listener?.close()
        for channel in open { try? await channel.close() }
    }

    /// Drops every open connection (the listener stays).
    func dropConnections() async {
        let open = lock.withLock { Array(connections.values) }
        for channel in open { try? await channel.close() }
    }

    // MARK: Scripting

    func addPod(_ pod: PodFixture) { changePod(pod, type: "ADDED") }
    func modifyPod(_ pod: PodFixture) { changePod(pod, type: "MODIFIED") }

    func deletePod(uid: String) {
        let send: [(any Channel, String)] = lock.withLock {
            guard let old = pods.removeValue(forKey: uid) else { return [] }
            revision += 1
            return record(resource: "pods", node: old.fixture.node, type: "DELETED", object: Self.podObject(old.fixture, revision: revision))
        }
        deliver(send)
    }

    func setNamespace(_ name: String, labels: [String: String] = [:]) {
        let send: [(any Channel, String)] = lock.withLock {
            let type = namespaces[name] == nil ? "ADDED" : "MODIFIED"
            revision += 1
            namespaces[name] = (labels, revision)
            return record(resource: "namespaces", node: nil, type: type, object: Self.namespaceObject(name, labels: labels, revision: revision))
        }
        deliver(send)
    }

    /// A `BOOKMARK` at the current version on every open watch.
    func bookmark() {
        let send: [(any Channel, String)] = lock.withLock {
            let line = Self.line(["type": "BOOKMARK", "object": [
                "kind": "Pod", "apiVersion": "v1",
                "metadata": ["resourceVersion": String(revision), "annotations": ["k8s.io/initial-events-end": "true"]],
                "spec": ["containers": NSNull()], "status": [:] as [String: Any],
            ]])
            return watchers.map { ($0.channel, line) }
        }
        deliver(send)
    }

    /// Compacts history: watches from any version up to now get 410 from
    /// here on, and the open ones are told so and ended.
    func expireHistory() {
        let open: [any Channel] = lock.withLock {
            // The compaction is a change of its own: a list after it gives a
            // version that can be watched.
            revision += 1
            oldestWatchable = revision
            history = []
            defer { watchers = [] }
            return watchers.map(\.channel)
        }
        for channel in open {
            channel.eventLoop.execute {
                Self.write(Self.goneLine(), to: channel, split: false)
                channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
            }
        }
    }

    /// Sends raw bytes as one chunk on every open watch.
    func sendRaw(_ text: String) {
        let open = lock.withLock { watchers.map(\.channel) }
        for channel in open {
            var buffer = channel.allocator.buffer(capacity: text.utf8.count)
            buffer.writeString(text)
            channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)), promise: nil)
        }
    }

    var openWatches: Int { lock.withLock { watchers.count } }

    private func changePod(_ pod: PodFixture, type: String) {
        let send: [(any Channel, String)] = lock.withLock {
            revision += 1
            pods[pod.uid] = (pod, revision)
            return record(resource: "pods", node: pod.node, type: type, object: Self.podObject(pod, revision: revision))
        }
        deliver(send)
    }

    /// Keeps the event for watches to come, and says what to send to the open ones.
    private func record(resource: String, node: String?, type: String, object: [String: Any]) -> [(any Channel, String)] {
        let line = Self.line(["type": type, "object": object])
        history.append(Event(resource: resource, revision: revision, node: node, line: line))
        return watchers.filter { $0.resource == resource && ($0.node == nil || $0.node == node) }.map { ($0.channel, line) }
    }

    private func deliver(_ sends: [(any Channel, String)]) {
        for (channel, line) in sends {
            channel.eventLoop.execute { Self.write(line, to: channel, split: true) }
        }
    }

    /// One event line; split in two chunks, so the client must join them.
    private static func write(_ line: String, to channel: any Channel, split: Bool) {
        let bytes = Array((line + "\n").utf8)
        let cut = split ? bytes.count / 2 : bytes.count
        for piece in [bytes[..<cut], bytes[cut...]] where !piece.isEmpty {
            var buffer = channel.allocator.buffer(capacity: piece.count)
            buffer.writeBytes(piece)
            channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)), promise: nil)
        }
    }

    // MARK: Serving

    private enum Answer {
        case json(status: HTTPResponseStatus, body: String)
        case watch(lines: [String], end: Bool)
    }

    private func answer(_ request: RecordedRequest, channel: any Channel) -> Answer {
        lock.withLock {
            recorded.append(request)
            if let token = _requiredToken, request.authorization != "Bearer \(token)" {
                return .json(status: .unauthorized, body: Self.line(["kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401]))
            }
            let resource: String
            switch request.path {
            case "/api/v1/pods": resource = "pods"
            case "/api/v1/namespaces": resource = "namespaces"
            default:
                return .json(status: .notFound, body: Self.line(["kind": "Status", "status": "Failure", "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404]))
            }
            let query = request.query
            var node: String?
            if let selector = query["fieldSelector"], selector.hasPrefix("spec.nodeName=") {
                node = String(selector.dropFirst("spec.nodeName=".count))
            }
            if request.isWatch {
                guard let from = query["resourceVersion"].flatMap(Int.init), from >= oldestWatchable else {
                    if _goneAsHTTPStatus {
                        return .json(status: .gone, body: Self.goneLine())
                    }
                    return .watch(lines: [Self.goneLine()], end: true)
                }
                let replay = history.filter { $0.resource == resource && $0.revision > from && (node == nil || $0.node == node) }.map(\.line)
                watchers.append((resource, node, channel))
                return .watch(lines: replay, end: false)
            }
            var items: [[String: Any]]
            if resource == "pods" {
                items = pods.values.filter { node == nil || $0.fixture.node == node }.sorted { $0.fixture.uid < $1.fixture.uid }
                    .map { Self.podObject($0.fixture, revision: $0.revision) }
            } else {
                items = namespaces.sorted { $0.key < $1.key }.map { Self.namespaceObject($0.key, labels: $0.value.labels, revision: $0.value.revision) }
            }
            // Pages: `continue` is the offset, written so that it needs escaping in a URL.
            let offset = query["continue"].flatMap { Int($0.dropFirst("at=".count).prefix { $0 != "/" }) } ?? 0
            let limit = query["limit"].flatMap(Int.init) ?? Int.max
            let page = Array(items.dropFirst(offset).prefix(limit))
            var metadata: [String: Any] = ["resourceVersion": String(revision)]
            if offset + page.count < items.count { metadata["continue"] = "at=\(offset + page.count)/+&" }
            items = page
            let kind = resource == "pods" ? "PodList" : "NamespaceList"
            return .json(status: .ok, body: Self.line(["kind": kind, "apiVersion": "v1", "metadata": metadata, "items": items]))
        }
    }

    private final class Handler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let server: StandInAPIServer
        var head: HTTPRequestHead?

        init(server: StandInAPIServer) {
            self.server = server
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): self.head = head
            case .body: break
            case .end:
                guard let head else { return }
                let request = RecordedRequest(uri: head.uri, authorization: head.headers.first(name: "authorization"))
                switch server.answer(request, channel: context.channel) {
                case .json(let status, let body):
                    var headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(body.utf8.count))])
                    headers.add(name: "Connection", value: "close")
                    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
                    context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
                    context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                case .watch(let lines, let end):
                    let headers = HTTPHeaders([("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
                    context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                    for line in lines { StandInAPIServer.write(line, to: context.channel, split: true) }
                    if end { context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil) }
                }
            }
        }
    }

    // MARK: JSON as the API server writes it

    static func line(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func goneLine() -> String {
        line(["type": "ERROR", "object": [
            "kind": "Status", "apiVersion": "v1", "metadata": [:] as [String: Any], "status": "Failure",
            "message": "too old resource version: 1000 (1042)", "reason": "Expired", "code": 410,
        ]])
    }

    static func podObject(_ pod: PodFixture, revision: Int) -> [String: Any] {
        var spec: [String: Any] = [
            "nodeName": pod.node,
            "containers": [["name": "main", "image": "registry.example/app:1", "ports": pod.ports.map { ["containerPort": $0, "protocol": "TCP"] }]],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
        ]
        if let account = pod.serviceAccount {
            spec["serviceAccountName"] = account
            spec["serviceAccount"] = account
        }
        if pod.hostNetwork { spec["hostNetwork"] = true }
        var status: [String: Any] = ["phase": pod.phase, "qosClass": pod.qosClass]
        if let first = pod.ips.first {
            status["podIP"] = first
            status["podIPs"] = pod.ips.map { ["ip": $0] }
        }
        return [
            "kind": "Pod", "apiVersion": "v1",
            "metadata": [
                "name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "resourceVersion": String(revision),
                "labels": pod.labels, "creationTimestamp": "2026-12-07T10:00:00Z",
            ] as [String: Any],
            "spec": spec, "status": status,
        ]
    }

    static func namespaceObject(_ name: String, labels: [String: String], revision: Int) -> [String: Any] {
        var allLabels = labels
        allLabels["kubernetes.io/metadata.name"] = name
        return [
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": ["name": name, "uid": UUID().uuidString.lowercased(), "resourceVersion": String(revision), "labels": allLabels] as [String: Any],
            "spec": ["finalizers": ["kubernetes"]], "status": ["phase": "Active"],
        ]
    }
}
