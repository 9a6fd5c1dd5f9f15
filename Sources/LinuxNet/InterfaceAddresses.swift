import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The IP addresses configured on this network namespace's interfaces: the
/// addresses at which a connection reaches this node.
public enum InterfaceAddresses {
    public static func current() throws -> [SocketAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else {
            throw InterfaceAddressesError(errno: errno)
        }
        defer { freeifaddrs(list) }
        var result: [SocketAddress] = []
        var cursor = list
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr else { continue }
            switch Int32(address.pointee.sa_family) {
            case AF_INET:
                let ipv4 = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in.self)
                result.append(SocketAddress(ipv4, host: ""))
            case AF_INET6:
                let ipv6 = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in6.self)
                result.append(SocketAddress(ipv6, host: ""))
            default:
                continue
            }
        }
        return result
    }
}

public struct InterfaceAddressesError: Error, CustomStringConvertible {
    public let errno: Int32
    public var description: String { "cannot list the interface addresses (getifaddrs): \(String(cString: strerror(errno)))" }
}
