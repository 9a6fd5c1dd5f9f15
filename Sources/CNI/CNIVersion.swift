/// A version of the CNI specification, as `cniVersion` carries it
/// (Semantic Versioning's `MAJOR.MINOR.PATCH`, digits only).
public struct CNIVersion: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let major: Int
    public let minor: Int
    public let patch: Int

    public init(_ major: Int, _ minor: Int, _ patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// `1.0.0`; nil for anything else (`1.0`, `v1.0.0`, `1.0.0-rc1`).
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var numbers: [Int] = []
        for part in parts {
            // Bounded so that the number always fits; no CNI version has more digits.
            guard (1...4).contains(part.utf8.count), part.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let number = Int(part) else {
                return nil
            }
            numbers.append(number)
        }
        self.init(numbers[0], numbers[1], numbers[2])
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static func < (lhs: CNIVersion, rhs: CNIVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
    }

    /// The versions whose results carry `prevResult` with `ips[].address`,
    /// which a chained plugin needs: 0.3.0 introduced chaining, 0.4.0 CHECK,
    /// 1.1.0 GC and STATUS.
    public static let supported: [CNIVersion] = [
        CNIVersion(0, 3, 0), CNIVersion(0, 3, 1), CNIVersion(0, 4, 0), CNIVersion(1, 0, 0), CNIVersion(1, 1, 0),
    ]

    public static let latest = CNIVersion(1, 1, 0)

    /// The version an error is reported in when the config did not say one
    /// (the spec this plugin follows).
    public static let fallback = CNIVersion(1, 0, 0)

    /// The first version that has CHECK.
    public static let check = CNIVersion(0, 4, 0)
    /// The first version that has GC and STATUS.
    public static let garbageCollection = CNIVersion(1, 1, 0)

    public var isSupported: Bool { Self.supported.contains(self) }

    static var supportedList: String { supported.map(\.description).joined(separator: ", ") }
}
