import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The IP addresses configured on this network namespace's interfaces: the
/// addresses at which a connection reaches this node, and the subnet broadcast
/// addresses of its IPv4 interfaces.
public struct InterfaceAddresses: Sendable {
    public var addresses: [SocketAddress]
    /// IPv4 broadcast addresses, in host byte order.
    public var broadcast: [UInt32]

    public init(addresses: [SocketAddress], broadcast: [UInt32]) {
        self.addresses = addresses
        self.broadcast = broadcast
    }

    public static func current() throws -> InterfaceAddresses {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else {
            throw InterfaceAddressesError(errno: errno)
        }
        defer { freeifaddrs(list) }
        var result = InterfaceAddresses(addresses: [], broadcast: [])
        var cursor = list
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr else { continue }
            switch Int32(address.pointee.sa_family) {
            case AF_INET:
                let ipv4 = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in.self)
                result.addresses.append(SocketAddress(ipv4, host: ""))
                if entry.pointee.ifa_flags & UInt32(IFF_BROADCAST) != 0, let broadcast = entry.pointee.ifa_ifu.ifu_broadaddr,
                   Int32(broadcast.pointee.sa_family) == AF_INET {
                    let raw = UnsafeRawPointer(broadcast).loadUnaligned(as: sockaddr_in.self)
                    // An address added without `brd` has none: glibc then
                    // reports the address itself in this slot.
                    if raw.sin_addr.s_addr != ipv4.sin_addr.s_addr, raw.sin_addr.s_addr != 0 {
                        result.broadcast.append(UInt32(bigEndian: raw.sin_addr.s_addr))
                    }
                }
            case AF_INET6:
                let ipv6 = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in6.self)
                result.addresses.append(SocketAddress(ipv6, host: ""))
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
