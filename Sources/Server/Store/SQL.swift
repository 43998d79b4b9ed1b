import Spool
import Synchronization
import Wire

/// A value bound to, or read from, a SQL statement. Both backends store only these four kinds: JSON goes in as
/// text, booleans as 0 and 1, times as microseconds since the epoch, so one schema and one set of queries serve
/// SQLite and PostgreSQL alike.
public enum SQLValue: Sendable, Hashable {
    case null
    case int(Int64)
    case double(Double)
    case text(String)

    /// An integer parameter.
    static func of(_ i: Int) -> SQLValue { .int(Int64(i)) }
    /// A boolean parameter, stored as 0 or 1.
    static func of(_ b: Bool) -> SQLValue { .int(b ? 1 : 0) }
    /// A job state, as its name.
    static func of(_ state: JobState) -> SQLValue { .text(state.rawValue) }
    /// An optional integer parameter.
    static func of(_ i: Int?) -> SQLValue { i.map { .int(Int64($0)) } ?? .null }
}

/// One result row. PostgreSQL returns every value as text and SQLite as its stored kind: the accessors read
/// either, so queries need not know which backend answered. Columns are read by their name in the statement
/// (`r.int("id")`, `r.text("state")`), or by position.
public struct SQLRow: Sendable {
    var values: [SQLValue]
    let names: Names

    /// A result's column names, shared by its rows.
    final class Names: Sendable {
        let index: [String: Int]
        /// The positions of the last list of columns asked for, with that list.
        private let memo = Mutex<(columns: [String], positions: [Int])?>(nil)

        init(_ names: [String]) {
            index = Dictionary(names.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        }

        /// The positions of `columns` (-1 for one the statement does not select), worked out once per result:
        /// its rows are read with the same list, which compares by identity (one array, no string compared).
        func positions(_ columns: [String]) -> [Int] {
            memo.withLock { memo in
                if let memo, memo.columns == columns { return memo.positions }
                let positions = columns.map { name in
                    guard let i = index[name] else {
                        assertionFailure("no column '\(name)' in this result (\(index.keys.sorted()))")
                        return -1
                    }
                    return i
                }
                memo = (columns, positions)
                return positions
            }
        }
    }

    /// The position of column `name`. A name the statement does not select is a fault in the server's code:
    /// debug builds stop on it; a release build reads it as NULL.
    func column(_ name: String) -> Int {
        guard let i = names.index[name] else {
            assertionFailure("no column '\(name)' in this result (\(names.index.keys.sorted()))")
            return -1
        }
        return i
    }

    func isNull(_ name: String) -> Bool { isNull(column(name)) }
    func int(_ name: String) -> Int { int(column(name)) }
    func optionalInt(_ name: String) -> Int? { optionalInt(column(name)) }
    func double(_ name: String) -> Double { double(column(name)) }
    func text(_ name: String) -> String { text(column(name)) }
    func optionalText(_ name: String) -> String? { optionalText(column(name)) }
    func bool(_ name: String) -> Bool { bool(column(name)) }

    /// Whether column `i` is NULL.
    func isNull(_ i: Int) -> Bool { !values.indices.contains(i) || values[i] == .null }

    /// Column `i` as an integer (0 when NULL or not a number).
    func int(_ i: Int) -> Int {
        guard values.indices.contains(i) else { return 0 }
        switch values[i] {
        case .int(let v): return Int(v)
        case .double(let d): return Int(saturating: d)
        case .text(let s): return Int(s) ?? 0
        case .null: return 0
        }
    }

    /// Column `i` as an integer, or nil when NULL.
    func optionalInt(_ i: Int) -> Int? { isNull(i) ? nil : int(i) }

    /// Column `i` as a double (0 when NULL).
    func double(_ i: Int) -> Double {
        guard values.indices.contains(i) else { return 0 }
        switch values[i] {
        case .int(let v): return Double(v)
        case .double(let d): return d
        case .text(let s): return Double(s) ?? 0
        case .null: return 0
        }
    }

