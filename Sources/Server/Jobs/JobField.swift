import Spool
import Wire

/// A job's fields as the API shows them (the original's `Job` schema), each declared once: its column, how it
/// is stored and shown, and whether a change of it to a site's job is carried to the site. The column list, the
/// reply writer, the insert, the casts of bulk updates, the forwarded changes and the OpenAPI schema of `Job` all
/// come from here, and a test checks the table against it (`JobFieldTests`).
enum JobField: String, CaseIterable, Sendable {
    case id
    case appID = "app_id"
    case workdir
    case tags
    case serializedParameters = "serialized_parameters"
    case data
    case returnCode = "return_code"
    case numNodes = "num_nodes"
    case ranksPerNode = "ranks_per_node"
    case threadsPerRank = "threads_per_rank"
    case threadsPerCore = "threads_per_core"
    case launchParams = "launch_params"
    case gpusPerRank = "gpus_per_rank"
    case nodePackingCount = "node_packing_count"
    case wallTimeMin = "wall_time_min"
    case parentIDs = "parent_ids"
    case batchJobID = "batch_job_id"
    case state
    case lastUpdate = "last_update"
    case pendingFileCleanup = "pending_file_cleanup"
    case serializedReturnValue = "serialized_return_value"
    case serializedException = "serialized_exception"
    case siteJobID = "site_job_id"

    /// How a field is stored and shown.
    enum Kind {
        /// A number (`BIGINT`), or NULL when optional.
        case integer(optional: Bool)
        /// A floating-point number.
        case number
        /// Text, or NULL when optional.
        case text(optional: Bool)
        /// JSON stored as its text and shown as it is: an object, or (`parent_ids`) a list.
        case json
        /// 0 or 1, shown as false or true.
        case boolean
        /// Microseconds since the epoch, shown in ISO 8601 with its zone.
        case time
        /// A job state's name.
        case state
    }

    /// The column's name, which is the API's.
    var name: String { rawValue }

    var kind: Kind {
        switch self {
        case .id, .appID, .numNodes, .ranksPerNode, .threadsPerRank, .threadsPerCore, .nodePackingCount, .wallTimeMin:
            .integer(optional: false)
        case .returnCode, .batchJobID: .integer(optional: true)
        case .workdir, .serializedParameters, .serializedReturnValue, .serializedException: .text(optional: false)
        case .siteJobID: .text(optional: true)
        case .tags, .data, .launchParams, .parentIDs: .json
        case .gpusPerRank: .number
        case .pendingFileCleanup: .boolean
        case .lastUpdate: .time
        case .state: .state
        }
    }

    /// Whether a user's change of it to a site's job goes to the site, which carries it out with its own
    /// `modify` (the spec; the rest is the server's or the run's).
    var forwarded: Bool {
        switch self {
        case .tags, .data, .launchParams, .numNodes, .ranksPerNode, .threadsPerRank, .threadsPerCore, .gpusPerRank,
            .nodePackingCount, .wallTimeMin, .serializedParameters:
            true
        default: false
        }
    }

    /// The fields forwarded to a site, by column.
    static let forwardedNames = Set(allCases.filter(\.forwarded).map(\.name))

    /// The names of a row of every field, in the declared order.
    static let rowNames = SQLRow.Names(names)

    /// Every field, as a SELECT list.
    static let selectList = names.joined(separator: ", ")

    /// `expression` cast to the column's type, where PostgreSQL would take the text of a VALUES list as text.
    static func cast(_ expression: String, column: String, dialect: SQLDialect) -> String {
        switch JobField(rawValue: column)?.kind {
        case .integer?, .boolean?, .time?: "CAST(\(expression) AS BIGINT)"
        case .number?: "CAST(\(expression) AS DOUBLE PRECISION)"
        case .json? where column == JobField.tags.name && dialect == .postgresql: "CAST(\(expression) AS JSONB)"
        default: expression
        }
    }

    /// Writes the field's value, column `i` of `row`, in a reply.
    func write(_ row: SQLRow, column i: Int, to out: inout JSONWriter) {
        switch kind {
        case .integer(optional: false): out.field(name, row.int(i))
        case .integer(optional: true): out.field(name, row.optionalInt(i))
        case .number: out.field(name, row.double(i))
        case .text(optional: false), .state: out.field(name, row.text(i))
        case .text(optional: true): out.field(name, row.optionalText(i))
        case .json: out.raw(name, row.text(i))
        case .boolean: out.field(name, row.bool(i))
        case .time: out.field(name, ServerClock.iso(Int64(row.int(i)), zone: true))
        }
    }

    /// Every field's name, in the declared order.
    static let names = allCases.map(\.name)

    /// A job row in a reply: every field, in the declared order, each read by its column's name (the positions
    /// worked out once per result).
    static func write(_ row: SQLRow, to out: inout JSONWriter) {
        let positions = row.names.positions(names)
        out.beginObject()
        for (field, i) in zip(allCases, positions) { field.write(row, column: i, to: &out) }
        out.endObject()
    }

    /// The field's schema in the OpenAPI document.
    var schema: JSONValue {
        func type(_ name: String, nullable: Bool = false) -> JSONValue {
            .object(["type": .string(name)].merging(nullable ? ["nullable": .bool(true)] : [:]) { a, _ in a })
        }
        switch kind {
        case .integer(let optional): return type("integer", nullable: optional)
        case .number: return type("number")
        case .text(let optional): return type("string", nullable: optional)
        case .json where self == .parentIDs: return .object(["type": .string("array"), "items": type("integer")])
        case .json: return .object(["type": .string("object"), "additionalProperties": .bool(true)])
        case .boolean: return type("boolean")
        case .time: return .object(["type": .string("string"), "format": .string("date-time")])
        case .state:
            return .object(["type": .string("string"), "enum": .array(JobState.stored.map { .string($0.rawValue) })])
        }
    }
}
