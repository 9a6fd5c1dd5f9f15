import LinuxNet
import NIOConcurrencyHelpers
import Proxy

#if canImport(Glibc)
import Glibc
#endif

/// The listening sockets of the workloads captured in namespaces of their
/// own, as one agent hands them to the next (an upgrade, a DaemonSet rolling
/// update with surge). Each travels under its namespace's identity, so the
/// next agent gives a pod back the very sockets its table redirects to:
/// connections arriving meanwhile wait in their queues instead of meeting a
/// port nobody listens on.
final class PodSockets: Sendable {
    private struct State {
        /// Handed over and not claimed yet, by namespace.
        var inherited: [NamespaceIdentity: [(name: String, fd: CInt)]] = [:]
        /// The sockets of every captured namespace, by namespace.
        var inUse: [NamespaceIdentity: ListeningSockets] = [:]
    }

    private let state: NIOLockedValueBox<State>

    /// A handed-over socket's name: `netns@DEVICE_INODE/tunnel@0.0.0.0_15008`.
    static func name(_ socket: String, in namespace: NamespaceIdentity) -> String {
        "netns@\(namespace.device)_\(namespace.inode)/\(socket)"
    }

    /// The namespace and socket name of a name `name(_:in:)` made; nil for
    /// the node's own sockets.
    static func parse(_ name: String) -> (namespace: NamespaceIdentity, socket: String)? {
        guard name.hasPrefix("netns@"), let slash = name.firstIndex(of: "/") else { return nil }
        let identity = name[name.index(name.startIndex, offsetBy: 6)..<slash].split(separator: "_")
        guard identity.count == 2, let device = UInt64(identity[0]), let inode = UInt64(identity[1]) else { return nil }
        let socket = String(name[name.index(after: slash)...])
        guard !socket.isEmpty else { return nil }
        return (NamespaceIdentity(device: device, inode: inode), socket)
    }

    /// Splits what the agent before this one handed over: the node's
    /// sockets, and the pods' (kept here until their pod is captured).
    static func split(_ handed: [(name: String, fd: CInt)]) -> (node: [(name: String, fd: CInt)], pods: PodSockets) {
        var node: [(name: String, fd: CInt)] = []
        var pods = State()
        for (name, fd) in handed {
            if let (namespace, socket) = parse(name) {
                pods.inherited[namespace, default: []].append((socket, fd))
            } else if name.hasPrefix("netns@") {
                // A name this version cannot read: nobody will claim it.
                close(fd)
            } else {
                node.append((name, fd))
            }
        }
        return (node, PodSockets(state: pods))
    }

    convenience init() {
        self.init(state: State())
    }

    private init(state: State) {
        self.state = NIOLockedValueBox(state)
    }

    /// The sockets handed over for `namespace`, now owned by the caller.
    func take(for namespace: NamespaceIdentity) -> [(name: String, fd: CInt)] {
        state.withLockedValue { $0.inherited.removeValue(forKey: namespace) } ?? []
    }

    func register(_ sockets: ListeningSockets, for namespace: NamespaceIdentity) {
        state.withLockedValue { $0.inUse[namespace] = sockets }
    }

    func unregister(_ namespace: NamespaceIdentity) {
        _ = state.withLockedValue { $0.inUse.removeValue(forKey: namespace) }
    }

    /// Every captured namespace's sockets, named for the next agent (the
    /// descriptors stay owned by their registries).
    var all: [(name: String, fd: CInt)] {
        state.withLockedValue { state in
            state.inUse.sorted { ($0.key.device, $0.key.inode) < ($1.key.device, $1.key.inode) }.flatMap { namespace, sockets in
                sockets.all.map { (Self.name($0.name, in: namespace), $0.fd) }
            }
        }
    }

    /// Closes the sockets handed over for namespaces no workload was
    /// captured in (a pod that went away during the upgrade), and returns
    /// their names.
    func closeUnclaimed() -> [String] {
        let unclaimed = state.withLockedValue { state in
            defer { state.inherited = [:] }
            return state.inherited
        }
        var names: [String] = []
        for (namespace, sockets) in unclaimed {
            for (name, fd) in sockets {
                close(fd)
                names.append(Self.name(name, in: namespace))
            }
        }
        return names.sorted()
    }
}
