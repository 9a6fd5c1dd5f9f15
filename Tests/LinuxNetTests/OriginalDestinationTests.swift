import Foundation
import NIOCore
import Synchronization
import Testing

@testable import LinuxNet

/// An event loop that runs everything at once on the calling thread: enough to
/// drive `SocketOptionProvider` futures in tests without NIOPosix (which
/// LinuxNetTests does not depend on).
final class ImmediateEventLoop: EventLoop, Sendable {
    var inEventLoop: Bool { true }
    func execute(_ task: @escaping @Sendable () -> Void) { task() }
    func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        promise.fail(EventLoopError.unsupportedOperation)
        return Scheduled(promise: promise, cancellationTask: {})
    }
    func scheduleTask<T>(in: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + `in`, task)
    }
    func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        queue.async { callback(nil) }
    }
    func preconditionInEventLoop(file: StaticString, line: UInt) {}
    func preconditionNotInEventLoop(file: StaticString, line: UInt) {}
}

/// `getsockopt` on a plain file descriptor through the `SocketOptionProvider`
/// API, failing like NIOPosix does (`IOError` with the errno). Records the
/// level and name it was asked for.
final class DescriptorSocketOptions: SocketOptionProvider, Sendable {
    let eventLoop: EventLoop = ImmediateEventLoop()
    let fd: CInt
    let asked = Mutex<[(SocketOptionLevel, SocketOptionName)]>([])

    init(fd: CInt) { self.fd = fd }

    func unsafeSetSocketOption<Value: Sendable>(level: SocketOptionLevel, name: SocketOptionName, value: Value) -> EventLoopFuture<Void> {
        eventLoop.makeFailedFuture(EventLoopError.unsupportedOperation)
    }
    func unsafeSetSocketOption<Value: Sendable>(level: NIOBSDSocket.OptionLevel, name: NIOBSDSocket.Option, value: Value) -> EventLoopFuture<Void> {
        eventLoop.makeFailedFuture(EventLoopError.unsupportedOperation)
    }
    func unsafeGetSocketOption<Value: Sendable>(level: NIOBSDSocket.OptionLevel, name: NIOBSDSocket.Option) -> EventLoopFuture<Value> {
        unsafeGetSocketOption(level: SocketOptionLevel(level.rawValue), name: SocketOptionName(name.rawValue))
    }
    func unsafeGetSocketOption<Value: Sendable>(level: SocketOptionLevel, name: SocketOptionName) -> EventLoopFuture<Value> {
        asked.withLock { $0.append((level, name)) }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: MemoryLayout<Value>.size, alignment: MemoryLayout<Value>.alignment)
        defer { storage.deallocate() }
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        var length = socklen_t(MemoryLayout<Value>.size)
        guard getsockopt(fd, CInt(level), CInt(name), storage.baseAddress, &length) == 0 else {
            return eventLoop.makeFailedFuture(IOError(errnoCode: errno, reason: "getsockopt"))
        }
        return eventLoop.makeSucceededFuture(storage.loadUnaligned(as: Value.self))
    }
}

@Suite("original destination: option selection (pure)")
struct OriginalDestinationQueryTests {
    @Test func queryFollowsTheLocalAddressFamily() throws {
        let v4 = OriginalDestination.Query(local: try SocketAddress(ipAddress: "127.0.0.1", port: 15001))
        let v6 = OriginalDestination.Query(local: try SocketAddress(ipAddress: "::1", port: 15001))
        let mapped = OriginalDestination.Query(local: try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 15001))
        #expect(v4 == .v4)
        #expect(v6 == .v6)
        #expect(mapped == .v4)  // an IPv4 connection on a dual-stack socket: conntrack entry is IPv4
        #expect(OriginalDestination.Query(local: try SocketAddress(unixDomainSocketPath: "/tmp/x")) == nil)
        #expect(v4?.level == CInt(SOL_IP) && v4?.name == 80)  // SO_ORIGINAL_DST
        #expect(v6?.level == CInt(SOL_IPV6) && v6?.name == 80)  // IP6T_SO_ORIGINAL_DST
    }

    @Test func errorMapping() {
        #expect(OriginalDestination.mapError(IOError(errnoCode: ENOENT, reason: "getsockopt")) as? OriginalDestinationError == .notRedirected)
        #expect(OriginalDestination.mapError(IOError(errnoCode: ENOPROTOOPT, reason: "getsockopt")) as? OriginalDestinationError == .notRedirected)
        #expect(OriginalDestination.mapError(IOError(errnoCode: EBADF, reason: "getsockopt")) as? OriginalDestinationError == .system(errno: EBADF))
    }

    /// Where some NAT table exists (a container engine's), conntrack answers
    /// for a direct connection too, with the listener's own address.
    @Test func anOriginalDestinationThatIsTheListenerItselfWasNotRedirected() throws {
        let listener = try SocketAddress(ipAddress: "127.0.0.1", port: 15001)
        #expect(throws: OriginalDestinationError.notRedirected) { try OriginalDestination.redirected(listener, local: listener) }
        let elsewhere = try SocketAddress(ipAddress: "10.77.1.2", port: 8080)
        #expect(try OriginalDestination.redirected(elsewhere, local: listener) == elsewhere)
        let otherPort = try SocketAddress(ipAddress: "127.0.0.1", port: 8080)
        #expect(try OriginalDestination.redirected(otherPort, local: listener) == otherPort)
    }

    @Test func noLocalAddressFails() async throws {
        let provider = DescriptorSocketOptions(fd: -1)
        await #expect(throws: OriginalDestinationError.noLocalAddress) {
            try await OriginalDestination.of(provider: provider, localAddress: nil).get()
        }
    }
}

