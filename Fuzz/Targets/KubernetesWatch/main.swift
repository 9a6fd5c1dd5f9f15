import FuzzSupport
import LinuxNet
import NIOCore
import Workloads
@testable import Kubernetes

/// A watch response body from the API server as the Kubernetes source reads
/// it: cut into lines (`WatchLineSplitter`) whatever chunks it arrives in,
/// each line decoded as a pod and as a namespace event, the pods mapped to
/// `DiscoveredPod`s; and the whole input as a pod list. The first byte picks
/// the chunk size.
///
/// The lines do not depend on the chunking, no line is longer than the limit
/// and no more than the limit is held; a pod reported has ports in range,
/// addresses that are addresses, an identity only from valid names, and a
/// cgroup that reads back as its own pod's; every error is one log line.
Fuzzing.run { bytes in
    guard let first = bytes.first else { return }
    let body = Array(bytes.dropFirst())
    let limit = 512

    var whole = WatchLineSplitter(maximumLineBytes: limit)
    let lines = whole.append(body)
    let rest = whole.finish()

    var chunked = WatchLineSplitter(maximumLineBytes: limit)
    var chunkedLines: [WatchLineSplitter.Line] = []
    let size = Int(first % 31) + 1
    var start = 0
    while start < body.count {
        let end = min(start + size, body.count)
        chunkedLines += chunked.append(body[start..<end])
        Fuzzing.require(chunked.bufferedBytes <= limit, "the splitter holds \(chunked.bufferedBytes) bytes, over its limit of \(limit)")
        start = end
    }
    Fuzzing.require(chunkedLines == lines, "chunks of \(size) bytes gave other lines than the whole body")
    Fuzzing.require(chunked.finish() == rest, "chunks of \(size) bytes left another unfinished line")

    var inventory = PodInventory(node: "node-a")
    inventory.replacePods([])
    inventory.replaceNamespaces([])
    for line in lines {
        guard case .complete(let text) = line else { continue }
        Fuzzing.require(text.count <= limit && !text.contains(UInt8(ascii: "\n")), "a line of \(text.count) bytes, or with a newline, was passed on")
        do {
            let event = try KubernetesDecoder.watchEvent(text, as: Pod.self)
            switch event {
            case .bookmark(let version): Fuzzing.require(!version.isEmpty, "a bookmark without a version was accepted")
            case .error(let status): Fuzzing.requireLoggable(status.description, "a watch error's status")
            case .unknown(let type): Fuzzing.requireLoggable(type, "an unknown event type")
            default: break
            }
            inventory.apply(event)
        } catch {
            Fuzzing.requireLoggable("\(error)", "a watch line's decoding error")
        }
        do {
            inventory.apply(try KubernetesDecoder.watchEvent(text, as: Namespace.self))
        } catch {
            Fuzzing.requireLoggable("\(error)", "a namespace watch line's decoding error")
        }
    }
    if let list = try? KubernetesDecoder.list(body, of: Pod.self) {
        inventory.replacePods(list.items ?? [])
    }
    for layout in [KubeletCgroupLayout.systemd, .cgroupfs, nil] {
        for pod in inventory.discoveredPods(layout: layout) {
            check(pod, layout: layout)
        }
    }
}

func check(_ pod: DiscoveredPod, layout: KubeletCgroupLayout?) {
    Fuzzing.require(pod.source == .kubernetes && !pod.id.isEmpty && !pod.name.isEmpty, "a pod without source, uid or name was reported: \(pod)")
    Fuzzing.require(!pod.ports.contains(0) && pod.ports == Array(Set(pod.ports)).sorted(), "ports \(pod.ports) are not sorted, unique and nonzero")
    for address in pod.addresses {
        Fuzzing.require((try? SocketAddress(ipAddress: address, port: 0)) != nil, "\(address.debugDescription) is reported as an address")
    }
    switch pod.enrollment {
    case .enrolled:
        Fuzzing.require(isDNSLabel(pod.namespace), "pod in namespace \(pod.namespace.debugDescription) was enrolled")
        Fuzzing.require(isDNSSubdomain(pod.serviceAccount), "pod with service account \(pod.serviceAccount.debugDescription) was enrolled")
    case .notEnrolled(let reason):
        Fuzzing.requireLoggable(reason, "a pod's enrollment reason")
    }
    guard let cgroup = pod.cgroup else { return }
    Fuzzing.require(layout != nil, "a pod has cgroup \(cgroup) with no layout known")
    guard let found = PodCgroup.find(in: cgroup), case .kubernetes(_, _, let foundLayout) = found.owner else {
        Fuzzing.require(false, "pod \(pod.id)'s cgroup \(cgroup) is not recognised as a pod's")
        return
    }
    Fuzzing.require(found.path == cgroup && foundLayout == layout, "pod \(pod.id)'s cgroup \(cgroup) reads back as \(found)")
}
