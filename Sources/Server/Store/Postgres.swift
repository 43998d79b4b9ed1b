internal import CPostgres
import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A connection to PostgreSQL through libpq, the server's own client library. Statements (`SQL`, with `$n`
/// placeholders) are prepared once per connection and then executed by name; parameters travel as text, which
/// PostgreSQL casts to the column's type.
final class PostgresConnection: SQLConnection, @unchecked Sendable {
    let dialect = SQLDialect.postgresql
    private let connection: OpaquePointer
    private var prepared: [String: String] = [:]

    /// Connects to `url` (`postgresql://user:password@host:port/dbname?...`, as libpq reads it).
    init(url: String) throws(StoreError) {
        guard let connection = PQconnectdb(url) else {
            throw StoreError(.unavailable, "cannot connect to PostgreSQL: out of memory")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines()
            PQfinish(connection)
            throw StoreError(.unavailable, "cannot connect to PostgreSQL (\(redacted(url))): \(message)")
        }
        self.connection = connection
        // Notices (such as "relation already exists, skipping") are not errors: keep them off stderr.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
        // Each connection of the process adds to counters of its own shard (Schema.shardedCounters).
        let shard = PostgresConnection.opened.wrappingAdd(1, ordering: .relaxed).oldValue % PostgresConnection.shards
        try executeScript("SET client_min_messages = warning; SET TIME ZONE 'UTC'; SET balsam.shard = '\(shard)'")
    }

    /// Connections opened by this process, and the number of counter shards they spread over.
    private static let opened = Atomic<Int>(0)
    static let shards = 16

    deinit { PQfinish(connection) }

    var isHealthy: Bool { PQstatus(connection) == CONNECTION_OK }

    private func failure(_ result: OpaquePointer?, _ sql: String) -> StoreError {
        let message: String
        var kind = StoreError.Kind.failed
        if let result, let text = PQresultErrorMessage(result), text.pointee != 0 {
            message = String(cString: text).trimmingTrailingNewlines()
            if let field = PQresultErrorField(result, Int32(UInt8(ascii: "C"))) {
                let state = String(cString: field)
                if state.hasPrefix("23") { kind = .constraint }
                if state == "53100" { kind = .full }  // disk_full
            }
        } else {
            message = String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines()
        }
        if !isHealthy { kind = .unavailable }
        return StoreError(kind, "\(message) (in: \(StoreError.statement(sql)))")
    }

    /// The statement's name on this connection, preparing it on first use.
    private func statementName(_ sql: String) throws(StoreError) -> String {
        if let name = prepared[sql] { return name }
        let name = "s\(prepared.count)"
        let result = PQprepare(connection, name, sql, 0, nil)
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COMMAND_OK else { throw failure(result, sql) }
        prepared[sql] = name
        return name
    }

    private func run(_ sql: String, _ parameters: [SQLValue]) throws(StoreError) -> OpaquePointer {
        let name = try statementName(sql)
        let strings: [UnsafeMutablePointer<CChar>?] = parameters.map { value in
            switch value {
            case .null: return nil
            case .int(let v): return strdup(String(v))
            case .double(let d): return strdup(d.isFinite ? String(d) : "NaN")
            case .text(let s): return strdup(s)
            }
        }
        defer { for s in strings { free(s) } }
        let values: [UnsafePointer<CChar>?] = strings.map { $0.map { UnsafePointer($0) } }
        let result = PQexecPrepared(connection, name, Int32(parameters.count), values, nil, nil, 0)
        guard let result else { throw failure(nil, sql) }
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else {
            let error = failure(result, sql)
            PQclear(result)
            throw error
        }
        return result
    }

    func query(_ statement: SQL) throws(StoreError) -> [SQLRow] {
        let result = try run(statement.text(.postgresql), statement.values)
        defer { PQclear(result) }
        let rowCount = PQntuples(result)
        let columns = PQnfields(result)
        let names = SQLRow.Names((0..<columns).map { String(cString: PQfname(result, $0)) })
        var rows: [SQLRow] = []
        rows.reserveCapacity(Int(rowCount))
        for r in 0..<rowCount {
            var values: [SQLValue] = []
            values.reserveCapacity(Int(columns))
            for c in 0..<columns {
                if PQgetisnull(result, r, c) != 0 {
                    values.append(.null)
                } else {
                    values.append(.text(String(cString: PQgetvalue(result, r, c))))
                }
            }
            rows.append(SQLRow(values: values, names: names))
        }
        return rows
    }

    func execute(_ statement: SQL) throws(StoreError) -> Int {
        let result = try run(statement.text(.postgresql), statement.values)
        defer { PQclear(result) }
        return Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    func executeScript(_ sql: String) throws(StoreError) {
        let result = PQexec(connection, sql)
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else { throw failure(result, sql) }
    }

    func begin() throws(StoreError) { try executeScript("BEGIN") }
    func commit() throws(StoreError) { try executeScript("COMMIT") }
    func rollback() { try? executeScript("ROLLBACK") }
}

/// The URL with its password replaced, for messages and logs.
func redacted(_ url: String) -> String {
    let parts = url.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count == 3, parts[1].isEmpty, let at = url.firstIndex(of: "@"), parts[2].startIndex < at,
        let colon = url[parts[2].startIndex..<at].firstIndex(of: ":")
    else { return url }
    return String(url[..<url.index(after: colon)]) + "***" + String(url[at...])
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.last == "\n" { s.removeLast() }
        return s
    }
}
