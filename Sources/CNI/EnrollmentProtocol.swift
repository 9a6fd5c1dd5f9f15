/// The enrollment protocol between `mesh-agent-cni` and the agent.
///
/// One exchange per connection on the agent's Unix stream socket
/// (`workloadSources.cni.socket`, mode 0600, root only): the plugin writes one
/// request, a JSON object on one line ending in `\n`; the agent answers with
/// one response line when it is done (for ADD: when the pod's capture is
/// installed) and closes. Both carry `"version": 1`; a side that does not
/// speak the other's version answers or fails with a message that says so.
/// Unknown keys are ignored, so a later version can add optional ones.
///
/// ```
/// → {"addresses":["10.77.1.5"],"cniVersion":"1.0.0","command":"ADD","containerID":"4f…",
///    "ifName":"eth0","netns":"/run/netns/cni-1","network":"pods","podName":"web-0",
///    "podNamespace":"shop","podUID":"8e…","version":1}
/// ← {"captured":true,"ok":true,"version":1}
/// ← {"captured":false,"ok":true,"reason":"the pod is labelled istio.io/dataplane-mode=none","version":1}
/// ← {"error":"installing capture in /run/netns/cni-1 failed: …","ok":false,"version":1}
/// ```
///
/// A connection that closes without sending anything is a liveness probe
/// (CNI STATUS) and gets no answer.
public enum EnrollmentProtocol {
    public static let version = 1
    /// A request is under a kilobyte; the bound is on what the agent buffers
    /// for one connection.
    public static let maximumRequestSize = 64 * 1024
    public static let maximumResponseSize = 16 * 1024
    /// Messages in a response are cut to this many bytes as JSON writes them
    /// (escapes counted), so that a response with both always fits.
    static let maximumMessageLength = 4096

    public static let newline: UInt8 = 0x0A
}

public struct EnrollmentProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String

    public init(_ reason: String) {
        self.reason = reason
    }

    public var description: String { reason }
}

/// What the plugin asks the agent, for one CNI ADD, DEL or CHECK.
public struct EnrollmentRequest: Equatable, Sendable {
    public enum Command: String, Sendable, CaseIterable {
        /// Enroll the pod and capture its traffic before answering.
        case add = "ADD"
        /// Stop capturing and forget the pod; success when it is not known.
        case del = "DEL"
        /// Is the pod captured as it should be?
        case check = "CHECK"
    }

    public var command: Command
    public var containerID: String
    /// The pod's network namespace; nil only for a DEL after it is gone.
    public var netns: String?
    public var ifName: String
    /// The CNI network's `name`.
    public var network: String
    public var podNamespace: String?
    public var podName: String?
    public var podUID: String?
    /// The pod's addresses on this attachment, without prefix length.
    public var addresses: [String]
    public var cniVersion: String

    /// A pod has one or two addresses per attachment.
    public static let maximumAddresses = 64

    public init(
        command: Command, containerID: String, netns: String?, ifName: String, network: String, podNamespace: String? = nil,
        podName: String? = nil, podUID: String? = nil, addresses: [String] = [], cniVersion: String
    ) {
        self.command = command
        self.containerID = containerID
        self.netns = netns
        self.ifName = ifName
        self.network = network
        self.podNamespace = podNamespace
        self.podName = podName
        self.podUID = podUID
        self.addresses = addresses
        self.cniVersion = cniVersion
    }

    /// The request line, `\n` included.
    public func encoded() -> [UInt8] {
        var members: [String: JSONValue] = [
            "version": .integer(Int64(EnrollmentProtocol.version)),
            "command": .string(command.rawValue),
            "containerID": .string(containerID),
            "ifName": .string(ifName),
            "network": .string(network),
            "addresses": .array(addresses.map(JSONValue.string)),
            "cniVersion": .string(cniVersion),
        ]
        members["netns"] = netns.map(JSONValue.string)
        members["podNamespace"] = podNamespace.map(JSONValue.string)
        members["podName"] = podName.map(JSONValue.string)
        members["podUID"] = podUID.map(JSONValue.string)
        return JSONValue.object(members).encoded() + [EnrollmentProtocol.newline]
    }

