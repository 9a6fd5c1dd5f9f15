import Foundation
import NIOCore
import TestFixtures
import Testing

@testable import LinuxNet

/// Root-only tests are skipped, with this message, when not root, except in CI,
/// where they run (and fail without root): see `TestEnvironment`.
let rootOnly = Testing.ConditionTrait.enabled(if: TestEnvironment.privilegedTestsRun, "needs root (real kernel: sock_diag, cgroups, netns)")

enum TestSocketError: Error, CustomStringConvertible {
    case call(String, Int32)
    var description: String {
        switch self {
        case .call(let name, let code): return "\(name): \(String(cString: strerror(code)))"
        }
    }
}

@discardableResult
func check(_ result: Int32, _ name: String) throws -> Int32 {
    guard result >= 0 else { throw TestSocketError.call(name, errno) }
    return result
}

/// The local (or peer) address of a socket.
func address(of fd: CInt, peer: Bool = false) throws -> SocketAddress {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length)
        }
    }
    try check(rc, peer ? "getpeername" : "getsockname")
    return withUnsafeBytes(of: storage) { raw in
        switch CInt(storage.ss_family) {
        case AF_INET: return SocketAddress(raw.loadUnaligned(as: sockaddr_in.self))
        default: return SocketAddress(raw.loadUnaligned(as: sockaddr_in6.self))
        }
    }
}

/// A listening TCP socket bound to `host` (port 0 unless given).
func listenTCP(host: String, port: Int = 0) throws -> CInt {
    let bindAddress = try SocketAddress(ipAddress: host, port: port)
    let fd = try check(socket(bindAddress.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket")
    var one: CInt = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
    _ = try bindAddress.withSockAddr { try check(bind(fd, $0, socklen_t($1)), "bind") }
    try check(listen(fd, 16), "listen")
    return fd
}

/// A blocking connect to `destination`.
func connectTCP(to destination: SocketAddress) throws -> CInt {
    let fd = try check(socket(destination.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket")
    do {
        _ = try destination.withSockAddr { try check(connect(fd, $0, socklen_t($1)), "connect") }
    } catch {
        close(fd)
        throw error
    }
    return fd
}

func acceptTCP(_ listener: CInt) throws -> CInt {
    try check(accept(listener, nil, nil), "accept")
}

/// A live loopback TCP connection made by this process; closed on deinit.
final class LoopbackConnection: Sendable {
    let listener: CInt
    let client: CInt
    let server: CInt
    /// The client socket's own address (what the agent sees as the peer).
    let clientAddress: SocketAddress
    /// Where the client connected to.
    let serverAddress: SocketAddress

    init(host: String) throws {
        let listener = try listenTCP(host: host)
        var client: CInt = -1
        do {
            let serverAddress = try address(of: listener)
            client = try connectTCP(to: serverAddress)
            let server = try acceptTCP(listener)
            self.clientAddress = try address(of: client)
            self.serverAddress = serverAddress
            self.server = server
            self.client = client
            self.listener = listener
        } catch {
            if client >= 0 { close(client) }
            close(listener)
            throw error
        }
    }

    deinit {
        close(client)
        close(server)
        close(listener)
    }
}

/// Runs a command, returns its exit status and combined output.
@discardableResult
func run(_ arguments: [String], allowFailure: Bool = false) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let output = String(decoding: data, as: UTF8.self)
    if process.terminationStatus != 0 && !allowFailure {
        throw CommandFailure(arguments: arguments, status: process.terminationStatus, output: output)
    }
    return (process.terminationStatus, output)
}

struct CommandFailure: Error, CustomStringConvertible {
    let arguments: [String]
    let status: Int32
    let output: String
    var description: String { "\(arguments.joined(separator: " ")) exited \(status): \(output)" }
}

func randomSuffix() -> String {
    String(UInt32.random(in: 0...UInt32.max), radix: 16)
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

func bytes(hex text: String) -> [UInt8] {
    let clean = text.filter { !$0.isWhitespace }
    var out: [UInt8] = []
    var index = clean.startIndex
    while index < clean.endIndex {
        let next = clean.index(index, offsetBy: 2)
        out.append(UInt8(clean[index..<next], radix: 16)!)
        index = next
    }
    return out
}
