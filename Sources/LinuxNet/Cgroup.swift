import CNetlink
import Foundation

/// The id of a cgroup v2 directory: its inode number, which is what the kernel
/// reports for a socket (`INET_DIAG_CGROUP_ID`) and what `socket cgroupv2` matches.
public struct CgroupID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(_ rawValue: UInt64) {
        self.rawValue = rawValue
    }

    public var description: String { String(rawValue) }

    public static func < (lhs: CgroupID, rhs: CgroupID) -> Bool { lhs.rawValue < rhs.rawValue }
}

// MARK: - Paths

/// A cgroup, named by its path below the cgroup v2 root, such as
/// `/system.slice/orders.service`. `/` is the root cgroup.
///
/// Validation is purely syntactic: the path must be absolute, must not contain NUL,
/// and no segment may be empty, `.` or `..` (so a path can never leave the cgroup
/// tree). One trailing `/` is tolerated and dropped.
public struct CgroupPath: Hashable, Sendable, CustomStringConvertible {
    /// The segments below the root; empty for the root cgroup.
    public let segments: [String]

    /// The root cgroup, `/`.
    public static let root = CgroupPath(uncheckedSegments: [])

    /// Longest segment the kernel accepts (NAME_MAX).
    static let maxSegmentBytes = 255

    public init(validating text: String) throws {
        guard text.first == "/" else {
            throw CgroupError.invalidPath(text, reason: "must be absolute (start with \"/\")")
        }
        guard !text.utf8.contains(0) else {
            throw CgroupError.invalidPath(text, reason: "contains a NUL byte")
        }
        var body = Substring(text.dropFirst())
        if body.last == "/" { body = body.dropLast() }
        if body.isEmpty {
            // "/" (or "//" after dropping the tolerated trailing slash would leave
            // "/" — but "//" has an empty segment, so reject it explicitly).
            guard text == "/" else {
                throw CgroupError.invalidPath(text, reason: "contains an empty segment (\"//\")")
            }
            self.segments = []
            return
        }
        var segments: [String] = []
        for segment in body.split(separator: "/", omittingEmptySubsequences: false) {
            switch segment {
            case "":
                throw CgroupError.invalidPath(text, reason: "contains an empty segment (\"//\")")
            case ".", "..":
                throw CgroupError.invalidPath(text, reason: "contains a \"\(segment)\" segment")
            default:
                guard segment.utf8.count <= Self.maxSegmentBytes else {
                    throw CgroupError.invalidPath(
                        text, reason: "segment longer than \(Self.maxSegmentBytes) bytes")
                }
                segments.append(String(segment))
            }
        }
        self.segments = segments
    }

    init(uncheckedSegments: [String]) {
        self.segments = uncheckedSegments
    }

    /// Depth below the root: 0 for `/`, 2 for `/system.slice/orders.service`.
    /// This is the `level` that nftables' `socket cgroupv2 level N` compares at.
    public var level: Int { segments.count }

    /// The normalized path, without a trailing slash (except for the root, `/`).
    public var string: String { "/" + segments.joined(separator: "/") }

    public var description: String { string }

    /// The enclosing cgroup; nil for the root.
    public var parent: CgroupPath? {
        segments.isEmpty ? nil : CgroupPath(uncheckedSegments: Array(segments.dropLast()))
    }

    /// The ancestor at `level` (0 = root); nil if `level` is deeper than this path.
    public func ancestor(atLevel level: Int) -> CgroupPath? {
        guard level >= 0, level <= segments.count else { return nil }
        return CgroupPath(uncheckedSegments: Array(segments.prefix(level)))
    }

    /// Whether `self` is `other` or lies below it.
    public func isDescendant(ofOrEqualTo other: CgroupPath) -> Bool {
        segments.starts(with: other.segments)
    }

    /// The child named `name`; throws if `name` is not a valid single segment.
    public func appending(_ name: String) throws -> CgroupPath {
        guard !name.isEmpty, name != ".", name != "..", !name.utf8.contains(0),
            !name.contains("/"), name.utf8.count <= Self.maxSegmentBytes
        else {
            throw CgroupError.invalidPath(name, reason: "is not a valid cgroup directory name")
        }
        return CgroupPath(uncheckedSegments: segments + [name])
    }
}

// MARK: - Errors

