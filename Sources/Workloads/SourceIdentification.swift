import LinuxNet
import NIOCore

/// Who opened a captured connection. The agent answers from the socket's cgroup;
/// tests can answer however they like.
public protocol SourceIdentifier: Sendable {
    /// - Parameters:
    ///   - client: the peer of the accepted connection (after NAT);
    ///   - listener: the address it was accepted on (the redirect target);
    ///   - originalDestination: where the client was connecting to.
    /// - Returns: on `eventLoop`, the workload, and the client's own address
    ///   (NAT may have changed the port the agent sees).
    func identify(client: SocketAddress, listener: SocketAddress?, originalDestination: SocketAddress, on eventLoop: EventLoop)
        -> EventLoopFuture<IdentifiedSource>
}

public struct IdentifiedSource: Sendable {
    public var workload: Workload
    public var address: SocketAddress

    public init(workload: Workload, address: SocketAddress) {
        self.workload = workload
        self.address = address
    }
}

/// Identifies the workload behind a captured connection from its client socket's
/// cgroup, as the kernel reports it.
///
/// NAT may have changed the client's port: when a client reuses a source port
/// for another destination while conntrack still remembers the first
/// connection, both would have the same reply tuple (listener ↔ client), so the
/// kernel picks another port for the second. The socket is then not found under
/// the port the agent sees, and conntrack tells the real one.
public struct CgroupSourceIdentifier: SourceIdentifier {
    let sockDiag: SockDiagClient
    let conntrack: ConntrackClient?
    let registry: WorkloadRegistry

    public init(sockDiag: SockDiagClient, conntrack: ConntrackClient?, registry: WorkloadRegistry) {
        self.sockDiag = sockDiag
        self.conntrack = conntrack
        self.registry = registry
    }

    public func identify(client: SocketAddress, listener: SocketAddress?, originalDestination: SocketAddress, on eventLoop: EventLoop)
        -> EventLoopFuture<IdentifiedSource>
    {
        let address: SocketAddress
        let id: CgroupID
        do {
            (address, id) = try cgroup(of: client, listener: listener, originalDestination: originalDestination)
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        return registry.workload(forCgroup: id, on: eventLoop).flatMapThrowing { workload in
            guard let workload else { throw IdentificationError.noWorkload(cgroup: id) }
            return IdentifiedSource(workload: workload, address: address)
        }
    }

    /// The client socket's cgroup, asking the kernel (one netlink round trip,
    /// two when NAT changed the port).
    private func cgroup(of client: SocketAddress, listener: SocketAddress?, originalDestination: SocketAddress) throws -> (SocketAddress, CgroupID) {
        do {
            return (client, try sockDiag.cgroupID(ofClient: client, connectedTo: originalDestination))
        } catch SockDiagError.notFound {
            guard let conntrack, let listener else { throw SockDiagError.notFound }
            let address = try conntrack.originalSource(ofReplyFrom: listener, to: client)
            guard address != client else { throw SockDiagError.notFound }
            return (address, try sockDiag.cgroupID(ofClient: address, connectedTo: originalDestination))
        }
    }
}

public enum IdentificationError: Error, CustomStringConvertible {
    case noWorkload(cgroup: CgroupID)

    public var description: String {
        switch self {
        case .noWorkload(let id):
            return "cgroup id \(id) belongs to no declared workload"
        }
    }
}
