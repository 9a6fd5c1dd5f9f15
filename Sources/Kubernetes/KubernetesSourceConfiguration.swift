import Foundation
import Workloads

/// `workloadSources.kubernetes` of the agent's config: which node's pods to
/// watch and how to reach the API server. Left out, the API server, token and
/// CA are the ones Kubernetes gives every pod (the agent's DaemonSet pod).
public struct KubernetesSourceConfiguration: Hashable, Sendable {
    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"
    public static let inClusterTokenFile = serviceAccountDirectory + "/token"
    public static let inClusterCAFile = serviceAccountDirectory + "/ca.crt"

    /// This node's name, as `spec.nodeName` of its pods says it.
    public var node: String
    /// nil: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    public var apiServer: URL?
    /// The bearer token, read again on every connection (projected tokens
    /// rotate). nil: the in-cluster token if the file exists, else none.
    public var tokenFile: String?
    /// The CA the API server's certificate must lead to (https only). nil:
    /// the in-cluster `ca.crt`.
    public var caFile: String?
    /// Where kubelet keeps pod cgroups. nil: found by looking for the
    /// `kubepods` cgroup of `KubeletCgroupLayout.common`.
    public var cgroupLayout: KubeletCgroupLayout?

    public var backoff = Backoff()
    /// The API server ends each watch after a random time between this and
    /// twice this (`timeoutSeconds`), so that watches of many agents do not
    /// restart together.
    public var watchTimeout: Duration = .seconds(300)
    public var connectTimeout: Duration = .seconds(10)
    /// How long a response may go without a byte before it is given up;
    /// watches wait their `timeoutSeconds` longer.
    public var readTimeout: Duration = .seconds(60)
    /// Objects per list page (`limit`).
    public var pageSize = 500
    public var maximumListBytes = 64 << 20
    public var maximumLineBytes = WatchLineSplitter.defaultMaximumLineBytes

    public init(node: String, apiServer: URL? = nil, tokenFile: String? = nil, caFile: String? = nil, cgroupLayout: KubeletCgroupLayout? = nil) {
        self.node = node
        self.apiServer = apiServer
        self.tokenFile = tokenFile
        self.caFile = caFile
        self.cgroupLayout = cgroupLayout
    }

    /// The API server to talk to: the configured URL, or the in-cluster one
    /// from the environment.
    public func endpoint(environment: [String: String]) throws -> APIServerEndpoint {
        if let apiServer {
            return try APIServerEndpoint(url: apiServer.absoluteString)
        }
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
            let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty
        else {
            throw KubernetesSourceError.noAPIServer
        }
        let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        return try APIServerEndpoint(url: "https://\(authority)")
    }

    /// Refuses a node name no node can have.
    public func validate() throws {
        guard isDNSSubdomain(node) else { throw KubernetesSourceError.invalidNode(node) }
    }
}

/// Where the API server is: `http(s)://host[:port][/prefix]`.
public struct APIServerEndpoint: Hashable, Sendable, CustomStringConvertible {
    public enum Scheme: String, Sendable {
        case http, https
    }

    public let scheme: Scheme
    /// A DNS name or an IP address (IPv6 without brackets).
    public let host: String
    public let port: Int
    /// A path the API is below (a proxy's), without a trailing `/`; usually empty.
    public let basePath: String

    public init(url text: String) throws {
        func invalid(_ reason: String) -> KubernetesSourceError { .invalidAPIServer(loggable(text, limit: 200), reason: reason) }
        let lower = text.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            scheme = .https
            rest = text.dropFirst("https://".count)
        } else if lower.hasPrefix("http://") {
            scheme = .http
            rest = text.dropFirst("http://".count)
        } else {
            throw invalid("the URL must start with https:// (or http:// for a local test server)")
        }
        guard !rest.contains(where: { $0 == "?" || $0 == "#" }) else { throw invalid("the URL may not have a query or fragment") }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var path = String(rest[authorityEnd...])
        while path.hasSuffix("/") { path.removeLast() }
        guard !authority.contains("@") else { throw invalid("the URL may not hold a user name or password; give a tokenFile") }
        guard path.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else { throw invalid("the path holds spaces or characters outside ASCII") }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid("an IPv6 address without its closing \"]\"") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 address") }
                portText = after.dropFirst()
            }
            var address = in6_addr()
            guard inet_pton(AF_INET6, String(host), &address) == 1 else { throw invalid("\"\(host)\" is not an IPv6 address") }
        } else {
            host = authority
            if let colon = authority.lastIndex(of: ":") {
                host = authority[..<colon]
                portText = authority[authority.index(after: colon)...]
            }
            let allowed = host.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
            }
            guard !host.isEmpty, host.utf8.count <= 253, allowed else { throw invalid("\"\(loggable(String(host), limit: 100))\" is not a host name or address") }
        }
        if let portText {
            guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(portText), (1...65535).contains(port) else {
                throw invalid("\"\(loggable(String(portText), limit: 20))\" is not a port (1 to 65535)")
            }
            self.port = port
        } else {
            self.port = scheme == .https ? 443 : 80
        }
        self.host = String(host).lowercased()
        self.basePath = path
    }

    /// `host:port`, IPv6 in brackets, as the Host header and URLs write it.
    public var authority: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    public var description: String { "\(scheme.rawValue)://\(authority)\(basePath)" }

    /// The name to send as SNI: only DNS names are sent.
    var serverName: String? {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 ? nil : host
    }
}

