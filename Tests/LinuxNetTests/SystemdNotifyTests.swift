import Glibc
import Testing
@testable import LinuxNet

@Suite struct SystemdNotifySettingsTests {
    @Test func noSocketMeansNotUnderSystemd() {
        #expect(SystemdNotifier.Settings.from(notifySocket: nil, watchdogMicroseconds: "1000000", watchdogPID: nil, ownPID: 7) == nil)
        #expect(SystemdNotifier.Settings.from(notifySocket: "", watchdogMicroseconds: nil, watchdogPID: nil, ownPID: 7) == nil)
        #expect(SystemdNotifier.Settings.from(notifySocket: "relative/path", watchdogMicroseconds: nil, watchdogPID: nil, ownPID: 7) == nil)
        #expect(SystemdNotifier.Settings.from(notifySocket: "@", watchdogMicroseconds: nil, watchdogPID: nil, ownPID: 7) == nil)
    }

    @Test func theWatchdogPingsAtHalfItsTimeoutAndOnlyForItsProcess() {
        let mine = SystemdNotifier.Settings.from(notifySocket: "/run/systemd/notify", watchdogMicroseconds: "30000000", watchdogPID: "7", ownPID: 7)
        #expect(mine == .init(socketPath: "/run/systemd/notify", watchdogInterval: .seconds(15)))
        let unset = SystemdNotifier.Settings.from(notifySocket: "@abstract", watchdogMicroseconds: "30000000", watchdogPID: nil, ownPID: 7)
        #expect(unset?.watchdogInterval == .seconds(15))
        let someoneElse = SystemdNotifier.Settings.from(notifySocket: "/run/systemd/notify", watchdogMicroseconds: "30000000", watchdogPID: "8", ownPID: 7)
        #expect(someoneElse?.watchdogInterval == nil)
        for bad in ["0", "-5", "soon"] {
            #expect(SystemdNotifier.Settings.from(notifySocket: "/n", watchdogMicroseconds: bad, watchdogPID: nil, ownPID: 7)?.watchdogInterval == nil)
        }
    }

    @Test func outsideSystemdNotifyingDoesNothing() {
        #expect(SystemdNotifier(settings: nil).notify(["READY=1"]) == nil)
    }
}

@Suite struct SystemdNotifySocketTests {
    /// A datagram socket bound like systemd's; returns its fd.
    private func listen(at path: [UInt8]) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let length = MemoryLayout<sa_family_t>.size + path.count + (path.first == 0 ? 0 : 1)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(length)) }
        }
        #expect(bound == 0, "bind: \(String(cString: strerror(errno)))")
        return fd
    }

    private func receive(_ fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : ""
    }

    @Test func oneDatagramOfFieldsReachesAPathSocket() throws {
        let path = "/tmp/mesh-agent-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = try listen(at: Array(path.utf8))
        defer { close(fd); unlink(path) }
        let notifier = SystemdNotifier(settings: .init(socketPath: path, watchdogInterval: nil))
        #expect(notifier.notify(["READY=1", "STATUS=two\nlines"]) == nil)
        #expect(receive(fd) == "READY=1\nSTATUS=two lines", "a field never spills onto a second line")
    }

    @Test func anAbstractSocketIsNamedWithoutItsAt() throws {
        let name = "mesh-agent-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = try listen(at: [0] + Array(name.utf8))
        defer { close(fd) }
        #expect(SystemdNotifier(settings: .init(socketPath: "@" + name, watchdogInterval: nil)).notify(["WATCHDOG=1"]) == nil)
        #expect(receive(fd) == "WATCHDOG=1")
    }

    @Test func aMissingSocketIsAnErrorThatSaysWhere() {
        let error = SystemdNotifier(settings: .init(socketPath: "/nonexistent/notify", watchdogInterval: nil)).notify(["READY=1"])
        #expect(error?.errno == ENOENT)
        #expect(error?.description.contains("/nonexistent/notify") == true)
    }
}
