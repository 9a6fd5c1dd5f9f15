import Foundation
import FuzzSupport
import LinuxNet
import NIOCore
import Workloads
@testable import EngineAPI

/// What a Podman or Docker socket answers, as the engine sources read it. The
/// first byte picks the chunk size of the event stream (bits 0–4) and the
/// engine (bit 5); the rest is read three ways:
/// - as the event stream: cut into lines (`EventLineSplitter`) whatever
///   chunks it arrives in, each line decoded as an event;
/// - as one answer of every kind: pod and container lists, inspections, an
///   error body;
/// - cut at NUL bytes (which no JSON text holds), as one listing: the pod
///   list, the container list, then inspections of pods and containers in
///   any order, mapped to the pods the source reports.
///
/// The lines are what a plain split gives, whatever the chunks, and none is
/// longer than the limit; every decoded value, written back as the engine
/// would write it, decodes to the same value; a reported pod has ports in
/// range, addresses that are addresses, an identity only from valid names, a
/// cgroup below the root and a namespace file by absolute path; a workload is
/// left out only when its inspection is missing; no id reaches another
/// endpoint; every error and reason is one short log line.
Fuzzing.run { bytes in
    guard let first = bytes.first else { return }
    let body = Array(bytes.dropFirst())
    checkEventStream(body, chunkSize: Int(first & 0x1F) + 1)
    checkAnswers(body)
    checkListing(body.split(separator: 0, omittingEmptySubsequences: false), flavor: first & 0x20 == 0 ? .podman : .docker)
}

// MARK: - The event stream

func checkEventStream(_ body: [UInt8], chunkSize: Int) {
    // Far below the source's own limit, so that inputs the fuzzer makes reach
    // it; the recorded events are at most 621 bytes a line.
    let lineLimit = 1024
    let expected = plainSplit(body, limit: lineLimit)

    var whole = EventLineSplitter(maxLineBytes: lineLimit)
    do throws(EventStreamError) {
        let lines = try whole.append(body)
        Fuzzing.require(expected.error == nil && lines == expected.lines, "the whole body gave \(lines.count) lines, a plain split \(expected.lines.count) and \(String(describing: expected.error))")
        do throws(EventStreamError) {
            try whole.finish()
            Fuzzing.require(expected.truncated == nil, "a stream ending in \(expected.truncated ?? 0) bytes without a newline finished cleanly")
        } catch {
            Fuzzing.require(error == .truncatedLine(bytes: expected.truncated ?? -1), "the stream ended with \(error), a plain split says \(String(describing: expected.truncated)) bytes are left")
        }
    } catch {
        Fuzzing.require(error == expected.error, "the whole body failed with \(error), a plain split with \(String(describing: expected.error))")
    }

    var chunked = EventLineSplitter(maxLineBytes: lineLimit)
    var lines: [[UInt8]] = []
    var failure: EventStreamError?
    var start = 0
    while start < body.count, failure == nil {
        let end = min(start + chunkSize, body.count)
        do throws(EventStreamError) {
            lines += try chunked.append(body[start..<end])
        } catch {
            failure = error
        }
        start = end
    }
    Fuzzing.require(lines == expected.lines && failure == expected.error,
                    "chunks of \(chunkSize) bytes gave \(lines.count) lines and \(String(describing: failure)), a plain split \(expected.lines.count) and \(String(describing: expected.error))")
    if let failure {
        do throws(EventStreamError) {
            _ = try chunked.append([])
            Fuzzing.require(false, "a splitter that failed with \(failure) took more bytes")
        } catch {
            Fuzzing.require(error == failure, "a splitter that failed with \(failure) then failed with \(error)")
        }
    }

    for line in expected.lines {
        do throws(EventStreamError) {
            check(try EngineEvent.decode(line: line))
        } catch {
            Fuzzing.requireLoggable(error.description, "an event line's decoding error")
        }
    }
}

/// The stream's lines by the simplest reading of the contract: split at every
/// `\n`, one `\r` before it dropped, blank lines skipped; the first piece
/// over the limit (its `\r` counted) ends the stream. `truncated`: the bytes
/// after the last newline, when they are not blank.
func plainSplit(_ body: [UInt8], limit: Int) -> (lines: [[UInt8]], error: EventStreamError?, truncated: Int?) {
    let pieces = body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
    var lines: [[UInt8]] = []
    for (index, piece) in pieces.enumerated() {
        guard piece.count <= limit else { return (lines, .lineTooLong(limit: limit), nil) }
        let blank = piece.allSatisfy(EventLineSplitter.isSpace)
        if index == pieces.count - 1 { return (lines, nil, blank ? nil : piece.count) }
        var line = Array(piece)
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        if !blank { lines.append(line) }
    }
    return (lines, nil, nil)
}

