import NIOCore
import NIOHTTP1

/// A response the agent writes itself (403, 400, …).
struct LocalResponse: Equatable {
    var status: HTTPResponseStatus
    var body: String
    var close: Bool

    /// The response as HTTP/1.1 bytes.
    func encoded() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\ncontent-type: text/plain\r\ncontent-length: \(body.utf8.count)\r\n")
        if close { buffer.writeStaticString("connection: close\r\n") }
        buffer.writeStaticString("\r\n")
        buffer.writeString(body)
        return buffer
    }
}

/// Where an inspected HTTP/1.1 connection stands, and what to do on each event:
/// requests that went upstream wait for their responses in order, and a
/// locally answered request takes its turn in that order, so pipelined
/// responses never overtake each other. `HTTPRequestGate` feeds it the
/// connection's events and carries out the actions it returns.
struct HTTPExchangeState {
    /// Answers the agent owes, next in line now, in order; and whether the
    /// connection is done once they are written (shut output, then close).
    struct LocalAnswers: Equatable {
        var answers: [Answer] = []
        var finish = false

        struct Answer: Equatable {
            var response: LocalResponse
            /// Its log line, its status filled in.
            var entry: AccessLogEntry
        }
    }

    enum Action: Equatable {
        /// Nothing to do (a part of a request answered locally is dropped).
        case none
        /// Pass the part on: a request part to the workload, a response part
        /// to the client.
        case forward
        /// Write these answers; nothing else is owed yet.
        case answer(LocalAnswers)
        /// Pass the response's end on, log the finished request, then write
        /// the answers now next in line.
        case completed(AccessLogEntry, then: LocalAnswers)
        /// Shut the client's output once what was written has gone, then close.
        case finish
        /// Close the client's connection once what was written has gone.
        case closeAfterWrites
        /// Close both sides now: a request is left without its answer.
        case abort
    }

    /// A request waiting for its answer: from the workload (`local` nil), or
    /// the agent's own. A struct, so that counting into its entry changes it
    /// where it lies instead of copying the entry out and back.
    private struct Turn {
        var entry: AccessLogEntry
        var local: LocalResponse?
        var started: NIODeadline
    }

    enum RequestBody: Equatable {
        /// Between requests.
        case none
        case forwarding
        /// The request was answered locally; its body is read and dropped.
        case discarding
    }

    private var turns: [Turn] = []
    private(set) var requestBody = RequestBody.none
    /// No further request is read: one was refused with the connection's close.
    private(set) var closing = false
    private(set) var clientEnded = false
    /// The connection is being finished: its output shut or about to be.
    private(set) var finishing = false

    /// The most requests one connection may have waiting for responses.
    static let maximumPipelined = 64

    /// Whether the client's next bytes may be read: a client that pipelines
    /// more than this waits for answers first.
    var mayRead: Bool { turns.count < Self.maximumPipelined }

    /// Requests waiting for their answers.
    var pendingTurns: Int { turns.count }

    // MARK: Events from the client

    /// A request head, decided: sent upstream, or answered here.
    mutating func requestHead(_ outcome: HTTPRequestInspector.Outcome) -> Action {
        guard !closing else { return .none }
        switch outcome {
        case .forward(_, let entry):
            turns.append(Turn(entry: entry, local: nil, started: .now()))
            requestBody = .forwarding
            return .forward
        case .respond(let response, let entry):
            turns.append(Turn(entry: entry, local: response, started: .now()))
            requestBody = .discarding
            if response.close { closing = true }
            return .answer(takeLocalAnswers())
        }
    }

    mutating func requestBodyPart(bytes: Int) -> Action {
        guard requestBody == .forwarding else { return .none }
        if let index = turns.indices.last, turns[index].local == nil {
            turns[index].entry.bytesReceived += UInt64(bytes)
        }
        return .forward
    }

    mutating func requestEnded() -> Action {
        defer { requestBody = .none }
        return requestBody == .forwarding ? .forward : .none
    }

    /// The request's bytes were refused by the reader: framing is lost, so
    /// this is the last answer the connection gets. Refused in the middle of
    /// a body being forwarded, the request can be neither completed nor
    /// answered in its turn, and the connection is closed.
    mutating func malformed(_ response: LocalResponse, _ entry: AccessLogEntry) -> Action {
        guard !closing else { return .none }
        if requestBody == .forwarding {
            closing = true
            return .abort
        }
        turns.append(Turn(entry: entry, local: response, started: .now()))
        requestBody = .none
        closing = true
        return .answer(takeLocalAnswers())
    }

    /// The client ended its side (FIN, or END_STREAM of a tunnel stream).
    mutating func clientInputEnded() -> Action {
        clientEnded = true
        return finishIfDone()
    }

    // MARK: Events from the workload

    /// A response head; `status` 1xx is interim, another follows.
    mutating func responseHead(status: Int) -> Action {
        if status == 101 {
            // The request carried no upgrade the gate allows; nothing sane follows.
            return .abort
        }
        if status >= 200 { recordUpstream(status: status, bodyBytes: 0) }
        return .forward
    }

    mutating func responseBodyPart(bytes: Int) -> Action {
        recordUpstream(status: nil, bodyBytes: bytes)
        return .forward
    }

    mutating func responseEnded() -> Action {
        guard awaitsUpstream else { return .forward }
        let started = turns[0].started
        var entry = turns.removeFirst().entry
        entry.durationMilliseconds = milliseconds(since: started)
        return .completed(entry, then: takeLocalAnswers())
    }

    /// The workload closed its connection. Whatever was answered is
    /// delivered, then the client's connection ends too; a request still
    /// waiting for its answer gets none.
    mutating func upstreamClosed() -> Action {
        guard !finishing else { return .none }
        if awaitsUpstream { return .abort }
        return .closeAfterWrites
    }

    // MARK: Helpers

    /// The next answer is the workload's.
    private var awaitsUpstream: Bool {
        !turns.isEmpty && turns[0].local == nil
    }

    private mutating func recordUpstream(status: Int?, bodyBytes: Int) {
        guard awaitsUpstream else { return }
        if let status { turns[0].entry.status = status }
        turns[0].entry.bytesSent += UInt64(bodyBytes)
    }

    /// The answers the agent writes itself that are next in line, removed
    /// from the queue, and whether the connection is then done.
    private mutating func takeLocalAnswers() -> LocalAnswers {
        var owed = LocalAnswers()
        while let response = turns.first?.local {
            var entry = turns.removeFirst().entry
            entry.status = Int(response.status.code)
            owed.answers.append(LocalAnswers.Answer(response: response, entry: entry))
        }
        owed.finish = finishIfDone() == .finish
        return owed
    }

    /// Nothing more will be asked or answered: the client ended and every
    /// turn is done, or a closing refusal has been answered.
    private mutating func finishIfDone() -> Action {
        guard !finishing, turns.isEmpty, clientEnded || closing else { return .none }
        finishing = true
        return .finish
    }
}
