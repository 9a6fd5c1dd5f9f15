import Foundation
import Graph
import SQLite

/// What went wrong with the graph database, and what to do about it.
public struct GraphStoreError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public let isCorrupt: Bool

    public var description: String {
        let advice = isCorrupt
            ? "the file is damaged or not a database: move it away and the agent starts a new one"
            : "check that the directory exists and is writable by the agent, and that the disk has room"
        return "graph database \(path): \(reason); \(advice)"
    }

    init(path: String, reason: String, isCorrupt: Bool = false) {
        self.path = path
        self.reason = reason
        self.isCorrupt = isCorrupt
    }

    init(path: String, _ error: Error) {
        self.path = path
        if let error = error as? GraphStoreError {
            reason = error.reason
            isCorrupt = error.isCorrupt
        } else if let error = error as? SQLiteError {
            reason = "\(error.operation) failed: \(error.message)"
            isCorrupt = error.isCorrupt
        } else {
            reason = "\(error)"
            isCorrupt = false
        }
    }
}

/// The observed graph on disk: one SQLite database in WAL mode, so the admin
/// API can read while the flusher writes. Edges are kept per hour, which is
/// what windows (`--since 24h`) and retention are measured in. Not
/// thread-safe: the owner serializes calls.
public final class EdgeStore {
    public static let bucketSeconds = 3600.0
    static let schemaVersion = 1

    public let path: String
    private let database: SQLiteDatabase

