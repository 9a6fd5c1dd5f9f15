import CLibFuzzer

#if canImport(Glibc)
import Glibc
#endif

/// What every fuzz target shares: libFuzzer's driver, and invariants that
/// stop a run the way a crash does.
public enum Fuzzing {
    /// Runs libFuzzer, which calls `body` with each input (as bytes), and exits
    /// with its status. libFuzzer reads its flags and corpus directories from
    /// the command line.
    public static func run(_ body: @escaping ([UInt8]) -> Void) -> Never {
        target = body
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        let status = LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            Fuzzing.target?(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
            return 0
        }
        exit(status)
    }

    /// Set once, before libFuzzer starts calling, and only read after.
    nonisolated(unsafe) private static var target: (([UInt8]) -> Void)?

    /// What an HTTP/2 client with prior knowledge sends first. The HTTP/2
    /// targets add it, so that every input is a frame sequence.
    /// The same bytes as three streams of reads: at once, cut every n bytes
    /// (n from the first byte), and one byte at a time. A reader must make the
    /// same of each, whatever the boundaries between reads.
    public static func requireSameReading<Reading: Equatable>(of bytes: [UInt8], _ read: ([[UInt8]]) -> Reading) -> Reading {
        let whole = read([bytes])
        let step = max(1, Int(bytes.first ?? 1))
        let cut = read(stride(from: 0, to: bytes.count, by: step).map { Array(bytes[$0..<min($0 + step, bytes.count)]) })
        require(cut == whole, "cut every \(step) bytes: \(cut), at once: \(whole)")
        let byByte = read(bytes.map { [$0] })
        require(byByte == whole, "byte by byte: \(byByte), at once: \(whole)")
        return whole
    }

    public static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// Bytes as the agent reads text from outside: UTF-8, invalid sequences
    /// repaired.
    public static func text(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self)
    }

    /// Text the agent writes to a log or answers a client with, made from
    /// what a client sent, holds no control character that could forge or
    /// break a line.
    public static func requireLoggable(_ text: String, _ what: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
        let control = text.unicodeScalars.first { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }
        require(control == nil, "\(what()) has control character \(control.map { String($0.value, radix: 16) } ?? ""): \(text.debugDescription)", file: file, line: line)
    }

    /// An invariant of the code under test. A broken one is a finding, so it
    /// stops the run the way a crash does and libFuzzer keeps the input.
    public static func require(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
        guard !condition else { return }
        fatalError("fuzz invariant broken: \(message())", file: file, line: line)
    }
}
