import Foundation
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import TestFixtures
import Testing
import Workloads

@testable import EngineAPI

/// The source against a real `podman system service` with a store of its own
/// (notes/pods.md: per-node storage isolation), so it sees only what the test
/// makes, in a network namespace of its own, so the firewall rules and
/// bridges netavark makes never touch the host's. Root only; CI runs it.
@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root to run podman"), .timeLimit(.minutes(3)))
struct RealPodmanTests {
    @Test func labelledPodIsEnrolledAndGoesAwayWhenRemoved() async throws {
        let lab = try PodmanLab()
        defer { lab.cleanUp() }
        try await onOwnThread { try lab.start() }

        let reports = WorkloadSourceTests.Reports()
        let source = EngineWorkloadSource(
            flavor: .podman, socketPath: lab.socket, configuration: WorkloadSourceTests.fast, logger: Logger(label: "test"))
        let task = Task { await source.run { reports.append($0) } }
        defer { task.cancel() }
        try await eventually(timeout: .seconds(20), "the first listing", reports.count >= 1)
        #expect(reports.last == [], "the lab's own store holds nothing yet")

        let podID = try await onOwnThread { try lab.createPod(labels: [
            "istio.io/dataplane-mode": "ambient", "mesh-agent.io/namespace": "shop",
            "mesh-agent.io/service-account": "orders", "mesh-agent.io/ports": "8080",
        ]) }
        try await eventually(timeout: .seconds(20), "the pod, enrolled", reports.last?.first?.enrollment == .enrolled)
        let pod = try #require(reports.last?.first)
        #expect(reports.last?.count == 1)
        #expect(pod.id == podID && pod.name == lab.name)
        #expect(pod.namespace == "shop" && pod.serviceAccount == "orders" && pod.ports == [8080])
        #expect(pod.addresses.count == 1 && pod.addresses.first?.hasPrefix("10.77.2") == true, "\(pod.addresses)")
        let cgroup = try #require(pod.cgroup)
        let mount = try CgroupV2Mount.discover()
        _ = try mount.id(of: cgroup)
        #expect(cgroup.segments.last == podID || cgroup.segments.last?.contains(podID) == true, "\(cgroup)")
        let netns = try #require(pod.networkNamespacePath)
        #expect(FileManager.default.fileExists(atPath: netns), "\(netns)")

        try await onOwnThread { try lab.removePod() }
        try await eventually(timeout: .seconds(20), "the pod gone", reports.last == [])
        #expect(source.status.connected && source.status.reconnects == 0)
        task.cancel()
        await task.value
    }
}

/// A podman of the test's own: configuration, store, image, network and API
/// service in one directory, and everything removed by `cleanUp`, also after
/// a failure.
final class PodmanLab: Sendable {
    let directory: String
    let name: String
    let image: String
    let network: String
    /// The scratch network namespace every podman command runs in.
    let networkNamespace: String
    var socket: String { directory + "/podman.sock" }
    private let service = NIOLockedValueBox<pid_t?>(nil)
    private let podID = NIOLockedValueBox<String?>(nil)

    init() throws {
        let tag = "\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        directory = "/tmp/ma-engine-\(tag)"
        name = "ma-engine-\(tag)"
        image = "localhost/ma-engine-busybox:\(tag)"
        network = "ma-engine-\(tag)"
        networkNamespace = "ma-engine-\(tag)"
        try FileManager.default.createDirectory(atPath: directory + "/rootfs/bin", withIntermediateDirectories: true)
        // notes/pods.md: runc (crun refuses hybrid cgroups), cgroupfs, ulimits
        // the machine allows, and a store, locks and events of its own.
        try """
            [containers]
            default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
            [engine]
            runtime = "runc"
            cgroup_manager = "cgroupfs"
            tmp_dir = "\(directory)/tmp"
            lock_type = "file"
            events_logger = "file"
            events_logfile_path = "\(directory)/events.log"
            [network]
            network_config_dir = "\(directory)/networks"

            """.write(toFile: directory + "/containers.conf", atomically: true, encoding: .utf8)
        try """
            [storage]
            driver = "vfs"
            graphroot = "\(directory)/graph"
            runroot = "\(directory)/run"

            """.write(toFile: directory + "/storage.conf", atomically: true, encoding: .utf8)
    }