func check(_ event: EngineEvent) {
    Fuzzing.requireLoggable(event.kind.description, "an event's kind")
    if case .other(let type) = event.kind {
        Fuzzing.require(!["container", "pod", "network"].contains(type), "an event of type \(type) decoded as another kind")
        Fuzzing.require(!event.changesWorkloads, "an event of type \(event.kind) changes workloads")
    }
    let possible: Set<String> = [event.id, event.attributes["podId"] ?? "", event.attributes["container"] ?? ""]
    Fuzzing.require(!event.affectedIDs.contains("") && event.affectedIDs.isSubset(of: possible), "event \(event) affects \(event.affectedIDs)")
    let again = try? EngineEvent.decode(line: written(Written.Event(event)))
    Fuzzing.require(again == event, "event \(event), written back, decodes as \(String(describing: again))")
}

// MARK: - The answers, one of each kind

func checkAnswers(_ body: [UInt8]) {
    _ = EngineDecoding.errorMessage(body)
    if let pods = decoded({ try EngineDecoding.libpodPods(body) }) {
        for pod in pods { check(pod) }
        let again = try? EngineDecoding.libpodPods(written(pods.map(Written.Pod.init)))
        Fuzzing.require(again == pods, "a pod list, written back, decodes to another")
    }
    if let containers = decoded({ try EngineDecoding.libpodContainers(body) }) {
        for container in containers {
            check(container)
            Fuzzing.require(container.addresses.isEmpty, "the libpod list, which has no addresses, gave \(container.addresses)")
        }
        let again = try? EngineDecoding.libpodContainers(written(containers.map(Written.LibpodContainer.init)))
        Fuzzing.require(again == containers, "a libpod container list, written back, decodes to another")
    }
    if let containers = decoded({ try EngineDecoding.dockerContainers(body) }) {
        for container in containers {
            check(container)
            Fuzzing.require(container.podID == nil && !container.isInfra, "a Docker container is in pod \(String(describing: container.podID))")
        }
        let again = try? EngineDecoding.dockerContainers(written(containers.map(Written.DockerContainer.init)))
        Fuzzing.require(again == containers, "a Docker container list, written back, decodes to another")
    }
    if let details = decoded({ try EngineDecoding.containerDetails(body) }) {
        check(details)
        let again = try? EngineDecoding.containerDetails(written(Written.ContainerInspection(details)))
        Fuzzing.require(again == details, "container inspection \(details), written back, decodes as \(String(describing: again))")
    }
    if let details = decoded({ try EngineDecoding.libpodPodDetails(body) }) {
        Fuzzing.require(details.cgroupPath != "" && details.infraContainerID != "", "pod inspection \(details) has an empty field that is not nil")
        let again = try? EngineDecoding.libpodPodDetails(written(Written.PodInspection(details)))
        Fuzzing.require(again == details, "pod inspection \(details), written back, decodes as \(String(describing: again))")
    }
}

/// The value, or nil after checking that the error is the one the decoders
/// document and reads as one log line.
func decoded<T>(_ decode: () throws -> T) -> T? {
    do {
        return try decode()
    } catch let error as EngineAPIError {
        guard case .undecodable = error else {
            Fuzzing.require(false, "a decoder failed with \(error), not as undecodable")
            return nil
        }
        Fuzzing.requireLoggable(error.description, "a decoding error")
        return nil
    } catch {
        Fuzzing.require(false, "a decoder failed with \(error), not an EngineAPIError")
        return nil
    }
}

func check(_ pod: EnginePodSummary) {
    Fuzzing.require(pod.infraContainerID != "", "pod \(pod.id) has an empty infra container id instead of none")
}

func check(_ container: EngineContainerSummary) {
    Fuzzing.require(!container.tcpPorts.contains(0), "container \(container.id) has port 0")
    Fuzzing.require(container.podID != "", "container \(container.id) is in the pod with the empty id")
    Fuzzing.require(container.state == container.state.lowercased(), "container state \(container.state.debugDescription) is not lowercase")
    checkAddresses(container.addresses, of: "container \(container.id)")
}

func check(_ details: EngineContainerDetails) {
    Fuzzing.require(!details.tcpPorts.contains(0), "container \(details.id) has port 0")
    Fuzzing.require(details.running || details.pid == nil, "container \(details.id) is not running, yet has pid \(details.pid ?? 0)")
    Fuzzing.require((details.pid ?? 1) > 0, "container \(details.id) has pid \(details.pid ?? 0)")
    Fuzzing.require(details.cgroupPath != "" && details.sandboxKey != "" && details.networkMode != "", "inspection \(details) has an empty field that is not nil")
    checkAddresses(details.addresses, of: "container \(details.id)")
}

