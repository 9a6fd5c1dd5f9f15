import Foundation

/// `agentctl`'s side of the admin API: one HTTP/1.1 request over the agent's
/// Unix socket, answered as JSON.
public struct AdminClient: Sendable {
    public static let defaultSocket = "/run/mesh-agent/admin.sock"
    public let socketPath: String

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    public func get(_ path: String) throws -> Data {
        try request(method: "GET", path: path)
    }

    public func post(_ path: String) throws -> Data {
        try request(method: "POST", path: path)
    }

    private func request(method: String, path: String) throws -> Data {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw AdminClientError.system("socket", errno) }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard socketPath.utf8.count < capacity else { throw AdminClientError.pathTooLong(socketPath) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: socketPath.utf8)
            raw[socketPath.utf8.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            switch errno {
            case ENOENT, ECONNREFUSED: throw AdminClientError.notRunning(socketPath)
            case EACCES, EPERM: throw AdminClientError.permissionDenied(socketPath)
            default: throw AdminClientError.system("connect to \(socketPath)", errno)
            }
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let text = "\(method) \(path) HTTP/1.1\r\nHost: mesh-agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        try text.utf8CString.withUnsafeBufferPointer { buffer in
            var offset = 0
            let length = buffer.count - 1
            while offset < length {
                let sent = send(fd, buffer.baseAddress.map { $0 + offset }, length - offset, Int32(MSG_NOSIGNAL))
                guard sent > 0 else { throw AdminClientError.system("send", errno) }
                offset += sent
            }
        }
        var response = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count == 0 { break }
            guard count > 0 else {
                if errno == EINTR { continue }
                throw AdminClientError.system("read from \(socketPath)", errno)
            }
            response.append(contentsOf: chunk[0..<count])
            guard response.count < 64 << 20 else { throw AdminClientError.badResponse("larger than 64 MiB") }
        }
        return try Self.body(of: response)
    }

    /// The body of an HTTP/1.1 response read to EOF; an error status becomes an
    /// error carrying the agent's message.
    static func body(of response: Data) throws -> Data {
        guard let separator = response.range(of: Data("\r\n\r\n".utf8)) else {
            throw AdminClientError.badResponse("no end of headers")
        }
        let head = String(decoding: response[..<separator.lowerBound], as: UTF8.self)
        let body = response[separator.upperBound...]
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else {
            throw AdminClientError.badResponse("bad status line \"\(statusLine)\"")
        }
        guard status == 200 else {
            let message = (try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])?["error"] as? String
            throw AdminClientError.agentError(status: status, message: message ?? String(decoding: body, as: UTF8.self))
        }
        return Data(body)
    }
}

public enum AdminClientError: Error, CustomStringConvertible {
    case notRunning(String)
    case permissionDenied(String)
    case pathTooLong(String)
    case system(String, Int32)
    case badResponse(String)
    case agentError(status: Int, message: String)

    public var description: String {
        switch self {
        case .notRunning(let path):
            return "mesh-agent is not running (nothing listens on \(path)); start it (systemctl start mesh-agent) or point --socket / MESH_AGENT_SOCKET at its admin socket"
        case .permissionDenied(let path):
            return "permission denied on \(path): the admin socket is root-only; run agentctl as root (sudo agentctl …)"
        case .pathTooLong(let path):
            return "the socket path \(path) is too long for a Unix socket"
        case .system(let operation, let code):
            return "\(operation) failed: \(String(cString: strerror(code)))"
        case .badResponse(let problem):
            return "the agent's answer could not be read: \(problem)"
        case .agentError(let status, let message):
            return "the agent answered \(status): \(message)"
        }
    }
}
