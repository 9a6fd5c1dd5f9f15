import NIOCore

/// Where an inspected connection stands: requests that went upstream wait for
/// their responses in order, and a locally answered request takes its turn in
/// that order, so pipelined responses never overtake each other.
struct HTTPExchangeState {
    enum Turn {
        case upstream(AccessLogEntry, started: NIODeadline)
        case local(LocalResponse, AccessLogEntry)
    }

    enum RequestBody {
        /// Between requests.
        case none
        case forwarding
        /// The request was answered locally; its body is read and dropped.
        case discarding
    }

    private(set) var turns: [Turn] = []
    private(set) var requestBody = RequestBody.none
    /// No further request is read: one was refused with the connection's close.
    private(set) var closing = false
    private(set) var clientEnded = false

    /// The most requests one connection may have waiting for responses.
    static let maximumPipelined = 64

    var mayRead: Bool { turns.count < Self.maximumPipelined }

    /// Whether a request head should be looked at (not after a closing refusal).
    var acceptsRequests: Bool { !closing }

    mutating func forwarded(_ entry: AccessLogEntry) {
        turns.append(.upstream(entry, started: .now()))
        requestBody = .forwarding
    }

    mutating func answeredLocally(_ response: LocalResponse, _ entry: AccessLogEntry) {
        turns.append(.local(response, entry))
        requestBody = .discarding
        if response.close { closing = true }
    }

    /// A refusal found in the request's bytes, not its head: framing is lost.
    mutating func malformed(_ response: LocalResponse, _ entry: AccessLogEntry) {
        turns.append(.local(response, entry))
        requestBody = .none
        closing = true
    }

    mutating func requestEnded() {
        requestBody = .none
    }

    mutating func clientFinished() {
        clientEnded = true
    }

    /// The response at the head of the queue, when it is one the agent writes.
    var nextLocal: (LocalResponse, AccessLogEntry)? {
        guard case .local(let response, let entry)? = turns.first else { return nil }
        return (response, entry)
    }

    /// The request whose response is coming from upstream.
    var awaitedUpstream: AccessLogEntry? {
        guard case .upstream(let entry, _)? = turns.first else { return nil }
        return entry
    }

    mutating func record(status: Int, bodyBytes: Int = 0) {
        guard case .upstream(var entry, let started)? = turns.first else { return }
        if status > 0 { entry.status = status }
        entry.bytesSent += UInt64(bodyBytes)
        turns[0] = .upstream(entry, started: started)
    }

    mutating func requestBodyBytes(_ count: Int) {
        guard let index = turns.indices.last, case .upstream(var entry, let started) = turns[index] else { return }
        entry.bytesReceived += UInt64(count)
        turns[index] = .upstream(entry, started: started)
    }

    /// The first turn is done; returns its finished log entry.
    mutating func completeTurn() -> AccessLogEntry? {
        guard !turns.isEmpty else { return nil }
        switch turns.removeFirst() {
        case .upstream(var entry, let started):
            entry.durationMilliseconds = milliseconds(since: started)
            return entry
        case .local(let response, var entry):
            entry.status = Int(response.status.code)
            return entry
        }
    }

    /// Nothing more will be asked or answered: the client ended and every
    /// turn is done, or a closing refusal has been written.
    var finished: Bool { turns.isEmpty && (clientEnded || closing) }
}
