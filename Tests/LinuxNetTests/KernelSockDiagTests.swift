import Foundation
import Synchronization
import NIOCore
import Testing

@testable import LinuxNet

func inode(of fd: CInt) -> UInt32 {
    var st = stat()
    fstat(fd, &st)
    return UInt32(truncatingIfNeeded: st.st_ino)
}

@Suite("sock_diag on the real kernel", rootOnly)
struct KernelSockDiagTests {
    @Test(arguments: ["127.0.0.1", "::1"])
    func loopbackConnectionHasOurCgroup(host: String) throws {
        let mount = try CgroupV2Mount.discover()
        let expected = try mount.id(of: try mount.ownCgroup())
        let connection = try LoopbackConnection(host: host)
        let client = try SockDiagClient()
        #expect(try client.cgroupID(ofClient: connection.clientAddress, connectedTo: connection.serverAddress) == expected)

        let reply = try client.lookup(source: connection.clientAddress, destination: connection.serverAddress)
        #expect(reply.family == (host == "::1" ? UInt8(AF_INET6) : UInt8(AF_INET)))
        #expect(reply.state == 1)  // TCP_ESTABLISHED
        #expect(reply.uid == geteuid())
        #expect(reply.inode == inode(of: connection.client))

        // The other direction describes the accepted (server-side) socket.
        let serverSide = try client.lookup(source: connection.serverAddress, destination: connection.clientAddress)
        #expect(serverSide.inode == inode(of: connection.server))
    }

    @Test func ipv4MappedAddressesFindTheIPv4Socket() throws {
        let connection = try LoopbackConnection(host: "127.0.0.1")
        let mapped = { (address: SocketAddress) in try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: address.port!) }
        let reply = try SockDiagClient().lookup(
            source: try mapped(connection.clientAddress), destination: try mapped(connection.serverAddress))
        #expect(reply.inode == inode(of: connection.client))
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func absentTupleIsNotFound(host: String) throws {
        let connection = try LoopbackConnection(host: host)
        let client = try SockDiagClient()
        let wrongPort = try SocketAddress(ipAddress: host, port: connection.serverAddress.port == 1 ? 2 : 1)
        #expect(throws: SockDiagError.notFound) {
            try client.cgroupID(ofClient: connection.clientAddress, connectedTo: wrongPort)
        }
        // The socket stays usable after a not-found answer.
        #expect(try client.lookup(source: connection.clientAddress, destination: connection.serverAddress).inode == inode(of: connection.client))
    }

    @Test func concurrentLookupsFromManyThreads() throws {
        let connections = try (0..<4).map { i in try LoopbackConnection(host: i % 2 == 0 ? "127.0.0.1" : "::1") }
        let client = try SockDiagClient()
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 16) { worker in
            let connection = connections[worker % connections.count]
            let expected = inode(of: connection.client)
            for _ in 0..<300 {
                let ok = (try? client.lookup(source: connection.clientAddress, destination: connection.serverAddress).inode) == expected
                if !ok { failures.withLock { $0 += 1 } }
            }
        }
        #expect(failures.withLock { $0 } == 0)
    }

    @Test func missingNamespaceIsReported() {
        #expect(throws: NetworkNamespaceError.self) {
            try SockDiagClient(namespace: NetworkNamespace(path: "/run/netns/ma-missing-\(randomSuffix())"))
        }
    }

    @Test func measureLookupLatency() throws {
        let connection = try LoopbackConnection(host: "127.0.0.1")
        let client = try SockDiagClient()
        let expected = try client.cgroupID(ofClient: connection.clientAddress, connectedTo: connection.serverAddress)
        let count = 20_000
        var mismatches = 0
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for _ in 0..<count where try client.cgroupID(ofClient: connection.clientAddress, connectedTo: connection.serverAddress) != expected {
                mismatches += 1
            }
        }
        #expect(mismatches == 0)
        let micros = Double(elapsed.components.seconds) * 1e6 + Double(elapsed.components.attoseconds) / 1e12
        print(String(format: "sock_diag cgroupID lookup: %.2f µs mean over %d lookups", micros / Double(count), count))
    }
}
