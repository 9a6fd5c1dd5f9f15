import CNI
import Foundation
import Testing

@Suite("enrollment protocol codec")
struct EnrollmentProtocolTests {
    static let request = EnrollmentRequest(
        command: .add, containerID: "4f3a9c", netns: "/var/run/netns/blue", ifName: "eth0", network: "dbnet", podNamespace: "shop",
        podName: "web-0", podUID: "8e2b6f1c-4a2d-4f7e-9a51-3c0d2b7e1f00", addresses: ["10.1.0.5", "fd00::5"], cniVersion: "1.0.0")

    private func decodeRequest(_ text: String) -> Result<EnrollmentRequest, EnrollmentProtocolError> {
        Result { () throws(EnrollmentProtocolError) in try EnrollmentRequest.decode(line: Array(text.utf8)) }
    }

    private func requestError(_ text: String) -> String? {
        if case .failure(let error) = decodeRequest(text) { return error.reason }
        return nil
    }

    @Test func requestWireFormat() {
        let line = String(decoding: Self.request.encoded(), as: UTF8.self)
        #expect(line == """
            {"addresses":["10.1.0.5","fd00::5"],"cniVersion":"1.0.0","command":"ADD","containerID":"4f3a9c","ifName":"eth0",\
            "netns":"/var/run/netns/blue","network":"dbnet","podName":"web-0","podNamespace":"shop",\
            "podUID":"8e2b6f1c-4a2d-4f7e-9a51-3c0d2b7e1f00","version":1}

            """)
    }

    @Test(arguments: EnrollmentRequest.Command.allCases)
    func requestRoundTrip(command: EnrollmentRequest.Command) throws {
        var request = Self.request
        request.command = command
        let encoded = request.encoded()
        #expect(encoded.last == 0x0A)
        #expect(encoded.dropLast().contains(0x0A) == false)
        #expect(try EnrollmentRequest.decode(line: Array(encoded.dropLast())) == request)
    }

    @Test func minimalDelRoundTrip() throws {
        let request = EnrollmentRequest(command: .del, containerID: "c1", netns: nil, ifName: "eth0", network: "n", cniVersion: "0.4.0")
        let line = String(decoding: request.encoded(), as: UTF8.self)
        #expect(line == #"{"addresses":[],"cniVersion":"0.4.0","command":"DEL","containerID":"c1","ifName":"eth0","network":"n","version":1}"# + "\n")
        #expect(try EnrollmentRequest.decode(line: Array(request.encoded().dropLast())) == request)
    }

    @Test func unknownKeysAreIgnored() throws {
        let text = #"{"version":1,"command":"CHECK","containerID":"c","netns":"/n","ifName":"e","network":"n","cniVersion":"1.0.0","future":{"x":1}}"#
        #expect(try decodeRequest(text).get().command == .check)
    }

    @Test func badRequests() {
        let base = #""command":"ADD","containerID":"c","netns":"/n","ifName":"e","network":"n","cniVersion":"1.0.0""#
        #expect(requestError("") != nil)
        #expect(requestError("not json")?.hasPrefix("the request is not valid JSON") == true)
        #expect(requestError("[]") == "the request is an array, not an object")
        #expect(requestError("{\(base)}") == "the request has no version; this side speaks enrollment protocol version 1")
        #expect(requestError(#"{"version":2,\#(base)}"#) == """
            the request is in enrollment protocol version 2, and this side speaks version 1: \
            install mesh-agent-cni and mesh-agent from the same release
            """)
        #expect(requestError(#"{"version":"1",\#(base)}"#)?.contains("version a string") == true)
        #expect(requestError(#"{"version":1,"command":"VERSION","containerID":"c","ifName":"e","network":"n","cniVersion":"1.0.0"}"#)
            == #"command "VERSION" is not one of ADD, DEL, CHECK"#)
        #expect(requestError(#"{"version":1,"command":"ADD","containerID":"c","ifName":"e","network":"n","cniVersion":"1.0.0"}"#)
            == "ADD needs netns, the pod's network namespace")
        #expect(requestError(#"{"version":1,"command":"ADD","containerID":5,"netns":"/n","ifName":"e","network":"n","cniVersion":"1.0.0"}"#)
            == "containerID in the request is a number, not a string")
        #expect(requestError(#"{"version":1,"command":"ADD","containerID":"../x","netns":"/n","ifName":"e","network":"n","cniVersion":"1.0.0"}"#)
            == #"containerID "../x" in the request is not valid: it starts with ".", not a letter or digit"#)
        #expect(requestError(#"{"version":1,"command":"ADD","containerID":"c","netns":"n","ifName":"e","network":"n","cniVersion":"1.0.0"}"#)?
            .hasPrefix(#"netns "n""#) == true)
        #expect(requestError(#"{"version":1,\#(base),"addresses":["10.0.0.1/24"]}"#) == #"addresses[0] in the request is "10.0.0.1/24", not an IP address"#)
        #expect(requestError(#"{"version":1,\#(base),"addresses":[7]}"#) == "addresses[0] in the request is a number, not an IP address")
        #expect(requestError(#"{"version":1,\#(base),"addresses":"10.0.0.1"}"#) == "addresses in the request is a string, not an array")
        #expect(requestError(#"{"version":1,\#(base),"podNamespace":"Shop"}"#)?.hasPrefix(#"podNamespace "Shop""#) == true)
        #expect(requestError(#"{"version":1,\#(base.replacingOccurrences(of: "1.0.0", with: "one"))}"#)
            == #"cniVersion "one" in the request is not valid: it is not a version like 1.0.0"#)
        #expect(requestError(#"{"version":1,\#(base),"command":"DEL"}"#)?.hasPrefix(#"the request is not valid JSON: the key "command" appears twice"#) == true)
        let many = Array(repeating: #""10.0.0.1""#, count: 65).joined(separator: ",")
        #expect(requestError(#"{"version":1,\#(base),"addresses":[\#(many)]}"#) == "the request has 65 addresses; at most 64 are accepted")
    }

    @Test func oversizedRequest() {
        let line = [UInt8](repeating: 0x20, count: EnrollmentProtocol.maximumRequestSize + 1)
        #expect(requestError(String(decoding: line, as: UTF8.self)) == "the request is 65537 bytes long; at most 65536 are accepted")
    }

    @Test func responses() throws {
        let cases: [(EnrollmentResponse, String)] = [
            (EnrollmentResponse(ok: true, captured: true), #"{"captured":true,"ok":true,"version":1}"#),
            (EnrollmentResponse(ok: true, captured: false, reason: "labelled none"), #"{"captured":false,"ok":true,"reason":"labelled none","version":1}"#),
            (EnrollmentResponse(ok: true), #"{"ok":true,"version":1}"#),
            (.failure("netns /n: no such file\nsecond line"), #"{"error":"netns /n: no such file\nsecond line","ok":false,"version":1}"#),
        ]
        for (response, wire) in cases {
            #expect(response.encoded() == Array((wire + "\n").utf8))
            #expect(try EnrollmentResponse.decode(line: Array(wire.utf8)) == response)
        }
    }

    @Test func badResponses() {
        func responseError(_ text: String) -> String? {
            do {
                _ = try EnrollmentResponse.decode(line: Array(text.utf8))
                return nil
            } catch {
                return error.reason
            }
        }
        #expect(responseError(#"{"ok":true}"#) == "the response has no version; this side speaks enrollment protocol version 1")
        #expect(responseError(#"{"version":1}"#) == "the response has no ok")
        #expect(responseError(#"{"version":1,"ok":"yes"}"#) == "ok in the response is a string, not true or false")
        #expect(responseError(#"{"version":1,"ok":false}"#) == "the response says ok: false without an error")
        #expect(responseError(#"{"version":1,"ok":true,"captured":1}"#) == "captured in the response is a number, not true or false")
        #expect(responseError(#"{"version":1,"ok":false,"error":7}"#) == "error in the response is a number, not a string")
        #expect(responseError("{") != nil)
        let long = String(repeating: "x", count: EnrollmentProtocol.maximumResponseSize + 1)
        #expect(responseError(long) == "the response is 16385 bytes long; at most 16384 are accepted")
    }

    /// A long message from the agent is cut, so that the response still fits.
    @Test func longMessagesAreCut() throws {
        let response = EnrollmentResponse.failure(String(repeating: "é", count: 10_000))
        let encoded = response.encoded()
        #expect(encoded.count < EnrollmentProtocol.maximumResponseSize)
        let decoded = try EnrollmentResponse.decode(line: Array(encoded.dropLast()))
        #expect(decoded.error?.hasSuffix("…") == true)
        #expect((decoded.error?.utf8.count ?? 0) <= 4096)
    }

    /// Broke the CNI fuzz target's check that every response fits the
    /// plugin's limit: a message of control characters, cut to 4096 bytes of
    /// UTF-8, is six times as long in JSON. Messages are cut as written.
    @Test(arguments: ["\u{01}", "\"", "\\", "\n", "é"])
    func escapedMessagesAreCutToFit(character: String) throws {
        let message = String(repeating: character, count: 10_000)
        let encoded = EnrollmentResponse(ok: false, captured: false, reason: message, error: message).encoded()
        #expect(encoded.count <= EnrollmentProtocol.maximumResponseSize + 1)
        let decoded = try EnrollmentResponse.decode(line: Array(encoded.dropLast()))
        #expect(decoded.error?.hasSuffix("…") == true && decoded.reason == decoded.error)
        #expect(decoded.error?.unicodeScalars.dropLast().allSatisfy { String($0) == character } == true)
    }

    /// Broke the CNI fuzz target's check that what the agent logs is one
    /// line: a NEL (U+0085) in a refused field went raw into the error.
    @Test func refusedValuesAreEscapedInTheAgentsLog() {
        let error = requestError(#"{"version":1,"command":"ADD","containerID":"a\u0085\u001b","netns":"/n","ifName":"e","network":"n","cniVersion":"1.0.0"}"#)
        #expect(error?.hasPrefix(#"containerID "a\u{85}\u{1b}" in the request is not valid"#) == true, "\(error ?? "")")
    }

    @Test func framing() {
        #expect(EnrollmentFrame([], limit: 10) == .incomplete)
        #expect(EnrollmentFrame(Array("abc".utf8), limit: 10) == .incomplete)
        #expect(EnrollmentFrame(Array("abc\ndef".utf8), limit: 10) == .line(Array("abc".utf8)))
        #expect(EnrollmentFrame(Array("\n".utf8), limit: 10) == .line([]))
        #expect(EnrollmentFrame(Array("0123456789".utf8), limit: 10) == .incomplete)
        #expect(EnrollmentFrame(Array("0123456789\n".utf8), limit: 10) == .line(Array("0123456789".utf8)))
        #expect(EnrollmentFrame(Array("0123456789x".utf8), limit: 10) == .tooLong)
        #expect(EnrollmentFrame(Array("0123456789x\n".utf8), limit: 10) == .tooLong)
    }
}

@Suite("enrollment connection (server side, without sockets)")
struct EnrollmentConnectionTests {
    struct Failure: Error, CustomStringConvertible {
        var description: String { "nft: table not made" }
    }

    @Test func requestInPieces() {
        var connection = EnrollmentConnection()
        let bytes = EnrollmentProtocolTests.request.encoded()
        #expect(connection.received(Array(bytes.prefix(10))) == .wait)
        #expect(connection.received(Array(bytes.dropFirst(10))) == .handle(EnrollmentProtocolTests.request))
        // More bytes, a timeout or the peer closing change nothing while the handler runs.
        #expect(connection.received(Array("junk\n".utf8)) == .wait)
        #expect(connection.timedOut(after: "5 s") == .wait)
        #expect(connection.inputClosed() == .wait)
        #expect(connection.handled(.success(.captured)) == .respond(EnrollmentResponse(ok: true, captured: true), .captured, command: .add))
        #expect(connection.handled(.success(.captured)) == .wait)
    }

    @Test func outcomes() {
        for (outcome, response, result) in [
            (EnrollmentOutcome.notCaptured(reason: "no label"), EnrollmentResponse(ok: true, captured: false, reason: "no label"), EnrollmentResult.notCaptured),
            (.removed, EnrollmentResponse(ok: true), .removed),
        ] {
            var connection = EnrollmentConnection()
            _ = connection.received(EnrollmentProtocolTests.request.encoded())
            #expect(connection.handled(.success(outcome)) == .respond(response, result, command: .add))
        }
        var failing = EnrollmentConnection()
        _ = failing.received(EnrollmentProtocolTests.request.encoded())
        #expect(failing.handled(.failure(Failure())) == .respond(.failure("nft: table not made"), .failed, command: .add))
    }

    @Test func invalidRequestIsAnswered() {
        var connection = EnrollmentConnection()
        guard case .respond(let response, .invalid, nil) = connection.received(Array("{}\n".utf8)) else {
            Issue.record("not answered as invalid")
            return
        }
        #expect(response.error == "invalid enrollment request: the request has no version; this side speaks enrollment protocol version 1")
    }

    @Test func tooLong() {
        var connection = EnrollmentConnection(maximumRequestSize: 16)
        #expect(connection.received(Array(repeating: 0x41, count: 16)) == .wait)
        guard case .respond(_, .invalid, nil) = connection.received([0x41]) else {
            Issue.record("not refused")
            return
        }
    }

    @Test func probeAndTruncation() {
        var probe = EnrollmentConnection()
        #expect(probe.inputClosed() == .close(.probe, reason: nil))
        var cut = EnrollmentConnection()
        _ = cut.received(Array("{\"version\"".utf8))
        #expect(cut.inputClosed() == .close(.invalid, reason: "the connection closed after 10 bytes, before a complete request line"))
    }

    @Test func timeout() {
        var connection = EnrollmentConnection()
        _ = connection.received(Array("{".utf8))
        #expect(connection.timedOut(after: "5000 ms") == .respond(.failure("no complete request within 5000 ms"), .timedOut, command: nil))
        #expect(connection.received(Array("}\n".utf8)) == .wait)
    }

    /// A refused connection reads the request first, so the refusal is what
    /// the peer reads (a Unix socket closed with unread data resets instead).
    @Test func refusal() {
        var connection = EnrollmentConnection(refusal: "busy")
        #expect(connection.received(Array("{".utf8)) == .wait)
        #expect(connection.received(Array("}\n".utf8)) == .respond(.failure("busy"), .refused, command: nil))
    }
}
