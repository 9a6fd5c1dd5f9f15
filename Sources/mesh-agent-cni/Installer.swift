import CNI

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `mesh-agent-cni install` and `uninstall` on the node's files. What to
/// write is `ChainInstallation`'s; this lists, reads, writes atomically and
/// reports. The binary goes in before the config names it, and the config
/// lets go of it before it is removed, so a runtime never chains a plugin
/// that is not there.
enum Installer {
    static func run(_ arguments: [String]) -> Never {
        let command: InstallCommand
        do {
            command = try InstallCommand.parse(arguments)
        } catch {
            POSIX.fail("mesh-agent-cni: \(error)", status: 2)
        }
        do throws(ChainInstallationError) {
            switch command.action {
            case .help:
                POSIX.say(InstallCommand.usage)
            case .install:
                try install(command)
            case .uninstall:
                try uninstall(command)
            }
        } catch {
            POSIX.fail("mesh-agent-cni \(command.action.rawValue): \(error)", status: 1)
        }
        exit(0)
    }

    private static func install(_ command: InstallCommand) throws(ChainInstallationError) {
        let directory = command.confDirectory
        let plan = try ChainInstallation.install(
            directory: directory, names: try Files.names(in: directory), agentSocket: command.agentSocket,
            read: { name throws(ChainInstallationError) in try Files.config(directory: directory, name: name) })

        let binary = try Files.contents(of: "/proc/self/exe", limit: 1 << 30)
        try Files.replace(directory: command.binDirectory, name: ChainInstallation.pluginType, contents: binary, mode: 0o755)
        POSIX.say("installed \(join(command.binDirectory, ChainInstallation.pluginType))")

        guard !plan.steps.isEmpty else {
            POSIX.say("\(join(directory, plan.file)) already chains mesh-agent-cni with agentSocket \(command.agentSocket); nothing to change")
            return
        }
        try carryOut(plan.steps, in: directory)
        POSIX.say("mesh-agent-cni is chained with agentSocket \(command.agentSocket)")
    }

    private static func uninstall(_ command: InstallCommand) throws(ChainInstallationError) {
        let directory = command.confDirectory
        let steps = try ChainInstallation.uninstall(
            directory: directory, names: try Files.names(in: directory),
            read: { name throws(ChainInstallationError) in try Files.config(directory: directory, name: name) })
        if steps.isEmpty { POSIX.say("no network config in \(directory) chains mesh-agent-cni") }
        try carryOut(steps, in: directory)

        let binary = join(command.binDirectory, ChainInstallation.pluginType)
        if try Files.remove(path: binary) {
            POSIX.say("removed \(binary)")
        } else {
            POSIX.say("\(binary) was not there")
        }
    }

    private static func carryOut(_ steps: [ChainInstallation.Step], in directory: String) throws(ChainInstallationError) {
        for step in steps {
            switch step {
            case .write(let file, let contents, let modeOf):
                let mode = try Files.mode(of: join(directory, modeOf)) ?? 0o644
                try Files.replace(directory: directory, name: file, contents: contents, mode: mode)
                POSIX.say("wrote \(join(directory, file))")
            case .remove(let file):
                _ = try Files.remove(path: join(directory, file))
                POSIX.say("removed \(join(directory, file)) (its plugin is in the .conflist now)")
            }
        }
    }

    private static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : "\(directory)/\(name)"
    }
}

/// The file system calls of the installer. Every failure says what was
/// done to which file, and the system's reason.
enum Files {
    /// The regular files (or links to them) in `directory`, as libcni counts
    /// them: a directory named like a config is not one.
    static func names(in directory: String) throws(ChainInstallationError) -> [String] {
        guard let handle = opendir(directory) else {
            let code = errno
            throw ChainInstallationError(
                "cannot list \(directory): \(describe(code))",
                remedy: code == ENOENT ? "the runtime's CNI config directory is not there; check --cni-conf-dir (in the DaemonSet, the hostPath mount)" : "check the directory and its permissions")
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name != ".", name != ".." else { continue }
            var status = stat()
            guard stat("\(directory)/\(name)", &status) == 0, status.st_mode & S_IFMT == S_IFREG else { continue }
            names.append(name)
        }
        return names
    }

    /// A config file, read one byte past the most a config may hold, so
    /// that the parser can say it is too long.
    static func config(directory: String, name: String) throws(ChainInstallationError) -> [UInt8] {
        try contents(of: "\(directory)/\(name)", limit: NetworkConfig.maximumSize + 1)
    }

    /// Reads a whole file, or its first `limit` bytes.
    static func contents(of path: String, limit: Int) throws(ChainInstallationError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure("cannot open \(path)", errno) }
        defer { close(fd) }
        switch POSIX.readAll(fd, limit: limit) {
        case .success(let bytes): return bytes
        case .failure(let error): throw failure("cannot read \(path)", error.code)
        }
    }

    /// The permission bits of `path`; nil when there is no such file.
    static func mode(of path: String) throws(ChainInstallationError) -> mode_t? {
        var status = stat()
        guard stat(path, &status) == 0 else {
            if errno == ENOENT { return nil }
            throw failure("cannot read the mode of \(path)", errno)
        }
        return status.st_mode & 0o7777
    }

    /// Writes `contents` to a temporary file in `directory` and renames it to
    /// `name`: readers see the old file or the new one, never a part. The
    /// temporary name has no config extension, so no runtime loads it.
    static func replace(directory: String, name: String, contents: [UInt8], mode: mode_t) throws(ChainInstallationError) {
        let target = "\(directory)/\(name)"
        let temporary = "\(directory)/.\(name).\(getpid()).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw failure("cannot make \(temporary) to replace \(target)", errno) }
        var done = false
        defer {
            if !done { unlink(temporary) }
        }
        // open(2) applies the umask; the copy keeps the original's mode.
        guard fchmod(fd, mode) == 0 else {
            let code = errno
            close(fd)
            throw failure("cannot set the mode of \(temporary)", code)
        }
        if let error = POSIX.writeAll(fd, contents) {
            close(fd)
            throw failure("cannot write \(temporary) to replace \(target)", error.code)
        }
        // Data on disk before the name points at it, so a crash leaves the
        // old file or the whole new one.
        guard fsync(fd) == 0 else {
            let code = errno
            close(fd)
            throw failure("cannot flush \(temporary) to disk", code)
        }
        close(fd)
        guard rename(temporary, target) == 0 else { throw failure("cannot rename \(temporary) to \(target)", errno) }
        done = true
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            _ = fsync(directoryFD)
            close(directoryFD)
        }
    }

    /// Removes `path`; false when it was not there.
    static func remove(path: String) throws(ChainInstallationError) -> Bool {
        guard unlink(path) == 0 else {
            if errno == ENOENT { return false }
            throw failure("cannot remove \(path)", errno)
        }
        return true
    }

    private static func failure(_ what: String, _ code: Int32) -> ChainInstallationError {
        let remedy: String
        switch code {
        case EACCES, EPERM, EROFS:
            remedy = "run as root with the directory mounted writable (in the DaemonSet, the init container's hostPath mounts)"
        case ENOENT:
            remedy = "check that the directory exists (--cni-bin-dir, --cni-conf-dir)"
        default:
            remedy = "check the node's file system"
        }
        return ChainInstallationError("\(what): \(describe(code))", remedy: remedy)
    }

    private static func describe(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}
