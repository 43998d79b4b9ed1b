import Spool
import Wire

/// The query string of a list, update or delete request: typed readers that name the parameter in their
/// errors, and a refusal of parameters the route does not know (a misspelt filter must not match everything).
struct QueryParameters {
    private let pairs: [(String, String)]
    private var used: Set<String> = ["limit", "offset", "ordering"]

    init(_ pairs: [(String, String)]) { self.pairs = pairs }

    private func bad(_ key: String, _ message: String) -> ServerError { .badRequest(message, field: key) }

    /// Every value of a repeated parameter (`id=1&id=2`), or nil when absent. Every reader of a value comes
    /// through here, so no value holds a NUL (a database cuts the text at it: `tags=k:v%00x` matched `k:v`).
    mutating func all(_ key: String) throws(ServerError) -> [String]? {
        used.insert(key)
        let values = pairs.filter { $0.0 == key }.map(\.1)
        if values.contains(where: { $0.utf8.contains(0) }) { throw bad(key, "contains a NUL character") }
        return values.isEmpty ? nil : values
    }

    mutating func string(_ key: String) throws(ServerError) -> String? {
        guard let values = try all(key) else { return nil }
        guard values.count == 1, let value = values.first else { throw bad(key, "must be given once") }
        if value.utf8.count > 4096 { throw bad(key, "is longer than 4096 bytes") }
        return value
    }

    mutating func int(_ key: String) throws(ServerError) -> Int? {
        guard let text = try string(key) else { return nil }
        guard let n = Int(text) else { throw bad(key, "'\(text)' is not an integer") }
        return n
    }

    mutating func ints(_ key: String) throws(ServerError) -> [Int]? {
        guard let values = try all(key) else { return nil }
        if values.count > 10_000 { throw bad(key, "has \(values.count) values; the limit is 10000") }
        var out: [Int] = []
        for text in values {
            // The client sends lists as repeated keys; a comma-separated list is accepted as well.
            for part in text.split(separator: ",") {
                guard let n = Int(part) else { throw bad(key, "'\(part)' is not an integer") }
                out.append(n)
            }
        }
        return out
    }

    mutating func bool(_ key: String) throws(ServerError) -> Bool? {
        guard let text = try string(key) else { return nil }
        switch text.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: throw bad(key, "'\(text)' is not true or false")
        }
    }

    mutating func time(_ key: String) throws(ServerError) -> Int64? {
        guard let text = try string(key) else { return nil }
        guard let micros = ServerClock.parse(text) else { throw bad(key, "'\(text)' is not an ISO 8601 date and time") }
        return micros
    }

    mutating func jobStates(_ key: String) throws(ServerError) -> [JobState]? {
        guard let values = try all(key) else { return nil }
        return try values.map { (text) throws(ServerError) in try parseJobState(text, field: key) }
    }

    /// `k:v` pairs (tags and data filters), split on the first colon.
    mutating func pairsOf(_ key: String) throws(ServerError) -> [(String, String)]? {
        guard let values = try all(key) else { return nil }
        return try values.map { (text) throws(ServerError) in
            guard let colon = text.firstIndex(of: ":") else { throw bad(key, "'\(text)' must be KEY:VALUE") }
            return (String(text[..<colon]), String(text[text.index(after: colon)...]))
        }
    }

    /// `limit` (default and maximum 100,000; 0 counts only) and `offset`.
    mutating func page() throws(ServerError) -> (limit: Int, offset: Int) {
        let limit = try int("limit") ?? 100_000
        let offset = try int("offset") ?? 0
        guard (0...100_000).contains(limit) else { throw bad("limit", "must be between 0 and 100000") }
        guard offset >= 0 else { throw bad("offset", "must not be negative") }
        return (limit, offset)
    }

    /// `ordering` among `allowed` (each also with a leading `-`), as an ORDER BY clause.
    mutating func ordering(_ allowed: [String: String], default fallback: String, id: String = "id") throws(ServerError)
        -> String
    {
        guard let text = try string("ordering") else { return fallback }
        let descending = text.hasPrefix("-")
        let name = descending ? String(text.dropFirst()) : text
        guard let column = allowed[name] else {
            let names = allowed.keys.sorted().flatMap { [$0, "-" + $0] }.joined(separator: ", ")
            throw bad("ordering", "'\(text)' is not one of \(names)")
        }
        return "\(column) \(descending ? "DESC" : "ASC"), \(id) \(descending ? "DESC" : "ASC")"
    }

    /// Refuses parameters no reader asked for.
    func finish() throws(ServerError) {
        for (key, _) in pairs where !used.contains(key) {
            throw bad(key, "is not a filter of this resource")
        }
    }
}

/// A job state name, exactly as the original spells it (upper case).
func parseJobState(_ text: String, field: String) throws(ServerError) -> JobState {
    do { return try JobState.named(text, field: field) } catch { throw ServerError(error) }
}

/// A WHERE clause under construction: conditions ANDed, each with its bound values.
struct Conditions {
    private(set) var clauses: [SQL] = []
    /// A query that answers the count of the rows matching, when one costs less than counting them.
    var count: SQL?

    init(owner: Int, column: String = "owner_id") {
        add("\(raw: column) = \(.of(owner))")
    }

    mutating func add(_ clause: SQL) { clauses.append(clause) }

    /// `column IN (...)`; an empty list matches nothing.
    mutating func any(_ column: String, _ values: [SQLValue]) { add(Self.oneOf(column, values)) }

    /// The clause of `any`.
    static func oneOf(_ column: String, _ values: [SQLValue]) -> SQL {
        values.isEmpty ? "1 = 0" : "\(raw: column) IN (\(list: values))"
    }

    /// The conditions, ANDed.
    var sql: SQL { SQL.joined(clauses, separator: " AND ") }
}

/// A condition that a JSON column holds `key: value` (tags, filter tags, event data).
func jsonContains(_ column: String, key: String, value: String, dialect: SQLDialect, jsonb: Bool) -> SQL {
    switch dialect {
    case .sqlite:
        return
            "EXISTS (SELECT 1 FROM json_each(\(raw: column)) WHERE key = \(.text(key)) AND CAST(value AS TEXT) = \(.text(value)))"
    case .postgresql:
        let target = jsonb ? column : "CAST(\(column) AS JSONB)"
        return "\(raw: target) ->> CAST(\(.text(key)) AS TEXT) = CAST(\(.text(value)) AS TEXT)"
    }
}
