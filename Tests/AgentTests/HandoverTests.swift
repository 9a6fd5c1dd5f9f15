import Glibc
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import Proxy
import Testing
@testable import Agent

/// The handover protocol between a running agent and one taking over, over
/// a real Unix socket and with a real listening socket handed across.
@Suite struct HandoverTests {
    private let logger = Logger(label: "test")

    /// What the giving side reported.
    private final class Events: Sendable {
        let prepared = NIOLockedValueBox(0)
        let abandoned = NIOLockedValueBox(0)
        let supersededBy = NIOLockedValueBox<Int32?>(nil)
        let refusePreparing: Bool

        init(refusePreparing: Bool = false) {
            self.refusePreparing = refusePreparing
        }
    }

    private struct CannotStopAccepting: Error {}

    private func giving(_ sockets: ListeningSockets, _ events: Events) throws -> (Handover.Giving, String) {
        let path = "/tmp/mesh-agent-handover-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let giving = Handover.Giving(
            path: path, sockets: { sockets.all }, logger: logger,
            prepare: {
                events.prepared.withLockedValue { $0 += 1 }
                if events.refusePreparing { throw CannotStopAccepting() }
            },
            abandoned: { events.abandoned.withLockedValue { $0 += 1 } },
            superseded: { pid in events.supersededBy.withLockedValue { $0 = pid } })
        try giving.start()
        return (giving, path)
    }

    private func eventually(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<500 where !condition() {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(condition(), "\(what) within 5 s")
    }

    private func registry() throws -> (ListeningSockets, port: UInt16) {
        let sockets = ListeningSockets(logger: logger)
        let fd = try sockets.socket(listener: "tunnel", address: "127.0.0.1", port: 0)
        defer { close(fd) }
        return (sockets, UInt16(try #require(ListeningSocket.boundAddress(fd)?.port)))
    }

    @Test func theRunningAgentStopsAcceptingHandsItsSocketsOverAndStepsBackOnReady() async throws {
        let (sockets, port) = try registry()
        defer { sockets.closeAll() }
        let events = Events()
        let (giving, path) = try giving(sockets, events)
        defer { giving.stop(); unlink(path) }

        let taking = try #require(Handover.Taking.request(path: path, logger: logger))
        #expect(events.prepared.withLockedValue { $0 } == 1, "it stopped accepting before the sockets went")
        // Named as the registry was asked for it (port 0: a free one).
        #expect(taking.sockets.map(\.name) == [ListeningSockets.name(listener: "tunnel", address: "127.0.0.1", port: 0)])
        for (_, fd) in taking.sockets {
            #expect(ListeningSocket.isListening(fd, address: "127.0.0.1", port: port))
            close(fd)
        }
        #expect(events.supersededBy.withLockedValue { $0 } == nil, "not before the new agent is ready")
        taking.confirmReady(logger: logger)
        try await eventually("the running agent learns the new one serves") { events.supersededBy.withLockedValue { $0 } == getpid() }
        #expect(events.abandoned.withLockedValue { $0 } == 0)
    }

    @Test func aTakerThatDiesBeforeReadyLeavesTheRunningAgentServingAndAnotherMayTryAgain() async throws {
        let (sockets, _) = try registry()
        defer { sockets.closeAll() }
        let events = Events()
        let (giving, path) = try giving(sockets, events)
        defer { giving.stop(); unlink(path) }

        var first = Handover.Taking.request(path: path, logger: logger)
        #expect(first?.sockets.count == 1)
        for (_, fd) in first?.sockets ?? [] { close(fd) }
        first = nil  // its connection closes without READY
        try await eventually("the running agent accepts again") { events.abandoned.withLockedValue { $0 } == 1 }
        #expect(events.supersededBy.withLockedValue { $0 } == nil)

        let second = try #require(Handover.Taking.request(path: path, logger: logger))
        for (_, fd) in second.sockets { close(fd) }
        second.confirmReady(logger: logger)
        try await eventually("the second taker takes over") { events.supersededBy.withLockedValue { $0 } != nil }
        #expect(events.prepared.withLockedValue { $0 } == 2)
    }

    @Test func aRunningAgentThatCannotStopAcceptingHandsNothingOver() throws {
        let (sockets, _) = try registry()
        defer { sockets.closeAll() }
        let events = Events(refusePreparing: true)
        let (giving, path) = try giving(sockets, events)
        defer { giving.stop(); unlink(path) }
        #expect(Handover.Taking.request(path: path, logger: logger) == nil, "two agents must never accept on one socket")
        #expect(events.supersededBy.withLockedValue { $0 } == nil)
    }

    @Test func withNoAgentRunningThereIsNothingToTakeOver() {
        #expect(Handover.Taking.request(path: "/tmp/mesh-agent-no-such-handover-\(getpid())", logger: logger) == nil)
    }

    @Test func aRequestThatIsNotATakeoverGetsNoSockets() throws {
        let (sockets, _) = try registry()
        defer { sockets.closeAll() }
        let events = Events()
        let (giving, path) = try giving(sockets, events)
        defer { giving.stop(); unlink(path) }
        let stranger = try #require(UnixStreamSocket.connect(to: path, timeout: 5))
        try stranger.send(Array("GIVE ME EVERYTHING\n".utf8))
        let (answer, descriptors) = try stranger.receive()
        #expect(answer.isEmpty && descriptors.isEmpty, "the connection is closed without an answer")
        #expect(events.prepared.withLockedValue { $0 } == 0)
    }
}

/// Pod sockets travel under their namespace's identity, and only a name this
/// version reads is claimed.
@Suite struct PodSocketsTests {
    private func descriptor() -> CInt {
        var fds: [CInt] = [-1, -1]
        _ = pipe(&fds)
        close(fds[1])
        return fds[0]
    }

    @Test func aNameReadsBackAsItsNamespaceAndSocket() throws {
        let namespace = NamespaceIdentity(device: 4, inode: 4_026_532_371)
        let name = PodSockets.name("tunnel@0.0.0.0_15008", in: namespace)
        #expect(name == "netns@4_4026532371/tunnel@0.0.0.0_15008")
        let parsed = try #require(PodSockets.parse(name))
        #expect(parsed.namespace == namespace && parsed.socket == "tunnel@0.0.0.0_15008")
        for bad in ["tunnel@0.0.0.0_15008", "netns@4/tunnel", "netns@x_1/tunnel", "netns@4_1/", "netns@4_1_2/tunnel", "netns@"] {
            #expect(PodSockets.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func handedOverSocketsAreSplitByNamespaceAndUnclaimedOnesClosed() {
        let pod = NamespaceIdentity(device: 4, inode: 100)
        let gone = NamespaceIdentity(device: 4, inode: 200)
        let node = descriptor(), podTunnel = descriptor(), goneTunnel = descriptor(), unreadable = descriptor()
        let (nodeSockets, pods) = PodSockets.split([
            ("tunnel@0.0.0.0_15008", node), (PodSockets.name("tunnel@0.0.0.0_15008", in: pod), podTunnel),
            (PodSockets.name("tunnel@0.0.0.0_15008", in: gone), goneTunnel), ("netns@garbage", unreadable),
        ])
        #expect(nodeSockets.map(\.name) == ["tunnel@0.0.0.0_15008"])
        #expect(fcntl(unreadable, F_GETFD) < 0, "a name nobody can claim is closed at once")
        let taken = pods.take(for: pod)
        #expect(taken.map(\.name) == ["tunnel@0.0.0.0_15008"] && taken.first?.fd == podTunnel)
        #expect(pods.take(for: pod).isEmpty, "taken once")
        #expect(pods.closeUnclaimed() == [PodSockets.name("tunnel@0.0.0.0_15008", in: gone)])
        #expect(fcntl(goneTunnel, F_GETFD) < 0)
        #expect(fcntl(podTunnel, F_GETFD) >= 0, "the claimed one belongs to its pod now")
        close(node)
        close(podTunnel)
    }
}