    var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["CONTAINERS_CONF"] = directory + "/containers.conf"
        environment["CONTAINERS_STORAGE_CONF"] = directory + "/storage.conf"
        return environment
    }

    /// Namespace, image, network, then the API service.
    func start() throws {
        try run(["/usr/sbin/ip", "netns", "add", networkNamespace], inNamespace: false)
        try run(["/usr/sbin/ip", "link", "set", "lo", "up"])
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: directory + "/rootfs/bin/busybox")
        try run(["/usr/bin/tar", "-C", directory + "/rootfs", "-cf", directory + "/rootfs.tar", "."])
        try podman(["import", "-q", directory + "/rootfs.tar", image])
        // A subnet no other network of the host uses (another test's may be
        // up): netavark refuses one that is, so try the next.
        var created = false
        for third in 232...239 where !created {
            do {
                try podman(["network", "create", "--disable-dns", "--subnet", "10.77.\(third).0/24", network])
                created = true
            } catch let error as LabError where error.text.contains("already used") {
                continue
            }
        }
        guard created else { throw LabError(text: "every subnet 10.77.232-239.0/24 is in use on this host") }

        let pid = try Spawn.start(
            inNamespace(["/usr/bin/podman", "system", "service", "--time=0", "unix://" + socket]), environment: environment,
            output: directory + "/service.log")
        service.withLockedValue { $0 = pid }
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: socket) {
            guard Date() < deadline, Spawn.isRunning(pid) else {
                throw LabError(text: "podman system service did not make \(socket); see \(directory)/service.log")
            }
            usleep(50_000)
        }
    }

    /// A pod whose infra container sleeps (busybox has no pause); its id.
    func createPod(labels: [String: String]) throws -> String {
        var arguments = [
            "pod", "create", "--name", name, "--network", network, "--infra-image", image,
            "--infra-command", "/bin/busybox sleep 3600",
        ]
        for (key, value) in labels.sorted(by: { $0.key < $1.key }) { arguments += ["--label", "\(key)=\(value)"] }
        // Only the last line: podman writes its warnings to the same file.
        let id = try podman(arguments).split(separator: "\n").last.map(String.init) ?? ""
        podID.withLockedValue { $0 = id }
        try podman(["pod", "start", name])
        return id
    }

    /// `-t 0`: busybox sleep ignores SIGTERM, and the default wait is 10 s.
    func removePod() throws {
        try podman(["pod", "rm", "-f", "-t", "0", name])
    }

    /// Removes all the test made, each step on its own, so one failing does
    /// not leave the rest behind.
    func cleanUp() {
        _ = try? podman(["pod", "rm", "-f", "-t", "0", "--ignore", name])
        _ = try? podman(["network", "rm", "-f", network])
        _ = try? podman(["rmi", "-f", image])
        if let pid = service.withLockedValue({ $0 }) { Spawn.stop(pid) }
        // notes/pods.md: removing a pod leaves its empty cgroup in the v2 and
        // name=systemd hierarchies.
        if let id = podID.withLockedValue({ $0 }) {
            var parents = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []).map { "/sys/fs/cgroup/\($0)" }
            parents.append("/sys/fs/cgroup")
            for parent in parents { rmdir("\(parent)/libpod_parent/\(id)") }
        }
        // The namespace takes netavark's bridge and firewall tables with it.
        _ = try? run(["/usr/sbin/ip", "netns", "delete", networkNamespace], inNamespace: false)
        try? FileManager.default.removeItem(atPath: directory)
    }

    @discardableResult
    func podman(_ arguments: [String]) throws -> String {
        try run(["/usr/bin/podman"] + arguments)
    }

    /// Runs a command to its end. Its output goes to a file, not a pipe:
    /// `podman pod start` leaves conmon behind holding whatever it was given
    /// as stdout, and a pipe would then never reach its end.
    @discardableResult
    func run(_ command: [String], inNamespace: Bool = true) throws -> String {
        let output = directory + "/command-\(UInt32.random(in: 0...UInt32.max)).log"
        defer { unlink(output) }
        let spawned = inNamespace ? self.inNamespace(command) : command
        let status = Spawn.wait(try Spawn.start(spawned, environment: environment, output: output))
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        guard status == 0 else {
            throw LabError(text: "\(command.joined(separator: " ")) failed (\(status)): \(text)")
        }
        return text
    }

    /// `nsenter --net`, not `ip netns exec`: the latter remounts /sys and
    /// hides the cgroup file system podman needs (notes/pods.md).
    func inNamespace(_ command: [String]) -> [String] {
        ["/usr/bin/nsenter", "--net=/run/netns/\(networkNamespace)"] + command
    }

    struct LabError: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }
}

/// posix_spawn and waitpid, for the test's podman commands: Foundation's
/// Process waits for its children on a run loop that the test's async tasks
/// do not turn.
enum Spawn {
    /// Starts `command` (an absolute path and its arguments) with stdin from
    /// /dev/null and stdout and stderr into the file `output`.
    static func start(_ command: [String], environment: [String: String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = command.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, command[0], &actions, nil, argv, envp)
        guard result == 0 else {
            throw PodmanLab.LabError(text: "cannot start \(command[0]): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// Its exit status (128 + the signal if a signal ended it).
    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { return -1 }
        }
        return exitStatus(status)
    }

    static func isRunning(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == 0
    }

    /// SIGTERM, then SIGKILL if it is still there after ten seconds.
    static func stop(_ pid: pid_t) {
        kill(pid, SIGTERM)
        for _ in 0..<200 {
            if !isRunning(pid) { return }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        _ = wait(pid)
    }

    private static func exitStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }
}
