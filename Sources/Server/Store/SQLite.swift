internal import CSQLite
import Spool

/// A connection to one SQLite file, in WAL mode (readers never wait for the writer) with foreign keys on.
/// Prepared statements are cached by their text: bulk inserts reuse one statement per chunk size.
final class SQLiteConnection: SQLConnection, @unchecked Sendable {
    let dialect = SQLDialect.sqlite
    private var db: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]
    private(set) var isHealthy = true

    /// Opens (creating) the database file. Each connection caches 16 MiB of pages (four connections stay well
    /// under the server's memory budget with a million jobs stored).
    init(path: String) throws(StoreError) {
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, db != nil else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw StoreError(.unavailable, "cannot open SQLite database \(path): \(message)")
        }
        // A writer waits up to 10 s for another process's write lock instead of failing at once.
        sqlite3_busy_timeout(db, 10_000)
        do {
            try executeScript(
                """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = NORMAL;
                PRAGMA foreign_keys = ON;
                PRAGMA cache_size = -16384;
                """)
        } catch {
            // A read-only file or directory fails here, at the first write (WAL mode): say which file.
            throw StoreError(.unavailable, "cannot use SQLite database \(path): \(error.message)")
        }
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(db)
    }

    private func error(_ sql: String) -> StoreError {
        let code = sqlite3_errcode(db)
        let message = String(cString: sqlite3_errmsg(db))
        let kind: StoreError.Kind
        switch code & 0xFF {
        case SQLITE_CONSTRAINT: kind = .constraint
        case SQLITE_FULL: kind = .full
        case SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM: kind = .unavailable
        default: kind = .failed
        }
        if (code & 0xFF) == SQLITE_CORRUPT || (code & 0xFF) == SQLITE_NOTADB { isHealthy = false }
        return StoreError(kind, "\(message) (in: \(StoreError.statement(sql)))")
    }

    private func prepared(_ sql: String) throws(StoreError) -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK,
            let statement
        else { throw error(sql) }
        // Keep the cache small: chunked inserts make at most a few distinct texts per table.
        if statements.count > 200 {
            for old in statements.values { sqlite3_finalize(old) }
            statements.removeAll()
        }
        statements[sql] = statement
        return statement
    }

    private func bind(_ statement: OpaquePointer, _ parameters: [SQLValue], _ sql: String) throws(StoreError) {
        for (index, value) in parameters.enumerated() {
            let i = Int32(index + 1)
            let rc: Int32
            switch value {
            case .null: rc = sqlite3_bind_null(statement, i)
            case .int(let v): rc = sqlite3_bind_int64(statement, i, v)
            case .double(let d): rc = sqlite3_bind_double(statement, i, d)
            case .text(let s): rc = sqlite3_bind_text(statement, i, s, -1, csqlite_transient())
            }
            guard rc == SQLITE_OK else { throw error(sql) }
        }
    }

    func query(_ statement: SQL) throws(StoreError) -> [SQLRow] {
        let sql = statement.text(.sqlite)
        let parameters = statement.values
        let statement = try prepared(sql)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        try bind(statement, parameters, sql)
        var rows: [SQLRow] = []
        let columns = sqlite3_column_count(statement)
        let names = SQLRow.Names((0..<columns).map { String(cString: sqlite3_column_name(statement, $0)) })
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error(sql) }
            var values: [SQLValue] = []
            values.reserveCapacity(Int(columns))
            for c in 0..<columns {
                switch sqlite3_column_type(statement, c) {
                case SQLITE_INTEGER: values.append(.int(sqlite3_column_int64(statement, c)))
                case SQLITE_FLOAT: values.append(.double(sqlite3_column_double(statement, c)))
                case SQLITE_NULL: values.append(.null)
                default:
                    if let text = sqlite3_column_text(statement, c) {
                        values.append(.text(String(cString: text)))
                    } else {
                        values.append(.null)
                    }
                }
            }
            rows.append(SQLRow(values: values, names: names))
        }
        return rows
    }

    func execute(_ statement: SQL) throws(StoreError) -> Int {
        _ = try query(statement)
        return Int(sqlite3_changes(db))
    }

    func executeScript(_ sql: String) throws(StoreError) {
        var message: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(db, sql, nil, nil, &message) == SQLITE_OK else {
            let text = message.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(message)
            var failure = error(sql)
            failure.message = "\(text) (in: \(StoreError.statement(sql)))"
            throw failure
        }
    }

    func begin() throws(StoreError) { try executeScript("BEGIN IMMEDIATE") }
    func commit() throws(StoreError) { try executeScript("COMMIT") }
    func rollback() {
        if sqlite3_get_autocommit(db) == 0 { try? executeScript("ROLLBACK") }
    }
}
