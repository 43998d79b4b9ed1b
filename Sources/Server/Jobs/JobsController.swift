import Hummingbird
import Spool
import Wire

/// `/jobs/`: bulk create, list with filters, bulk and query updates, deletion; the state rules the original
/// client expects at creation, plus the site's validated transitions on every change.
enum Jobs {
    // MARK: - Filters

    /// The list filters of `GET`, `PUT` and `DELETE /jobs/`.
    static func conditions(_ call: inout Call) throws -> Conditions {
        var c = Conditions(owner: call.user.id)
        // The jobs' count per site and state (`job_counts`) answers a count by owner, site and state alone.
        var counted: Conditions? = Conditions(owner: call.user.id)
        // A filter the kept counts answer too (both), and one they cannot (rowsOnly).
        func both(_ clause: SQL) {
            c.add(clause)
            counted?.add(clause)
        }
        func rowsOnly(_ clause: SQL) {
            c.add(clause)
            counted = nil
        }
        if let ids = try call.query.ints("id") { rowsOnly(Conditions.oneOf("id", ids.map { .of($0) })) }
        if let parents = try call.query.ints("parent_id") {
            rowsOnly("id IN (SELECT job_id FROM job_parents WHERE parent_id IN (\(list: parents.map { .of($0) })))")
        }
        if let app = try call.query.int("app_id") { rowsOnly("app_id = \(.of(app))") }
        if let sites = try call.query.ints("site_id") { both(Conditions.oneOf("site_id", sites.map { .of($0) })) }
        if let batch = try call.query.int("batch_job_id") { rowsOnly("batch_job_id = \(.of(batch))") }
        if let t = try call.query.time("last_update_before") { rowsOnly("last_update < \(.int(t))") }
        if let t = try call.query.time("last_update_after") { rowsOnly("last_update > \(.int(t))") }
        if let text = try call.query.string("workdir__contains") { rowsOnly(call.dialect.contains("workdir", text)) }
        if let states = try call.query.jobStates("state") {
            both(Conditions.oneOf("state", states.map { .text($0.rawValue) }))
        }
        if let ne = try call.query.jobStates("state__ne") {
            for state in ne { both("state <> \(.text(state.rawValue))") }
        }
        if let tags = try call.query.pairsOf("tags") {
            for (key, value) in tags { rowsOnly(tagCondition(key: key, value: value, dialect: call.dialect)) }
        }
        if let pending = try call.query.bool("pending_file_cleanup") {
            rowsOnly("pending_file_cleanup = \(.of(pending))")
        }
        c.count = counted.map { "SELECT CAST(coalesce(sum(n), 0) AS BIGINT) FROM job_counts WHERE \($0.sql)" }
        return c
    }

    /// Tag containment: the GIN index serves it on PostgreSQL.
    static func tagCondition(key: String, value: String, dialect: SQLDialect, column: String = "tags") -> SQL {
        switch dialect {
        case .postgresql:
            return "\(raw: column) @> jsonb_build_object(CAST(\(.text(key)) AS TEXT), CAST(\(.text(value)) AS TEXT))"
        case .sqlite:
            return jsonContains(column, key: key, value: value, dialect: dialect, jsonb: false)
        }
    }

    static let orderings = ["last_update": "last_update", "id": "id", "state": "state", "workdir": "workdir"]

    static func list(_ call: inout Call) throws -> Reply {
        let c = try conditions(&call)
        let ordering = try call.query.ordering(orderings, default: "id ASC")
        return try page(
            call: &call, table: "jobs", columns: JobField.selectList, conditions: c, ordering: ordering, JobField.write)
    }

    static func one(_ call: inout Call) throws -> Reply {
        try detail(call, table: "jobs", columns: JobField.selectList, what: "job", JobField.write)
    }

    // MARK: - Create

