import CSQLite

/// What failed in SQLite, on which database, and what SQLite said.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    /// SQLite's primary result code (`SQLITE_CORRUPT`, `SQLITE_CANTOPEN`, …).
    public let code: Int32
    public let path: String
    public let operation: String
    public let message: String

    /// The file is not a database or is damaged: moving it away is the fix.
    public var isCorrupt: Bool { code == SQLITE_CORRUPT || code == SQLITE_NOTADB }

    public var description: String {
        "\(path): \(operation) failed: \(message) (SQLite code \(code))"
    }
}

/// One value to bind or read.
public enum SQLiteValue: Sendable, Hashable {
    case integer(Int64)
    case real(Double)
    case text(String)
    case null

    public var integer: Int64? { if case .integer(let value) = self { return value } else { return nil } }
    public var real: Double? {
        switch self {
        case .real(let value): return value
        case .integer(let value): return Double(value)
        default: return nil
        }
    }
    public var text: String? { if case .text(let value) = self { return value } else { return nil } }
}

/// A connection to one SQLite database file. The C API is confined to this
/// module: statements are prepared, bound, stepped and finalized inside one
/// call, so no C pointer outlives the call that made it. Not thread-safe: the
/// owner serializes calls (the graph store keeps it under a lock).
public final class SQLiteDatabase {
    public let path: String
    private var handle: OpaquePointer?

    /// Opens (creating if needed) the database at `path`.
    public init(path: String, busyTimeoutMilliseconds: Int32 = 2000) throws {
        self.path = path
        var opened: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let code = sqlite3_open_v2(path, &opened, flags, nil)
        guard code == SQLITE_OK, let opened else {
            let message = opened.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(opened)
            throw SQLiteError(code: code & 0xff, path: path, operation: "opening the database", message: message)
        }
        handle = opened
        sqlite3_busy_timeout(opened, busyTimeoutMilliseconds)
    }

    deinit {
        sqlite3_close_v2(handle)
    }

    /// Runs one or more statements that take no parameters and return no rows.
    public func execute(_ sql: String) throws {
        let code = sqlite3_exec(handle, sql, nil, nil, nil)
        guard code == SQLITE_OK else { throw error(code, "running \(Self.summary(sql))") }
    }

    /// Runs `sql` once per element of `rows`, each bound in order, reusing one
    /// prepared statement.
    public func run(_ sql: String, rows: [[SQLiteValue]]) throws {
        try withStatement(sql) { statement in
            for row in rows {
                try bind(row, to: statement, sql: sql)
                let code = sqlite3_step(statement)
                guard code == SQLITE_DONE || code == SQLITE_ROW else { throw error(code, "running \(Self.summary(sql))") }
                sqlite3_reset(statement)
                sqlite3_clear_bindings(statement)
            }
        }
    }

    /// Runs a query and returns every row, each as its columns in order.
    public func query(_ sql: String, _ parameters: [SQLiteValue] = []) throws -> [[SQLiteValue]] {
        try withStatement(sql) { statement in
            try bind(parameters, to: statement, sql: sql)
            var rows: [[SQLiteValue]] = []
            while true {
                let code = sqlite3_step(statement)
                if code == SQLITE_DONE { return rows }
                guard code == SQLITE_ROW else { throw error(code, "querying \(Self.summary(sql))") }
                let count = sqlite3_column_count(statement)
                rows.append((0..<count).map { column(statement, $0) })
            }
        }
    }

    /// Runs `body` in one transaction: all of it is written, or none.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    public var changes: Int { Int(sqlite3_changes(handle)) }

    private func withStatement<T>(_ sql: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        var prepared: OpaquePointer?
        let code = sqlite3_prepare_v2(handle, sql, -1, &prepared, nil)
        guard code == SQLITE_OK, let statement = prepared else { throw error(code, "preparing \(Self.summary(sql))") }
        defer { sqlite3_finalize(statement) }
        return try body(statement)
    }

    private func bind(_ values: [SQLiteValue], to statement: OpaquePointer, sql: String) throws {
        // SQLITE_TRANSIENT: SQLite copies the text before the call returns.
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let code: Int32
            switch value {
            case .integer(let integer): code = sqlite3_bind_int64(statement, index, integer)
            case .real(let real): code = sqlite3_bind_double(statement, index, real)
            case .text(let text): code = sqlite3_bind_text(statement, index, text, -1, transient)
            case .null: code = sqlite3_bind_null(statement, index)
            }
            guard code == SQLITE_OK else { throw error(code, "binding parameter \(index) of \(Self.summary(sql))") }
        }
    }

    private func column(_ statement: OpaquePointer, _ index: Int32) -> SQLiteValue {
        switch sqlite3_column_type(statement, index) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(statement, index))
        case SQLITE_FLOAT: return .real(sqlite3_column_double(statement, index))
        case SQLITE_TEXT:
            guard let text = sqlite3_column_text(statement, index) else { return .null }
            return .text(String(cString: text))
        default: return .null
        }
    }

    private func error(_ code: Int32, _ operation: String) -> SQLiteError {
        let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "no database"
        return SQLiteError(code: code & 0xff, path: path, operation: operation, message: message)
    }

    /// The start of a statement, for error messages.
    private static func summary(_ sql: String) -> String {
        let words = sql.split(whereSeparator: \.isWhitespace).prefix(4).joined(separator: " ")
        return "\"\(words)…\""
    }
}
