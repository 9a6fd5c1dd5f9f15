import LinuxNet
import NIOCore
import Workloads

/// What a pod from the API is to the agent.
public enum PodMapping: Equatable, Sendable {
    /// On this node and running or about to: a workload, enrolled or not.
    case present(DiscoveredPod)
    /// Finished (`Succeeded`, `Failed`) or on another node: nothing to capture.
    case gone
    /// Lacks what every pod has (uid, name, namespace): the object is
    /// skipped, and counted.
    case malformed(reason: String)
}

extension WorkloadSource {
    /// Pods on this node, from the Kubernetes API.
    public static let kubernetes = WorkloadSource("kubernetes")
}

/// Turns a Kubernetes pod and its namespace's labels into the pod the agent
/// captures, or not.
public enum PodMapper {
    /// kubelet's name for a static pod (the UID its cgroup is named after),
    /// on the pod's mirror in the API.
    static let configHashAnnotation = "kubernetes.io/config.hash"

    /// - Parameters:
    ///   - node: this node; pods elsewhere are `.gone`.
    ///   - layout: where kubelet keeps pod cgroups on this node; nil while
    ///     unknown, and then no pod has a cgroup.
    public static func map(_ pod: Pod, node: String, namespaceLabels: [String: String], layout: KubeletCgroupLayout?) -> PodMapping {
        guard let metadata = pod.metadata, let uid = metadata.uid, !uid.isEmpty else {
            return .malformed(reason: "a pod without metadata.uid")
        }
        guard let name = metadata.name, !name.isEmpty, let namespace = metadata.namespace, !namespace.isEmpty else {
            return .malformed(reason: "pod \(loggable(uid, limit: 64)) has no metadata.name or metadata.namespace")
        }
        guard pod.spec?.nodeName == node else { return .gone }
        switch pod.status?.phase {
        case "Succeeded"?, "Failed"?: return .gone
        default: break
        }
        let serviceAccount = nonEmpty(pod.spec?.serviceAccountName) ?? nonEmpty(pod.spec?.serviceAccount) ?? "default"
        let labels = metadata.labels ?? [:]
        var discovered = DiscoveredPod(
            source: .kubernetes, id: uid, name: name, namespace: namespace, serviceAccount: serviceAccount,
            labels: labels, ports: ports(pod.spec), cgroup: nil, networkNamespacePath: nil,
            addresses: addresses(pod.status),
            enrollment: EnrollmentLabels.enrollment(podLabels: labels, namespaceLabels: namespaceLabels))
        if let layout, let (cgroupUID, qosClass) = cgroupKey(pod) {
            discovered.cgroup = layout.podCgroup(uid: cgroupUID, qosClass: qosClass)
        }
        if let reason = notEnrollable(pod, namespace: namespace, serviceAccount: serviceAccount) {
            discovered.enrollment = .notEnrolled(reason: reason)
        }
        return .present(discovered)
    }

    /// Why a pod cannot be enrolled whatever its labels say.
    private static func notEnrollable(_ pod: Pod, namespace: String, serviceAccount: String) -> String? {
        if pod.spec?.hostNetwork == true {
            return "the pod uses the node's network (hostNetwork: true); it has no network namespace of its own to capture in"
        }
        // Both become part of the pod's SPIFFE ID; the API server enforces
        // these rules, so a break is a broken or hostile server.
        if !isDNSLabel(namespace) {
            return "namespace \"\(loggable(namespace, limit: 80))\" is not a valid Kubernetes namespace name, so no identity can be made for it"
        }
        if !isDNSSubdomain(serviceAccount) {
            return "service account \"\(loggable(serviceAccount, limit: 80))\" is not a valid Kubernetes name, so no identity can be made for it"
        }
        if cgroupUID(pod) == nil {
            return "pod UID \"\(loggable(pod.metadata?.uid ?? "", limit: 80))\" is not a UUID, so its cgroup cannot be found"
        }
        return nil
    }

    /// The UID and QoS class kubelet named the pod's cgroup after: a mirror
    /// pod's cgroup is its static pod's, named after the manifest's hash.
    static func cgroupKey(_ pod: Pod) -> (PodUID, PodQoSClass)? {
        guard let uid = cgroupUID(pod), let qosText = pod.status?.qosClass, let qosClass = PodQoSClass(rawValue: qosText) else { return nil }
        return (uid, qosClass)
    }

    private static func cgroupUID(_ pod: Pod) -> PodUID? {
        if let hash = pod.metadata?.annotations?[configHashAnnotation], let uid = try? PodUID(validating: hash) {
            return uid
        }
        return pod.metadata?.uid.flatMap { try? PodUID(validating: $0) }
    }

    /// The TCP ports of the pod's containers, and of init containers that run
    /// as sidecars for the pod's life.
    static func ports(_ spec: PodSpec?) -> [UInt16] {
        let sidecars = (spec?.initContainers ?? []).filter { $0.restartPolicy == "Always" }
        var ports: [UInt16] = []
        for container in (spec?.containers ?? []) + sidecars {
            for port in container.ports ?? [] where (port.protocol ?? "TCP") == "TCP" {
                if let number = port.containerPort, (1...65535).contains(number) {
                    ports.append(UInt16(number))
                }
            }
        }
        return ports
    }

    /// `status.podIPs`, or `status.podIP` from API servers before dual
    /// stack; each written as NIO writes it, anything that is not an address
    /// left out.
    static func addresses(_ status: PodStatus?) -> [String] {
        var texts = (status?.podIPs ?? []).compactMap(\.ip)
        if texts.isEmpty, let single = status?.podIP { texts = [single] }
        var seen = Set<String>()
        return texts.compactMap { text in
            guard text.utf8.count <= 64, let address = try? SocketAddress(ipAddress: text, port: 0), let ip = address.ipAddress else {
                return nil
            }
            return seen.insert(ip).inserted ? ip : nil
        }
    }

    private static func nonEmpty(_ text: String?) -> String? {
        guard let text, !text.isEmpty else { return nil }
        return text
    }
}

/// RFC 1123 label: 1 to 63 lowercase letters, digits and '-', not at either end.
func isDNSLabel(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    return (1...63).contains(bytes.count)
        && bytes.allSatisfy { $0 == UInt8(ascii: "-") || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
        && bytes.first != UInt8(ascii: "-") && bytes.last != UInt8(ascii: "-")
}

/// RFC 1123 subdomain: labels joined by dots, at most 253 characters.
func isDNSSubdomain(_ text: String) -> Bool {
    text.utf8.count <= 253 && text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isDNSLabel(String($0)) }
}