    /// `POST /jobs/`: a list of jobs, created together or not at all. Each starts `AWAITING_PARENTS` while a
    /// parent has not finished, else `READY` when it has stage-ins, else `STAGED_IN`, with one `CREATED` event.
    static func create(_ call: inout Call) throws -> Reply {
        let items = try call.jsonList()
        var jobs = try items.enumerated().map { try parseNew($1, index: $0) }
        var seen = Set<String>()
        for (i, job) in jobs.enumerated() where !seen.insert(job.workdir).inserted {
            throw ServerError.badRequest(
                "workdir '\(job.workdir)' appears twice in this request; workdirs must be unique in each bulk create",
                field: "[\(i)].workdir")
        }
        let now = ServerClock.microseconds()
        let c = call.connection
        let created: [Int] = try c.transaction {
            let facts = try JobRepository.appFacts(Set(jobs.map(\.appID)), call: call)
            let parentStates = try JobRepository.states(Array(Set(jobs.flatMap(\.parentIDs))), call: call)
            for i in jobs.indices {
                guard let app = facts[jobs[i].appID] else {
                    throw ServerError.notFound("app \(jobs[i].appID) of [\(i)]")
                }
                try checkParameters(jobs[i], app, index: i)
                var hasStageIn = false
                for t in jobs[i].transfers {
                    let field = "[\(i)].transfers.\(t.slot)"
                    guard let slot = app.slots[t.slot]?.objectValue else {
                        let known = app.slots.keys.sorted().joined(separator: ", ")
                        throw ServerError.badRequest(
                            "the app has no transfer slot '\(t.slot)' (its slots: \(known.isEmpty ? "none" : known))",
                            field: field)
                    }
                    guard app.locations[t.alias] != nil else {
                        throw ServerError.badRequest(
                            "the site has no transfer location '\(t.alias)'", field: field)
                    }
                    if slot["direction"]?.stringValue == "in" { hasStageIn = true }
                }
                var parentsDone = true
                for parent in jobs[i].parentIDs {
                    guard let state = parentStates[parent] else {
                        throw ServerError.notFound("parent job \(parent) of [\(i)]")
                    }
                    if state != .jobFinished { parentsDone = false }
                }
                jobs[i].siteID = app.siteID
                jobs[i].state = .initial(parentsFinished: parentsDone, hasStageIn: hasStageIn)
            }
            try JobRepository.checkWorkdirsFree(jobs, call: call)
            let ids = try JobRepository.insert(jobs, owner: call.user.id, now: now, connection: c)
            try JobRepository.insertEvents(
                jobs.indices.map { (ids[$0], JobState.created.rawValue, jobs[$0].state.rawValue, "{}") },
                owner: call.user.id, time: now, connection: c)
            try JobRepository.insertParentsAndTransfers(
                jobs, ids: ids, facts: facts, owner: call.user.id, connection: c)
            return ids
        }
        var out = JSONWriter(capacity: jobs.count * 512)
        out.beginArray()
        for i in jobs.indices { JobField.write(jobs[i].row(id: created[i], now: now), to: &out) }
        out.endArray()
        var reply = Reply.json(out, status: 201)
        reply.newsFor = Set(jobs.compactMap(\.siteID))  // news for these sites only (SiteNews)
        return reply
    }

    // MARK: - Update

    /// Applies updates to the caller's jobs in one transaction; every requested state change must be a legal
    /// transition (else 400 naming the job and both states). Returns how many jobs were updated.
    @discardableResult
    static func apply(_ updates: [(id: Int, patch: Patch)], call: Call) throws -> Int {
        let c = call.connection
        let owner = call.user.id
        return try c.transaction {
            let current = try JobRepository.states(updates.map(\.id).sorted(), call: call, lock: true)
            let now = ServerClock.microseconds()
            // The batch job a patch names must be the caller's.
            let batchIDs = Set(updates.flatMap { u in u.patch.sets.filter { $0.0 == "batch_job_id" }.map { $0.1 } })
            for case .int(let batch) in batchIDs {
                guard
                    try c.scalar("SELECT id FROM batch_jobs WHERE id = \(.int(batch)) AND owner_id = \(.of(owner))")
                        != nil
                else { throw ServerError.notFound("batch job \(batch)") }
            }
            try JobRepository.checkFixed(updates, call: call)
            // Parameters only Python can load go to Python apps' jobs only (the site's verdict).
            let pythonOnly = updates.filter { $0.patch.pythonOnlyParameters != nil }
            if !pythonOnly.isEmpty {
                let kinds = try JobRepository.appKinds(pythonOnly.map(\.id), call: call)
                for u in pythonOnly {
                    try checkAppKind(
                        u.patch.pythonOnlyParameters ?? "", python: kinds[u.id] ?? nil, field: "serialized_parameters")
                }
            }
            var targets: [Int: JobState] = [:]
            let siteOwned = try JobRepository.siteOwnedJobs(updates.map(\.id), call: call)
            for u in updates {
                guard let from = current[u.id] else { throw ServerError.notFound("job \(u.id)") }
                guard let to = u.patch.state, to != from else { continue }
                do { try from.validateTransition(to: to) } catch let error as SpoolError {
                    throw ServerError.badRequest("job \(u.id): \(error.message)", field: "state")
                }
                // A site's job moves at its site: the change is held as a request the site carries out (kill,
                // retry) and then reports; the job here changes when the site says so.
                if let site = siteOwned[u.id] {
                    try JobRepository.request(
                        job: u.id, site: site, kind: .state, target: to.rawValue, call: call, now: now)
                    continue
                }
                targets[u.id] = to
            }
            // A change of a site's job's spec applies here and goes to the site as a request, which carries it
            // out with its own `modify` (or refuses it, with the reason).
            for u in updates {
                guard let site = siteOwned[u.id] else { continue }
                if u.patch.sets.contains(where: { $0.0 == "workdir" }) {
                    throw ServerError.badRequest(
                        "job \(u.id) belongs to a site: its workdir is a directory there and does not move",
                        field: "workdir")
                }
                let change = Jobs.forwardedChange(u.patch.sets)
                if !change.isEmpty {
                    try JobRepository.request(
                        job: u.id, site: site, kind: .modify, target: JSONValue.object(change).serialized(),
                        call: call,
                        now: now)
                }
            }
            let waiting = try JobRepository.unfinishedTransfers(Array(targets.keys), call: call)
            var events: [(Int, String, String, String, Int64)] = []
            var finished: [Int] = []
            var stageOutsDue: [Int] = []
            // Updates that set the same columns go together, one UPDATE per chunk: the rows are locked already.
            var groups: [[String]: [(Int, [SQLValue])]] = [:]
            for u in updates {
                var sets = u.patch.sets
                if let to = targets[u.id], let from = current[u.id] {
                    let final = to.entered(
                        stageInsDone: !waiting.stageIns.contains(u.id), stageOutsDone: !waiting.stageOuts.contains(u.id)
                    )
                    if to == .postprocessed && final == .postprocessed { stageOutsDue.append(u.id) }
                    if final == .jobFinished { finished.append(u.id) }
                    sets.append(("state", .text(final.rawValue)))
                    events.append(
                        (u.id, from.rawValue, final.rawValue, u.patch.stateData, u.patch.stateTimestamp ?? now))
                }
                groups[sets.map(\.0), default: []].append((u.id, sets.map(\.1)))
            }
            for (columns, rows) in groups {
                try JobRepository.updateRows(columns: columns, rows: rows, now: now, connection: c)
            }
            try JobRepository.insertEvents(events, owner: owner, connection: c)
            try JobRepository.startStageOuts(of: stageOutsDue, connection: c)
            try JobRepository.releaseChildren(of: finished, call: call, now: now)
            return updates.count
        }
    }

