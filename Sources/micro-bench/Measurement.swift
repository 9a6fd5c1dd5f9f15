import Foundation

/// Runs `body` `iterations` times after a warm-up and prints the mean time of
/// one call, with how many of the measured calls returned true (`outcome` says
/// what true means). Returns that count, so that a caller can refuse a run that
/// measured something other than what it names.
@discardableResult
func measure(_ name: String, per unit: String, iterations: Int, counting outcome: String, _ body: () throws -> Bool) rethrows -> Int {
    for _ in 0..<min(iterations / 10, 10_000) {
        _ = try body()
    }
    var counted = 0
    let clock = ContinuousClock()
    let started = clock.now
    for _ in 0..<iterations where try body() {
        counted += 1
    }
    let elapsed = clock.now - started
    let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
    let perCall = nanoseconds / Double(iterations)
    // bench/run.py finds the name by the two or more spaces after it.
    let label = name.padding(toLength: 44, withPad: " ", startingAt: 0)
    print("\(label) \(Int(perCall.rounded())) ns/\(unit)  (\(iterations) iterations, \(counted) \(outcome))")
    return counted
}

/// `measure`, for a body that must return true every time: a run in which
/// any call did not ends the whole benchmark, with `explained()` appended to
/// say why.
func measureEvery(
    _ name: String, per unit: String, iterations: Int, counting outcome: String, explained: () -> String = { "" }, _ body: () throws -> Bool
) {
    do {
        let counted = try measure(name, per: unit, iterations: iterations, counting: outcome, body)
        guard counted == iterations else {
            fail("\(name): only \(counted) of \(iterations) were \(outcome)\(explained())")
        }
    } catch {
        fail("\(name): \(error)\(explained())")
    }
}

/// Ends the run with a non-zero status: a benchmark that did not do what it
/// measures must not print a number that looks valid.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("micro-bench: \(message)\n".utf8))
    exit(1)
}
