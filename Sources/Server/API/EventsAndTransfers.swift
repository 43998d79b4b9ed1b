import Hummingbird
import Spool
import Wire

/// `/events/`: every state change of the caller's jobs, read-only.
enum Events {
    static let columns = "e.id, e.job_id, e.timestamp, e.from_state, e.to_state, e.data"

    static func write(_ r: SQLRow, to out: inout JSONWriter) {
        out.beginObject()
        out.field("id", r.int(0))
        out.field("job_id", r.int(1))
        out.field("timestamp", ServerClock.iso(Int64(r.int(2))))
        out.field("from_state", r.text(3))
        out.field("to_state", r.text(4))
        out.raw("data", r.text(5))
        out.endObject()
    }

    static func list(_ call: inout Call) throws -> Reply {
        var c = Conditions(owner: call.user.id, column: "e.owner_id")
        var table = "events e"
        if let ids = try call.query.ints("id") { c.any("e.id", ids.map { .of($0) }) }
        if let ids = try call.query.ints("job_id") { c.any("e.job_id", ids.map { .of($0) }) }
        let batch = try call.query.int("batch_job_id")
        let scheduler = try call.query.int("scheduler_id")
        let tags = try call.query.pairsOf("tags")
        if batch != nil || scheduler != nil || tags != nil {
            table += " JOIN jobs j ON j.id = e.job_id"
        }
        if let batch { c.add("j.batch_job_id = \(.of(batch))") }
        if let scheduler {
            c.add(
                "j.batch_job_id IN (SELECT id FROM batch_jobs WHERE owner_id = \(.of(call.user.id)) AND scheduler_id = \(.of(scheduler)))"
            )
        }
        for (key, value) in tags ?? [] {
            c.add(Jobs.tagCondition(key: key, value: value, dialect: call.dialect, column: "j.tags"))
        }
        for (key, value) in try call.query.pairsOf("data") ?? [] {
            c.add(jsonContains("e.data", key: key, value: value, dialect: call.dialect, jsonb: false))
        }
        if let t = try call.query.time("timestamp_before") { c.add("e.timestamp < \(.int(t))") }
        if let t = try call.query.time("timestamp_after") { c.add("e.timestamp > \(.int(t))") }
        if let state = try call.query.string("from_state") {
            c.add("e.from_state = \(.text(try parseJobState(state, field: "from_state").rawValue))")
        }
        if let state = try call.query.string("to_state") {
            c.add("e.to_state = \(.text(try parseJobState(state, field: "to_state").rawValue))")
        }
        let ordering = try call.query.ordering(
            ["timestamp": "e.timestamp"], default: "e.timestamp DESC, e.id DESC", id: "e.id")
        return try page(call: &call, table: table, columns: columns, conditions: c, ordering: ordering, write)
    }
}

/// `/transfers/`: the stage-in and stage-out items of the caller's jobs. Sites report progress through
/// `PUT`/`PATCH`; a job whose stage-ins are all done moves on to `STAGED_IN`, and one whose stage-outs are
/// all done to `JOB_FINISHED` (releasing its children, which the original forgot on this path).
enum Transfers {
    static let columns = """
        t.id, t.job_id, t.direction, t.local_path, t.remote_path, t.location_alias, t.recursive, t.state, \
        t.task_id, t.transfer_info
        """

    static let states = TransferState.allCases.map(\.rawValue)

    static func write(_ r: SQLRow, to out: inout JSONWriter) {
        out.beginObject()
        out.field("id", r.int(0))
        out.field("job_id", r.int(1))
        out.field("direction", r.text(2))
        out.field("local_path", r.text(3))
        out.field("remote_path", r.text(4))
        out.field("location_alias", r.text(5))
        out.field("recursive", r.bool(6))
        out.field("state", r.text(7))
        out.field("task_id", r.text(8))
        out.raw("transfer_info", r.text(9))
        out.endObject()
    }

    static func list(_ call: inout Call) throws -> Reply {
        var c = Conditions(owner: call.user.id, column: "t.owner_id")
        if let ids = try call.query.ints("id") { c.any("t.id", ids.map { .of($0) }) }
        if let site = try call.query.int("site_id") { c.add("j.site_id = \(.of(site))") }
        if let ids = try call.query.ints("job_id") { c.any("t.job_id", ids.map { .of($0) }) }
        if let states = try call.query.all("state") {
            for s in states where !Transfers.states.contains(s) {
                throw ServerError.badRequest("'\(s)' is not a transfer item state", field: "state")
            }
            c.any("t.state", states.map { .text($0) })
        }
        if let direction = try call.query.string("direction") {
            guard direction == "in" || direction == "out" else {
                throw ServerError.badRequest("must be 'in' or 'out'", field: "direction")
            }
            c.add("t.direction = \(.text(direction))")
        }
        if let state = try call.query.string("job_state") {
            c.add("j.state = \(.text(try parseJobState(state, field: "job_state").rawValue))")
        }
        for (key, value) in try call.query.pairsOf("tags") ?? [] {
            c.add(Jobs.tagCondition(key: key, value: value, dialect: call.dialect, column: "j.tags"))
        }
        let ordering = try call.query.ordering(["id": "t.id"], default: "t.id ASC", id: "t.id")
        return try page(
            call: &call, table: "transfer_items t JOIN jobs j ON j.id = t.job_id", columns: columns, conditions: c,
            ordering: ordering, write)
    }

