import NIOCore
import Testing
@testable import Workloads

@Suite struct ForbiddenDestinationTests {
    static let agentPorts: Set<UInt16> = [15001, 15006, 15008, 15020, 15021]

    @Test(arguments: [
        ("127.0.0.1", ForbiddenDestination.loopback),
        ("127.255.0.9", .loopback),
        ("::1", .loopback),
        ("0.0.0.0", .unspecified),
        ("0.1.2.3", .unspecified),
        ("::", .unspecified),
        ("169.254.169.254", .linkLocal),
        ("fe80::1", .linkLocal),
        ("febf::1", .linkLocal),
        ("224.0.0.1", .multicast),
        ("239.255.255.250", .multicast),
        ("ff02::1", .multicast),
        ("255.255.255.255", .broadcast),
        ("::ffff:127.0.0.1", .ipv4Mapped),
        ("::ffff:10.77.0.2", .ipv4Mapped),
    ])
    func specialAddressesAreNeverWorkloads(ip: String, kind: ForbiddenDestination) throws {
        let destination = try SocketAddress(ipAddress: ip, port: 8080)
        #expect(ForbiddenDestination.classify(destination, agentPorts: Self.agentPorts) == kind)
        #expect(kind.reason(destination).contains(destination.authority))
    }

    @Test(arguments: ["10.77.0.2", "192.168.1.10", "fd77::2", "2001:db8::1", "fec0::1", "::10.77.0.2", "126.255.255.255", "128.0.0.1"])
    func routableAddressesPass(ip: String) throws {
        #expect(ForbiddenDestination.classify(try SocketAddress(ipAddress: ip, port: 8080), agentPorts: Self.agentPorts) == nil)
    }

    @Test func theAgentsOwnPortsAreRefusedOnAnyAddress() throws {
        for port in Self.agentPorts.sorted() {
            let v4 = try SocketAddress(ipAddress: "10.77.0.2", port: Int(port))
            let v6 = try SocketAddress(ipAddress: "fd77::2", port: Int(port))
            #expect(ForbiddenDestination.classify(v4, agentPorts: Self.agentPorts) == .agentPort)
            #expect(ForbiddenDestination.classify(v6, agentPorts: Self.agentPorts) == .agentPort)
        }
        // The address kind is reported before the port.
        #expect(ForbiddenDestination.classify(try SocketAddress(ipAddress: "127.0.0.1", port: 15008), agentPorts: Self.agentPorts) == .loopback)
    }

    @Test func aSubnetBroadcastOfThisNodeIsRefused() throws {
        let broadcast: UInt32 = 0x0A4D_00FF  // 10.77.0.255
        let destination = try SocketAddress(ipAddress: "10.77.0.255", port: 8080)
        #expect(ForbiddenDestination.classify(destination, agentPorts: [], broadcastAddresses: [broadcast]) == .broadcast)
        #expect(ForbiddenDestination.classify(destination, agentPorts: []) == nil, "without the node's subnets, .255 may be a host")
    }
}