    /// One request line (without its `\n`), checked as the plugin checks
    /// its environment: the agent acts on these values.
    public static func decode(line: [UInt8]) throws(EnrollmentProtocolError) -> EnrollmentRequest {
        guard line.count <= EnrollmentProtocol.maximumRequestSize else {
            throw EnrollmentProtocolError("the request is \(line.count) bytes long; at most \(EnrollmentProtocol.maximumRequestSize) are accepted")
        }
        let members = try WireObject(line, what: "request")
        try members.checkVersion()
        let commandText = try members.string("command")
        guard let command = Command(rawValue: commandText) else {
            throw EnrollmentProtocolError("command \(CNIEnvironment.quoted(commandText)) is not one of ADD, DEL, CHECK")
        }
        let request = EnrollmentRequest(
            command: command,
            containerID: try members.string("containerID", check: Names.containerIDProblem),
            netns: try members.optionalString("netns", check: Names.namespacePathProblem),
            ifName: try members.string("ifName", check: Names.interfaceNameProblem),
            network: try members.string("network", check: Names.networkNameProblem),
            podNamespace: try members.optionalString("podNamespace", check: Names.kubernetesNamespaceProblem),
            podName: try members.optionalString("podName", check: Names.kubernetesNameProblem),
            podUID: try members.optionalString("podUID", check: Names.kubernetesUIDProblem),
            addresses: try members.addresses(),
            cniVersion: try members.string("cniVersion") { CNIVersion($0) == nil ? "it is not a version like 1.0.0" : nil })
        if command != .del && request.netns == nil {
            throw EnrollmentProtocolError("\(command.rawValue) needs netns, the pod's network namespace")
        }
        return request
    }

    /// The pod, for logs: `shop/web-0 (container 4f3a…)`, or the container alone.
    public var podDescription: String {
        let container = "container \(containerID.prefix(12))"
        guard let podName else { return container }
        return "\(podNamespace.map { "\($0)/" } ?? "")\(podName) (\(container))"
    }
}

/// The agent's answer.
public struct EnrollmentResponse: Equatable, Sendable {
    public var ok: Bool
    /// ADD and CHECK: whether the pod's traffic is captured. False with `ok`
    /// when the pod is not meant to be enrolled.
    public var captured: Bool?
    /// Why a pod is not captured, for the plugin's log.
    public var reason: String?
    /// What failed, when not `ok`.
    public var error: String?

    public init(ok: Bool, captured: Bool? = nil, reason: String? = nil, error: String? = nil) {
        self.ok = ok
        self.captured = captured
        self.reason = reason
        self.error = error
    }

    public static func failure(_ message: String) -> EnrollmentResponse {
        EnrollmentResponse(ok: false, error: message)
    }

    /// The response line, `\n` included; messages are cut so that it stays
    /// under `maximumResponseSize`.
    public func encoded() -> [UInt8] {
        var members: [String: JSONValue] = [
            "version": .integer(Int64(EnrollmentProtocol.version)),
            "ok": .bool(ok),
        ]
        members["captured"] = captured.map(JSONValue.bool)
        members["reason"] = reason.map { .string(Self.cut($0)) }
        members["error"] = error.map { .string(Self.cut($0)) }
        return JSONValue.object(members).encoded() + [EnrollmentProtocol.newline]
    }

    public static func decode(line: [UInt8]) throws(EnrollmentProtocolError) -> EnrollmentResponse {
        guard line.count <= EnrollmentProtocol.maximumResponseSize else {
            throw EnrollmentProtocolError("the response is \(line.count) bytes long; at most \(EnrollmentProtocol.maximumResponseSize) are accepted")
        }
        let members = try WireObject(line, what: "response")
        try members.checkVersion()
        let response = EnrollmentResponse(
            ok: try members.bool("ok"), captured: try members.optionalBool("captured"),
            reason: try members.optionalString("reason", check: { _ in nil }).map(cut),
            error: try members.optionalString("error", check: { _ in nil }).map(cut))
        if !response.ok && response.error == nil {
            throw EnrollmentProtocolError("the response says ok: false without an error")
        }
        return response
    }

    /// Counted as written, not as UTF-8: a control character takes six bytes
    /// in JSON, so 4096 of them cut by their UTF-8 made a response larger than
    /// the plugin reads, and ADD failed on an answer "not understood".
    static func cut(_ message: String) -> String {
        let limit = EnrollmentProtocol.maximumMessageLength
        guard message.unicodeScalars.reduce(0, { $0 + JSONValue.encodedWidth(of: $1) }) > limit else { return message }
        // Whole scalars only, and room for the 3 bytes of the ellipsis.
        var kept = String.UnicodeScalarView()
        var size = 0
        for scalar in message.unicodeScalars {
            size += JSONValue.encodedWidth(of: scalar)
            if size > limit - 3 { break }
            kept.append(scalar)
        }
        return String(kept) + "…"
    }
}

