import Foundation
import Testing
@testable import Kubernetes

/// Bytes as a Kubernetes 1.30 API server writes them (`kubectl get --raw`),
/// shortened where only length differs.
enum Recorded {
    static let podList = """
        {"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"48213","continue":"eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDgyMTMsInN0YXJ0IjoiZGVmYXVsdC9vcmRlcnNcdTAwMDAifQ"},"items":[\
        {"metadata":{"name":"orders-7d9c5b8f6d-x2k4q","generateName":"orders-7d9c5b8f6d-","namespace":"shop","uid":"6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11","resourceVersion":"48190",\
        "creationTimestamp":"2026-12-07T10:12:01Z","labels":{"app":"orders","pod-template-hash":"7d9c5b8f6d","istio.io/dataplane-mode":"ambient"},\
        "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"orders-7d9c5b8f6d","uid":"1f0e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b","controller":true,"blockOwnerDeletion":true}],\
        "managedFields":[{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"2026-12-07T10:12:01Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{}}}]},\
        "spec":{"volumes":[{"name":"kube-api-access-8xk2p","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}}],"defaultMode":420}}],\
        "containers":[{"name":"orders","image":"registry.example/orders:1.4","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"metrics","containerPort":9090,"protocol":"TCP"},{"name":"dns","containerPort":5353,"protocol":"UDP"}],\
        "env":[{"name":"DB_PASSWORD","value":"hunter2"}],"resources":{"limits":{"memory":"256Mi"},"requests":{"cpu":"100m","memory":"128Mi"}},"terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],\
        "initContainers":[{"name":"proxy","image":"registry.example/proxy:2","restartPolicy":"Always","ports":[{"containerPort":15090}]},{"name":"migrate","image":"registry.example/migrate:1","ports":[{"containerPort":7000}]}],\
        "restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"orders","serviceAccount":"orders","nodeName":"node-a",\
        "securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"},\
        "status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-12-07T10:12:04Z"}],\
        "hostIP":"192.168.10.11","hostIPs":[{"ip":"192.168.10.11"}],"podIP":"10.244.1.17","podIPs":[{"ip":"10.244.1.17"},{"ip":"fd00:10:244:1::11"}],"startTime":"2026-12-07T10:12:01Z",\
        "containerStatuses":[{"name":"orders","state":{"running":{"startedAt":"2026-12-07T10:12:03Z"}},"lastState":{},"ready":true,"restartCount":0,"image":"registry.example/orders:1.4","imageID":"","containerID":"containerd://4f1c2a9b","started":true}],"qosClass":"Burstable"}},\
        {"metadata":{"name":"kube-proxy-9sd7f","generateName":"kube-proxy-","namespace":"kube-system","uid":"0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d","resourceVersion":"611","labels":{"k8s-app":"kube-proxy"}},\
        "spec":{"containers":[{"name":"kube-proxy","image":"registry.k8s.io/kube-proxy:v1.30.0"}],"serviceAccountName":"kube-proxy","nodeName":"node-a","hostNetwork":true,"priorityClassName":"system-node-critical"},\
        "status":{"phase":"Running","podIP":"192.168.10.11","podIPs":[{"ip":"192.168.10.11"}],"qosClass":"BestEffort"}}]}
        """

    static let namespaceList = """
        {"kind":"NamespaceList","apiVersion":"v1","metadata":{"resourceVersion":"48213"},"items":[\
        {"metadata":{"name":"default","uid":"3c1f7a2e-0b9d-4e8f-a6c5-7d2b1e0f9a8c","resourceVersion":"192","creationTimestamp":"2026-12-01T08:00:00Z","labels":{"kubernetes.io/metadata.name":"default"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}},\
        {"metadata":{"name":"shop","uid":"8e2d4c6b-1a3f-4e5d-9c7b-0a2e4f6d8b1c","resourceVersion":"40117","labels":{"istio.io/dataplane-mode":"ambient","kubernetes.io/metadata.name":"shop"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}]}
        """

