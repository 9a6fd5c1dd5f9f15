import COpenSSL

/// A failed OpenSSL call, with what we were doing and OpenSSL's own error queue.
public struct OpenSSLError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let details: [String]

    public var description: String {
        details.isEmpty ? "\(operation) failed" : "\(operation) failed: \(details.joined(separator: "; "))"
    }

    /// Takes (and clears) this thread's OpenSSL error queue.
    public static func drain(_ operation: String) -> OpenSSLError {
        var details: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            details.append(String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return OpenSSLError(operation: operation, details: details)
    }

    /// Clears errors left by an earlier call, so the next `drain` reports only its own.
    static func clearQueue() {
        ERR_clear_error()
    }
}