    /// `PATCH /jobs/`: a list of `{id, ...changes}`; ids unique. Replies with the number of jobs updated.
    static func bulkUpdate(_ call: inout Call) throws -> Reply {
        let updates = try bulkChanges(call) { (input: inout FieldReader) in try parsePatch(&input) }
        var seen = Set<Int>()
        for (i, update) in updates.enumerated() where !seen.insert(update.id).inserted {
            throw ServerError.badRequest(
                "job \(update.id) appears twice; each job once per request", field: "[\(i)].id")
        }
        return .json(.int(try apply(updates.map { ($0.id, $0.change) }, call: call)))
    }

    /// `PUT /jobs/?filters`: the same change to every matching job (at most the bulk limit).
    static func queryUpdate(_ call: inout Call) throws -> Reply {
        var input = try FieldReader(try call.json())
        let patch = try parsePatch(&input)
        let c = try conditions(&call)
        try call.query.finish()
        let ids = try call.connection.query(
            "SELECT id FROM jobs WHERE \(c.sql) ORDER BY id LIMIT \(.of(call.limits.bulkItems + 1))"
        ).map { $0.int(0) }
        if ids.count > call.limits.bulkItems {
            throw ServerError.badRequest(
                "the filters match more than \(call.limits.bulkItems) jobs; narrow them (for example by id)")
        }
        return .json(.int(try apply(ids.map { ($0, patch) }, call: call)))
    }

    /// `PUT /jobs/{id}`.
    static func update(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        var input = try FieldReader(try call.json())
        try apply([(id, try parsePatch(&input))], call: call)
        return try one(&call)
    }

    /// `DELETE /jobs/?filters`: deletes every matching job (their events and transfer items with them).
    static func queryDelete(_ call: inout Call) throws -> Reply {
        let c = try conditions(&call)
        try call.query.finish()
        try call.connection.transaction {
            try JobRepository.requestSiteDeletions(where: c.sql, call: call)
            try call.connection.execute("DELETE FROM jobs WHERE site_job_id IS NULL AND \(c.sql)")
        }
        return .noContent
    }

    /// `DELETE /jobs/{id}`.
    static func delete(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        guard
            try call.connection.scalar(
                "SELECT id FROM jobs WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))")
                != nil
        else { throw ServerError.notFound("job \(id)") }
        try call.connection.transaction {
            try JobRepository.requestSiteDeletions(
                where: "owner_id = \(.of(call.user.id)) AND id = \(.of(id))", call: call)
            try call.connection.execute("DELETE FROM jobs WHERE id = \(.of(id)) AND site_job_id IS NULL")
        }
        return .noContent
    }

}

extension Jobs {
    /// `/jobs/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e,
            [
                (.get, "/", list), (.post, "/", create), (.patch, "/", bulkUpdate), (.put, "/", queryUpdate),
                (.delete, "/", queryDelete), (.get, "/{id}", one), (.put, "/{id}", update), (.delete, "/{id}", delete),
            ])
    }
}
