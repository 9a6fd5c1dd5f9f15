import NIOCore

/// A destination the agent never connects a workload connection to, whatever
/// the registry or the policy says.
///
/// A tunnel peer, a plaintext client and a same-node workload reach a workload
/// at one of its own routable addresses on this node. A service that listens on
/// loopback chose to be reachable from this node only, and most services treat
/// a loopback caller as local and trusted, so an agent that dialled
/// `127.0.0.1` for an authenticated peer would hand the whole mesh a way past
/// that choice (the reason Istio stopped forwarding inbound traffic to localhost
/// in 1.10). The other kinds are not addresses a workload is reached at at all:
/// connecting to the unspecified address reaches this host by its loopback, an
/// IPv4-mapped IPv6 address is an IPv4 destination in disguise, and link-local,
/// multicast and broadcast addresses name a link or a group, not a workload. The
/// agent's own ports are its listeners, never a workload's.
public enum ForbiddenDestination: String, CaseIterable, Sendable {
    case loopback
    case unspecified
    case linkLocal = "link_local"
    case multicast
    case broadcast
    case ipv4Mapped = "ipv4_mapped"
    case agentPort = "agent_port"

    /// Why `destination` is refused, for the access log.
    public func reason(_ destination: SocketAddress) -> String {
        let target = destination.authority
        switch self {
        case .loopback:
            return "\(target) is a loopback address; workloads are reached at their own node addresses, never through loopback"
        case .unspecified:
            return "\(target) is the unspecified address, which reaches this host through loopback"
        case .linkLocal:
            return "\(target) is a link-local address, not a workload address"
        case .multicast:
            return "\(target) is a multicast address, not a workload address"
        case .broadcast:
            return "\(target) is a broadcast address, not a workload address"
        case .ipv4Mapped:
            return "\(target) is an IPv4-mapped IPv6 address; a workload is reached at its IPv4 address written as IPv4"
        case .agentPort:
            return "\(target) is one of the agent's own ports, not a workload port"
        }
    }

    /// What kind of forbidden destination `destination` is, if any.
    /// - Parameters:
    ///   - agentPorts: the ports of the agent's own listeners;
    ///   - broadcastAddresses: this node's subnet broadcast addresses (IPv4, host
    ///     byte order); `255.255.255.255` is always one.
    public static func classify(_ destination: SocketAddress, agentPorts: Set<UInt16>, broadcastAddresses: Set<UInt32> = []) -> ForbiddenDestination? {
        switch destination {
        case .v4(let address):
            if let kind = classify(ipv4: UInt32(bigEndian: address.address.sin_addr.s_addr), broadcastAddresses: broadcastAddresses) {
                return kind
            }
        case .v6(let address):
            let bytes = withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
            if let kind = classify(ipv6: bytes) {
                return kind
            }
        default:
            // A Unix socket is no network destination at all.
            return .unspecified
        }
        if let port = destination.port, agentPorts.contains(UInt16(clamping: port)) {
            return .agentPort
        }
        return nil
    }

    /// `address` in host byte order.
    static func classify(ipv4 address: UInt32, broadcastAddresses: Set<UInt32>) -> ForbiddenDestination? {
        switch address >> 24 {
        case 127: return .loopback
        case 0: return .unspecified  // 0.0.0.0/8, "this network": connect() sends it to loopback
        case 224...239: return .multicast
        default: break
        }
        if address >> 16 == 0xA9FE { return .linkLocal }  // 169.254.0.0/16
        if address == UInt32.max || broadcastAddresses.contains(address) { return .broadcast }
        return nil
    }

    /// `bytes`: the 16 bytes of an IPv6 address, in network order.
    static func classify(ipv6 bytes: [UInt8]) -> ForbiddenDestination? {
        guard bytes.count == 16 else { return .unspecified }
        let firstFifteenZero = bytes[0..<15].allSatisfy { $0 == 0 }
        if firstFifteenZero && bytes[15] == 1 { return .loopback }
        if firstFifteenZero && bytes[15] == 0 { return .unspecified }
        if bytes[0] == 0xFF { return .multicast }
        if bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80 { return .linkLocal }  // fe80::/10
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return .ipv4Mapped }
        return nil
    }
}
