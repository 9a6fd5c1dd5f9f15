#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: the same random inputs for the same seed, on every machine, so
/// a failure can be replayed from the seed its message prints.
public struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SeededRandom {
    /// The seed a randomized test runs with: `TEST_SEED` when set (to replay a
    /// failure), else the test's fixed one. Failure messages print it.
    public static func seed(default fixed: UInt64) -> UInt64 {
        getenv("TEST_SEED").flatMap { UInt64(String(cString: $0)) } ?? fixed
    }
}

/// `bytes` with one to six random changes (a byte overwritten, the end cut
/// off, random bytes appended, a byte removed): what a parser of replies from
/// the kernel or a peer must survive.
public func randomlyCorrupted(_ bytes: [UInt8], using generator: inout some RandomNumberGenerator) -> [UInt8] {
    var bytes = bytes
    for _ in 0..<Int.random(in: 1...6, using: &generator) where !bytes.isEmpty {
        switch Int.random(in: 0..<4, using: &generator) {
        case 0: bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
        case 1: bytes.removeLast(Int.random(in: 0...bytes.count, using: &generator))
        case 2: bytes += (0..<Int.random(in: 1...40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        default: bytes.remove(at: Int.random(in: 0..<bytes.count, using: &generator))
        }
    }
    return bytes
}