    static func one(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        let rows = try call.connection.query(
            "SELECT \(raw: columns) FROM transfer_items t WHERE t.id = \(.of(id)) AND t.owner_id = \(.of(call.user.id))"
        )
        guard let row = rows.first else { throw ServerError.notFound("transfer item \(id)") }
        var out = JSONWriter()
        write(row, to: &out)
        return .json(out)
    }

    static func updates(_ input: inout FieldReader) throws -> [(String, SQLValue)] {
        var sets: [(String, SQLValue)] = []
        if let state = try input.string("state", maxBytes: 32) {
            guard states.contains(state) else {
                throw input.bad("state", "'\(state)' is not one of \(states.joined(separator: ", "))")
            }
            sets.append(("state", .text(state)))
        }
        if let task = try input.string("task_id", maxBytes: 1024) { sets.append(("task_id", .text(task))) }
        if let info = try input.object("transfer_info", maxBytes: 65_536) {
            sets.append(("transfer_info", .text(jsonText(info))))
        }
        try input.finish()
        return sets
    }

    /// Applies item updates, then moves the jobs whose transfers are now all done.
    static func apply(_ changes: [(Int, [(String, SQLValue)])], call: Call) throws {
        let c = call.connection
        try c.transaction {
            var jobs = Set<Int>()
            var siteOf: [Int: Int] = [:]
            for (id, sets) in changes {
                guard
                    let job = try c.scalar(
                        "SELECT job_id FROM transfer_items WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))")
                else { throw ServerError.notFound("transfer item \(id)") }
                jobs.insert(job)
                guard !sets.isEmpty else { continue }
                try c.execute(
                    "UPDATE transfer_items SET \(SQL.assignments(sets)) WHERE id = \(.of(id))")
            }
            // A site's job (one that syncs) moves at its site: the change goes there as a request, and the site
            // reports the item's outcome and the job's moves with its events.
            var siteJobs = Set<Int>()
            for chunk in Array(jobs).chunked(1000) where !chunk.isEmpty {
                for r in try c.query(
                    "SELECT id, site_id FROM jobs WHERE site_job_id IS NOT NULL AND id IN (\(list: chunk.map { .of($0) }))"
                ) {
                    siteJobs.insert(r.int(0))
                    siteOf[r.int(0)] = r.int(1)
                }
            }
            for (id, sets) in changes {
                guard let state = sets.first(where: { $0.0 == "state" })?.1,
                    let row = try c.query(
                        "SELECT job_id, direction, local_path, remote_path, location_alias FROM transfer_items WHERE id = \(.of(id))"
                    ).first, siteJobs.contains(row.int(0)), case .text(let text) = state
                else { continue }
                let target: [String: JSONValue] = [
                    "direction": .string(row.text(1)), "local_path": .string(row.text(2)),
                    "remote_path": .string(row.text(3)), "location_alias": .string(row.text(4)), "state": .string(text),
                ]
                try JobRepository.request(
                    job: row.int(0), site: siteOf[row.int(0)] ?? 0, kind: .transfer, target: jsonText(target),
                    call: call, now: ServerClock.microseconds())
            }
            let ids = Array(jobs.subtracting(siteJobs))
            let waiting = try JobRepository.unfinishedTransfers(ids, call: call)
            let current = try JobRepository.states(ids, call: call, lock: true)
            let now = ServerClock.microseconds()
            var moves: [(Int, JobState, JobState)] = []
            for (id, state) in current.sorted(by: { $0.key < $1.key }) {
                if state == .ready && !waiting.stageIns.contains(id) {
                    moves.append((id, state, .stagedIn))
                } else if state == .postprocessed && !waiting.stageOuts.contains(id) {
                    moves.append((id, state, .jobFinished))
                }
            }
            try JobRepository.move(moves, data: "{}", now: now, call: call)
            try JobRepository.releaseChildren(of: moves.filter { $0.2 == .jobFinished }.map(\.0), call: call, now: now)
        }
    }

    static func update(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        var input = try FieldReader(try call.json())
        try apply([(id, try updates(&input))], call: call)
        return try one(&call)
    }

    static func bulkUpdate(_ call: inout Call) throws -> Reply {
        let changes = try bulkChanges(call) { (input: inout FieldReader) in try updates(&input) }
        try apply(changes.map { ($0.id, $0.change) }, call: call)
        return .json(.int(changes.count))
    }
}

extension Events {
    /// `/events/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(e, [(.get, "/", list)])
    }
}

extension Transfers {
    /// `/transfers/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e, [(.get, "/", list), (.patch, "/", bulkUpdate), (.get, "/{id}", one), (.put, "/{id}", update)])
    }
}
