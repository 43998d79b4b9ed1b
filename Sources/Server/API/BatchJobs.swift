import Hummingbird
import Spool
import Wire

/// `/batch-jobs/`: allocations requested of a site's scheduler. The server records requests and the site's
/// reports; the site submits, follows and deletes them.
enum BatchJobs {
    static let columns = """
        id, site_id, scheduler_id, project, queue, num_nodes, wall_time_min, job_mode, optional_params, \
        filter_tags, partitions, state, status_info, start_time, end_time
        """

    static let states = BatchJob.State.allCases.map(\.rawValue)

    static func write(_ r: SQLRow, to out: inout JSONWriter) {
        out.beginObject()
        out.field("id", r.int(0))
        out.field("site_id", r.int(1))
        out.field("scheduler_id", r.optionalInt(2))
        out.field("project", r.text(3))
        out.field("queue", r.text(4))
        out.field("num_nodes", r.int(5))
        out.field("wall_time_min", r.int(6))
        out.field("job_mode", r.text(7))
        out.raw("optional_params", r.text(8))
        out.raw("filter_tags", r.text(9))
        out.raw("partitions", r.optionalText(10) ?? "null")
        out.field("state", r.text(11))
        out.raw("status_info", r.text(12))
        out.field("start_time", r.optionalInt(13).map { ServerClock.iso(Int64($0)) })
        out.field("end_time", r.optionalInt(14).map { ServerClock.iso(Int64($0)) })
        out.endObject()
    }

    static func jobMode(_ input: inout FieldReader, required: Bool) throws -> String? {
        let mode = required ? try input.requiredString("job_mode", maxBytes: 16) : try input.string("job_mode")
        if let mode, mode != "serial" && mode != "mpi" { throw input.bad("job_mode", "must be 'serial' or 'mpi'") }
        return mode
    }

    /// `partitions`: `[{job_mode, num_nodes, filter_tags}]` whose nodes add up to the batch job's.
    static func partitions(_ input: inout FieldReader, numNodes: Int?) throws -> String? {
        guard let value = input.value("partitions") else { return nil }
        guard case .array(let items) = value else { throw input.bad("partitions", "must be a list") }
        var total = 0
        for (i, item) in items.enumerated() {
            var p = try FieldReader(item, prefix: input.name("partitions[\(i)]"))
            _ = try jobMode(&p, required: true)
            total += try p.requiredInt("num_nodes", in: 1...1_000_000)
            _ = try p.stringMap("filter_tags")
            try p.finish()
        }
        if let numNodes, !items.isEmpty, total != numNodes {
            throw input.bad("partitions", "the partitions have \(total) nodes; the batch job has \(numNodes)")
        }
        return value.serialized()
    }

    /// The members a site's report may change (the original's `BatchJobUpdate`), and the request ones.
    static func updates(_ input: inout FieldReader) throws -> [(String, SQLValue)] {
        var sets: [(String, SQLValue)] = []
        if input.has("scheduler_id") {
            sets.append(("scheduler_id", .of(try input.int("scheduler_id", in: 0...Int.max))))
        }
        if let state = try input.string("state", maxBytes: 32) {
            guard states.contains(state) else {
                throw input.bad("state", "'\(state)' is not one of \(states.joined(separator: ", "))")
            }
            sets.append(("state", .text(state)))
        }
        if let info = try input.object("status_info", maxBytes: 65_536) {
            sets.append(("status_info", .text(jsonText(info))))
        }
        for key in ["start_time", "end_time"] {
            if let t = try input.time(key) { sets.append((key, .int(t))) } else { _ = input.value(key) }
        }
        if let n = try input.int("num_nodes", in: 1...1_000_000) { sets.append(("num_nodes", .of(n))) }
        if let n = try input.int("wall_time_min", in: 1...1_000_000) { sets.append(("wall_time_min", .of(n))) }
        if let mode = try jobMode(&input, required: false) { sets.append(("job_mode", .text(mode))) }
        for key in ["project", "queue"] {
            if let text = try input.string(key, maxBytes: 256) { sets.append((key, .text(text))) }
        }
        for key in ["optional_params", "filter_tags"] {
            if let map = try input.stringMap(key) { sets.append((key, .text(jsonText(map)))) }
        }
        if let parts = try partitions(&input, numNodes: nil) { sets.append(("partitions", .text(parts))) }
        _ = input.value("site_id")
        try input.finish()
        return sets
    }

