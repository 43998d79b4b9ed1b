/// A statement and the values it binds, written as string interpolation, as GRDB's `SQLInterpolation` and
/// postgres-nio's `PostgresQuery` are: every interpolated value is bound, never pasted into the text.
///
///     try c.query("SELECT id, state FROM jobs WHERE owner_id = \(.of(owner)) AND id IN (\(list: ids))")
///
/// Only `SQLValue`s are bound (`.of(n)`, `.text(s)`); text that is SQL itself (a column from a fixed list, a
/// dialect's function, a fragment built by the caller) is interpolated as `raw:` or as another `SQL`. A plain
/// `String` or `Int` has no interpolation, so that neither can be pasted into a statement by mistake.
///
/// The text is kept with a marker (NUL, which no statement holds) where each value goes, and the marker becomes
/// each dialect's own placeholder (`?` for SQLite, `$n` for PostgreSQL) only when the statement runs.
struct SQL: ExpressibleByStringInterpolation, Sendable, Hashable {
    /// The text, with `SQL.marker` where each value goes.
    private(set) var marked: String
    /// The bound values, in order.
    private(set) var values: [SQLValue]

    private static let marker: Character = "\u{0}"

    init(stringLiteral text: String) {
        marked = text
        values = []
    }

    init(stringInterpolation s: StringInterpolation) {
        marked = s.sql.marked
        values = s.sql.values
    }

    /// Raw SQL text with no values.
    init(raw text: String) { self.init(stringLiteral: text) }

    /// The statement's text with `dialect`'s placeholders.
    func text(_ dialect: SQLDialect) -> String {
        guard !values.isEmpty else { return marked }
        var out: [UInt8] = []
        out.reserveCapacity(marked.utf8.count + values.count * 6)
        var n = 0
        for byte in marked.utf8 {
            guard byte == 0 else {
                out.append(byte)
                continue
            }
            n += 1
            if dialect == .sqlite { out.append(UInt8(ascii: "?")) } else { out += Array("$\(n)".utf8) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends text.
    mutating func append(raw text: String) { marked += text }

    /// Appends another statement's text and values.
    mutating func append(_ other: SQL) {
        marked += other.marked
        values += other.values
    }

    /// Appends one bound value.
    mutating func append(value: SQLValue) {
        values.append(value)
        marked.append(SQL.marker)
    }

    static func + (a: SQL, b: SQL) -> SQL {
        var out = a
        out.append(b)
        return out
    }

    /// `fragments` with `separator` between them.
    static func joined(_ fragments: [SQL], separator: String) -> SQL {
        var out: SQL = ""
        for (i, f) in fragments.enumerated() {
            if i > 0 { out.append(raw: separator) }
            out.append(f)
        }
        return out
    }

    /// `column = v, column = v`: the SET list of an UPDATE, the columns from the server's own lists.
    static func assignments(_ sets: [(String, SQLValue)]) -> SQL {
        joined(sets.map { "\(raw: $0.0) = \($0.1)" }, separator: ", ")
    }

    /// The VALUES list of a multi-row INSERT: `(v, v), (v, v)`, each row bound.
    static func rows(_ rows: some Collection<[SQLValue]>) -> SQL {
        var out: SQL = ""
        var shape = (width: -1, text: "")
        out.values.reserveCapacity(rows.count * (rows.first?.count ?? 0))
        for (i, row) in rows.enumerated() {
            // Rows of one width share their text: one append per row, not one per value.
            if row.count != shape.width {
                shape = (
                    row.count, "(" + Array(repeating: String(SQL.marker), count: row.count).joined(separator: ",") + ")"
                )
            }
            if i > 0 { out.marked += "," }
            out.marked += shape.text
            out.values += row
        }
        return out
    }

    struct StringInterpolation: StringInterpolationProtocol {
        var sql = SQL(stringLiteral: "")

        init(literalCapacity: Int, interpolationCount: Int) {
            sql.marked.reserveCapacity(literalCapacity + interpolationCount)
            sql.values.reserveCapacity(interpolationCount)
        }

        mutating func appendLiteral(_ literal: String) { sql.append(raw: literal) }

        /// A bound value.
        mutating func appendInterpolation(_ value: SQLValue) { sql.append(value: value) }

        /// Values bound as an `IN` list: `v, v, v` (write the parentheses around it). An empty list is
        /// `NULL`, which matches nothing.
        mutating func appendInterpolation(list: some Collection<SQLValue>) {
            if list.isEmpty { sql.append(raw: "NULL") }
            for (i, value) in list.enumerated() {
                if i > 0 { sql.append(raw: ",") }
                sql.append(value: value)
            }
        }

        /// SQL text, pasted as it is: only text the server wrote (never a client's).
        mutating func appendInterpolation(raw text: String) { sql.append(raw: text) }

        /// Another statement's text and values.
        mutating func appendInterpolation(_ fragment: SQL) { sql.append(fragment) }
    }
}