    static let added = #"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"shop","uid":"6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e12","resourceVersion":"48214","labels":{"app":"web"}},"spec":{"nodeName":"node-a","containers":[{"name":"web","ports":[{"containerPort":80}]}]},"status":{"phase":"Pending","qosClass":"BestEffort"}}}"#
    static let modified = #"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"shop","uid":"6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e12","resourceVersion":"48219","labels":{"app":"web"}},"spec":{"nodeName":"node-a","containers":[{"name":"web","ports":[{"containerPort":80}]}]},"status":{"phase":"Running","podIP":"10.244.1.18","podIPs":[{"ip":"10.244.1.18"}],"qosClass":"BestEffort"}}}"#
    static let deleted = #"{"type":"DELETED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"shop","uid":"6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e12","resourceVersion":"48230","deletionTimestamp":"2026-12-07T11:00:00Z","deletionGracePeriodSeconds":0},"spec":{"nodeName":"node-a","containers":[{"name":"web"}]},"status":{"phase":"Running","qosClass":"BestEffort"}}}"#
    static let bookmark = #"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"48301","creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}},"spec":{"containers":null},"status":{}}}"#
    static let gone = #"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 48213 (48290)","reason":"Expired","code":410}}"#
    static let internalError = #"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcd leader changed","reason":"InternalError","code":500}}"#
    static let namespaceModified = #"{"type":"MODIFIED","object":{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"shop","uid":"8e2d4c6b-1a3f-4e5d-9c7b-0a2e4f6d8b1c","resourceVersion":"48302","labels":{"kubernetes.io/metadata.name":"shop"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}}"#

    /// A watch stream as it arrives: the lines above, one after the other.
    static var stream: String { [added, modified, bookmark, deleted, gone].joined(separator: "\n") + "\n" }
}

@Suite struct DecoderTests {
    @Test func podList() throws {
        let list = try KubernetesDecoder.list(Array(Recorded.podList.utf8), of: Pod.self)
        #expect(list.metadata?.resourceVersion == "48213")
        #expect(list.metadata?.continue?.hasPrefix("eyJ2") == true)
        let items = try #require(list.items)
        #expect(items.count == 2)
        let orders = items[0]
        #expect(orders.metadata?.name == "orders-7d9c5b8f6d-x2k4q")
        #expect(orders.metadata?.namespace == "shop")
        #expect(orders.metadata?.uid == "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e11")
        #expect(orders.metadata?.resourceVersion == "48190")
        #expect(orders.metadata?.labels?["app"] == "orders")
        #expect(orders.spec?.nodeName == "node-a")
        #expect(orders.spec?.serviceAccountName == "orders")
        #expect(orders.spec?.containers?.first?.ports?.map(\.containerPort) == [8080, 9090, 5353])
        #expect(orders.spec?.containers?.first?.ports?.map(\.protocol) == ["TCP", "TCP", "UDP"])
        #expect(orders.spec?.initContainers?.map(\.restartPolicy) == ["Always", nil])
        #expect(orders.status?.phase == "Running")
        #expect(orders.status?.podIPs?.map(\.ip) == ["10.244.1.17", "fd00:10:244:1::11"])
        #expect(orders.status?.qosClass == "Burstable")
        #expect(items[1].spec?.hostNetwork == true)
    }

    @Test func namespaceList() throws {
        let list = try KubernetesDecoder.list(Array(Recorded.namespaceList.utf8), of: Namespace.self)
        #expect(list.metadata?.resourceVersion == "48213")
        #expect(list.items?.map { $0.metadata?.name } == ["default", "shop"])
        #expect(list.items?.last?.metadata?.labels?["istio.io/dataplane-mode"] == "ambient")
    }

