import Testing

@testable import LinuxNet

@Suite("cgroup v2 mount discovery (pure)")
struct MountinfoParsingTests {
    /// Copied from /proc/self/mountinfo of a hybrid Debian 12 host (cgroup v1
    /// controllers on tmpfs at /sys/fs/cgroup, cgroup2 at /sys/fs/cgroup/unified).
    static let hybrid = """
        22 27 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw

        """

    /// A unified (cgroup v2 only) host, with optional fields before the separator.
    static let unified = """
        24 30 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
        30 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
        35 23 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
        36 23 0:31 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
        """

    @Test func unifiedHost() throws {
        #expect(try CgroupV2Mount.parse(mountinfo: Self.unified).path == "/sys/fs/cgroup")
    }

    @Test func hybridHost() throws {
        #expect(try CgroupV2Mount.parse(mountinfo: Self.hybrid).path == "/sys/fs/cgroup/unified")
    }

    @Test func escapedMountPoint() throws {
        let text = #"50 23 0:40 / /mnt/my\040cgroup\011tab\134x rw - cgroup2 none rw"#
        #expect(try CgroupV2Mount.parse(mountinfo: text).path == "/mnt/my cgroup\ttab\\x")
    }

    @Test func invalidEscapesAreKept() {
        #expect(CgroupV2Mount.unescapeMountField(#"/a\9b"#) == #"/a\9b"#)
        #expect(CgroupV2Mount.unescapeMountField(#"/a\04"#) == #"/a\04"#)
        #expect(CgroupV2Mount.unescapeMountField(#"/a\"#) == #"/a\"#)
        #expect(CgroupV2Mount.unescapeMountField(#"/a\477"#) == #"/a\477"#)  // > 0o377
        #expect(CgroupV2Mount.unescapeMountField(#"/a\040\040"#) == "/a  ")
    }

    @Test func noCgroup2AtAll() {
        let text = """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
            """
        #expect(throws: CgroupError.noCgroup2Mount) { try CgroupV2Mount.parse(mountinfo: text) }
        #expect(throws: CgroupError.noCgroup2Mount) { try CgroupV2Mount.parse(mountinfo: "") }
        #expect(
            CgroupError.noCgroup2Mount.description
                == "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); mount it with: mount -t cgroup2 none /sys/fs/cgroup"
        )
    }

    @Test func garbageLinesAreSkipped() throws {
        let text = """
            garbage
            1 2 3
            41 31 0:38 / /x rw,relatime cgroup2 cgroup2 rw
            41 31 0:38 / relative rw,relatime - cgroup2 cgroup2 rw
            41 31 0:38 / /y rw - cgroup2
            - - - - - - - - -
            \u{0}\u{1} -  cgroup2
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """
        #expect(try CgroupV2Mount.parse(mountinfo: text).path == "/sys/fs/cgroup/unified")
    }

    @Test func firstCgroup2MountWins() throws {
        let text = """
            41 31 0:38 / /first rw - cgroup2 cgroup2 rw
            42 31 0:38 / /second rw - cgroup2 cgroup2 rw
            """
        #expect(try CgroupV2Mount.parse(mountinfo: text).path == "/first")
    }

    @Test func wholeHierarchyPreferredOverSubtreeBindMount() throws {
        let text = """
            60 31 0:38 /docker/abc /run/sub rw - cgroup2 cgroup2 rw
            41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
            """
        #expect(try CgroupV2Mount.parse(mountinfo: text).path == "/sys/fs/cgroup")
        // Only a subtree mount: use it rather than fail.
        #expect(try CgroupV2Mount.parse(mountinfo: "60 31 0:38 /docker/abc /run/sub rw - cgroup2 cgroup2 rw").path == "/run/sub")
    }

    @Test func directoryOfPath() throws {
        let mount = CgroupV2Mount(path: "/sys/fs/cgroup")
        #expect(mount.directory(of: .root) == "/sys/fs/cgroup")
        #expect(mount.directory(of: try CgroupPath(validating: "/system.slice/orders.service")) == "/sys/fs/cgroup/system.slice/orders.service")
        #expect(CgroupV2Mount(path: "/").directory(of: try CgroupPath(validating: "/a")) == "/a")
    }
}

