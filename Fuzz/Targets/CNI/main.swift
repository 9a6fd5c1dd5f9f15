import FuzzSupport
@testable import CNI

#if canImport(Glibc)
import Glibc
#endif

/// What reaches `mesh-agent-cni` and the agent's enrollment socket from
/// outside. The first byte picks the size of the chunks in which the agent's
/// socket receives (bits 0–4). The rest is read whole as every kind of text
/// the two read (JSON, a network config, `CNI_ARGS`, a request line, a
/// response line, addresses), and, cut at NUL bytes (which neither JSON nor
/// an environment holds), as one invocation: the network config on stdin,
/// the environment (`KEY=VALUE` lines), the agent's answer, and what a peer
/// sends the agent's socket (the whole rest when there is no such section).
///
/// JSON that parses writes back, never longer, to bytes that parse to the
/// same value; every accepted value is within the documented limits and
/// encodes to what decodes to it again; whatever the plugin sends, the agent
/// accepts as sent; whatever the agent answers fits the plugin's limit; the
/// agent's socket acts the same whatever chunks the request arrives in, and
/// once; the plugin prints a CNI result or error and one-line logs; errors
/// are short, and those the agent logs are one line; an address is one to
/// the codec exactly when it is one to the C library.
Fuzzing.run { bytes in
    guard let first = bytes.first else { return }
    let body = Array(bytes.dropFirst())
    let text = Fuzzing.text(body)
    checkJSON(body)
    checkNetworkConfig(body)
    checkArgs(text)
    checkRequestLine(body)
    checkResponseLine(body)
    checkResponse(from: text)
    checkAddresses(text)
    let sections = body.split(separator: 0, omittingEmptySubsequences: false).map { Array($0) }
    checkInvocation(stdin: sections[0], environment: sections.count > 1 ? sections[1] : [], answer: sections.count > 2 ? sections[2] : [])
    checkConnection(sections.count > 3 ? sections[3] : body, chunkSize: Int(first & 0x1F) + 1)
}

enum Limits {
    /// A message made from input is short whatever the input: values from
    /// outside are cut (`CNIEnvironment.quoted`) before they are shown.
    static let messageBytes = 2048
}

// MARK: - JSON

func checkJSON(_ bytes: [UInt8]) {
    let value: JSONValue
    do throws(JSONError) {
        value = try JSONValue.parse(bytes)
    } catch {
        checkMessage(error.reason, "a JSON error")
        return
    }
    Fuzzing.require(depth(value) <= JSONValue.maximumDepth, "a value nested \(depth(value)) deep was parsed")
    let encoded = value.encoded()
    Fuzzing.require(encoded.count <= bytes.count, "\(bytes.count) bytes of JSON are written back as \(encoded.count)")
    let again = try? JSONValue.parse(encoded)
    Fuzzing.require(again == value, "JSON written back parses to another value: \(String(decoding: encoded, as: UTF8.self).debugDescription)")
    Fuzzing.require(again?.encoded() == encoded, "JSON written back twice gives other bytes")
}

/// Containers inside containers, the outermost counting one.
func depth(_ value: JSONValue) -> Int {
    switch value {
    case .array(let elements): return 1 + (elements.map(depth).max() ?? 0)
    case .object(let members): return 1 + (members.values.map(depth).max() ?? 0)
    case .number(let text):
        Fuzzing.require(JSONParser.isNumber(Array(text.utf8)) && Double(text)?.isFinite == true, "number \(text.debugDescription) was parsed")
        return 0
    case .null, .bool, .string: return 0
    }
}

// MARK: - The network config and the environment

