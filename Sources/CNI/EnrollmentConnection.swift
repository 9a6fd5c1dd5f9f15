/// What the agent did about a request, as its handler reports it.
public enum EnrollmentOutcome: Equatable, Sendable {
    /// ADD: capture is installed; CHECK: it is in place.
    case captured
    /// ADD or CHECK: the pod is not meant to be captured (not enrolled), and why.
    case notCaptured(reason: String)
    /// DEL: the pod is forgotten (also when the agent never knew it).
    case removed

    public var response: EnrollmentResponse {
        switch self {
        case .captured: return EnrollmentResponse(ok: true, captured: true)
        case .notCaptured(let reason): return EnrollmentResponse(ok: true, captured: false, reason: reason)
        case .removed: return EnrollmentResponse(ok: true)
        }
    }
}

/// How a connection on the enrollment socket ended, for metrics and logs.
public enum EnrollmentResult: String, CaseIterable, Sendable {
    case captured
    case notCaptured = "not_captured"
    case removed
    /// The handler threw.
    case failed
    /// Not a valid request: bad JSON, a bad field, another protocol version,
    /// too long, or cut off.
    case invalid
    /// No complete request within the read timeout.
    case timedOut = "timed_out"
    /// Refused before handling: too many connections, or a peer that is not
    /// root (nor the agent's own user).
    case refused
    /// Closed without sending anything: a liveness check (CNI STATUS).
    case probe

    init(_ outcome: EnrollmentOutcome) {
        switch outcome {
        case .captured: self = .captured
        case .notCaptured: self = .notCaptured
        case .removed: self = .removed
        }
    }
}

/// One connection on the agent's enrollment socket: read one request line,
/// hand it to the agent once, answer once, close. Events in, actions out;
/// the server's channel handler only carries the actions out.
public struct EnrollmentConnection: Sendable {
    public enum Action: Equatable, Sendable {
        /// Nothing to do until the next event.
        case wait
        /// Call the agent's handler with this request, then report `handled`.
        case handle(EnrollmentRequest)
        /// Write this response, then close.
        case respond(EnrollmentResponse, EnrollmentResult, command: EnrollmentRequest.Command?)
        /// Close without an answer (the peer is gone or sent nothing).
        case close(EnrollmentResult, reason: String?)
    }

    private enum State: Sendable {
        case reading(buffer: [UInt8])
        case handling(EnrollmentRequest.Command)
        case done
    }

    private var state: State = .reading(buffer: [])
    private let maximumRequestSize: Int
    /// Set when the request is to be answered with a refusal, whatever it is.
    private let refusal: String?

    /// `refusal`: the connection is not to be served (the server is at its
    /// connection limit, or the peer may not enroll pods); the request is
    /// still read, so that the answer reaches the peer instead of a reset.
    public init(maximumRequestSize: Int = EnrollmentProtocol.maximumRequestSize, refusal: String? = nil) {
        self.maximumRequestSize = maximumRequestSize
        self.refusal = refusal
    }

    public mutating func received(_ bytes: [UInt8]) -> Action {
        guard case .reading(var buffer) = state else { return .wait }
        buffer.append(contentsOf: bytes)
        switch EnrollmentFrame(buffer, limit: maximumRequestSize) {
        case .incomplete:
            state = .reading(buffer: buffer)
            return .wait
        case .tooLong:
            state = .done
            return .respond(
                .failure("the request is longer than \(maximumRequestSize) bytes without a newline; one request is one JSON line"), .invalid,
                command: nil)
        case .line(let line):
            if let refusal {
                state = .done
                return .respond(.failure(refusal), .refused, command: nil)
            }
            do {
                let request = try EnrollmentRequest.decode(line: line)
                state = .handling(request.command)
                return .handle(request)
            } catch {
                state = .done
                return .respond(.failure("invalid enrollment request: \(error)"), .invalid, command: nil)
            }
        }
    }

    /// The peer closed its side (or the whole connection).
    public mutating func inputClosed() -> Action {
        guard case .reading(let buffer) = state else { return .wait }
        state = .done
        if buffer.isEmpty { return .close(.probe, reason: nil) }
        return .close(.invalid, reason: "the connection closed after \(buffer.count) bytes, before a complete request line")
    }

    /// The read timeout fired. Once handling started, the handler's time is
    /// its own: capture can take a while, and the plugin has its own timeout.
    public mutating func timedOut(after description: String) -> Action {
        guard case .reading = state else { return .wait }
        state = .done
        return .respond(.failure("no complete request within \(description)"), .timedOut, command: nil)
    }

    public mutating func handled(_ result: Result<EnrollmentOutcome, any Error>) -> Action {
        guard case .handling(let command) = state else { return .wait }
        state = .done
        switch result {
        case .success(let outcome):
            return .respond(outcome.response, EnrollmentResult(outcome), command: command)
        case .failure(let error):
            return .respond(.failure("\(error)"), .failed, command: command)
        }
    }

    public var isReading: Bool {
        if case .reading = state { return true }
        return false
    }
}