public enum CgroupError: Error, Equatable, CustomStringConvertible {
    /// No `cgroup2` entry in /proc/self/mountinfo.
    case noCgroup2Mount
    /// A cgroup path failed validation.
    case invalidPath(String, reason: String)
    /// The cgroup's directory does not exist below the mount.
    case notFound(CgroupPath)
    /// The path exists but is not a directory.
    case notADirectory(String)
    /// The path exists but is on another filesystem than cgroup v2.
    case notCgroup2(String)
    /// /proc/self/cgroup has no cgroup v2 line (`0::/path`).
    case noUnifiedEntry
    /// A system call failed.
    case system(operation: String, path: String, errno: Int32)

    public var description: String {
        switch self {
        case .noCgroup2Mount:
            return "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); mount it with: mount -t cgroup2 none /sys/fs/cgroup"
        case .invalidPath(let path, let reason):
            return "invalid cgroup path \"\(path)\": \(reason); write it like /system.slice/orders.service"
        case .notFound(let path):
            return "cgroup \(path) does not exist (no such directory below the cgroup v2 mount); check the path with systemd-cgls or create it first"
        case .notADirectory(let path):
            return "\(path) is not a directory, so it is not a cgroup"
        case .notCgroup2(let path):
            return "\(path) is not on a cgroup v2 filesystem; give a path below the cgroup2 mount"
        case .noUnifiedEntry:
            return "/proc/self/cgroup has no cgroup v2 entry (a line \"0::/path\"); is cgroup v2 mounted?"
        case .system(let operation, let path, let code):
            return "\(operation) \(path) failed: \(String(cString: strerror(code)))"
        }
    }
}

// MARK: - The mount

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones. Always discover it, never assume it.
public struct CgroupV2Mount: Hashable, Sendable, CustomStringConvertible {
    /// The mount point, such as `/sys/fs/cgroup`.
    public let path: String

    /// statfs(2) `f_type` of a cgroup v2 filesystem.
    public static let superMagic: Int64 = 0x6367_7270

    /// How deep `subtree(of:)` and `path(of:)` descend below where they start.
    public static let maxWalkDepth = 32

    public init(path: String) {
        self.path = path
    }

    public var description: String { path }

    /// Finds the cgroup v2 mount of this process's mount namespace.
    public static func discover() throws -> CgroupV2Mount {
        try parse(mountinfo: try readProcFile("/proc/self/mountinfo"))
    }

    /// Finds the cgroup v2 mount in the text of /proc/PID/mountinfo (pure).
    ///
    /// Takes the first `cgroup2` mount of the whole hierarchy (root field `/`); if
    /// there is none, the first `cgroup2` mount of any root. Mount points are
    /// unescaped (`\040` is a space). Lines that do not parse are skipped.
    public static func parse(mountinfo: String) throws -> CgroupV2Mount {
        var fallback: CgroupV2Mount?
        for line in mountinfo.split(whereSeparator: { $0 == "\n" }) {
            // id parent major:minor root mountpoint options [optional...] - fstype source superopts
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 9,
                let dash = fields[6...].firstIndex(of: "-"),
                dash + 1 < fields.count,
                fields[dash + 1] == "cgroup2"
            else { continue }
            let mountPoint = unescapeMountField(fields[4])
            guard mountPoint.first == "/" else { continue }
            let mount = CgroupV2Mount(path: mountPoint)
            if unescapeMountField(fields[3]) == "/" { return mount }
            if fallback == nil { fallback = mount }
        }
        if let fallback { return fallback }
        throw CgroupError.noCgroup2Mount
    }