func checkNetworkConfig(_ bytes: [UInt8]) {
    let json: JSONValue
    do throws(CNIError) {
        json = try NetworkConfig.parse(bytes)
    } catch {
        check(error)
        return
    }
    Fuzzing.require(NetworkConfig.declaredVersion(in: json).count <= 32, "an error would be reported in version \(NetworkConfig.declaredVersion(in: json).debugDescription)")
    let config: NetworkConfig
    do throws(CNIError) {
        config = try NetworkConfig(json)
    } catch {
        check(error)
        return
    }
    Fuzzing.require(config.cniVersion.isSupported, "a config in CNI \(config.cniVersion) was accepted")
    Fuzzing.require(Names.networkNameProblem(config.name) == nil && !config.type.isEmpty, "network \(config.name.debugDescription) of type \(config.type.debugDescription) was accepted")
    Fuzzing.require(config.prevResult == nil || config.prevResult?.objectValue != nil, "prevResult \(String(describing: config.prevResult)) is not an object")
    let settings = config.settings
    Fuzzing.require(Names.socketPathProblem(settings.agentSocket) == nil, "agentSocket \(settings.agentSocket.debugDescription) was accepted")
    Fuzzing.require((1...300_000).contains(settings.timeoutMilliseconds), "a timeout of \(settings.timeoutMilliseconds) ms was accepted")
    for namespace in settings.excludeNamespaces {
        Fuzzing.require(Names.kubernetesNamespaceProblem(namespace) == nil, "excluded namespace \(namespace.debugDescription) was accepted")
    }
    let again = try? NetworkConfig(JSONValue.parse(JSONValue.object(config.raw).encoded()))
    Fuzzing.require(again == config, "a config written back reads as another")

    // Chained: the previous result goes on unchanged, with a cniVersion.
    let result = try? JSONValue.parse(config.passThroughResult())
    var expected = config.prevResult?.objectValue ?? [:]
    if expected["cniVersion"] == nil { expected["cniVersion"] = .string(config.cniVersion.description) }
    Fuzzing.require(result == .object(expected), "ADD's result is not prevResult with a cniVersion")

    do throws(CNIError) {
        let addresses = try config.podAddresses()
        Fuzzing.require(addresses.count <= EnrollmentRequest.maximumAddresses && Set(addresses).count == addresses.count, "addresses \(addresses) are too many or repeat")
        for address in addresses {
            Fuzzing.require(IPAddressText.isValid(address), "\(address.debugDescription) is taken as a pod address")
        }
    } catch {
        check(error)
    }
}

func check(_ error: CNIError) {
    checkMessage(error.msg + (error.details ?? ""), "error \(error.code)")
    let result = try? JSONValue.parse(error.result(cniVersion: CNIVersion.fallback.description))
    Fuzzing.require(result?["code"]?.integerValue == Int64(error.code.rawValue) && result?["msg"]?.stringValue == error.msg
                        && result?["details"]?.stringValue == error.details,
                    "error \(error) is reported as \(String(describing: result))")
}

func checkMessage(_ message: String, _ what: @autoclosure () -> String) {
    Fuzzing.require(message.utf8.count <= Limits.messageBytes, "\(what()) is \(message.utf8.count) bytes long: \(message.prefix(200).debugDescription)…")
}

func checkArgs(_ text: String) {
    let args: CNIArgs
    do throws(CNIError) {
        args = try CNIArgs(text)
    } catch {
        check(error)
        return
    }
    Fuzzing.require(text.utf8.count <= CNIArgs.maximumLength, "CNI_ARGS of \(text.utf8.count) bytes was accepted")
    for (key, value) in args.pairs {
        Fuzzing.require(!key.isEmpty && !key.contains("=") && !key.contains(";") && !value.contains(";"), "pair \(key.debugDescription)=\(value.debugDescription) was read")
    }
    Fuzzing.require(args.podNamespace.map(Names.kubernetesNamespaceProblem) ?? nil == nil, "pod namespace \(args.podNamespace ?? "") was accepted")
    Fuzzing.require(args.podName.map(Names.kubernetesNameProblem) ?? nil == nil, "pod name \(args.podName ?? "") was accepted")
    Fuzzing.require(args.podUID.map(Names.kubernetesUIDProblem) ?? nil == nil, "pod UID \(args.podUID ?? "") was accepted")
    let again = try? CNIArgs(args.pairs.map { "\($0.key)=\($0.value)" }.joined(separator: ";"))
    Fuzzing.require(again == args, "CNI_ARGS written back reads as other pairs")
}

