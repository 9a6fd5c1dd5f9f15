import Foundation

/// Runs blocking work (a child process to its end, `wait()` on a future,
/// sleeps) on a thread of its own. Tests run in parallel on the concurrency
/// pool, which has as many threads as the machine has cores: blocking one of
/// them stalls every async test on the machine, and their servers with them.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