public enum KubernetesSourceError: Error, Equatable, CustomStringConvertible {
    case invalidNode(String)
    case noAPIServer
    case invalidAPIServer(String, reason: String)
    case token(path: String, reason: String)
    case caFile(path: String, reason: String)
    case connect(endpoint: String, reason: String)
    /// The API server answered `request` with an HTTP error.
    case http(request: String, code: Int, status: Status?)
    case responseTooLarge(request: String, limit: Int)
    /// The connection ended before the response did.
    case truncated(request: String, reason: String)
    case idle(request: String, seconds: Int64)
    case decoding(request: String, KubernetesDecodingError)
    case oversizedEvent(request: String, bytes: Int, limit: Int)
    /// A watch `ERROR` event other than 410 Gone.
    case watchError(request: String, Status)

    /// 410 Gone: the version asked for is no longer kept.
    public var isGone: Bool {
        switch self {
        case .http(_, let code, _): code == 410
        case .watchError(_, let status): status.isGone
        default: false
        }
    }

    public var description: String {
        switch self {
        case .invalidNode(let node):
            return "kubernetes source: node \"\(loggable(node, limit: 100))\" is not a valid node name (lowercase letters, digits, '-' and '.'); give the name `kubectl get nodes` shows"
        case .noAPIServer:
            return "kubernetes source: no apiServer is configured and KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set; outside a pod, set workloadSources.kubernetes.apiServer"
        case .invalidAPIServer(let url, let reason):
            return "kubernetes source: apiServer \"\(url)\" is not usable: \(reason)"
        case .token(let path, let reason):
            return "cannot read the API server token from \(path): \(reason); set tokenFile, or let Kubernetes mount the service account token"
        case .caFile(let path, let reason):
            return "cannot use the API server CA file \(path): \(reason); set caFile, or let Kubernetes mount the service account's ca.crt"
        case .connect(let endpoint, let reason):
            return "cannot connect to the API server at \(endpoint): \(reason); retrying"
        case .http(let request, let code, let status):
            let said = status.map { " (\($0))" } ?? ""
            let hint: String
            switch code {
            case 401: hint = "the API server refused the token; check tokenFile and that the token is still valid"
            case 403: hint = "the agent's service account may not do this; its ClusterRole must allow get, list and watch on pods and namespaces"
            case 410: hint = "the resource version is too old; listing again"
            case 429, 500...599: hint = "the API server is overloaded or failing; retrying"
            default: hint = "retrying"
            }
            return "the API server answered GET \(request) with \(code)\(said): \(hint)"
        case .responseTooLarge(let request, let limit):
            return "the API server's answer to GET \(request) is larger than \(limit) bytes; the agent does not read it (is the field selector ignored?)"
        case .truncated(let request, let reason):
            return "the API server's answer to GET \(request) ended early: \(reason); retrying"
        case .idle(let request, let seconds):
            return "the API server sent nothing for \(seconds) s on GET \(request); reconnecting"
        case .decoding(let request, let error):
            return "GET \(request): \(error); listing again"
        case .oversizedEvent(let request, let bytes, let limit):
            return "a watch event on GET \(request) is \(bytes) bytes, over the limit of \(limit); listing again"
        case .watchError(let request, let status):
            return "the watch GET \(request) failed: \(status); watching again"
        }
    }
}