func check(_ environment: CNIEnvironment) {
    guard [.add, .del, .check].contains(environment.command) else {
        Fuzzing.require(environment.containerID == nil && environment.netns == nil && environment.ifName == nil && environment.args.pairs.isEmpty,
                        "\(environment.command) took the variables of a pod")
        return
    }
    Fuzzing.require(environment.containerID.map(Names.containerIDProblem) == .some(nil), "container id \(String(describing: environment.containerID)) was accepted")
    Fuzzing.require(environment.ifName.map(Names.interfaceNameProblem) == .some(nil), "interface \(String(describing: environment.ifName)) was accepted")
    Fuzzing.require(environment.netns.map(Names.namespacePathProblem) ?? nil == nil, "netns \(String(describing: environment.netns)) was accepted")
    Fuzzing.require(environment.command == .del || environment.netns != nil, "\(environment.command) without a netns was accepted")
}

// MARK: - The enrollment protocol

func checkRequestLine(_ line: [UInt8]) {
    do throws(EnrollmentProtocolError) {
        check(try EnrollmentRequest.decode(line: line))
    } catch {
        checkAgentLog(error.reason, "a request's error")
    }
}

/// An accepted request is one the agent may act on and log.
func check(_ request: EnrollmentRequest) {
    Fuzzing.require(Names.containerIDProblem(request.containerID) == nil, "container id \(request.containerID.debugDescription) was accepted")
    Fuzzing.require(Names.interfaceNameProblem(request.ifName) == nil, "interface \(request.ifName.debugDescription) was accepted")
    Fuzzing.require(Names.networkNameProblem(request.network) == nil, "network \(request.network.debugDescription) was accepted")
    Fuzzing.require(request.netns.map(Names.namespacePathProblem) ?? nil == nil, "netns \(String(describing: request.netns)) was accepted")
    Fuzzing.require(request.command == .del || request.netns != nil, "\(request.command) without a netns was accepted")
    Fuzzing.require(request.podNamespace.map(Names.kubernetesNamespaceProblem) ?? nil == nil, "pod namespace \(String(describing: request.podNamespace)) was accepted")
    Fuzzing.require(request.podName.map(Names.kubernetesNameProblem) ?? nil == nil, "pod name \(String(describing: request.podName)) was accepted")
    Fuzzing.require(request.podUID.map(Names.kubernetesUIDProblem) ?? nil == nil, "pod UID \(String(describing: request.podUID)) was accepted")
    Fuzzing.require(request.addresses.count <= EnrollmentRequest.maximumAddresses && request.addresses.allSatisfy(IPAddressText.isValid),
                    "addresses \(request.addresses) were accepted")
    Fuzzing.require(CNIVersion(request.cniVersion) != nil, "CNI version \(request.cniVersion.debugDescription) was accepted")
    Fuzzing.requireLoggable(request.podDescription, "a request's pod")
    Fuzzing.requireLoggable(request.netns ?? "", "a request's netns")

    let encoded = request.encoded()
    Fuzzing.require(encoded.count <= EnrollmentProtocol.maximumRequestSize, "a request encodes to \(encoded.count) bytes")
    Fuzzing.require(encoded.firstIndex(of: EnrollmentProtocol.newline) == encoded.count - 1, "a request encodes to more than one line")
    let again = try? EnrollmentRequest.decode(line: Array(encoded.dropLast()))
    Fuzzing.require(again == request, "request \(request) written back reads as \(String(describing: again))")
}

func checkResponseLine(_ line: [UInt8]) {
    do throws(EnrollmentProtocolError) {
        let response = try EnrollmentResponse.decode(line: line)
        Fuzzing.require(response.ok || response.error != nil, "a failure without an error was accepted")
        check(response)
    } catch {
        checkMessage(error.reason, "a response's error")
    }
}

/// Any message the agent puts in a response: the response stays one line
/// within the size the plugin reads, and reads back as sent.
func checkResponse(from text: String) {
    check(EnrollmentResponse(ok: false, captured: text.count.isMultiple(of: 2), reason: text, error: text))
}