/// Addresses are reported and shown as the agent's own text for them: each
/// an address, once.
func checkAddresses(_ addresses: [String], of what: @autoclosure () -> String) {
    Fuzzing.require(Set(addresses).count == addresses.count, "\(what()) has an address twice: \(addresses)")
    for address in addresses {
        Fuzzing.require((try? SocketAddress(ipAddress: address, port: 0))?.ipAddress == address, "\(what()) has address \(address.debugDescription)")
    }
}

// MARK: - A listing and its inspections

func checkListing(_ sections: [ArraySlice<UInt8>], flavor: EngineFlavor) {
    guard sections.count >= 2 else { return }
    let containers = flavor == .podman
        ? (try? EngineDecoding.libpodContainers(sections[1])) : (try? EngineDecoding.dockerContainers(sections[1]))
    let pods = flavor == .podman ? (try? EngineDecoding.libpodPods(sections[0])) : []
    let listing = EngineListing(flavor: flavor, pods: pods ?? [], containers: containers ?? [])
    var details = EngineDetails()
    for section in sections.dropFirst(2) {
        if let container = try? EngineDecoding.containerDetails(section) {
            details.containers[container.id] = container
            // Docker does not say where a container's cgroup is; the source
            // reads it from /proc, which here says a cgroup of its own.
            if flavor == .docker, let pid = container.pid {
                details.processCgroups[pid] = try? CgroupPath(validating: "/system.slice/docker-\(pid).scope")
            }
        }
        if let pod = try? EngineDecoding.libpodPodDetails(section) { details.pods[pod.id] = pod }
    }

    let workloads = EngineWorkloads.workloads(of: listing)
    Fuzzing.require(workloads.map(\.id) == workloads.map(\.id).sorted(), "the workloads are not sorted by id")
    let needed = EngineWorkloads.inspectionsNeeded(listing)
    Fuzzing.require(flavor == .podman || needed.pods.isEmpty, "Docker, which has no pods, is asked to inspect pods \(needed.pods)")
    for id in needed.containers { checkPathSegment(id, path: flavor.containerInspectPath(id)) }
    for id in needed.pods { checkPathSegment(id, path: flavor.podInspectPath(id)) }

    let reported = EngineWorkloads.discoveredPods(listing, details: details)
    if needed.containers.allSatisfy({ details.containers[$0] != nil }) {
        Fuzzing.require(reported.count == workloads.count, "\(workloads.count - reported.count) of \(workloads.count) workloads were left out, though every inspection is there")
    }
    for pod in reported { check(pod, flavor: flavor) }
}

/// An id from the engine is one path segment of the request, whatever its
/// bytes: never empty, never a separator, and what the engine decodes is
/// the id again.
func checkPathSegment(_ id: String, path: String) {
    let segment = EngineFlavor.pathSegment(id)
    Fuzzing.require(path.hasSuffix("/\(segment)/json"), "id \(id.debugDescription) gives path \(path.debugDescription)")
    Fuzzing.require(!segment.isEmpty, "id \(id.debugDescription) gives an empty path segment: \(path)")
    var decodedBytes: [UInt8] = []
    var rest = Substring(segment)
    while let byte = rest.utf8.first {
        if byte == UInt8(ascii: "%"), rest.utf8.count >= 3, let value = UInt8(rest.dropFirst().prefix(2), radix: 16) {
            decodedBytes.append(value)
            rest = rest.dropFirst(3)
        } else {
            let unreserved = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
            Fuzzing.require(unreserved, "id \(id.debugDescription) gives segment \(segment.debugDescription)")
            decodedBytes.append(byte)
            rest = rest.dropFirst()
        }
    }
    Fuzzing.require(decodedBytes == Array(id.utf8), "segment \(segment) of id \(id.debugDescription) decodes to another id")
}

func check(_ pod: DiscoveredPod, flavor: EngineFlavor) {
    Fuzzing.require(pod.source == flavor.source, "a \(flavor) pod has source \(pod.source)")
    Fuzzing.require(!pod.ports.contains(0) && pod.ports == Array(Set(pod.ports)).sorted(), "ports \(pod.ports) are not sorted, unique and nonzero")
    checkAddresses(pod.addresses, of: "pod \(pod.id)")
    switch pod.enrollment {
    case .enrolled:
        Fuzzing.require(KubernetesName.isLabel(pod.namespace), "pod in namespace \(pod.namespace.debugDescription) was enrolled")
        Fuzzing.require(KubernetesName.isSubdomain(pod.serviceAccount), "pod with service account \(pod.serviceAccount.debugDescription) was enrolled")
        if let cgroup = pod.cgroup {
            Fuzzing.require(cgroup.level > 0, "pod \(pod.id) was enrolled in the root cgroup")
        }
        if let path = pod.networkNamespacePath {
            Fuzzing.require(path.hasPrefix("/"), "pod \(pod.id) has its network namespace at relative path \(path.debugDescription)")
            Fuzzing.requireLoggable(path, "pod \(pod.id)'s network namespace path")
            Fuzzing.require(!path.utf8.contains(0), "pod \(pod.id)'s network namespace path \(path.debugDescription) holds a NUL, which the kernel reads as its end")
        }
    case .notEnrolled(let reason):
        Fuzzing.requireLoggable(reason, "a pod's enrollment reason")
        Fuzzing.require(reason.utf8.count <= 4096, "a reason of \(reason.utf8.count) bytes")
        Fuzzing.require(pod.cgroup == nil, "pod \(pod.id), not enrolled, has cgroup \(String(describing: pod.cgroup))")
    }
}

