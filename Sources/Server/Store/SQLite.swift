internal import CSQLite
import Foundation
import Spool
import Synchronization

/// A connection to one SQLite file, in WAL mode (readers never wait for the writer) with foreign keys on.
/// Prepared statements are cached by their text: bulk inserts reuse one statement per chunk size.
final class SQLiteConnection: SQLConnection, @unchecked Sendable {
    let dialect = SQLDialect.sqlite
    private var db: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]
    private(set) var isHealthy = true
    /// The file as this process uses it (`SQLiteFile`): the writer turn, held from BEGIN to its end, and the
    /// log's checkpoints.
    private let file: SQLiteFile
    private var holdsTurn = false

    /// Opens (creating) the database file. Each connection caches 16 MiB of pages (four connections stay well
    /// under the server's memory budget with a million jobs stored).
    init(path: String) throws(StoreError) {
        file = SQLiteFile.of(path)
        file.opened()
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, db != nil else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw StoreError(.unavailable, "cannot open SQLite database \(path): \(message)")
        }
        // A writer waits up to 10 s for another process's write lock instead of failing at once.
        sqlite3_busy_timeout(db, 10_000)
        // The log's checkpoints, off the writers' path (`SQLiteFile`); this replaces SQLite's automatic one.
        sqlite3_wal_hook(
            db,
            { context, db, _, pages in
                guard let context else { return SQLITE_OK }
                Unmanaged<SQLiteFile>.fromOpaque(context).takeUnretainedValue().committed(pages: pages, db: db)
                return SQLITE_OK
            }, Unmanaged.passUnretained(file).toOpaque())
        do {
            try executeScript(
                """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = NORMAL;
                PRAGMA foreign_keys = ON;
                PRAGMA cache_size = -16384;
                PRAGMA temp_store = MEMORY;
                """)
        } catch {
            // A read-only file or directory fails here, at the first write (WAL mode): say which file.
            throw StoreError(.unavailable, "cannot use SQLite database \(path): \(error.message)")
        }
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(db)
        file.closed()
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

    /// Takes this process's writer turn, then SQLite's write lock. Without the turn, the process's own writers
    /// met in SQLite's busy handler, which sleeps 1, 2, 5 … 100 ms between looks: the lock lay idle while they
    /// slept, and a push waited seconds behind its own server's other pushes.
    func begin() throws(StoreError) {
        file.takeTurn()
        holdsTurn = true
        do { try executeScript("BEGIN IMMEDIATE") } catch {
            giveTurnBack()
            throw error
        }
    }

    func commit() throws(StoreError) {
        try executeScript("COMMIT")
        giveTurnBack()
    }

    func rollback() {
        if sqlite3_get_autocommit(db) == 0 { try? executeScript("ROLLBACK") }
        giveTurnBack()
    }

    private func giveTurnBack() {
        if holdsTurn {
            holdsTurn = false
            file.giveTurn()
        }
    }
}

/// One SQLite file as this process uses it: its connections' writer turn, and the checkpoints of its
/// write-ahead log, made off the writers' path.
///
/// The turn: the process's transactions on the file take it in turn, each blocking its own database thread
/// (never a Swift task) until the writer before it ends; other processes on the same file still meet in SQLite's
/// busy handler. The checkpoints: SQLite's automatic one runs inside the commit that fills the log to 1,000
/// pages, with the write lock held through its copy and its two fsyncs, so every writer stood still behind it
/// (on a virtual disk, tens of milliseconds several times a second under load). Here a commit that leaves
/// `backgroundPages` in the log starts a passive checkpoint on another thread, on a connection of its own, which
/// copies while writers go on; only a log past `inlinePages` (the background cannot keep up, or a reader pins
/// the log) is checkpointed by the committing writer, as SQLite would, so the log stays bounded.
final class SQLiteFile: @unchecked Sendable {
    let path: String
    private let turn = NSLock()
    /// Guards the three below.
    private let lock = NSLock()
    private var running = false
    /// The background checkpoint's connection, used only while `running`; closed when the last of the process's
    /// connections to the file closes.
    private var connection: OpaquePointer?
    private var users = 0
    static let backgroundPages: Int32 = 1000
    static let inlinePages: Int32 = 16_000

