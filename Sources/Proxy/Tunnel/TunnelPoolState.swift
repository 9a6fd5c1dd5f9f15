/// The bookkeeping of one event loop's pooled tunnel connections, with no I/O:
/// which connection a new stream goes on, when another connection is needed,
/// and when an idle one may close.
///
/// A stream reserves a slot from the moment it is asked for, so streams that
/// wait for a connection still being made count against its limit, and a burst
/// of requests opens only as many connections as the limit requires.
struct TunnelPoolState<Key: Hashable> {
    typealias ConnectionID = Int

    enum Phase: Equatable {
        case connecting
        case ready
    }

    struct Connection: Equatable {
        let key: Key
        var phase: Phase
        var streams: Int
        /// Bumped whenever the connection becomes idle, so that only the newest
        /// idle timer may close it.
        var idleGeneration: Int
    }

    enum Acquisition: Equatable {
        /// Open a stream on this ready connection now.
        case use(ConnectionID)
        /// This connection is being made; open the stream when it is ready.
        case wait(ConnectionID)
        /// Make this new connection, then open the stream on it.
        case open(ConnectionID)
    }

    enum Release: Equatable {
        case none
        /// The connection has no streams: close it unless it is used again before
        /// the idle timeout (`idleTimerFired` with this generation decides).
        case startIdleTimer(ConnectionID, generation: Int)
    }

    let maximumStreamsPerConnection: Int
    private(set) var connections: [ConnectionID: Connection] = [:]
    private var byKey: [Key: [ConnectionID]] = [:]
    private var nextID: ConnectionID = 0

    init(maximumStreamsPerConnection: Int) {
        precondition(maximumStreamsPerConnection > 0, "a connection must carry at least one stream")
        self.maximumStreamsPerConnection = maximumStreamsPerConnection
    }

    /// Reserves a stream slot for `key`. Streams pack onto the busiest ready
    /// connection with room, so surplus connections go idle and close.
    mutating func acquire(_ key: Key) -> Acquisition {
        var busiestReady: (id: ConnectionID, streams: Int)?
        var connecting: ConnectionID?
        for id in byKey[key] ?? [] {
            guard let connection = connections[id], connection.streams < maximumStreamsPerConnection else { continue }
            switch connection.phase {
            case .ready:
                if connection.streams > busiestReady?.streams ?? -1 {
                    busiestReady = (id, connection.streams)
                }
            case .connecting:
                connecting = connecting ?? id
            }
        }
        if let id = busiestReady?.id ?? connecting {
            connections[id]?.streams += 1
            return connections[id]?.phase == .ready ? .use(id) : .wait(id)
        }
        let id = nextID
        nextID += 1
        connections[id] = Connection(key: key, phase: .connecting, streams: 1, idleGeneration: 0)
        byKey[key, default: []].append(id)
        return .open(id)
    }

    /// The connection is established (TLS done): its waiting streams may go.
    mutating func connected(_ id: ConnectionID) {
        connections[id]?.phase = .ready
    }

    /// A stream that held a slot on `id` has ended (or never started).
    mutating func release(_ id: ConnectionID) -> Release {
        guard var connection = connections[id], connection.streams > 0 else { return .none }
        connection.streams -= 1
        defer { connections[id] = connection }
        guard connection.streams == 0, connection.phase == .ready else { return .none }
        connection.idleGeneration += 1
        return .startIdleTimer(id, generation: connection.idleGeneration)
    }

    /// Returns whether the connection should close now: it is still idle and no
    /// newer idle period began since this timer was started.
    mutating func idleTimerFired(_ id: ConnectionID, generation: Int) -> Bool {
        guard let connection = connections[id], connection.streams == 0, connection.idleGeneration == generation else {
            return false
        }
        remove(id)
        return true
    }

    /// The connection failed or closed: nothing more goes on it. The streams that
    /// waited for it fail with it; those already open end on their own.
    mutating func remove(_ id: ConnectionID) {
        guard let connection = connections.removeValue(forKey: id) else { return }
        byKey[connection.key]?.removeAll { $0 == id }
        if byKey[connection.key]?.isEmpty == true {
            byKey[connection.key] = nil
        }
    }

    func connectionCount(for key: Key) -> Int {
        byKey[key]?.count ?? 0
    }
}
