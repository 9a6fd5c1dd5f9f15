import NIOCore

/// An IPv4 or IPv6 network in CIDR notation (`10.77.0.0/16`, `fd77::/64`).
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    /// Network address bytes, with host bits cleared: 4 for IPv4, 16 for IPv6.
    public let bytes: [UInt8]
    public let length: Int

    public init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = parts.first, !address.isEmpty else {
            throw IPPrefixError(text: text, problem: "write it as ADDRESS/LENGTH, e.g. 10.77.0.0/16 or fd77::/64")
        }
        guard let parsed = try? SocketAddress(ipAddress: String(address), port: 0), let raw = parsed.addressBytes else {
            throw IPPrefixError(text: text, problem: "\"\(address)\" is not an IPv4 or IPv6 address")
        }
        let maximum = raw.count * 8
        let length: Int
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...maximum).contains(value) else {
                throw IPPrefixError(text: text, problem: "the prefix length must be a number from 0 to \(maximum)")
            }
            length = value
        } else {
            length = maximum
        }
        let masked = Self.mask(raw, length: length)
        guard masked == raw else {
            throw IPPrefixError(text: text, problem: "host bits are set after /\(length); did you mean \(Self.format(masked))/\(length)?")
        }
        self.bytes = masked
        self.length = length
    }

    /// Compares in place: this runs per policy decision, which must not allocate.
    public func contains(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4):
            guard bytes.count == 4 else { return false }
            return withUnsafeBytes(of: v4.address.sin_addr) { matches($0) }
        case .v6(let v6):
            guard bytes.count == 16 else { return false }
            return withUnsafeBytes(of: v6.address.sin6_addr) { matches($0) }
        case .unixDomainSocket:
            return false
        }
    }

    private func matches(_ raw: UnsafeRawBufferPointer) -> Bool {
        var remaining = length
        for index in 0..<bytes.count where remaining > 0 {
            let mask: UInt8 = remaining >= 8 ? 0xFF : ~(UInt8.max >> remaining)
            if raw[index] & mask != bytes[index] { return false }
            remaining -= 8
        }
        return true
    }

    public var description: String { "\(Self.format(bytes))/\(length)" }

    private static func mask(_ raw: [UInt8], length: Int) -> [UInt8] {
        raw.enumerated().map { index, byte in
            let bitsBefore = index * 8
            if length >= bitsBefore + 8 { return byte }
            if length <= bitsBefore { return 0 }
            return byte & ~(UInt8.max >> (length - bitsBefore))
        }
    }

    private static func format(_ raw: [UInt8]) -> String {
        var buffer = ByteBufferAllocator().buffer(capacity: raw.count)
        buffer.writeBytes(raw)
        let address = try? SocketAddress(packedIPAddress: buffer, port: 0)
        return address?.ipAddress ?? raw.map(String.init).joined(separator: ".")
    }
}

public struct IPPrefixError: Error, CustomStringConvertible {
    public let text: String
    public let problem: String
    public var description: String { "\"\(text)\" is not a network: \(problem)" }
}

extension SocketAddress {
    /// The address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public var addressBytes: [UInt8]? {
        switch self {
        case .v4(let address):
            return withUnsafeBytes(of: address.address.sin_addr) { Array($0) }
        case .v6(let address):
            return withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
        case .unixDomainSocket:
            return nil
        }
    }
}