@Suite("cgroup paths (pure)")
struct CgroupPathTests {
    @Test(arguments: [
        ("/", "/", 0),
        ("/a", "/a", 1),
        ("/a/", "/a", 1),
        ("/system.slice/orders.service", "/system.slice/orders.service", 2),
        ("/system.slice/orders.service/", "/system.slice/orders.service", 2),
        ("/kubepods.slice/pod a b/..x/.y/z..", "/kubepods.slice/pod a b/..x/.y/z..", 5),
        ("/ünïcode/日本", "/ünïcode/日本", 2),
    ])
    func valid(input: String, normalized: String, level: Int) throws {
        let path = try CgroupPath(validating: input)
        #expect(path.string == normalized)
        #expect(path.description == normalized)
        #expect(path.level == level)
        #expect(try CgroupPath(validating: path.string) == path)
    }

    @Test(arguments: [
        "", "a", "a/b", "system.slice", "//", "///", "/a//b", "//a", "/a//", "/.", "/..", "/./a", "/a/..", "/a/./b",
        "/a/\u{0}b", "/\u{0}", "/" + String(repeating: "x", count: 256),
    ])
    func invalid(input: String) {
        #expect(throws: CgroupError.self) { try CgroupPath(validating: input) }
    }

    @Test func longestSegmentIsAccepted() throws {
        #expect(try CgroupPath(validating: "/" + String(repeating: "x", count: 255)).level == 1)
    }

    @Test func parentsAndAncestors() throws {
        let path = try CgroupPath(validating: "/a/b/c")
        #expect(path.parent == (try CgroupPath(validating: "/a/b")))
        #expect(path.parent?.parent?.parent == .root)
        #expect(CgroupPath.root.parent == nil)
        #expect(path.ancestor(atLevel: 1) == (try CgroupPath(validating: "/a")))
        #expect(path.ancestor(atLevel: 0) == .root)
        #expect(path.ancestor(atLevel: 3) == path)
        #expect(path.ancestor(atLevel: 4) == nil)
        #expect(path.isDescendant(ofOrEqualTo: try CgroupPath(validating: "/a")))
        #expect(!path.isDescendant(ofOrEqualTo: try CgroupPath(validating: "/a/bb")))
        #expect(try CgroupPath.root.appending("x") == (try CgroupPath(validating: "/x")))
        for bad in ["", ".", "..", "a/b", "a\u{0}"] {
            #expect(throws: CgroupError.self) { try path.appending(bad) }
        }
    }

    @Test func errorNamesThePath() {
        #expect(throws: CgroupError.invalidPath("a/b", reason: "must be absolute (start with \"/\")")) {
            try CgroupPath(validating: "a/b")
        }
    }
}

@Suite("/proc/self/cgroup (pure)")
struct OwnCgroupParsingTests {
    @Test func hybridHostRoot() throws {
        // Copied from this hybrid host: v1 lines first, the v2 line last.
        let text = """
            9:name=systemd:/
            8:pids:/
            4:memory:/process_api/f94434aedfa2b141ad43160793651c7f
            1:cpu:/
            0::/

            """
        #expect(try CgroupV2Mount.parseOwnCgroup(procSelfCgroup: text) == .root)
    }

    @Test func unifiedHostService() throws {
        let text = "0::/system.slice/orders.service\n"
        #expect(try CgroupV2Mount.parseOwnCgroup(procSelfCgroup: text) == (try CgroupPath(validating: "/system.slice/orders.service")))
    }

    @Test func noUnifiedLine() {
        #expect(throws: CgroupError.noUnifiedEntry) {
            try CgroupV2Mount.parseOwnCgroup(procSelfCgroup: "1:name=systemd:/\n4:memory:/x\n")
        }
        #expect(throws: CgroupError.noUnifiedEntry) { try CgroupV2Mount.parseOwnCgroup(procSelfCgroup: "") }
    }

    @Test func outsideTheCgroupNamespaceIsRefused() {
        // A process outside its cgroup namespace's root sees "/../..".
        #expect(throws: CgroupError.self) { try CgroupV2Mount.parseOwnCgroup(procSelfCgroup: "0::/../../x\n") }
    }
}

@Suite("cgroup ids off cgroupfs (no root needed)")
struct CgroupIDRefusalTests {
    @Test func directoryOnAnotherFilesystemIsRefused() {
        #expect(throws: CgroupError.notCgroup2("/tmp")) { try CgroupV2Mount(path: "/tmp").id(of: .root) }
    }

    @Test func missingDirectoryIsNotFound() throws {
        let path = try CgroupPath(validating: "/ma-missing-\(randomSuffix())/x")
        #expect(throws: CgroupError.notFound(path)) { try CgroupV2Mount(path: "/tmp").id(of: path) }
    }

    @Test func fileIsNotADirectory() throws {
        #expect(throws: CgroupError.notADirectory("/etc/hostname")) {
            try CgroupV2Mount(path: "/etc").id(of: try CgroupPath(validating: "/hostname"))
        }
    }
}