@Suite("original destination on the real kernel", rootOnly)
struct KernelOriginalDestinationTests {
    @Test(arguments: ["127.0.0.1", "::1"])
    func directConnectionIsNotRedirected(host: String) async throws {
        let connection = try LoopbackConnection(host: host)
        #expect(throws: OriginalDestinationError.notRedirected) { try OriginalDestination.of(socket: connection.server) }
        let provider = DescriptorSocketOptions(fd: connection.server)
        await #expect(throws: OriginalDestinationError.notRedirected) {
            try await OriginalDestination.of(provider: provider, localAddress: connection.serverAddress).get()
        }
        let asked = provider.asked.withLock { $0 }
        #expect(asked.count == 1)
        #expect(asked.first?.0 == SocketOptionLevel(host == "::1" ? SOL_IPV6 : SOL_IP))
        #expect(asked.first?.1 == 80)
    }

    /// The whole capture path inside a private network namespace: an nftables
    /// `redirect` in the output hook sends a connection for 10.77.200.1:8080 (or
    /// [fd77::1]:8080) to our listener; the accepted socket reports the original
    /// destination, and sock_diag in that namespace finds the client's socket
    /// (and its cgroup) from the accepted peer and the original destination.
    @Test func redirectedConnectionInOwnNetns() async throws {
        let name = "ma-ln-\(randomSuffix())"
        try run(["ip", "netns", "add", name])
        defer { _ = try? run(["ip", "netns", "del", name], allowFailure: true) }
        let namespacePath = "/run/netns/\(name)"
        try run(["ip", "-n", name, "link", "set", "lo", "up"])
        try run(["ip", "-n", name, "link", "add", "ma0", "type", "veth", "peer", "name", "ma1"])
        try run(["ip", "-n", name, "link", "set", "ma0", "up"])
        try run(["ip", "-n", name, "link", "set", "ma1", "up"])
        try run(["ip", "-n", name, "addr", "add", "10.77.200.2/24", "dev", "ma0"])
        try run(["ip", "-n", name, "-6", "addr", "add", "fd77::2/64", "dev", "ma0", "nodad"])

        let namespace = NetworkNamespace(path: namespacePath)
        let (listener4, listener6) = try namespace.run { (try listenTCP(host: "127.0.0.1"), try listenTCP(host: "::1")) }
        defer {
            close(listener4)
            close(listener6)
        }
        let port4 = try address(of: listener4).port!
        let port6 = try address(of: listener6).port!
        try run([
            "nsenter", "--net=\(namespacePath)", "nft",
            """
            add table inet ma_ln_test; \
            add chain inet ma_ln_test output { type nat hook output priority -100; policy accept; }; \
            add rule inet ma_ln_test output ip daddr 10.77.200.1 tcp dport 8080 redirect to :\(port4); \
            add rule inet ma_ln_test output ip6 daddr fd77::1 tcp dport 8080 redirect to :\(port6)
            """,
        ])

        let mount = try CgroupV2Mount.discover()
        let ownID = try mount.id(of: try mount.ownCgroup())
        let namespaceDiag = try SockDiagClient(namespace: namespace)
        let hostDiag = try SockDiagClient()

        for (listener, target) in [(listener4, "10.77.200.1"), (listener6, "fd77::1")] {
            let destination = try SocketAddress(ipAddress: target, port: 8080)
            let client = try namespace.run { try connectTCP(to: destination) }
            defer { close(client) }
            let server = try acceptTCP(listener)
            defer { close(server) }

            // Raw descriptor API.
            let original = try OriginalDestination.of(socket: server)
            #expect(original == destination)
            #expect(original.ipAddress == target && original.port == 8080)
            // SocketOptionProvider path (what OriginalDestination.of(channel) runs).
            let provider = DescriptorSocketOptions(fd: server)
            #expect(try await OriginalDestination.of(provider: provider, localAddress: try address(of: server)).get() == destination)

            // The agent's identification: client = accepted peer, destination = original.
            let peer = try address(of: server, peer: true)
            #expect(peer.ipAddress == (target == "fd77::1" ? "fd77::2" : "10.77.200.2"))
            let reply = try namespaceDiag.lookup(source: peer, destination: original)
            #expect(reply.inode == inode(of: client))
            #expect(reply.cgroupID == ownID)
            // The host namespace does not see that socket.
            #expect(throws: SockDiagError.notFound) { try hostDiag.lookup(source: peer, destination: original) }
        }
    }
}
