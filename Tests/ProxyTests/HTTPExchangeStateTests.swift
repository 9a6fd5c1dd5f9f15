import NIOCore
import NIOHTTP1
import Testing
@testable import Proxy

/// The HTTP/1.1 exchange of an inspected connection, driven by events alone:
/// answers stay in request order, refusals end the connection when they must,
/// and every request is logged once.
@Suite struct HTTPExchangeStateTests {
    typealias Answer = HTTPExchangeState.LocalAnswers.Answer

    static func entry(_ path: String) -> AccessLogEntry {
        var entry = AccessLogEntry(time: 0, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
        entry.path = path
        return entry
    }

    static func forward(_ path: String) -> HTTPRequestInspector.Outcome {
        .forward(.init(target: path, removing: []), entry(path))
    }

    static func refuse(_ path: String, _ status: HTTPResponseStatus = .forbidden, close: Bool = false) -> HTTPRequestInspector.Outcome {
        var denied = entry(path)
        denied.action = .deny
        return .respond(LocalResponse(status: status, body: "RBAC: access denied", close: close), denied)
    }

    /// The answer `refuse` makes, as the state hands it back to be written.
    static func answer(_ path: String, _ status: HTTPResponseStatus = .forbidden, close: Bool = false) -> Answer {
        var denied = entry(path)
        denied.action = .deny
        denied.status = Int(status.code)
        return Answer(response: LocalResponse(status: status, body: "RBAC: access denied", close: close), entry: denied)
    }

    /// The upstream turn's entry, as `completed` hands it back (duration aside).
    static func completedEntry(_ action: HTTPExchangeState.Action) -> (AccessLogEntry, HTTPExchangeState.LocalAnswers)? {
        guard case .completed(var entry, let then) = action else { return nil }
        #expect(entry.durationMilliseconds >= 0)
        entry.durationMilliseconds = 0
        return (entry, then)
    }

    @Test func aLocalAnswerWaitsForTheUpstreamResponseBeforeIt() throws {
        var state = HTTPExchangeState()
        #expect(state.requestHead(Self.forward("/a")) == .forward)
        #expect(state.requestEnded() == .forward)
        #expect(state.requestHead(Self.refuse("/b")) == .answer(.init(answers: [], finish: false)), "/a is still owed its answer")
        #expect(state.requestEnded() == .none)
        #expect(state.requestHead(Self.forward("/c")) == .forward)
        #expect(state.pendingTurns == 3)

        #expect(state.responseHead(status: 200) == .forward)
        #expect(state.responseBodyPart(bytes: 7) == .forward)
        let (first, owed) = try #require(Self.completedEntry(state.responseEnded()))
        var expected = Self.entry("/a")
        expected.status = 200
        expected.bytesSent = 7
        #expect(first == expected)
        #expect(owed == .init(answers: [Self.answer("/b")], finish: false), "/b's 403 goes out right after /a's response")

        #expect(state.responseHead(status: 204) == .forward)
        let (last, nothing) = try #require(Self.completedEntry(state.responseEnded()))
        #expect(last.path == "/c" && last.status == 204)
        #expect(nothing == .init())
        #expect(state.pendingTurns == 0)
    }

    @Test func aRefusedRequestsBodyIsDroppedAndAnAllowedOnesCounted() throws {
        var state = HTTPExchangeState()
        _ = state.requestHead(Self.refuse("/no"))
        #expect(state.requestBodyPart(bytes: 100) == .none)
        #expect(state.requestEnded() == .none)
        #expect(state.requestHead(Self.forward("/yes")) == .forward)
        #expect(state.requestBodyPart(bytes: 5) == .forward)
        #expect(state.requestBodyPart(bytes: 3) == .forward)
        #expect(state.requestEnded() == .forward)
        _ = state.responseHead(status: 201)
        let (entry, _) = try #require(Self.completedEntry(state.responseEnded()))
        #expect(entry.bytesReceived == 8 && entry.status == 201)
    }

    @Test func aClosingRefusalIsTheLastAnswerAndFinishesTheConnection() {
        var state = HTTPExchangeState()
        #expect(state.requestHead(Self.refuse("/x", .badRequest, close: true)) == .answer(.init(answers: [Self.answer("/x", .badRequest, close: true)], finish: true)))
        #expect(state.closing && state.finishing)
        #expect(state.requestHead(Self.forward("/after")) == .none, "nothing after a closing refusal is read")
        #expect(state.malformed(LocalResponse(status: .badRequest, body: "x", close: true), Self.entry("/bytes")) == .none)
    }

    @Test func aClosingRefusalBehindAForwardedRequestFinishesAfterItsResponse() throws {
        var state = HTTPExchangeState()
        _ = state.requestHead(Self.forward("/a"))
        #expect(state.requestHead(Self.refuse("/b", close: true)) == .answer(.init(answers: [], finish: false)))
        _ = state.responseHead(status: 200)
        let (_, owed) = try #require(Self.completedEntry(state.responseEnded()))
        #expect(owed == .init(answers: [Self.answer("/b", close: true)], finish: true))
    }

    @Test func malformedBytesGetOneAnswerAndEndTheConnection() {
        var state = HTTPExchangeState()
        var refused = Self.entry("/garbled")
        refused.action = .deny
        let response = LocalResponse(status: .badRequest, body: "malformed\n", close: true)
        var answered = refused
        answered.status = 400
        #expect(state.malformed(response, refused) == .answer(.init(answers: [Answer(response: response, entry: answered)], finish: true)))
    }

    /// Refused halfway through a body on its way to the workload: that
    /// request can neither be completed nor answered in its turn.
    @Test func malformedBytesInAForwardedBodyAbortTheConnection() {
        var state = HTTPExchangeState()
        _ = state.requestHead(Self.forward("/upload"))
        #expect(state.requestBodyPart(bytes: 5) == .forward)
        #expect(state.malformed(LocalResponse(status: .badRequest, body: "x", close: true), Self.entry("/upload")) == .abort)
        #expect(state.closing)
    }

    @Test func theClientEndingFinishesOnlyOnceEverythingIsAnswered() throws {
        var state = HTTPExchangeState()
        _ = state.requestHead(Self.forward("/a"))
        _ = state.requestEnded()
        #expect(state.clientInputEnded() == .none, "/a's response is still to come")
        _ = state.responseHead(status: 200)
        let (_, owed) = try #require(Self.completedEntry(state.responseEnded()))
        #expect(owed.finish)
        #expect(state.clientInputEnded() == .none, "finishing happens once")

        var idle = HTTPExchangeState()
        #expect(idle.clientInputEnded() == .finish)
    }

    @Test func theWorkloadClosingAbortsOnlyARequestStillWaiting() {
        var waiting = HTTPExchangeState()
        _ = waiting.requestHead(Self.forward("/a"))
        #expect(waiting.upstreamClosed() == .abort)

        var answered = HTTPExchangeState()
        _ = answered.requestHead(Self.forward("/a"))
        _ = answered.responseHead(status: 200)
        _ = answered.responseEnded()
        #expect(answered.upstreamClosed() == .closeAfterWrites)

        var finished = HTTPExchangeState()
        _ = finished.clientInputEnded()
        #expect(finished.upstreamClosed() == .none, "expected once the client's side is being finished")
    }

    @Test func interimResponsesPassWithoutTakingTheTurnAndUpgradesAbort() throws {
        var state = HTTPExchangeState()
        _ = state.requestHead(Self.forward("/upload"))
        #expect(state.responseHead(status: 100) == .forward)
        #expect(state.responseHead(status: 200) == .forward)
        let (entry, _) = try #require(Self.completedEntry(state.responseEnded()))
        #expect(entry.status == 200)

        var upgraded = HTTPExchangeState()
        _ = upgraded.requestHead(Self.forward("/ws"))
        #expect(upgraded.responseHead(status: 101) == .abort)
    }

    @Test func aClientPipeliningTooFarWaitsForAnswers() {
        var state = HTTPExchangeState()
        for index in 0..<HTTPExchangeState.maximumPipelined {
            #expect(state.mayRead, "request \(index)")
            _ = state.requestHead(Self.forward("/\(index)"))
            _ = state.requestEnded()
        }
        #expect(!state.mayRead)
        _ = state.responseHead(status: 200)
        _ = state.responseEnded()
        #expect(state.mayRead)
    }
}
