import Spool
import Wire

/// The server's side of the job's one declaration (`Spool.JobField`): its columns as SQL and as the API shows
/// them. The column list, the reply writer, the insert, the casts of bulk updates, a spec read from a row and the
/// OpenAPI schema of `Job` all come from there; a test checks the table against it (`JobFieldTests`).
extension JobField {
    /// The names of a row of every column, in the declared order.
    static let rowNames = SQLRow.Names(columnNames)

    /// Every column's name, in the declared order.
    static let columnNames = columns.map(\.name)

    /// Every column, as a SELECT list.
    static let selectList = columnNames.joined(separator: ", ")

    /// `expression` cast to the column's type, where PostgreSQL would take the text of a VALUES list as text.
    static func cast(_ expression: String, column: String, dialect: SQLDialect) -> String {
        switch JobField(rawValue: column)?.column {
        case .integer?, .boolean?, .time?: "CAST(\(expression) AS BIGINT)"
        case .number?: "CAST(\(expression) AS DOUBLE PRECISION)"
        case .json? where column == JobField.tags.name && dialect == .postgresql: "CAST(\(expression) AS JSONB)"
        default: expression
        }
    }

    /// A spec field's value as its column stores it.
    func stored(_ job: Job) -> SQLValue {
        // Tags and flags are on every job: their text written directly (sorted keys, as `serialized()` would).
        switch self {
        case .workdir: return .text(job.workdir)
        case .tags: return .text(jsonText(job.tags))
        case .launchParams: return .text(jsonText(job.launchParams))
        case .data: return .text(job.data.isEmpty ? "{}" : JSONValue.object(job.data).serialized())
        default: break
        }
        let value = value(in: job)
        switch column {
        case .integer?: return .of(value.intValue ?? 0)
        case .number?: return .double(value.doubleValue ?? 0)
        case .json?: return .text(value.serialized())
        default: return .text(value.stringValue ?? "")
        }
    }

    /// A job's spec as the server keeps it, from `row` (which has every spec column by name), its workdir and
    /// the app's name; its transfer slots are the caller's (the server keeps them as items).
    static func spec(_ row: SQLRow, app: String) -> Job {
        var job = Job(workdir: row.text(JobField.workdir.name), app: app)
        for field in spec where field.column != nil {
            let value: JSONValue
            switch field.column {
            case .integer?: value = .int(row.int(field.name))
            case .number?: value = .double(row.double(field.name))
            default: value = (try? JSONValue.parse(row.text(field.name))) ?? .null
            }
            // What the server stored passed the same check: a value that no longer does is left at its default.
            try? field.read(value, into: &job)
        }
        return job
    }

    /// The spec's columns, as a SELECT list of table `alias`.
    static func specList(_ alias: String) -> String {
        ([JobField.workdir] + spec.filter { $0.column != nil }).map { "\(alias).\($0.name)" }.joined(separator: ", ")
    }

    /// Writes the field's value, column `i` of `row`, in a reply.
    func write(_ row: SQLRow, column i: Int, to out: inout JSONWriter) {
        switch column {
        case .integer(optional: false)?: out.field(name, row.int(i))
        case .integer(optional: true)?: out.field(name, row.optionalInt(i))
        case .number?: out.field(name, row.double(i))
        case .text(optional: false)?, .state?: out.field(name, row.text(i))
        case .text(optional: true)?: out.field(name, row.optionalText(i))
        case .json?: out.raw(name, row.text(i))
        case .boolean?: out.field(name, row.bool(i))
        case .time?: out.field(name, ServerClock.iso(Int64(row.int(i)), zone: true))
        case nil: break
        }
    }

    /// A job row in a reply: every column, in the declared order, each read by its name (the positions worked
    /// out once per result).
    static func write(_ row: SQLRow, to out: inout JSONWriter) {
        let positions = row.names.positions(columnNames)
        out.beginObject()
        for (field, i) in zip(columns, positions) { field.write(row, column: i, to: &out) }
        out.endObject()
    }

    /// The field's schema in the OpenAPI document.
    var schema: JSONValue {
        func type(_ name: String, nullable: Bool = false) -> JSONValue {
            .object(["type": .string(name)].merging(nullable ? ["nullable": .bool(true)] : [:]) { a, _ in a })
        }
        switch check {
        case .labels?, .flags?:
            return .object(["type": .string("object"), "additionalProperties": .object(["type": .string("string")])])
        default: break
        }
        switch column {
        case .integer(let optional)?: return type("integer", nullable: optional)
        case .number?: return type("number")
        case .text(let optional)?: return type("string", nullable: optional)
        case .json? where self == .parentIDs: return .object(["type": .string("array"), "items": type("integer")])
        case .json?, nil: return .object(["type": .string("object"), "additionalProperties": .bool(true)])
        case .boolean?: return type("boolean")
        case .time?: return .object(["type": .string("string"), "format": .string("date-time")])
        case .state?:
            return .object(["type": .string("string"), "enum": .array(JobState.stored.map { .string($0.rawValue) })])
        }
    }
}