    @Test func emptyListsComeWithNullItems() throws {
        let list = try KubernetesDecoder.list(Array(#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":null}"#.utf8), of: Pod.self)
        #expect(list.items == nil)
        #expect(list.metadata?.resourceVersion == "7")
    }

    @Test func watchEvents() throws {
        func decode(_ line: String) throws -> WatchEvent<Pod> { try KubernetesDecoder.watchEvent(Array(line.utf8), as: Pod.self) }
        guard case .added(let added) = try decode(Recorded.added) else { Issue.record("not ADDED"); return }
        #expect(added.metadata?.name == "web" && added.metadata?.resourceVersion == "48214")
        #expect(added.spec?.containers?.first?.ports?.first?.protocol == nil, "absent protocol means TCP, decided later")
        guard case .modified(let modified) = try decode(Recorded.modified) else { Issue.record("not MODIFIED"); return }
        #expect(modified.status?.podIPs?.first?.ip == "10.244.1.18")
        guard case .deleted(let deleted) = try decode(Recorded.deleted) else { Issue.record("not DELETED"); return }
        #expect(deleted.metadata?.uid == "6b0b6d58-7a8e-4c3f-9f7e-2d0c1b7a9e12")
        #expect(try decode(Recorded.bookmark) == .bookmark(resourceVersion: "48301"))
        guard case .error(let status) = try decode(Recorded.gone) else { Issue.record("not ERROR"); return }
        #expect(status.isGone && status.reason == "Expired")
        #expect(status.description == "410 Expired: too old resource version: 48213 (48290)")
        guard case .error(let other) = try decode(Recorded.internalError) else { Issue.record("not ERROR"); return }
        #expect(!other.isGone && other.code == 500)
        #expect(try decode(#"{"type":"SNAPSHOT_DONE","object":{}}"#) == .unknown(type: "SNAPSHOT_DONE"))
        let namespace = try KubernetesDecoder.watchEvent(Array(Recorded.namespaceModified.utf8), as: Namespace.self)
        guard case .modified(let shop) = namespace else { Issue.record("not MODIFIED"); return }
        #expect(shop.metadata?.labels?["istio.io/dataplane-mode"] == nil)
    }

    @Test(arguments: [
        ("", "not valid JSON"),
        ("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"x\"", "not valid JSON"),
        ("[]", "is not an object"),
        (#"{"object":{}}"#, #""type" is missing"#),
        (#"{"type":7,"object":{}}"#, "type is not a string"),
        (#"{"type":"ADDED"}"#, #""object" is missing"#),
        (#"{"type":"ADDED","object":[1]}"#, "object is not an object"),
        (#"{"type":"ADDED","object":{"metadata":{"labels":{"a":1}}}}"#, "object.metadata.labels.a is not a string"),
        (#"{"type":"ADDED","object":{"spec":{"containers":[{"ports":[{"containerPort":"80"}]}]}}}"#, "object.spec.containers[0].ports[0].containerPort is not an integer"),
        (#"{"type":"ADDED","object":{"spec":{"hostNetwork":"yes"}}}"#, "object.spec.hostNetwork is not true or false"),
        (#"{"type":"BOOKMARK","object":{"metadata":{}}}"#, "a BOOKMARK without metadata.resourceVersion"),
        (#"{"type":"ERROR","object":{"code":"410"}}"#, "object.code is not an integer"),
    ])
    func badLinesSayWhatIsWrong(line: String, detail: String) {
        do {
            _ = try KubernetesDecoder.watchEvent(Array(line.utf8), as: Pod.self)
            Issue.record("\(line) decoded")
        } catch let error as KubernetesDecodingError {
            #expect(error.byteCount == line.utf8.count)
            #expect(error.description.hasPrefix("cannot decode a watch event (\(line.utf8.count) bytes): "))
            #expect(error.detail.contains(detail), "\(error.detail)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func errorsNeverQuoteTheObject() {
        // Pod specs can carry secrets in env values; an error says where, not what.
        let line = #"{"type":"ADDED","object":{"spec":{"containers":[{"env":[{"name":"DB_PASSWORD","value":"hunter2"}],"ports":"hunter2"}]}}}"#
        do {
            _ = try KubernetesDecoder.watchEvent(Array(line.utf8), as: Pod.self)
            Issue.record("decoded")
        } catch {
            #expect(!"\(error)".contains("hunter2"), "\(error)")
        }
    }

    @Test func statusBodies() {
        let body = #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:mesh:agent\" cannot watch resource \"pods\"\n","reason":"Forbidden","code":403}"#
        let status = KubernetesDecoder.status(Array(body.utf8))
        #expect(status?.code == 403)
        #expect(status?.description.contains("\n") == false, "control characters from outside are not logged")
        #expect(KubernetesDecoder.status(Array("<html>".utf8)) == nil)
        let error = KubernetesSourceError.http(request: "/api/v1/pods?watch=1", code: 403, status: status)
        #expect(error.description.contains("ClusterRole must allow get, list and watch on pods and namespaces"))
    }

    @Test func recordedStreamThroughTheSplitter() throws {
        // Every way of cutting the recorded stream in two gives the same events.
        let bytes = Array(Recorded.stream.utf8)
        var expected: [WatchLineSplitter.Line] = []
        var whole = WatchLineSplitter()
        expected = whole.append(bytes)
        #expect(expected.count == 5)
        for cut in stride(from: 0, through: bytes.count, by: 7) {
            var splitter = WatchLineSplitter()
            let lines = splitter.append(bytes[..<cut]) + splitter.append(bytes[cut...])
            #expect(lines == expected, "cut at \(cut)")
            #expect(splitter.finish() == nil)
        }
        var events: [WatchEvent<Pod>] = []
        for case .complete(let line) in expected {
            events.append(try KubernetesDecoder.watchEvent(line, as: Pod.self))
        }
        #expect(events.count == 5)
        if case .error(let status) = events.last { #expect(status.isGone) } else { Issue.record("the stream does not end in 410") }
    }
}