// MARK: - Decoded values written back

func written(_ value: some Encodable) -> [UInt8] {
    Array((try? JSONEncoder().encode(value)) ?? Data())
}

/// The engines' documents, only the fields the decoders read, as the engines
/// spell them.
enum Written {
    struct Event: Encodable {
        struct Actor: Encodable {
            var ID: String
            var Attributes: [String: String]
        }
        var type: String
        var Action: String
        var Actor: Actor

        enum CodingKeys: String, CodingKey {
            case type = "Type", Action, Actor
        }

        init(_ event: EngineEvent) {
            switch event.kind {
            case .container: type = "container"
            case .pod: type = "pod"
            case .network: type = "network"
            case .other(let other): type = other
            }
            Action = event.action
            self.Actor = .init(ID: event.id, Attributes: event.attributes)
        }
    }

    struct Pod: Encodable {
        var Id: String
        var Name: String
        var Status: String
        var InfraId: String?
        var Labels: [String: String]

        init(_ pod: EnginePodSummary) {
            Id = pod.id
            Name = pod.name
            Status = pod.status
            InfraId = pod.infraContainerID
            Labels = pod.labels
        }
    }

    struct LibpodContainer: Encodable {
        struct Port: Encodable {
            var container_port: Int
            var `protocol` = "tcp"
        }
        var Id: String
        var Names: [String]
        var Labels: [String: String]
        var State: String
        var Pod: String?
        var IsInfra: Bool
        var Ports: [Port]

        init(_ container: EngineContainerSummary) {
            Id = container.id
            Names = [container.name]
            Labels = container.labels
            State = container.state
            Pod = container.podID
            IsInfra = container.isInfra
            Ports = container.tcpPorts.sorted().map { Port(container_port: Int($0)) }
        }
    }

    struct DockerContainer: Encodable {
        struct Port: Encodable {
            var PrivatePort: Int
            var type = "tcp"

            enum CodingKeys: String, CodingKey {
                case PrivatePort, type = "Type"
            }
        }
        var Id: String
        var Names: [String]
        var Labels: [String: String]
        var State: String
        var Ports: [Port]
        var NetworkSettings: Settings

        init(_ container: EngineContainerSummary) {
            Id = container.id
            Names = ["/" + container.name]
            Labels = container.labels
            State = container.state
            Ports = container.tcpPorts.sorted().map { Port(PrivatePort: Int($0)) }
            NetworkSettings = Settings(addresses: container.addresses)
        }
    }

    /// Each address on a network of its own, named so that they sort in
    /// the addresses' order.
    struct Settings: Encodable {
        struct Endpoint: Encodable {
            var IPAddress: String
        }
        var SandboxKey: String?
        var Networks: [String: Endpoint]
        var Ports: [String: [String]]

        init(addresses: [String], sandboxKey: String? = nil, ports: Set<UInt16> = []) {
            SandboxKey = sandboxKey
            Networks = Dictionary(uniqueKeysWithValues: addresses.enumerated().map { ("net" + String(String($0.offset + 10_000).dropFirst()), Endpoint(IPAddress: $0.element)) })
            Ports = Dictionary(uniqueKeysWithValues: ports.map { ("\($0)/tcp", []) })
        }
    }

    struct ContainerInspection: Encodable {
        struct State: Encodable {
            var Running: Bool
            var Pid: Int32?
            var CgroupPath: String?
        }
        struct HostConfig: Encodable {
            var NetworkMode: String?
        }
        var Id: String
        var State: State
        var HostConfig: HostConfig
        var NetworkSettings: Settings

        init(_ details: EngineContainerDetails) {
            Id = details.id
            self.State = .init(Running: details.running, Pid: details.pid, CgroupPath: details.cgroupPath)
            self.HostConfig = .init(NetworkMode: details.networkMode)
            NetworkSettings = Settings(addresses: details.addresses, sandboxKey: details.sandboxKey, ports: details.tcpPorts)
        }
    }

    struct PodInspection: Encodable {
        var Id: String
        var CgroupPath: String?
        var InfraContainerID: String?

        init(_ details: EnginePodDetails) {
            Id = details.id
            CgroupPath = details.cgroupPath
            InfraContainerID = details.infraContainerID
        }
    }
}
