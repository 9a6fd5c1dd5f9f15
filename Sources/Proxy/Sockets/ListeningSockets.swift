import LinuxNet
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// Every listening socket of the agent, by name (`tunnel@0.0.0.0_15008`).
///
/// A socket is taken over from the process before this one when one was
/// handed over (by systemd's file descriptor store after a restart, or by the
/// agent this one took over from), and made here otherwise. The registry
/// keeps its own descriptor of each: that is what it stores with systemd and
/// hands to the agent after it, so a listening socket can outlive the process
/// that made it, and connections that arrive meanwhile wait in its queue
/// instead of being refused.
public final class ListeningSockets: Sendable {
    private struct State {
        /// Handed over and not claimed yet.
        var inherited: [String: CInt]
        /// In use, in the order claimed.
        var held: [(name: String, fd: CInt)] = []
    }

    private let state: NIOLockedValueBox<State>
    private let logger: Logger
    /// Where new sockets are made: the node's namespace, or a workload's own.
    private let namespace: SocketNamespace?

    /// - Parameters:
    ///   - inherited: descriptors handed over, by name; this registry owns them.
    ///   - namespace: a workload's namespace to make the sockets in.
    public init(inherited: [(name: String, fd: CInt)] = [], namespace: SocketNamespace? = nil, logger: Logger) {
        self.namespace = namespace
        var byName: [String: CInt] = [:]
        for (name, fd) in inherited {
            if let duplicate = byName[name] { close(duplicate) }
            byName[name] = fd
        }
        state = NIOLockedValueBox(State(inherited: byName))
        self.logger = logger
    }

    /// `tunnel@0.0.0.0_15008`, `outbound@[__1]_15001`: systemd refuses ':'
    /// in a stored descriptor's name (it separates names in LISTEN_FDNAMES).
    public static func name(listener: String, address: String, port: UInt16) -> String {
        let host = address.contains(":") ? "[\(address.replacingOccurrences(of: ":", with: "_"))]" : address
        return "\(listener)@\(host)_\(port)"
    }

    /// A descriptor for the event-loop library to adopt (and close when it is
    /// done): of the socket handed over under that name, or of one made now.
    package func socket(listener: String, address: String, port: UInt16) throws -> CInt {
        let name = Self.name(listener: listener, address: address, port: port)
        // A listener started again (a handover that did not complete) gets
        // the socket it had: the queue of waiting connections goes with it.
        if let held = state.withLockedValue({ $0.held.first { $0.name == name }?.fd }) {
            let forLibrary = dup(held)
            guard forLibrary >= 0 else { throw ListeningSocketError(address: address, port: port, operation: "dup", errno: errno) }
            return forLibrary
        }
        let own: CInt
        let adopted = state.withLockedValue { $0.inherited.removeValue(forKey: name) }
        if let adopted, ListeningSocket.isListening(adopted, address: address, port: port) {
            own = adopted
            logger.info("took over the listening socket \(name)")
        } else {
            if let adopted {
                logger.warning("the socket handed over as \(name) is not listening on \(address) port \(port); making a new one")
                close(adopted)
            }
            if let namespace {
                own = try namespace.runAndWait { try ListeningSocket.open(address: address, port: port) }
            } else {
                own = try ListeningSocket.open(address: address, port: port)
            }
        }
        let forLibrary = dup(own)
        guard forLibrary >= 0 else {
            let error = ListeningSocketError(address: address, port: port, operation: "dup", errno: errno)
            close(own)
            throw error
        }
        state.withLockedValue { $0.held.append((name, own)) }
        return forLibrary
    }

    /// The sockets in use, with the registry's descriptors (still owned by it).
    public var all: [(name: String, fd: CInt)] {
        state.withLockedValue { $0.held }
    }

    /// After the event-loop library adopted a socket with a backlog of its
    /// own, the agent's is set again.
    func restoreBacklogs() {
        for (_, fd) in all { ListeningSocket.restoreBacklog(fd) }
    }

    /// Closes the registry's descriptors, and those handed over but never
    /// claimed (a listener this version no longer has). A socket closes when
    /// the last process holding it does.
    public func closeAll() {
        let descriptors = state.withLockedValue { state -> [CInt] in
            defer {
                state.held = []
                state.inherited = [:]
            }
            return state.held.map(\.fd) + Array(state.inherited.values)
        }
        for fd in descriptors { close(fd) }
    }

    /// Names handed over that no listener claimed.
    public var unclaimed: [String] {
        state.withLockedValue { Array($0.inherited.keys).sorted() }
    }

    /// Closes the sockets handed over that no listener claimed (a port the
    /// config no longer uses) and returns their names, so that whoever
    /// else keeps them (systemd's store) can let them go too: a socket left
    /// listening with no one accepting would take connections and never
    /// answer them.
    public func closeUnclaimed() -> [String] {
        let unclaimed = state.withLockedValue { state in
            defer { state.inherited = [:] }
            return state.inherited.sorted { $0.key < $1.key }
        }
        for (_, fd) in unclaimed { close(fd) }
        return unclaimed.map(\.key)
    }
}
