import Foundation
import Glibc
import TestFixtures
import Testing

@testable import LinuxNet

@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (CAP_SYS_ADMIN) to create and enter network namespaces"))
struct NamespaceThreadTests {
    /// A socket made on the thread belongs to the namespace the work named,
    /// and the thread goes home between pieces of work.
    @Test func socketsAreMadeInTheNamespaceTheWorkNames() throws {
        let name = "ma-nst-\(randomSuffix())"
        try run(["ip", "netns", "add", name])
        defer { _ = try? run(["ip", "netns", "delete", name], allowFailure: true) }
        try run(["ip", "-n", name, "link", "set", "lo", "up"])
        try run(["ip", "-n", name, "link", "add", "ma0", "type", "veth", "peer", "name", "ma1"])
        try run(["ip", "-n", name, "addr", "add", "10.77.41.2/24", "dev", "ma0"])
        try run(["ip", "-n", name, "link", "set", "ma0", "up"])
        try run(["ip", "-n", name, "link", "set", "ma1", "up"])

        let thread = try NamespaceThread()
        defer { thread.stop() }
        let pod = try NamespaceHandle(path: "/run/netns/\(name)")
        let node = try NamespaceHandle.current()
        #expect(pod.identity != node.identity)
        #expect(try NamespaceHandle(path: "/run/netns/\(name)").identity == pod.identity, "one namespace, one identity")

        let inPod = try thread.runAndWait(in: pod) { try InterfaceAddresses.current().addresses.compactMap(\.ipAddress) }
        #expect(Set(inPod).isSuperset(of: ["127.0.0.1", "10.77.41.2"]))
        // A listener on 10.77.41.2 can only be bound inside the pod's namespace.
        let fd = try thread.runAndWait(in: pod) { try ListeningSocket.open(address: "10.77.41.2", port: 0) }
        defer { close(fd) }
        #expect(ListeningSocket.boundAddress(fd)?.ipAddress == "10.77.41.2")
        let inNode = try thread.runAndWait(in: node) { try InterfaceAddresses.current().addresses.compactMap(\.ipAddress) }
        #expect(!inNode.contains("10.77.41.2"), "the thread returned to the node's namespace")
        #expect(throws: ListeningSocketError.self, "the node has no 10.77.41.2") {
            try thread.runAndWait(in: node) { try ListeningSocket.open(address: "10.77.41.2", port: 0) }
        }
    }

    @Test func theNamespaceOfACgroupIsThatOfItsProcesses() throws {
        let name = "ma-nsc-\(randomSuffix())"
        try run(["ip", "netns", "add", name])
        defer { _ = try? run(["ip", "netns", "delete", name], allowFailure: true) }
        let mount = try CgroupV2Mount.discover()
        let cgroup = try CgroupPath(validating: "/ma-nsc-\(randomSuffix())")
        let directory = mount.directory(of: cgroup)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { _ = rmdir(directory) }
        #expect(throws: NetworkNamespaceError.noProcess(cgroup: cgroup.string)) { try NamespaceHandle.of(cgroup: cgroup, mount: mount) }

        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        sleeper.arguments = ["--net=/run/netns/\(name)", "sh", "-c", "echo $$ > \(directory)/cgroup.procs && exec sleep 30"]
        try sleeper.run()
        defer {
            kill(sleeper.processIdentifier, SIGKILL)
            sleeper.waitUntilExit()
        }
        let expected = try NamespaceHandle(path: "/run/netns/\(name)").identity
        var found: NamespaceIdentity?
        for _ in 0..<200 where found != expected {
            found = try? NamespaceHandle.of(cgroup: cgroup, mount: mount).identity
            if found != expected { usleep(10_000) }
        }
        #expect(found == expected)
    }
}