    private init(path: String) { self.path = path }

    func takeTurn() { turn.lock() }
    func giveTurn() { turn.unlock() }

    func opened() { lock.withLock { users += 1 } }

    func closed() {
        let idle = lock.withLock { () -> OpaquePointer? in
            users -= 1
            guard users == 0, !running else { return nil }
            defer { connection = nil }
            return connection
        }
        sqlite3_close(idle)
    }

    /// After a commit on `db` that left `pages` in the log.
    func committed(pages: Int32, db: OpaquePointer?) {
        if pages >= Self.inlinePages {
            sqlite3_wal_checkpoint_v2(db, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
            return
        }
        guard pages >= Self.backgroundPages else { return }
        let start = lock.withLock { () -> Bool in
            if running { return false }
            running = true
            return true
        }
        if start { DispatchQueue.global().async { self.checkpoint() } }
    }

    private func checkpoint() {
        var db = lock.withLock { connection }
        if db == nil {
            // A new connection is in WAL mode only once it has read the file (else the checkpoint does nothing).
            if sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) != SQLITE_OK
                || sqlite3_exec(db, "PRAGMA journal_mode = WAL", nil, nil, nil) != SQLITE_OK
            {
                sqlite3_close(db)
                db = nil
            }
        }
        // Passive: never waits for a reader or a writer, copies what it can; a later one copies the rest.
        if let db { sqlite3_wal_checkpoint_v2(db, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil) }
        let idle = lock.withLock { () -> OpaquePointer? in
            running = false
            guard users > 0 else {
                connection = nil
                return db
            }
            connection = db
            return nil
        }
        sqlite3_close(idle)
    }

    private static let files = Mutex<[String: SQLiteFile]>([:])

    /// The file at `path` (one per path as written; the same file named two ways is two, whose writers fall back
    /// to the busy handler between them).
    static func of(_ path: String) -> SQLiteFile {
        files.withLock { files in
            if let file = files[path] { return file }
            let file = SQLiteFile(path: path)
            files[path] = file
            return file
        }
    }
}

extension SQLiteConnection {
    /// A consistent copy of the database in `path` (SQLite's online backup: pages copied a slice at a time, with
    /// writers going on between slices and the copy started again by SQLite when one wrote a page it had already
    /// copied), written beside it and renamed into place: a reader sees no file or the whole copy.
    func backup(to path: String) throws(StoreError) {
        let partial = path + ".partial"
        unlink(partial)
        var destination: OpaquePointer?
        defer { sqlite3_close(destination) }
        guard
            sqlite3_open_v2(partial, &destination, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nil) == SQLITE_OK
        else { throw StoreError(.unavailable, "cannot create \(partial)") }
        guard let backup = sqlite3_backup_init(destination, "main", db, "main") else {
            throw StoreError(.failed, "cannot back up: \(String(cString: sqlite3_errmsg(destination)))")
        }
        var rc: Int32
        repeat {
            rc = sqlite3_backup_step(backup, 1024)
            if rc == SQLITE_BUSY || rc == SQLITE_LOCKED { sqlite3_sleep(20) }
        } while rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED
        sqlite3_backup_finish(backup)
        guard rc == SQLITE_DONE else {
            unlink(partial)
            throw StoreError(.failed, "the backup failed: \(String(cString: sqlite3_errstr(rc)))")
        }
        // The copy is a database of its own: no log beside it, closed and synced before it takes the name.
        sqlite3_exec(destination, "PRAGMA journal_mode = DELETE", nil, nil, nil)
        sqlite3_close(destination)
        destination = nil
        let fd = open(partial, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        guard rename(partial, path) == 0 else { throw StoreError(.failed, "cannot rename \(partial) to \(path)") }
    }
}
