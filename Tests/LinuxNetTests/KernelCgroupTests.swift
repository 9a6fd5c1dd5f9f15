import CNetlink
import Foundation
import NIOCore
import Testing

@testable import LinuxNet

/// A directory tree `ma-test-<random>/...` below the cgroup v2 mount, removed
/// (deepest first) on deinit, even when the test fails.
final class TemporaryCgroups: Sendable {
    let mount: CgroupV2Mount
    let base: CgroupPath
    let created: [CgroupPath]

    init(mount: CgroupV2Mount, children: [String]) throws {
        self.mount = mount
        base = try CgroupPath.root.appending("ma-test-\(randomSuffix())")
        var created: [CgroupPath] = []
        do {
            for relative in [""] + children {
                let path = try CgroupPath(validating: base.string + (relative.isEmpty ? "" : "/" + relative))
                guard mkdir(mount.directory(of: path), 0o755) == 0 else {
                    throw TestSocketError.call("mkdir \(mount.directory(of: path))", errno)
                }
                created.append(path)
            }
        } catch {
            Self.remove(created, in: mount)
            throw error
        }
        self.created = created
    }

    func path(_ relative: String) throws -> CgroupPath {
        try CgroupPath(validating: base.string + "/" + relative)
    }

    deinit { Self.remove(created, in: mount) }

    private static func remove(_ paths: [CgroupPath], in mount: CgroupV2Mount) {
        for path in paths.sorted(by: { $0.level > $1.level }) {
            // A cgroup whose last process just exited can be briefly busy.
            for _ in 0..<100 {
                if rmdir(mount.directory(of: path)) == 0 || errno == ENOENT { break }
                usleep(20_000)
            }
        }
    }
}

@Suite("cgroup v2 on the real kernel", rootOnly)
struct KernelCgroupTests {
    @Test func discoverFindsTheMount() throws {
        let mount = try CgroupV2Mount.discover()
        var fsType: Int64 = 0
        #expect(cnetlink_statfs_type(mount.path, &fsType) == 0)
        #expect(fsType == CgroupV2Mount.superMagic)
        // The root cgroup's id is 1.
        #expect(try mount.id(of: .root) == CgroupID(1))
        print("cgroup v2 mount: \(mount.path)")
    }

    @Test func ownCgroupHasAnID() throws {
        let mount = try CgroupV2Mount.discover()
        let own = try mount.ownCgroup()
        let id = try mount.id(of: own)
        #expect(mount.path(of: id) == own)
    }

    @Test func notFoundAndNotCgroup() throws {
        let mount = try CgroupV2Mount.discover()
        let missing = try CgroupPath(validating: "/ma-missing-\(randomSuffix())")
        #expect(throws: CgroupError.notFound(missing)) { try mount.id(of: missing) }
        #expect(throws: CgroupError.notFound(missing)) { try mount.subtree(of: missing) }
        // A file inside a cgroup directory is not a cgroup.
        #expect(throws: CgroupError.notADirectory(mount.directory(of: try CgroupPath(validating: "/cgroup.procs")))) {
            try mount.id(of: try CgroupPath(validating: "/cgroup.procs"))
        }
        #expect(mount.path(of: CgroupID(0xDEAD_BEEF_0000_0001)) == nil)
    }

    @Test func subtreeListsNestedChildren() throws {
        let mount = try CgroupV2Mount.discover()
        let tree = try TemporaryCgroups(mount: mount, children: ["a", "a/b", "a/b/deep", "c"])
        let subtree = try mount.subtree(of: tree.base)
        let expected = [tree.base, try tree.path("a"), try tree.path("a/b"), try tree.path("a/b/deep"), try tree.path("c")]
        #expect(subtree.map(\.path) == expected)
        for (path, id) in subtree {
            #expect(try mount.id(of: path) == id)
            #expect(mount.path(of: id) == path)  // round trip
        }
        #expect(Set(subtree.map(\.id)).count == subtree.count)
        #expect(try mount.subtree(of: try tree.path("a/b/deep")).map(\.path) == [try tree.path("a/b/deep")])
        // The whole tree from the root includes ours.
        #expect(try mount.subtree(of: .root).contains { $0.path == (try? tree.path("a/b/deep")) })
    }

    /// A child process moved into a nested cgroup opens a connection to us: the
    /// kernel attributes its socket to that cgroup, and the owning workload is
    /// found by walking up to an ancestor in the subtree.
    @Test func socketOfAProcessInANestedCgroup() throws {
        let mount = try CgroupV2Mount.discover()
        let tree = try TemporaryCgroups(mount: mount, children: ["workload", "workload/nested"])
        let nested = try tree.path("workload/nested")
        let listener = try listenTCP(host: "127.0.0.1")
        defer { close(listener) }
        let port = try address(of: listener).port!

        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/bash")
        child.arguments = [
            "-c",
            "echo $$ > '\(mount.directory(of: nested))/cgroup.procs' && exec 3<>/dev/tcp/127.0.0.1/\(port) && read -t 20 -u 3 line",
        ]
        try child.run()
        defer {
            if child.isRunning { child.terminate() }
            child.waitUntilExit()
        }
        let server = try acceptTCP(listener)
        defer { close(server) }

        let client = try SockDiagClient()
        let id = try client.cgroupID(ofClient: try address(of: server, peer: true), connectedTo: try address(of: server))
        #expect(id == (try mount.id(of: nested)))
        #expect(mount.path(of: id) == nested)
        let workloads = try mount.subtree(of: try tree.path("workload"))
        #expect(workloads.contains { $0.id == id })
        #expect(try mount.id(of: try mount.ownCgroup()) != id)
    }
}
