import NIOCore
import NIOHTTP2

/// Where one stream stands, from its request's HEADERS until both directions
/// have ended. An allowed request is relayed between the client's stream and a
/// stream to the workload; a reset on either is passed to the other; a side
/// that goes away without both END_STREAMs resets the other, or, when the
/// workload had not answered yet, is answered for by the agent.
struct HTTP2StreamExchange {
    enum Request: Equatable {
        case awaitingHeaders
        /// Allowed: relayed to a stream of the workload's connection.
        case forwarded
        /// Answered by the agent; whatever else the client sends is dropped.
        case answered
    }

    enum Side: String, Equatable {
        case client
        case workload
    }

    struct Reset: Equatable {
        var by: Side
        var code: HTTP2ErrorCode
    }

    /// What to do with a frame from the client.
    enum RequestFrameAction: Equatable {
        /// The request's header block: decide it.
        case inspect
        case forward
        case drop
        /// Not a request HTTP/2 allows (DATA before HEADERS): reset the stream.
        case refuse
    }

    /// What to do to the other side.
    enum Action: Equatable {
        case none
        case resetWorkload(HTTP2ErrorCode)
        /// Reset the client's stream; with NO_ERROR only once what was queued for
        /// it has gone out (it then means "stop sending", not "abort").
        case resetClient(HTTP2ErrorCode)
        /// The workload's stream failed before its response began: answer 502 for it.
        case answerBadGateway
    }

    private(set) var request = Request.awaitingHeaders
    /// The client's END_STREAM arrived.
    private(set) var requestEnded = false
    /// The final status the client was sent.
    private(set) var status: Int?
    /// The client's stream has (or will have, once queued frames go) its END_STREAM.
    private(set) var responseEnded = false
    private(set) var reset: Reset?

    /// Both directions ended normally; a later reset (the workload's NO_ERROR
    /// after a complete response) takes nothing away.
    var completed: Bool { requestEnded && responseEnded }

    mutating func clientSent(headers: Bool, endStream: Bool) -> RequestFrameAction {
        defer { if endStream { requestEnded = true } }
        switch request {
        case .awaitingHeaders: return headers ? .inspect : .refuse
        case .forwarded: return reset == nil ? .forward : .drop
        case .answered: return .drop
        }
    }

    mutating func forwarded() {
        request = .forwarded
    }

    mutating func answered(_ response: LocalResponse) {
        request = .answered
        status = Int(response.status.code)
        responseEnded = true
    }

    /// The agent's own answer has gone out: a client still sending its request
    /// is asked to stop, without error (RFC 9113 §8.1).
    func answerWritten() -> Action {
        requestEnded || reset != nil ? .none : .resetClient(.noError)
    }

    /// A frame of the response arrived from the workload (`status` for a header
    /// block that has one); whether to pass it to the client.
    mutating func workloadSent(status: Int?, endStream: Bool) -> Bool {
        guard request == .forwarded, reset == nil, !responseEnded else { return false }
        if let status, status >= 200 { self.status = status }
        if endStream { responseEnded = true }
        return true
    }

    mutating func clientReset(_ code: HTTP2ErrorCode) -> Action {
        guard reset == nil else { return .none }
        reset = Reset(by: .client, code: code)
        return request == .forwarded ? .resetWorkload(code) : .none
    }

    mutating func workloadReset(_ code: HTTP2ErrorCode) -> Action {
        guard reset == nil, request == .forwarded else { return .none }
        reset = Reset(by: .workload, code: code)
        return .resetClient(code)
    }

    /// The client's stream closed (after any reset it carried was reported).
    mutating func clientClosed() -> Action {
        guard reset == nil, !completed else { return .none }
        reset = Reset(by: .client, code: .cancel)
        return request == .forwarded ? .resetWorkload(.cancel) : .none
    }

    /// The workload's stream closed (after any reset it carried was reported).
    mutating func workloadClosed() -> Action {
        guard reset == nil, request == .forwarded else { return .none }
        if responseEnded {
            guard !requestEnded else { return .none }
            // The response is whole; the rest of the request has nowhere to go.
            reset = Reset(by: .workload, code: .noError)
            return .resetClient(.noError)
        }
        guard status != nil else { return .answerBadGateway }
        // Half a response: only a reset can tell the client it is not all.
        reset = Reset(by: .workload, code: .internalError)
        return .resetClient(.internalError)
    }
}