func check(_ response: EnrollmentResponse) {
    let limit = EnrollmentProtocol.maximumMessageLength
    let encoded = response.encoded()
    Fuzzing.require(encoded.count <= EnrollmentProtocol.maximumResponseSize + 1, "a response encodes to \(encoded.count) bytes, more than the plugin reads")
    Fuzzing.require(encoded.firstIndex(of: EnrollmentProtocol.newline) == encoded.count - 1, "a response encodes to more than one line")
    let again = try? EnrollmentResponse.decode(line: Array(encoded.dropLast()))
    Fuzzing.require(again?.ok == response.ok && again?.captured == response.captured, "response \(response) reads back as \(String(describing: again))")
    for (sent, read) in [(response.reason, again?.reason), (response.error, again?.error)] {
        Fuzzing.require(read == sent.map(EnrollmentResponse.cut), "message \(String(describing: sent?.prefix(100))) reads back as \(String(describing: read?.prefix(100)))")
        Fuzzing.require((read?.utf8.count ?? 0) <= limit, "a message of \(read?.utf8.count ?? 0) bytes was read")
    }
}

/// What the agent's socket logs: one short line.
func checkAgentLog(_ message: String, _ what: @autoclosure () -> String) {
    checkMessage(message, what())
    Fuzzing.requireLoggable(message, what())
}

func checkConnection(_ bytes: [UInt8], chunkSize: Int) {
    let limit = 1024
    var whole = EnrollmentConnection(maximumRequestSize: limit)
    let action = whole.received(bytes)

    var chunked = EnrollmentConnection(maximumRequestSize: limit)
    var chunkedAction = EnrollmentConnection.Action.wait
    var start = 0
    while start < bytes.count {
        let end = min(start + chunkSize, bytes.count)
        let next = chunked.received(Array(bytes[start..<end]))
        if chunkedAction == .wait {
            chunkedAction = next
        } else {
            Fuzzing.require(next == .wait, "after \(chunkedAction), more bytes made the connection \(next)")
        }
        start = end
    }
    Fuzzing.require(chunkedAction == action, "in chunks of \(chunkSize) bytes the connection did \(chunkedAction), at once \(action)")

    let frame = EnrollmentFrame(bytes, limit: limit)
    switch action {
    case .wait:
        Fuzzing.require(frame == .incomplete, "the connection waits after \(frame)")
        let closed = whole.inputClosed()
        Fuzzing.require(bytes.isEmpty ? closed == .close(.probe, reason: nil) : closed != .close(.probe, reason: nil),
                        "closing after \(bytes.count) bytes was \(closed)")
        if case .close(_, let reason?) = closed { checkAgentLog(reason, "a closed connection's reason") }
    case .handle(let request):
        check(request)
        Fuzzing.require(whole.received(Array("{}\n".utf8)) == .wait && whole.timedOut(after: "5 s") == .wait && whole.inputClosed() == .wait,
                        "a connection being handled did something more")
        let reason = Fuzzing.text(bytes)
        guard case .respond(let response, .notCaptured, let command) = whole.handled(.success(.notCaptured(reason: reason))), command == request.command else {
            Fuzzing.require(false, "a handled request is not answered")
            return
        }
        check(response)
        Fuzzing.require(whole.handled(.success(.captured)) == .wait, "a request was answered twice")
    case .respond(let response, let result, let command):
        Fuzzing.require(result == .invalid && command == nil && !response.ok, "an unhandled request was answered \(response), \(result)")
        checkAgentLog(response.error ?? "", "the answer to an invalid request")
        check(response)
    case .close:
        Fuzzing.require(false, "bytes made the connection close")
    }

    // A refused peer reads the refusal once it has sent its request.
    var refused = EnrollmentConnection(maximumRequestSize: limit, refusal: "busy")
    let refusal = refused.received(bytes)
    switch frame {
    case .incomplete: Fuzzing.require(refusal == .wait, "a refused connection did \(refusal) before a whole request")
    case .line(let line):
        Fuzzing.require(line.count <= limit && !line.contains(EnrollmentProtocol.newline), "a line of \(line.count) bytes was framed")
        Fuzzing.require(refusal == .respond(.failure("busy"), .refused, command: nil), "a refused connection did \(refusal)")
    case .tooLong:
        Fuzzing.require(bytes.prefix(limit + 1).allSatisfy { $0 != EnrollmentProtocol.newline }, "a frame with a newline is too long")
        guard case .respond(_, .invalid, nil) = refusal else {
            Fuzzing.require(false, "a refused connection did \(refusal) with a frame too long")
            return
        }
    }
}

