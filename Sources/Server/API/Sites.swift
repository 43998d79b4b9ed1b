import Hummingbird
import Spool
import Wire

/// `/sites/`: a user's sites, each a directory on some cluster that syncs with this server.
enum Sites {
    static let columns = """
        id, name, path, globus_endpoint_id, backfill_windows, queued_jobs, optional_batch_job_params, \
        allowed_projects, allowed_queues, transfer_locations, last_refresh, creation_date
        """

    static func write(_ r: SQLRow, to out: inout JSONWriter) {
        out.beginObject()
        out.field("id", r.int(0))
        out.field("name", r.text(1))
        out.field("path", r.text(2))
        out.field("globus_endpoint_id", r.optionalText(3))
        out.raw("backfill_windows", r.text(4))
        out.raw("queued_jobs", r.text(5))
        out.raw("optional_batch_job_params", r.text(6))
        out.raw("allowed_projects", r.text(7))
        out.raw("allowed_queues", r.text(8))
        out.raw("transfer_locations", r.text(9))
        out.field("last_refresh", ServerClock.iso(Int64(r.int(10))))
        out.field("creation_date", ServerClock.iso(Int64(r.int(11))))
        out.endObject()
    }

    /// The JSON members a site may set, with their column and default.
    private static let jsonMembers: [(String, String)] = [
        ("backfill_windows", "{}"), ("queued_jobs", "{}"), ("optional_batch_job_params", "{}"),
        ("allowed_projects", "[]"), ("allowed_queues", "{}"), ("transfer_locations", "{}"),
    ]

    /// A shape of the original client's `Site` model (balsam/schemas/site.py and batchjob.py, pydantic).
    indirect enum Shape: Sendable {
        case int, string, location
        case oneOf([String])
        case list(Shape)
        /// An object of any keys (`intKeys`: each a decimal integer, a scheduler's job id) to `Shape`s.
        case map(Shape, intKeys: Bool)
        /// An object of exactly these members.
        case record([String: Shape])
    }

    /// What `Site.objects.get` reads of each JSON member: a site's record must load in the original client for
    /// every user of the site, so no member holds another shape (a value nested 129 deep, a location without a
    /// host).
    static let shapes: [String: Shape] = [
        "backfill_windows": .map(.list(.record(["num_nodes": .int, "wall_time_min": .int])), intKeys: false),
        "queued_jobs": .map(
            .record([
                "scheduler_id": .int, "queue": .string, "num_nodes": .int, "wall_time_min": .int, "project": .string,
                "time_remaining_min": .int, "queued_time_min": .int,
                "state": .oneOf([
                    "pending_submission", "queued", "running", "finished", "submit_failed", "pending_deletion",
                ]),
            ]), intKeys: true),
        "optional_batch_job_params": .map(.string, intKeys: false),
        "allowed_projects": .list(.string),
        "allowed_queues": .map(
            .record(["max_nodes": .int, "max_walltime": .int, "max_queued_jobs": .int]), intKeys: false),
        "transfer_locations": .map(.location, intKeys: false),
    ]

