import NIOCore

extension SocketAddress {
    /// `ip:port`, with IPv6 in brackets, as `:authority`, URLs and the access
    /// log write an address.
    public var authority: String {
        switch self {
        case .v6:
            return "[\(ipAddress ?? "?")]:\(port ?? 0)"
        default:
            return "\(ipAddress ?? "?"):\(port ?? 0)"
        }
    }
}
