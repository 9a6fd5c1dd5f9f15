import Metrics
import NIOConcurrencyHelpers

/// Counters of one metric whose label value is only known when something is
/// counted (a TLS failure's reason, a refusal's status): each made on first
/// use and kept, since asking the metrics backend for a labelled counter
/// validates and hashes every label. The values must come from a bounded set.
final class CounterFamily: Sendable {
    private let label: String
    private let dimension: String
    private let counters = NIOLockedValueBox<[String: Counter]>([:])

    init(label: String, dimension: String) {
        self.label = label
        self.dimension = dimension
    }

    func increment(_ value: String) {
        let counter = counters.withLockedValue { counters in
            if let known = counters[value] { return known }
            let made = Counter(label: label, dimensions: [(dimension, value)])
            counters[value] = made
            return made
        }
        counter.increment()
    }
}