    /// Checks `value` against `shape`, naming the first member that differs.
    static func check(_ value: JSONValue, _ shape: Shape, field: String) throws {
        func bad(_ what: String) -> ServerError { ServerError.badRequest("\(field) \(what)", field: field) }
        switch (shape, value) {
        case (.int, .int), (.string, .string): return
        case (.oneOf(let names), .string(let name)):
            if !names.contains(name) { throw bad("must be one of \(names.joined(separator: ", ")), not '\(name)'") }
        case (.location, .string(let url)):
            if let problem = ClientURL.problem(url) { throw bad("'\(url)' \(problem)") }
            do { _ = try TransferLocation(alias: "-", url: url) } catch {
                throw bad(
                    "'\(url)' is not a location a site can use (file://localhost/path, rsync://HOST/path, globus://ENDPOINT/path)"
                )
            }
        case (.list(let item), .array(let items)):
            for (i, element) in items.enumerated() { try check(element, item, field: "\(field)[\(i)]") }
        case (.map(let item, let intKeys), .object(let members)):
            for (key, member) in members.sorted(by: { $0.key < $1.key }) {
                if intKeys
                    && !(key.utf8.count <= 18 && !key.isEmpty && key.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 })
                {
                    throw bad("has the key '\(key)', which is not a scheduler's job id (digits)")
                }
                try check(member, item, field: "\(field).\(key)")
            }
        case (.record(let fields), .object(let members)):
            for key in members.keys.sorted() where fields[key] == nil {
                throw bad("has no member '\(key)' (its members: \(fields.keys.sorted().joined(separator: ", ")))")
            }
            for (key, item) in fields.sorted(by: { $0.key < $1.key }) {
                guard let member = members[key] else { throw bad("needs its member '\(key)'") }
                try check(member, item, field: "\(field).\(key)")
            }
        default:
            throw bad("must be \(shape.noun), not \(value.kindName)")
        }
    }

    /// A UUID as Globus writes an endpoint's: 8-4-4-4-12 hexadecimal digits.
    static func isUUID(_ text: String) -> Bool {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        return groups.map(\.count) == [8, 4, 4, 4, 12] && groups.allSatisfy { $0.allSatisfy(\.isHexDigit) }
    }

    /// The site's settable members from a request body: (column, value) pairs.
    private static func members(_ input: inout FieldReader, creating: Bool) throws -> [(String, SQLValue)] {
        var out: [(String, SQLValue)] = []
        let name = creating ? try input.requiredString("name", maxBytes: 128) : try input.string("name", maxBytes: 128)
        if let name {
            if name.isEmpty || name.utf8.contains(where: { $0 < 0x20 }) {
                throw input.bad("name", "must be a non-empty name without control characters")
            }
            out.append(("name", .text(name)))
        }
        let path = creating ? try input.requiredString("path") : try input.string("path")
        if let path {
            if !path.hasPrefix("/") { throw input.bad("path", "'\(path)' must be an absolute path") }
            out.append(("path", .text(path)))
        }
        if let endpoint = try input.string("globus_endpoint_id", maxBytes: 64) {
            if !isUUID(endpoint) { throw input.bad("globus_endpoint_id", "must be a UUID, as Globus shows it") }
            out.append(("globus_endpoint_id", .text(endpoint)))
        } else if creating {
            out.append(("globus_endpoint_id", .null))
        }
        for (key, fallback) in jsonMembers {
            if let value = input.value(key) {
                let isList = fallback == "[]"
                switch value {
                case .array where isList, .object where !isList: break
                default: throw input.bad(key, "must be \(isList ? "a list" : "an object"), not \(value.kindName)")
                }
                if let shape = shapes[key] { try check(value, shape, field: input.name(key)) }
                let text = value.serialized()
                if text.utf8.count > 1 << 20 { throw input.bad(key, "is larger than 1 MiB") }
                out.append((key, .text(text)))
            } else if creating {
                out.append((key, .text(fallback)))
            }
        }
        for ignored in ["id", "last_refresh", "creation_date"] { _ = input.value(ignored) }
        try input.finish()
        return out
    }

    static func list(_ call: inout Call) throws -> Reply {
        var conditions = Conditions(owner: call.user.id)
        if let name = try call.query.string("name") { conditions.add("name = \(.text(name))") }
        if let path = try call.query.string("path") { conditions.add(call.dialect.contains("path", path)) }
        if let ids = try call.query.ints("id") { conditions.any("id", ids.map { .of($0) }) }
        if let after = try call.query.time("last_refresh_after") { conditions.add("last_refresh > \(.int(after))") }
        let ordering = try call.query.ordering(["id": "id", "name": "name"], default: "id ASC")
        return try page(
            call: &call, table: "sites", columns: columns, conditions: conditions, ordering: ordering, write)
    }

    static func create(_ call: inout Call) throws -> Reply {
        var input = try FieldReader(try call.json())
        let members = try members(&input, creating: true)
        let now = ServerClock.microseconds()
        let all =
            members + [("owner_id", .of(call.user.id)), ("last_refresh", .int(now)), ("creation_date", .int(now))]
        return try insertOne(
            call, table: "sites", members: all, columns: columns, duplicate: "you already have a site with this name",
            write)
    }

    static func one(_ call: inout Call) throws -> Reply {
        try detail(call, table: "sites", columns: columns, what: "site", write)
    }

    /// `PUT /sites/{id}`: changes the given members and marks the site as heard from now.
    static func update(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        var input = try FieldReader(try call.json())
        let members = try members(&input, creating: false) + [("last_refresh", .int(ServerClock.microseconds()))]
        let rows = try refusingDuplicate("you already have a site with this name") {
            try call.connection.query(
                """
                UPDATE sites SET \(SQL.assignments(members)) WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))
                RETURNING \(raw: columns)
                """)
        }
        guard let row = rows.first else { throw ServerError.notFound("site \(id)") }
        var out = JSONWriter()
        write(row, to: &out)
        return .json(out)
    }

    /// `DELETE /sites/{id}`: the site and everything under it (apps, jobs, events, batch jobs, transfers).
    static func delete(_ call: inout Call) throws -> Reply { try deleteOwned(call, table: "sites", what: "site") }
}

