import Spool
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
    /// An optional integer parameter.
    static func of(_ i: Int?) -> SQLValue { i.map { .int(Int64($0)) } ?? .null }
}

/// One result row. PostgreSQL returns every value as text and SQLite as its stored kind: the accessors read
/// either, so queries need not know which backend answered.
public struct SQLRow: Sendable {
    var values: [SQLValue]

    /// Whether column `i` is NULL.
    func isNull(_ i: Int) -> Bool { values[i] == .null }

    /// Column `i` as an integer (0 when NULL or not a number).
    func int(_ i: Int) -> Int {
        switch values[i] {
        case .int(let v): return Int(v)
        case .double(let d): return Int(d)
        case .text(let s): return Int(s) ?? 0
        case .null: return 0
        }
    }

    /// Column `i` as an integer, or nil when NULL.
    func optionalInt(_ i: Int) -> Int? { isNull(i) ? nil : int(i) }

    /// Column `i` as a double (0 when NULL).
    func double(_ i: Int) -> Double {
        switch values[i] {
        case .int(let v): return Double(v)
        case .double(let d): return d
        case .text(let s): return Double(s) ?? 0
        case .null: return 0
        }
    }

    /// Column `i` as text ("" when NULL).
    func text(_ i: Int) -> String {
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
    /// A condition that `column` contains the text of the next parameter.
    func contains(_ column: String) -> String {
        self == .sqlite ? "instr(\(column), ?) > 0" : "strpos(\(column), ?) > 0"
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

/// One open connection to a database. Used by one thread at a time (the pool sees to it).
protocol SQLConnection: AnyObject {
    /// The connection's SQL dialect.
    var dialect: SQLDialect { get }
    /// Runs one statement with `?` placeholders and returns its rows (none for statements without results).
    func query(_ sql: String, _ parameters: [SQLValue]) throws(StoreError) -> [SQLRow]
    /// Runs one statement and returns the number of rows it changed.
    @discardableResult
    func execute(_ sql: String, _ parameters: [SQLValue]) throws(StoreError) -> Int
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
    func scalar(_ sql: String, _ parameters: [SQLValue]) throws(StoreError) -> Int? {
        let rows = try query(sql, parameters)
        guard let row = rows.first, !row.isNull(0) else { return nil }
        return row.int(0)
    }

    /// Rows per multi-row INSERT so that a statement stays under the dialect's parameter limit.
    func rowsPerStatement(columns: Int) -> Int { max(1, dialect.maxParameters / max(1, columns)) }
}

/// `(?, ?, ?)` repeated `rows` times, comma-separated: the VALUES list of a multi-row INSERT.
func valuesList(rows: Int, columns: Int) -> String {
    let one = "(" + Array(repeating: "?", count: columns).joined(separator: ",") + ")"
    return Array(repeating: one, count: rows).joined(separator: ",")
}

/// `?, ?, ?`: the placeholders of an `IN (...)` list.
func placeholders(_ count: Int) -> String {
    Array(repeating: "?", count: count).joined(separator: ",")
}