// MARK: - One invocation of the plugin

func checkInvocation(stdin: [UInt8], environment bytes: [UInt8], answer: [UInt8]) {
    var environment: [String: String] = [:]
    for line in Fuzzing.text(bytes).split(separator: "\n") {
        let halves = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        environment[String(halves[0])] = halves.count > 1 ? String(halves[1]) : ""
    }
    do throws(CNIError) {
        check(try CNIEnvironment(environment))
    } catch {
        check(error)
    }

    switch CNIPlugin.plan(environment: environment, stdin: stdin) {
    case .finish(let output):
        check(output)
    case .askAgent(let call):
        Fuzzing.require(Names.socketPathProblem(call.socketPath) == nil && (1...300_000).contains(call.timeoutMilliseconds),
                        "the plugin asks the agent at \(call.socketPath.debugDescription) within \(call.timeoutMilliseconds) ms")
        if let request = call.request {
            let encoded = request.encoded()
            let read = try? EnrollmentRequest.decode(line: Array(encoded.dropLast()))
            Fuzzing.require(encoded.count <= EnrollmentProtocol.maximumRequestSize && read == request,
                            "the plugin sends a request that the agent refuses or reads otherwise: \(String(decoding: encoded, as: UTF8.self).debugDescription)")
        } else {
            Fuzzing.require(call.command == .status, "\(call.command) only connects to the agent")
        }
        for exchange in [AgentExchange.answered(answer), .connected, .unreachable("no socket"), .failed("no answer within 10 ms")] {
            check(call.finish(exchange))
        }
    }
}

/// What the runtime reads: a CNI result (or nothing) and exit 0, or an error
/// result and exit 1; log lines it keeps one per line.
func check(_ output: PluginOutput) {
    for line in output.log { Fuzzing.requireLoggable(line, "a log line of the plugin") }
    switch output.exitCode {
    case 0:
        guard !output.stdout.isEmpty else { return }
        let result = try? JSONValue.parse(output.stdout)
        Fuzzing.require(result?["cniVersion"]?.stringValue != nil, "the plugin succeeds with \(String(decoding: output.stdout, as: UTF8.self).debugDescription)")
    case 1:
        let result = try? JSONValue.parse(output.stdout)
        Fuzzing.require(result?["cniVersion"]?.stringValue != nil && result?["code"]?.integerValue != nil && result?["msg"]?.stringValue != nil,
                        "the plugin fails with \(String(decoding: output.stdout, as: UTF8.self).debugDescription)")
    default:
        Fuzzing.require(false, "the plugin exits \(output.exitCode)")
    }
}

// MARK: - Addresses

/// The codec checks addresses without the C library; it must agree with the
/// C library, which is what takes them in the end.
func checkAddresses(_ text: String) {
    for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\0" }).prefix(8) {
        let candidate = String(line)
        var storage = [UInt8](repeating: 0, count: 16)
        let family = candidate.contains(":") ? AF_INET6 : AF_INET
        let parsed = inet_pton(family, candidate, &storage) == 1
        Fuzzing.require(IPAddressText.isValid(candidate) == parsed, "\(candidate.debugDescription) is \(parsed ? "" : "not ")an address to the C library")
        if let address = IPAddressText.addressOfCIDR(candidate) {
            Fuzzing.require(IPAddressText.isValid(address) && candidate.hasPrefix(address + "/"), "CIDR \(candidate.debugDescription) gives address \(address.debugDescription)")
        }
    }
}