/// Inserts one row of `members` into `table` and replies 201 with it; a name taken is a 400 saying `duplicate`.
func insertOne(
    _ call: Call, table: String, members: [(String, SQLValue)], columns: String, duplicate: String,
    _ write: (SQLRow, inout JSONWriter) -> Void
) throws -> Reply {
    let rows = try refusingDuplicate(duplicate) {
        try call.connection.query(
            "INSERT INTO \(raw: table) (\(raw: members.map(\.0).joined(separator: ", "))) VALUES (\(list: members.map(\.1))) RETURNING \(raw: columns)"
        )
    }
    var out = JSONWriter()
    if let row = rows.first { write(row, &out) }
    return .json(out, status: 201)
}

/// `DELETE /TABLE/{id}` of the caller's row (cascading as the schema says); 404 when there is none.
func deleteOwned(_ call: Call, table: String, what: String) throws -> Reply {
    let id = try call.requiredID()
    let deleted = try call.connection.execute(
        "DELETE FROM \(raw: table) WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))")
    if deleted == 0 { throw ServerError.notFound("\(what) \(id)") }
    return .noContent
}

/// The items of a bulk PATCH: each `{id, ...}` read by `parse`, which sees the item's fields with their place.
func bulkChanges<T>(_ call: Call, _ parse: (inout FieldReader) throws -> T) throws -> [(id: Int, change: T)] {
    var changes: [(id: Int, change: T)] = []
    for (i, item) in try call.jsonList().enumerated() {
        var input = try FieldReader(item, prefix: "[\(i)]")
        let id = try input.requiredInt("id", in: 1...Int.max)
        changes.append((id, try parse(&input)))
    }
    return changes
}

/// Runs `body`; a unique key taken becomes a 400 on `name` saying `message`.
func refusingDuplicate<T>(_ message: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as StoreError where error.kind == .constraint {
        throw ServerError.badRequest(message, field: "name")
    }
}

/// A `{count, results}` page of `table` rows matching `conditions`.
func page(
    call: inout Call, table: String, columns: String, conditions: Conditions, ordering: String,
    _ write: (SQLRow, inout JSONWriter) -> Void
) throws -> Reply {
    let (limit, offset) = try call.query.page()
    try call.query.finish()
    let count =
        try call.connection.scalar(conditions.count ?? "SELECT count(*) FROM \(raw: table) WHERE \(conditions.sql)")
        ?? 0
    var out = JSONWriter(capacity: 64 + min(limit, count) * 256)
    out.beginObject()
    out.field("count", count)
    out.beginArray("results")
    if limit > 0 && offset < count {
        let rows = try call.connection.query(
            """
            SELECT \(raw: columns) FROM \(raw: table) WHERE \(conditions.sql) ORDER BY \(raw: ordering)
            LIMIT \(.of(limit)) OFFSET \(.of(offset))
            """)
        for row in rows { write(row, &out) }
    }
    out.endArray()
    out.endObject()
    return .json(out)
}

/// One row of `table` by the route's id, owned by the caller; 404 otherwise.
func detail(
    _ call: Call, table: String, columns: String, what: String, _ write: (SQLRow, inout JSONWriter) -> Void
) throws -> Reply {
    let id = try call.requiredID()
    let rows = try call.connection.query(
        "SELECT \(raw: columns) FROM \(raw: table) WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))")
    guard let row = rows.first else { throw ServerError.notFound("\(what) \(id)") }
    var out = JSONWriter()
    write(row, &out)
    return .json(out)
}

extension Sites {
    /// `/sites/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e,
            [
                (.get, "/", list), (.post, "/", create), (.get, "/{id}", one), (.put, "/{id}", update),
                (.delete, "/{id}", delete),
            ])
    }
}

extension Sites.Shape {
    /// As an error names it.
    var noun: String {
        switch self {
        case .int: "an integer"
        case .string, .oneOf: "a string"
        case .location: "a URL"
        case .list: "a list"
        case .map, .record: "an object"
        }
    }
}
