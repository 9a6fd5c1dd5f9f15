import Glibc
import TestFixtures
import Testing

@testable import Netfilter

/// The inbound guard against the real kernel: two namespaces joined by a veth pair,
/// `node` (10.77.0.1, fd77::1) holding the table and the listeners, and `peer`
/// (10.77.0.2, fd77::2) standing for another machine. Both are deleted even when
/// the test fails, and the veth pair with them.
@Suite(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and program nftables"))
struct InboundGuardKernelTests {
    static let strict: UInt16 = 8443
    static let permissive: UInt16 = 8080
    static let unguarded: UInt16 = 9090
    static let inboundPlaintext: UInt16 = 15006

    @Test func strictPortsResetPermissivePortsRedirectAndLoopbackPasses() throws {
        try withTwoNodes { node, peer in
            let parameters = CaptureParameters(workloadCgroupLevels: [2], strictPorts: [Self.strict], permissivePorts: [Self.permissive])
            let table = CaptureRules.table(for: parameters)
            let client = try NetfilterClient(namespace: node.namespace)
            try client.replace(table)
            #expect(try client.liveTable(named: "mesh_agent")?.table == table)
            #expect(try client.drift(desired: table) == .inSync)

            var sockets = SocketBag()
            defer { sockets.closeAll() }
            var listeners: [UInt16: CInt] = [:]
            for port in [Self.strict, Self.permissive, Self.unguarded, Self.inboundPlaintext] {
                listeners[port] = try sockets.keep(node.namespace.run { try TestSocket.listen(port: port) })
            }
            func arrives(at port: UInt16, from source: String, to destination: String, dialledPort: UInt16) throws {
                let listener = try #require(listeners[port])
                let accepted = try #require(try TestSocket.accept(listener, within: 2000), "\(destination):\(dialledPort) should reach the listener on \(port)")
                sockets.keep(accepted)
                #expect(try TestSocket.endpoint(of: accepted).port == port)
                // Only the destination is rewritten: the listener sees the real source.
                #expect(try TestSocket.endpoint(of: accepted, peer: true).host == source)
                for (other, fd) in listeners where other != port {
                    #expect(try TestSocket.accept(fd, within: 0) == nil, "\(destination):\(dialledPort) must not reach the listener on \(other)")
                }
            }
            func dial(from namespace: TestNamespace, _ destination: String, _ port: UInt16) throws -> TestSocket.Outcome {
                let outcome = try namespace.namespace.run { try TestSocket.connect(to: destination, port: port, within: 3000) }
                if case .connected(let fd) = outcome { sockets.keep(fd) }
                return outcome
            }

            for (nodeAddress, peerAddress) in [("10.77.0.1", "10.77.0.2"), ("fd77::1", "fd77::2")] {
                // From outside: STRICT is reset, PERMISSIVE goes to the inbound-plaintext listener.
                #expect(try dial(from: peer, nodeAddress, Self.strict) == .refused)
                #expect(try TestSocket.accept(try #require(listeners[Self.strict]), within: 0) == nil)
                #expect(try dial(from: peer, nodeAddress, Self.permissive).isConnected)
                try arrives(at: Self.inboundPlaintext, from: peerAddress, to: nodeAddress, dialledPort: Self.permissive)
                // A port in neither set is not guarded.
                #expect(try dial(from: peer, nodeAddress, Self.unguarded).isConnected)
                try arrives(at: Self.unguarded, from: peerAddress, to: nodeAddress, dialledPort: Self.unguarded)
                // From the node itself, to its own address: on lo, untouched.
                for port in [Self.strict, Self.permissive] {
                    #expect(try dial(from: node, nodeAddress, port).isConnected)
                    try arrives(at: port, from: nodeAddress, to: nodeAddress, dialledPort: port)
                }
            }
            for (loopback, port) in [("127.0.0.1", Self.strict), ("::1", Self.strict), ("127.0.0.1", Self.permissive), ("::1", Self.permissive)] {
                #expect(try dial(from: node, loopback, port).isConnected)
                try arrives(at: port, from: loopback, to: loopback, dialledPort: port)
            }

            // A mode change is a set-element update: the strict port becomes permissive.
            try client.removeElements([.port(Self.strict)], fromSet: CaptureRules.strictPortSetName, inTable: "mesh_agent")
            try client.addElements([.port(Self.strict)], toSet: CaptureRules.permissivePortSetName, inTable: "mesh_agent")
            var changed = parameters
            changed.strictPorts = []
            changed.permissivePorts = [Self.permissive, Self.strict]
            #expect(try client.drift(desired: CaptureRules.table(for: changed)) == .inSync)
            #expect(try dial(from: peer, "10.77.0.1", Self.strict).isConnected)
            try arrives(at: Self.inboundPlaintext, from: "10.77.0.2", to: "10.77.0.1", dialledPort: Self.strict)
        }
    }

    @Test func aNonDefaultInboundPlaintextPortRoundTrips() throws {
        try withTestNamespace { namespace in
            let table = CaptureRules.table(for: CaptureParameters(inboundPlaintextPort: 16006, strictPorts: [1, 65535], permissivePorts: [80, 443]))
            let client = try NetfilterClient(namespace: namespace.namespace)
            try client.replace(table)
            #expect(try client.liveTable(named: "mesh_agent")?.table == table)
            #expect(try client.drift(desired: table) == .inSync)
            let listing = try namespace.nft("list", "table", "inet", "mesh_agent")
            #expect(listing.contains("tcp dport @permissive_ports redirect to :16006 comment"))
            #expect(listing.contains("elements = { 1, 65535 }"))
            #expect(listing.contains("elements = { 80, 443 }"))
        }
    }
}

// MARK: - Fixtures

/// Runs `body` with two fresh namespaces joined by a veth pair, addressed inside
/// 10.77.0.0/24 and fd77::/64, loopback up in both.
func withTwoNodes(_ body: (_ node: TestNamespace, _ peer: TestNamespace) throws -> Void) throws {
    try withTestNamespace { node in
        try withTestNamespace { peer in
            func ip(_ arguments: String...) throws {
                let result = try Shell.run(["ip"] + arguments)
                guard result.status == 0 else { throw ShellError.failed("ip \(arguments.joined(separator: " ")): \(result.err)") }
            }
            try ip("-n", node.name, "link", "add", "ma-node", "type", "veth", "peer", "name", "ma-peer", "netns", peer.name)
            for (namespace, link, v4, v6) in [(node, "ma-node", "10.77.0.1/24", "fd77::1/64"), (peer, "ma-peer", "10.77.0.2/24", "fd77::2/64")] {
                try ip("-n", namespace.name, "address", "add", v4, "dev", link)
                try ip("-n", namespace.name, "address", "add", v6, "dev", link, "nodad")
                try ip("-n", namespace.name, "link", "set", link, "up")
                try ip("-n", namespace.name, "link", "set", "lo", "up")
            }
            try body(node, peer)
        }
    }
}

/// File descriptors a test opened, closed when it ends.
struct SocketBag {
    private var descriptors: [CInt] = []

    @discardableResult
    mutating func keep(_ fd: CInt) -> CInt {
        descriptors.append(fd)
        return fd
    }

    mutating func closeAll() {
        for fd in descriptors { close(fd) }
        descriptors = []
    }
}

/// Blocking-free TCP with plain system calls, for sockets made inside a namespace.
enum TestSocket {
    enum Outcome: Equatable, Sendable {
        case connected(CInt)
        case refused
        case failed(errno: Int32)
        case timedOut

        var isConnected: Bool {
            if case .connected = self { return true }
            return false
        }
    }

    /// A listener on every IPv4 and IPv6 address of the namespace.
    static func listen(port: UInt16) throws -> CInt {
        let fd = try check(socket(AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket")
        var zero: CInt = 0
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<CInt>.size))
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        address.sin6_addr = in6addr_any
        do {
            _ = try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try check(bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)), "bind port \(port)")
                }
            }
            try check(Glibc.listen(fd, 16), "listen")
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Connects to `host` (IPv4 or IPv6 text) and `port`, waiting at most `milliseconds`.
    static func connect(to host: String, port: UInt16, within milliseconds: Int32) throws -> Outcome {
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let address = found else {
            throw ShellError.failed("not an address: \(host)")
        }
        defer { freeaddrinfo(found) }
        let fd = try check(
            socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0), "socket")
        let started = Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen)
        var code: Int32 = started == 0 ? 0 : errno
        if code == EINPROGRESS {
            var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&poller, 1, milliseconds) == 1 else {
                close(fd)
                return .timedOut
            }
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
        }
        switch code {
        case 0: return .connected(fd)
        case ECONNREFUSED:
            close(fd)
            return .refused
        default:
            close(fd)
            return .failed(errno: code)
        }
    }

    /// The next connection waiting on `listener`, or nil if none arrives in time.
    static func accept(_ listener: CInt, within milliseconds: Int32) throws -> CInt? {
        var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard try check(poll(&poller, 1, milliseconds), "poll") == 1 else { return nil }
        return try check(Glibc.accept(listener, nil, nil), "accept")
    }

    /// A socket's own address (or its peer's): the host as text, IPv4-mapped
    /// addresses shown as IPv4, and the port. Only for sockets of the AF_INET6
    /// listeners above.
    static func endpoint(of fd: CInt, peer: Bool = false) throws -> (host: String, port: UInt16) {
        var address = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = try withUnsafeMutablePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try check(peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length), peer ? "getpeername" : "getsockname")
            }
        }
        let bytes = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
        let port = UInt16(bigEndian: address.sin6_port)
        if bytes.prefix(10).allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            return (bytes.suffix(4).map(String.init).joined(separator: "."), port)
        }
        return (NFT.IPv6Address(bytes: bytes)?.description ?? "?", port)
    }

    @discardableResult
    private static func check(_ result: Int32, _ what: String) throws -> Int32 {
        guard result >= 0 else { throw ShellError.failed("\(what): \(String(cString: strerror(errno)))") }
        return result
    }
}