    /// Opens the database at `path`, making it (and its directory) if needed.
    /// `now` is when a database made here was created: the learning period
    /// starts then.
    public init(path: String, now: Double = Date().timeIntervalSince1970) throws {
        self.path = path
        do {
            let directory = (path as NSString).deletingLastPathComponent
            if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
            }
            // Made here first, 0640 like the access log: the graph names every
            // identity and address. SQLite gives its -wal and -shm files the
            // database file's mode.
            if !FileManager.default.fileExists(atPath: path),
                !FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640])
            {
                throw GraphStoreError(path: path, reason: "cannot create the file")
            }
            database = try SQLiteDatabase(path: path)
            try Self.prepare(database)
            try database.run("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)", rows: [[.real(now)]])
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    private static let keyColumns = [
        "src_identity", "src_addr", "dst_workload", "dst_identity", "dst_port", "protocol", "tls", "method", "path_template",
        "decision", "policy", "rule", "audit", "audit_policy", "audit_rule",
    ]
    private static let countColumns = ["connections", "requests", "bytes_sent", "bytes_received", "first_seen", "last_seen"]

    private static func prepare(_ database: SQLiteDatabase) throws {
        // WAL: readers (the admin API) never wait for the flusher; NORMAL sync:
        // a power cut may lose the last flush, never the database.
        _ = try database.query("PRAGMA journal_mode=WAL")
        try database.execute("PRAGMA synchronous=NORMAL")
        let version = try database.query("PRAGMA user_version").first?.first?.integer ?? 0
        guard version <= schemaVersion else {
            throw GraphStoreError(
                path: database.path,
                reason: "it was written by a newer agent (schema \(version); this agent knows \(schemaVersion)): run that agent, or move the file away")
        }
        // Absent values are stored as '' and -1, because a UNIQUE index treats
        // every NULL as distinct and would never merge those edges.
        let keyDefinitions = keyColumns.map { column in
            ["dst_port", "rule", "audit_rule"].contains(column) ? "\(column) INTEGER NOT NULL" : "\(column) TEXT NOT NULL"
        }
        try database.execute("""
            CREATE TABLE IF NOT EXISTS edges (
                bucket INTEGER NOT NULL,
                \(keyDefinitions.joined(separator: ",\n    ")),
                connections INTEGER NOT NULL, requests INTEGER NOT NULL,
                bytes_sent INTEGER NOT NULL, bytes_received INTEGER NOT NULL,
                first_seen REAL NOT NULL, last_seen REAL NOT NULL);
            CREATE UNIQUE INDEX IF NOT EXISTS edges_key ON edges (bucket, \(keyColumns.joined(separator: ", ")));
            CREATE INDEX IF NOT EXISTS edges_last_seen ON edges (last_seen);
            CREATE INDEX IF NOT EXISTS edges_pair ON edges (dst_workload, src_identity, src_addr, dst_port);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
            PRAGMA user_version = \(schemaVersion);
            """)
    }

    /// Adds `edges` to the hour each was last seen in, in one transaction.
    public func write(_ edges: [Edge]) throws {
        guard !edges.isEmpty else { return }
        let columns = ["bucket"] + Self.keyColumns + Self.countColumns
        let placeholders = Array(repeating: "?", count: columns.count).joined(separator: ", ")
        let sql = """
            INSERT INTO edges (\(columns.joined(separator: ", "))) VALUES (\(placeholders))
            ON CONFLICT (bucket, \(Self.keyColumns.joined(separator: ", "))) DO UPDATE SET
              connections = connections + excluded.connections, requests = requests + excluded.requests,
              bytes_sent = bytes_sent + excluded.bytes_sent, bytes_received = bytes_received + excluded.bytes_received,
              first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)
            """
        let rows = edges.map { edge -> [SQLiteValue] in
            let bucket = Int64((edge.counts.lastSeen / Self.bucketSeconds).rounded(.down) * Self.bucketSeconds)
            return [.integer(bucket)] + Self.keyValues(edge.key) + [
                .integer(Self.clamped(edge.counts.connections)), .integer(Self.clamped(edge.counts.requests)),
                .integer(Self.clamped(edge.counts.bytesSent)), .integer(Self.clamped(edge.counts.bytesReceived)),
                .real(edge.counts.firstSeen), .real(edge.counts.lastSeen),
            ]
        }
        do {
            try database.transaction { try database.run(sql, rows: rows) }
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    /// The edges last seen at or after `since` (every edge when nil), the
    /// hours of the window added together; with `newSince`, only those whose
    /// pair (caller, workload, port) was first seen at or after it.
    public func edges(since: Double? = nil, newSince: Double? = nil) throws -> [Edge] {
        let keys = Self.keyColumns.joined(separator: ", ")
        let pair = Self.pairColumns.joined(separator: ", ")
        let sql = """
            SELECT \(keys), sum(connections), sum(requests), sum(bytes_sent), sum(bytes_received), min(first_seen), max(last_seen)
            FROM edges WHERE last_seen >= ?
            \(newSince == nil ? "" : "AND (\(pair)) IN (SELECT \(pair) FROM edges GROUP BY \(pair) HAVING min(first_seen) >= ?)")
            GROUP BY \(keys)
            """
        var parameters: [SQLiteValue] = [.real(since ?? -Double.greatestFiniteMagnitude)]
        if let newSince { parameters.append(.real(newSince)) }
        do {
            return try database.query(sql, parameters).compactMap(Self.edge(from:)).sorted(by: Edge.displayOrder)
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    /// What makes an edge new for alerts: a caller talking to a workload's
    /// port for the first time. A new method or path of a known pair is not.
    static let pairColumns = ["dst_workload", "src_identity", "src_addr", "dst_port"]

    /// The edges of `edges` whose pair the database has never held, one per
    /// pair. Ask before `write`, which makes them known.
    public func unseenPairs(_ edges: [Edge]) throws -> [Edge] {
        let sql = "SELECT 1 FROM edges WHERE \(Self.pairColumns.map { "\($0) = ?" }.joined(separator: " AND ")) LIMIT 1"
        var asked = Set<[SQLiteValue]>()
        var unseen: [Edge] = []
        do {
            for edge in edges {
                let values = Self.pairValues(edge.key)
                guard asked.insert(values).inserted else { continue }
                if try database.query(sql, values).isEmpty { unseen.append(edge) }
            }
        } catch {
            throw GraphStoreError(path: path, error)
        }
        return unseen
    }

    /// Whether the caller has any edge in the database (to another workload,
    /// or another port).
    public func knowsSource(_ key: EdgeKey) throws -> Bool {
        do {
            return try !database.query(
                "SELECT 1 FROM edges WHERE src_identity = ? AND src_addr = ? LIMIT 1", [.text(key.sourceIdentity ?? ""), .text(key.sourceAddress ?? "")]
            ).isEmpty
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    /// When the learning period ends: the time `baseline` was set at, else
    /// `learningPeriod` after the database was made.
    public func learningEnds(after learningPeriod: Double) throws -> Double {
        do {
            let rows = try database.query("SELECT key, value FROM meta WHERE key IN ('baseline', 'created')")
            let values = Dictionary(rows.compactMap { row -> (String, Double)? in
                guard row.count == 2, let key = row[0].text, let value = row[1].real else { return nil }
                return (key, value)
            }, uniquingKeysWith: { first, _ in first })
            if let baseline = values["baseline"] { return baseline }
            return (values["created"] ?? 0) + learningPeriod
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    /// Ends the learning period at `time`: edges never seen before are new from then on.
    public func setBaseline(_ time: Double) throws {
        do {
            try database.run("INSERT OR REPLACE INTO meta (key, value) VALUES ('baseline', ?)", rows: [[.real(time)]])
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    private static func pairValues(_ key: EdgeKey) -> [SQLiteValue] {
        [.text(key.destinationWorkload), .text(key.sourceIdentity ?? ""), .text(key.sourceAddress ?? ""), .integer(Int64(key.destinationPort))]
    }

    /// Deletes what was last seen before `cutoff`, then the oldest rows beyond
    /// `maximumRows`; returns how many rows were deleted.
    @discardableResult
    public func prune(before cutoff: Double, maximumRows: Int) throws -> Int {
        do {
            return try database.transaction {
                try database.run("DELETE FROM edges WHERE last_seen < ?", rows: [[.real(cutoff)]])
                var deleted = database.changes
                let count = try database.query("SELECT count(*) FROM edges").first?.first?.integer ?? 0
                if count > Int64(maximumRows) {
                    try database.run(
                        "DELETE FROM edges WHERE rowid IN (SELECT rowid FROM edges ORDER BY last_seen LIMIT ?)",
                        rows: [[.integer(count - Int64(maximumRows))]])
                    deleted += database.changes
                }
                return deleted
            }
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    /// Rows stored, one per edge and hour.
    public func rowCount() throws -> Int {
        do {
            return Int(try database.query("SELECT count(*) FROM edges").first?.first?.integer ?? 0)
        } catch {
            throw GraphStoreError(path: path, error)
        }
    }

    private static func keyValues(_ key: EdgeKey) -> [SQLiteValue] {
        func text(_ value: String?) -> SQLiteValue { .text(value ?? "") }
        return [
            text(key.sourceIdentity), text(key.sourceAddress), .text(key.destinationWorkload), text(key.destinationIdentity),
            .integer(Int64(key.destinationPort)), .text(key.protocol), .text(key.tls), text(key.method), text(key.pathTemplate),
            .text(key.decision), text(key.policy), .integer(Int64(key.rule ?? -1)), text(key.audit), text(key.auditPolicy),
            .integer(Int64(key.auditRule ?? -1)),
        ]
    }

    private static func edge(from row: [SQLiteValue]) -> Edge? {
        guard row.count == keyColumns.count + countColumns.count else { return nil }
        func text(_ index: Int) -> String? {
            guard let value = row[index].text, !value.isEmpty else { return nil }
            return value
        }
        func count(_ index: Int) -> UInt64 {
            // A sum past Int64 comes back as REAL from SQLite.
            if let integer = row[index].integer { return UInt64(max(0, integer)) }
            return row[index].real.map { $0 >= 1.8e19 ? .max : UInt64(max(0, $0)) } ?? 0
        }
        guard let workload = text(2), let port = row[4].integer.flatMap({ UInt16(exactly: $0) }),
            let proto = text(5), let tls = text(6), let decision = text(9)
        else { return nil }
        func index(_ column: Int) -> Int? { row[column].integer.flatMap { $0 >= 0 ? Int(exactly: $0) : nil } }
        let key = EdgeKey(
            sourceIdentity: text(0), sourceAddress: text(1), destinationWorkload: workload, destinationIdentity: text(3),
            destinationPort: port, protocol: proto, tls: tls, method: text(7), pathTemplate: text(8), decision: decision,
            policy: text(10), rule: index(11), audit: text(12), auditPolicy: text(13), auditRule: index(14))
        let offset = keyColumns.count
        let counts = EdgeCounts(
            connections: count(offset), requests: count(offset + 1), bytesSent: count(offset + 2), bytesReceived: count(offset + 3),
            firstSeen: row[offset + 4].real ?? 0, lastSeen: row[offset + 5].real ?? 0)
        return Edge(key: key, counts: counts)
    }

    private static func clamped(_ value: UInt64) -> Int64 {
        Int64(clamping: value)
    }
}
