import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Policy

/// The request of one HTTP/2 stream, read from its header block: the HTTP/1.1
/// request head the inspector decides (`:authority` as Host, the regular
/// fields after it), and what forwarding needs besides.
///
/// What HTTP/2 forbids is refused here even where NIOHTTP2 refuses it first
/// (pseudo-header rules, connection-specific fields): the guarantee that a
/// malformed request never reaches a workload should not rest on one
/// dependency's defaults.
struct HTTP2Request: Equatable {
    var head: HTTPRequestHead
    var scheme: String
    /// `:authority`, or Host when the client sent only that.
    var authority: String
    /// Fields the client asked never to be put in a compression table
    /// (credentials); they go to the workload the same way.
    var neverIndexed: Set<HTTPField>

    static func parse(_ block: HPACKHeaders, limit: HTTPHeadSizeLimit) -> Result<HTTP2Request, RequestRefusal> {
        let size = block.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count }
        guard block.count <= limit.maximumFields, size <= limit.maximumBytes else {
            return .failure(RequestRefusal(.requestHeaderFieldsTooLarge, "request head is over \(limit.maximumBytes) bytes or \(limit.maximumFields) fields"))
        }
        var method: String?
        var scheme: String?
        var authority: String?
        var path: String?
        var hosts: [String] = []
        var fields: [(String, String)] = []
        var neverIndexed = Set<HTTPField>()
        var regularSeen = false

        for (name, value, indexing) in block {
            if let first = value.utf8.first, let last = value.utf8.last, isWhitespace(first) || isWhitespace(last) {
                return .failure(RequestRefusal(.badRequest, "header \(name.prefix(64)) has whitespace at the start or end of its value"))
            }
            if name.hasPrefix(":") {
                guard !regularSeen else {
                    return .failure(RequestRefusal(.badRequest, "pseudo-header \(name.prefix(64)) comes after a regular header field"))
                }
                let once = RequestRefusal(.badRequest, "request has \(name.prefix(64)) more than once")
                switch name {
                case ":method":
                    guard method == nil else { return .failure(once) }
                    method = value
                case ":scheme":
                    guard scheme == nil else { return .failure(once) }
                    scheme = value
                case ":authority":
                    guard authority == nil else { return .failure(once) }
                    authority = value
                case ":path":
                    guard path == nil else { return .failure(once) }
                    path = value
                case ":protocol":
                    return .failure(RequestRefusal(.notImplemented, "extended CONNECT (:protocol) is not forwarded to workloads"))
                default:
                    return .failure(RequestRefusal(.badRequest, "request has the unknown pseudo-header \(name.prefix(64))"))
                }
                continue
            }
            regularSeen = true
            if name.utf8.contains(where: { (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }) {
                return .failure(RequestRefusal(.badRequest, "header field name \(name.prefix(64)) is not lowercase, as HTTP/2 requires"))
            }
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
                return .failure(RequestRefusal(.badRequest, "connection-specific header \(name) is not allowed in HTTP/2"))
            case "te" where value != "trailers":
                return .failure(RequestRefusal(.badRequest, "TE other than \"trailers\" is not allowed in HTTP/2"))
            case "host":
                hosts.append(value)
            default:
                fields.append((name, value))
            }
            if indexing == .neverIndexed {
                neverIndexed.insert(HTTPField(name: name, value: value))
            }
        }

        guard let method else {
            return .failure(RequestRefusal(.badRequest, "request has no :method"))
        }
        if method == "CONNECT" {
            return .failure(RequestRefusal(.notImplemented, "CONNECT is not forwarded to workloads"))
        }
        guard let scheme else {
            return .failure(RequestRefusal(.badRequest, "request has no :scheme"))
        }
        guard scheme == "http" || scheme == "https" else {
            return .failure(RequestRefusal(.badRequest, ":scheme is neither http nor https"))
        }
        guard let path, !path.isEmpty else {
            return .failure(RequestRefusal(.badRequest, "request has no :path"))
        }
        guard hosts.count <= 1 else {
            return .failure(RequestRefusal(.badRequest, "request has \(hosts.count) host fields"))
        }
        let target: String
        switch (authority, hosts.first) {
        case (let authority?, let host?):
            // Two names for the request's target: policy could check one while the workload serves the other.
            guard authority.lowercased() == host.lowercased() else {
                return .failure(RequestRefusal(.badRequest, ":authority and host name different targets"))
            }
            target = authority
        case (let authority?, nil):
            target = authority
        case (nil, let host?):
            target = host
        case (nil, nil):
            return .failure(RequestRefusal(.badRequest, "request has neither :authority nor host"))
        }

        let headers = HTTPHeaders([("host", target)] + fields)
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path, headers: headers)
        return .success(HTTP2Request(head: head, scheme: scheme, authority: target, neverIndexed: neverIndexed))
    }

    /// The header block that asks the workload for this request as the
    /// inspector allowed it: its (normalized) path, its fields but those
    /// removed, its scheme and authority.
    func workloadHeaders(for forwarding: HTTPRequestInspector.Forwarding) -> HPACKHeaders {
        var block = HPACKHeaders()
        block.add(name: ":method", value: head.method.rawValue)
        block.add(name: ":scheme", value: scheme)
        block.add(name: ":authority", value: authority)
        block.add(name: ":path", value: forwarding.target)
        for (name, value) in head.headers {
            let lowercased = name.lowercased()
            guard lowercased != "host", !forwarding.removing.contains(lowercased) else { continue }
            let indexing: HPACKIndexing = neverIndexed.contains(HTTPField(name: lowercased, value: value)) ? .neverIndexed : .indexable
            block.add(name: lowercased, value: value, indexing: indexing)
        }
        return block
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
    }
}