    /// Column `i` as text ("" when NULL).
    func text(_ i: Int) -> String {
        guard values.indices.contains(i) else { return "" }
        switch values[i] {
        case .text(let s): return s
        case .int(let v): return String(v)
        case .double(let d): return String(d)
        case .null: return ""
        }
    }

    /// Column `i` as text, or nil when NULL.
    func optionalText(_ i: Int) -> String? { isNull(i) ? nil : text(i) }

    /// Column `i` as a boolean stored as 0 or 1.
    func bool(_ i: Int) -> Bool { int(i) != 0 }
}

/// Which SQL the connection speaks, where the two differ.
public enum SQLDialect: Sendable {
    case sqlite
    case postgresql

    /// The larger of two numbers.
    var greatest: String { self == .sqlite ? "max" : "GREATEST" }
    /// Row locks for a read-then-write in one transaction (SQLite's `BEGIN IMMEDIATE` already holds the lock).
    var forUpdate: String { self == .sqlite ? "" : " FOR UPDATE" }
    /// A condition that `column` contains `text`.
    func contains(_ column: String, _ text: String) -> SQL {
        self == .sqlite ? "instr(\(raw: column), \(.text(text))) > 0" : "strpos(\(raw: column), \(.text(text))) > 0"
    }
    /// The most parameters one statement may carry (SQLite 3.32+: 32,766; PostgreSQL: 65,535).
    var maxParameters: Int { self == .sqlite ? 32_000 : 65_000 }
}

/// The failure of a store operation: which statement and what the database said.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure it is.
    public enum Kind: Sendable {
        /// The database refused a value: a unique key taken, a foreign key missing.
        case constraint
        /// The database could not be opened or reached, or cannot be written (a read-only file).
        case unavailable
        /// The disk (or the database's quota) is full: requests that write fail until space is made.
        case full
        /// Anything else the database reported.
        case failed
    }

    /// The kind of failure.
    public var kind: Kind
    /// The database's own message, with the statement's first words.
    public var message: String

    /// Makes an error.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    /// How a message names the statement that failed: its first line, at most 80 characters.
    static func statement(_ sql: String) -> String {
        let line = sql.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? sql
        let trimmed = String(line.trimmingSpaces())
        return trimmed.count > 80 ? String(trimmed.prefix(80)) + "…" : trimmed
    }
}

/// One open connection to a database. Used by one thread at a time: the pool hands it from thread to thread
/// (hence `Sendable`), never to two at once.
protocol SQLConnection: AnyObject, Sendable {
    /// The connection's SQL dialect.
    var dialect: SQLDialect { get }
    /// Runs one statement and returns its rows (none for statements without results).
    func query(_ sql: SQL) throws(StoreError) -> [SQLRow]
    /// Runs one statement and returns the number of rows it changed.
    @discardableResult
    func execute(_ sql: SQL) throws(StoreError) -> Int
    /// Runs several statements without parameters (schema migrations).
    func executeScript(_ sql: String) throws(StoreError)
    /// Starts a transaction that will write (SQLite takes the write lock now, so two writers never deadlock).
    func begin() throws(StoreError)
    /// Commits the open transaction.
    func commit() throws(StoreError)
    /// Rolls the open transaction back; never throws (a broken connection is dropped by the pool).
    func rollback()
    /// Whether the connection is still usable.
    var isHealthy: Bool { get }
}

extension SQLConnection {
    /// Runs `body` in a transaction: committed when it returns, rolled back when it throws.
    func transaction<T>(_ body: () throws -> T) throws -> T {
        try begin()
        do {
            let value = try body()
            try commit()
            return value
        } catch {
            rollback()
            throw error
        }
    }

    /// The first row's first column as an integer, or nil when there is no row.
    func scalar(_ sql: SQL) throws(StoreError) -> Int? {
        let rows = try query(sql)
        guard let row = rows.first, !row.isNull(0) else { return nil }
        return row.int(0)
    }

    /// Rows per multi-row INSERT so that a statement stays under the dialect's parameter limit.
    func rowsPerStatement(columns: Int) -> Int { max(1, dialect.maxParameters / max(1, columns)) }
}
