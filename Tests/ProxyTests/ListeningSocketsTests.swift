import Glibc
import LinuxNet
import Logging
import Testing
@testable import Proxy

/// The registry of the agent's listening sockets: what a restart or a
/// takeover hands over is adopted by name, checked first, and kept.
@Suite struct ListeningSocketsTests {
    private let logger = Logger(label: "test")

    private func port(of fd: CInt) throws -> UInt16 {
        UInt16(try #require(ListeningSocket.boundAddress(fd)?.port))
    }

    @Test func namesCarryNoColonForSystemd() {
        #expect(ListeningSockets.name(listener: "tunnel", address: "0.0.0.0", port: 15008) == "tunnel@0.0.0.0_15008")
        #expect(ListeningSockets.name(listener: "outbound", address: "::1", port: 15001) == "outbound@[__1]_15001")
        #expect(!ListeningSockets.name(listener: "tunnel", address: "fd77::2", port: 15008).contains(":"))
    }

    @Test func aSocketHandedOverUnderItsNameIsAdoptedNotMadeAgain() throws {
        let handedOver = try ListeningSocket.open(address: "127.0.0.1", port: 0)
        let port = try port(of: handedOver)
        let name = ListeningSockets.name(listener: "tunnel", address: "127.0.0.1", port: port)
        let sockets = ListeningSockets(inherited: [(name, handedOver), ("gone@127.0.0.1_1", -1)], logger: logger)
        defer { sockets.closeAll() }

        // Binding the same port again would fail: only adoption gets a socket.
        let forLibrary = try sockets.socket(listener: "tunnel", address: "127.0.0.1", port: port)
        defer { close(forLibrary) }
        #expect(forLibrary != handedOver)
        #expect(ListeningSocket.isListening(forLibrary, address: "127.0.0.1", port: port))
        #expect(sockets.all.map(\.name) == [name])
        #expect(sockets.all.map(\.fd) == [handedOver], "the registry keeps the descriptor it was given")
        #expect(sockets.unclaimed == ["gone@127.0.0.1_1"])
    }

    @Test func aListenerStartedAgainGetsTheSocketItHad() throws {
        let sockets = ListeningSockets(logger: logger)
        defer { sockets.closeAll() }
        let first = try sockets.socket(listener: "outbound", address: "127.0.0.1", port: 0)
        defer { close(first) }
        // Port 0 picks a port once; asking again by the same name must not pick another.
        let second = try sockets.socket(listener: "outbound", address: "127.0.0.1", port: 0)
        defer { close(second) }
        #expect(try port(of: first) == port(of: second))
        #expect(sockets.all.count == 1)
    }

    @Test func aSocketHandedOverThatDoesNotListenWhereNamedIsReplaced() throws {
        // Bound to 127.0.0.1 but handed over as 127.0.0.2's: not trusted.
        let misnamed = try ListeningSocket.open(address: "127.0.0.1", port: 0)
        let port = try port(of: misnamed)
        let sockets = ListeningSockets(
            inherited: [(ListeningSockets.name(listener: "tunnel", address: "127.0.0.2", port: port), misnamed)], logger: logger)
        defer { sockets.closeAll() }
        let made = try sockets.socket(listener: "tunnel", address: "127.0.0.2", port: port)
        defer { close(made) }
        #expect(ListeningSocket.isListening(made, address: "127.0.0.2", port: port))
        #expect(sockets.unclaimed.isEmpty)
    }

    @Test func closingAllForgetsTheSocketsInUseAndThoseNeverClaimed() throws {
        let unclaimed = try ListeningSocket.open(address: "127.0.0.1", port: 0)
        let sockets = ListeningSockets(inherited: [("old@127.0.0.1_1", unclaimed)], logger: logger)
        let forLibrary = try sockets.socket(listener: "outbound", address: "127.0.0.1", port: 0)
        defer { close(forLibrary) }
        sockets.closeAll()
        #expect(sockets.all.isEmpty)
        #expect(sockets.unclaimed.isEmpty)
        // The library's own descriptor still listens: the socket closes with its last holder.
        #expect(ListeningSocket.isListening(forLibrary, address: "127.0.0.1", port: try port(of: forLibrary)))
    }
}

extension ListeningSocketsTests {
    @Test func socketsHandedOverThatNoListenerClaimsAreClosedAndNamed() throws {
        let unused = try ListeningSocket.open(address: "127.0.0.1", port: 0)
        let port = try port(of: unused)
        let sockets = ListeningSockets(inherited: [("old-listener@127.0.0.1_\(port)", unused)], logger: logger)
        defer { sockets.closeAll() }
        #expect(sockets.closeUnclaimed() == ["old-listener@127.0.0.1_\(port)"])
        #expect(sockets.unclaimed.isEmpty)
        // The port is free again: nothing is left listening on it unanswered.
        let again = try ListeningSocket.open(address: "127.0.0.1", port: port)
        close(again)
    }
}