/// A frame of the protocol: the bytes up to the first `\n`.
public enum EnrollmentFrame: Equatable, Sendable {
    /// No `\n` yet, and fewer than `limit` bytes.
    case incomplete
    /// The line, without its `\n`.
    case line([UInt8])
    /// `limit` bytes and no `\n`: the peer is not speaking the protocol.
    case tooLong

    public init(_ buffer: [UInt8], limit: Int) {
        if let end = buffer.prefix(limit + 1).firstIndex(of: EnrollmentProtocol.newline) {
            self = .line(Array(buffer[buffer.startIndex..<end]))
        } else if buffer.count > limit {
            self = .tooLong
        } else {
            self = .incomplete
        }
    }
}

/// A decoded line of the protocol, with typed accessors whose errors name the key.
private struct WireObject {
    let members: [String: JSONValue]
    let what: String

    init(_ line: [UInt8], what: String) throws(EnrollmentProtocolError) {
        self.what = what
        let value: JSONValue
        do {
            value = try JSONValue.parse(line)
        } catch {
            throw EnrollmentProtocolError("the \(what) is not valid JSON: \(error.reason)")
        }
        guard let members = value.objectValue else {
            throw EnrollmentProtocolError("the \(what) is \(value.kind), not an object")
        }
        self.members = members
    }

    func checkVersion() throws(EnrollmentProtocolError) {
        guard let value = members["version"] else {
            throw EnrollmentProtocolError("the \(what) has no version; this side speaks enrollment protocol version \(EnrollmentProtocol.version)")
        }
        guard let version = value.integerValue, version == EnrollmentProtocol.version else {
            let shown = value.integerValue.map { String($0) } ?? value.kind
            throw EnrollmentProtocolError(
                "the \(what) is in enrollment protocol version \(shown), and this side speaks version \(EnrollmentProtocol.version): install mesh-agent-cni and mesh-agent from the same release")
        }
    }

    func string(_ key: String, check: (String) -> String? = { _ in nil }) throws(EnrollmentProtocolError) -> String {
        guard let value = members[key] else { throw EnrollmentProtocolError("the \(what) has no \(key)") }
        return try checked(key, value, check: check)
    }

    func optionalString(_ key: String, check: (String) -> String?) throws(EnrollmentProtocolError) -> String? {
        guard let value = members[key], value != .null else { return nil }
        return try checked(key, value, check: check)
    }

    func bool(_ key: String) throws(EnrollmentProtocolError) -> Bool {
        guard let value = try optionalBool(key) else { throw EnrollmentProtocolError("the \(what) has no \(key)") }
        return value
    }

    func optionalBool(_ key: String) throws(EnrollmentProtocolError) -> Bool? {
        switch members[key] {
        case nil, .null?: return nil
        case .bool(let flag)?: return flag
        case let other?: throw EnrollmentProtocolError("\(key) in the \(what) is \(other.kind), not true or false")
        }
    }

    func addresses() throws(EnrollmentProtocolError) -> [String] {
        guard let value = members["addresses"], value != .null else { return [] }
        guard case .array(let list) = value else {
            throw EnrollmentProtocolError("addresses in the \(what) is \(value.kind), not an array")
        }
        guard list.count <= EnrollmentRequest.maximumAddresses else {
            throw EnrollmentProtocolError("the \(what) has \(list.count) addresses; at most \(EnrollmentRequest.maximumAddresses) are accepted")
        }
        var addresses: [String] = []
        for (index, entry) in list.enumerated() {
            guard let address = entry.stringValue, IPAddressText.isValid(address) else {
                let shown = entry.stringValue.map(CNIEnvironment.quoted) ?? entry.kind
                throw EnrollmentProtocolError("addresses[\(index)] in the \(what) is \(shown), not an IP address")
            }
            addresses.append(address)
        }
        return addresses
    }

    private func checked(_ key: String, _ value: JSONValue, check: (String) -> String?) throws(EnrollmentProtocolError) -> String {
        guard let text = value.stringValue else {
            throw EnrollmentProtocolError("\(key) in the \(what) is \(value.kind), not a string")
        }
        if let problem = check(text) {
            throw EnrollmentProtocolError("\(key) \(CNIEnvironment.quoted(text)) in the \(what) is not valid: \(problem)")
        }
        return text
    }
}