    static func list(_ call: inout Call) throws -> Reply {
        var c = Conditions(owner: call.user.id)
        if let ids = try call.query.ints("id") { c.any("id", ids.map { .of($0) }) }
        if let ids = try call.query.ints("site_id") { c.any("site_id", ids.map { .of($0) }) }
        if let states = try call.query.all("state") {
            for s in states where !BatchJobs.states.contains(s) {
                throw ServerError.badRequest("'\(s)' is not a batch job state", field: "state")
            }
            c.any("state", states.map { .text($0) })
        }
        if let id = try call.query.int("scheduler_id") { c.add("scheduler_id = \(.of(id))") }
        if let queue = try call.query.string("queue") { c.add("queue = \(.text(queue))") }
        for (key, column, op) in [
            ("start_time_before", "start_time", "<"), ("start_time_after", "start_time", ">"),
            ("end_time_before", "end_time", "<"), ("end_time_after", "end_time", ">"),
        ] {
            if let t = try call.query.time(key) { c.add("\(raw: column) \(raw: op) \(.int(t))") }
        }
        if let tags = try call.query.pairsOf("filter_tags") {
            for (key, value) in tags {
                c.add(Jobs.tagCondition(key: key, value: value, dialect: call.dialect, column: "filter_tags"))
            }
        }
        let ordering = try call.query.ordering(["start_time": "start_time"], default: "id ASC")
        return try page(call: &call, table: "batch_jobs", columns: columns, conditions: c, ordering: ordering, write)
    }

    /// `POST /batch-jobs/`: a request, `pending_submission` until the site submits it.
    static func create(_ call: inout Call) throws -> Reply {
        var input = try FieldReader(try call.json())
        let site = try input.requiredInt("site_id", in: 1...Int.max)
        guard
            try call.connection.scalar(
                "SELECT id FROM sites WHERE id = \(.of(site)) AND owner_id = \(.of(call.user.id))") != nil
        else { throw ServerError.notFound("site \(site)") }
        let nodes = try input.requiredInt("num_nodes", in: 1...1_000_000)
        let minutes = try input.requiredInt("wall_time_min", in: 1...1_000_000)
        let mode = try jobMode(&input, required: true) ?? "mpi"
        let project = try input.requiredString("project", maxBytes: 256)
        let queue = try input.requiredString("queue", maxBytes: 256)
        let optional = try input.stringMap("optional_params") ?? [:]
        let filterTags = try input.stringMap("filter_tags") ?? [:]
        let parts = try partitions(&input, numNodes: nodes)
        for ignored in ["id", "state", "scheduler_id", "status_info", "start_time", "end_time"] {
            _ = input.value(ignored)
        }
        try input.finish()
        let rows = try call.connection.query(
            """
            INSERT INTO batch_jobs (owner_id, site_id, project, queue, num_nodes, wall_time_min, job_mode,
            optional_params, filter_tags, partitions, state, status_info) VALUES (\(.of(call.user.id)), \(.of(site)), \(.text(project)), \(.text(queue)), \(.of(nodes)), \(.of(minutes)), \(.text(mode)), \(.text(jsonText(optional))), \(.text(jsonText(filterTags))), \(parts.map { .text($0) } ?? .null), \(.text("pending_submission")), \(.text("{}")))
            RETURNING \(raw: columns)
            """)
        var out = JSONWriter()
        if let row = rows.first { write(row, to: &out) }
        return .json(out, status: 201)
    }

    static func one(_ call: inout Call) throws -> Reply {
        try detail(call, table: "batch_jobs", columns: columns, what: "batch job", write)
    }

    /// Applies `sets` to batch job `id`. Once `pending_deletion`, only `finished` is taken as a new state (the
    /// original's rule: a deletion is not undone by a late report).
    static func apply(_ id: Int, _ sets: [(String, SQLValue)], call: Call) throws {
        let c = call.connection
        guard
            let row = try c.query(
                "SELECT state FROM batch_jobs WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))\(raw: c.dialect.forUpdate)"
            ).first
        else { throw ServerError.notFound("batch job \(id)") }
        var sets = sets
        if row.text(0) == "pending_deletion" {
            sets.removeAll { $0.0 == "state" && $0.1 != .text("finished") }
        }
        guard !sets.isEmpty else { return }
        try c.execute("UPDATE batch_jobs SET \(SQL.assignments(sets)) WHERE id = \(.of(id))")
    }

    static func update(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        var input = try FieldReader(try call.json())
        let sets = try updates(&input)
        try call.connection.transaction { try apply(id, sets, call: call) }
        return try one(&call)
    }

    /// `PATCH /batch-jobs/`: `[{id, ...}]` → the updated batch jobs.
    static func bulkUpdate(_ call: inout Call) throws -> Reply {
        let changes = try bulkChanges(call) { (input: inout FieldReader) in try updates(&input) }
        try call.connection.transaction {
            for (id, sets) in changes { try apply(id, sets, call: call) }
        }
        var out = JSONWriter()
        out.beginArray()
        for chunk in changes.map(\.0).chunked(1000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                "SELECT \(raw: columns) FROM batch_jobs WHERE owner_id = \(.of(call.user.id)) AND id IN (\(list: chunk.map { .of($0) })) ORDER BY id"
            )
            for r in rows { write(r, to: &out) }
        }
        out.endArray()
        return .json(out)
    }

    /// `DELETE /batch-jobs/{id}`: removes the record (jobs that ran in it keep their history).
    static func delete(_ call: inout Call) throws -> Reply {
        try deleteOwned(call, table: "batch_jobs", what: "batch job")
    }
}

extension BatchJobs {
    /// `/batch-jobs/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e,
            [
                (.get, "/", list), (.post, "/", create), (.patch, "/", bulkUpdate), (.get, "/{id}", one),
                (.put, "/{id}", update), (.delete, "/{id}", delete),
            ])
    }
}