    /// Undoes the kernel's octal escaping of mountinfo fields (`\040`, `\011`,
    /// `\012`, `\134`). Anything that is not a valid escape is kept as is.
    static func unescapeMountField(_ field: Substring) -> String {
        let bytes = Array(field.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        func octal(_ b: UInt8) -> UInt8? { (b >= 0x30 && b <= 0x37) ? b - 0x30 : nil }
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
                let a = octal(bytes[i + 1]), let b = octal(bytes[i + 2]), let c = octal(bytes[i + 3]),
                a <= 3
            {
                out.append(a << 6 | b << 3 | c)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The directory of `cgroup` below this mount.
    public func directory(of cgroup: CgroupPath) -> String {
        if cgroup.segments.isEmpty { return path }
        let base = path.hasSuffix("/") ? String(path.dropLast()) : path
        return base + cgroup.string
    }

    /// The id of `cgroup`: the inode of its directory. Refuses paths that are not
    /// directories on a cgroup v2 filesystem.
    public func id(of cgroup: CgroupPath) throws -> CgroupID {
        let dir = directory(of: cgroup)
        var st = stat()
        guard stat(dir, &st) == 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw CgroupError.notFound(cgroup) }
            throw CgroupError.system(operation: "stat", path: dir, errno: code)
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw CgroupError.notADirectory(dir) }
        var fsType: Int64 = 0
        guard cnetlink_statfs_type(dir, &fsType) == 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw CgroupError.notFound(cgroup) }
            throw CgroupError.system(operation: "statfs", path: dir, errno: code)
        }
        guard fsType == Self.superMagic else { throw CgroupError.notCgroup2(dir) }
        return CgroupID(UInt64(st.st_ino))
    }

    /// The path of the cgroup whose id is `id`, found by walking the tree from the
    /// root; nil if there is none. Costs a directory walk: for display only.
    public func path(of id: CgroupID) -> CgroupPath? {
        if let rootID = try? self.id(of: .root), rootID == id { return .root }
        var found: CgroupPath?
        walk(below: .root) { path, childID in
            if childID == id {
                found = path
                return false
            }
            return true
        }
        return found
    }

    /// `cgroup` and all its descendants (parents before children, siblings by
    /// name), to attribute a socket in a nested cgroup to the workload that owns
    /// an ancestor. Descends at most `maxWalkDepth` levels; entries that vanish
    /// while walking are skipped. Throws if `cgroup` itself is not a cgroup.
    public func subtree(of cgroup: CgroupPath) throws -> [(path: CgroupPath, id: CgroupID)] {
        var result: [(path: CgroupPath, id: CgroupID)] = [(cgroup, try id(of: cgroup))]
        walk(below: cgroup) { path, id in
            result.append((path, id))
            return true
        }
        return result
    }

    /// Depth-first, pre-order walk of the directories below `start` (not `start`
    /// itself), siblings in name order. `visit` returns false to stop.
    private func walk(below start: CgroupPath, _ visit: (CgroupPath, CgroupID) -> Bool) {
        // Children are pushed in reverse name order so that they pop in name order.
        var stack: [(path: CgroupPath, id: CgroupID?, depth: Int)] = [(start, nil, 0)]
        while let (cgroup, id, depth) = stack.popLast() {
            if let id, !visit(cgroup, id) { return }
            guard depth < Self.maxWalkDepth else { continue }
            for (name, inode) in Self.childDirectories(of: directory(of: cgroup)).reversed() {
                guard let child = try? cgroup.appending(name) else { continue }
                stack.append((child, CgroupID(inode), depth + 1))
            }
        }
    }

    /// Names and inodes of the subdirectories of `dir`, sorted by name. A
    /// directory that cannot be read (it vanished) has no children; an entry that
    /// vanished between readdir and stat is left out.
    private static func childDirectories(of dir: String) -> [(String, UInt64)] {
        guard let handle = opendir(dir) else { return [] }
        defer { closedir(handle) }
        let dirFD = dirfd(handle)
        var out: [(String, UInt64)] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let type = entry.pointee.d_type
            if type != UInt8(DT_DIR) && type != UInt8(DT_UNKNOWN) { continue }
            var st = stat()
            guard fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0,
                st.st_mode & S_IFMT == S_IFDIR
            else { continue }
            out.append((name, UInt64(st.st_ino)))
        }
        out.sort { $0.0 < $1.0 }
        return out
    }

    /// The cgroup this process belongs to (from /proc/self/cgroup).
    public func ownCgroup() throws -> CgroupPath {
        try Self.parseOwnCgroup(procSelfCgroup: try readProcFile("/proc/self/cgroup"))
    }

    /// The cgroup v2 path in the text of /proc/PID/cgroup: the `0::/path` line (pure).
    public static func parseOwnCgroup(procSelfCgroup text: String) throws -> CgroupPath {
        for line in text.split(whereSeparator: { $0 == "\n" }) where line.hasPrefix("0::") {
            return try CgroupPath(validating: String(line.dropFirst(3)))
        }
        throw CgroupError.noUnifiedEntry
    }
}

/// Reads a small file to the end with plain read(2): procfs files report size 0.
func readProcFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw CgroupError.system(operation: "open", path: path, errno: errno) }
    defer { close(fd) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw CgroupError.system(operation: "read", path: path, errno: errno)
        }
        if n == 0 { break }
        data.append(contentsOf: chunk[0..<n])
        if data.count > 16 << 20 { break }  // mountinfo is never this big; bound it anyway
    }
    return String(decoding: data, as: UTF8.self)
}
