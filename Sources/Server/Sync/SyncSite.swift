import Spool
import Wire

/// The site as its push describes it: its record and policy, its apps' refusals, its batch jobs, its launchers'
/// time on their nodes, and its answers to users' requests.
extension SyncRoutes {
    /// The site's batch jobs as it reports them (`{site_batch_id, server_id?, project, queue, num_nodes,
    /// wall_time_min, filter_tags, optional_params, state, scheduler_id, start_time, end_time, message}`), made or
    /// updated by the site's id; and requests it refused (`{server_id, reason}`), which become `submit_failed`.
    /// A batch job a user asked to delete stays `pending_deletion` until the site reports it ended (the
    /// original's rule).
    static func recordBatchJobs(_ items: [JSONValue], _ refused: [JSONValue], siteID: Int, call: Call) throws {
        let c = call.connection
        for (i, item) in items.enumerated() {
            var b = try FieldReader(item, prefix: "batch_jobs[\(i)]")
            let siteBatchID = try b.requiredInt("site_batch_id", in: 1...Int.max)
            let serverID = try b.int("server_id", in: 1...Int.max)
            let state = try b.requiredString("state", maxBytes: 32)
            guard BatchJobs.states.contains(state) else { throw b.bad("state", "'\(state)' is not a batch job state") }
            let schedulerText = try b.string("scheduler_id", maxBytes: 64)
            let schedulerID = schedulerText.flatMap { Int($0.prefix { $0.isNumber }) }
            let start = try b.time("start_time")
            let end = try b.time("end_time")
            let message = try b.string("message", maxBytes: 4096)
            let project = try b.requiredString("project", maxBytes: 256)
            let queue = try b.requiredString("queue", maxBytes: 256)
            let nodes = try b.requiredInt("num_nodes", in: 1...1_000_000)
            let minutes = try b.requiredInt("wall_time_min", in: 1...1_000_000)
            let filterTags = jsonText(try b.stringMap("filter_tags") ?? [:])
            let optional = jsonText(try b.stringMap("optional_params") ?? [:])
            try b.finish()
            if let serverID {
                try c.execute(
                    "UPDATE batch_jobs SET site_batch_id = \(.of(siteBatchID)) WHERE id = \(.of(serverID)) AND site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_batch_id IS NULL"
                )
            }
            let info = jsonText(message.map { ["message": JSONValue.string($0)] } ?? [:])
            let existing = try c.query(
                """
                SELECT id, state FROM batch_jobs WHERE site_id = \(.of(siteID))
                AND site_batch_id = \(.of(siteBatchID))\(raw: c.dialect.forUpdate)
                """
            ).first
            if let existing {
                let keep = existing.text(1) == "pending_deletion" && state != "finished" && state != "submit_failed"
                try c.execute(
                    """
                    UPDATE batch_jobs SET state = \(.text(keep ? "pending_deletion" : state)), scheduler_id = \(.of(schedulerID)), start_time = \(start.map { .int($0) } ?? .null), end_time = \(end.map { .int($0) } ?? .null), status_info = \(.text(info))
                    WHERE id = \(.of(existing.int(0)))
                    """)
            } else {
                try c.execute(
                    """
                    INSERT INTO batch_jobs (owner_id, site_id, site_batch_id, scheduler_id, project, queue, num_nodes,
                    wall_time_min, job_mode, optional_params, filter_tags, partitions, state, status_info, start_time,
                    end_time) VALUES (\(.of(call.user.id)), \(.of(siteID)), \(.of(siteBatchID)), \(.of(schedulerID)), \(.text(project)), \(.text(queue)), \(.of(nodes)), \(.of(minutes)), 'mpi', \(.text(optional)), \(.text(filterTags)), NULL, \(.text(state)), \(.text(info)), \(start.map { .int($0) } ?? .null), \(end.map { .int($0) } ?? .null))
                    """)
            }
        }
        for (i, item) in refused.enumerated() {
            var r = try FieldReader(item, prefix: "rejected_batch_jobs[\(i)]")
            let id = try r.requiredInt("server_id", in: 1...Int.max)
            let reason = try r.requiredString("reason", maxBytes: 4096)
            try r.finish()
            try c.execute(
                """
                UPDATE batch_jobs SET state = 'submit_failed', status_info = \(.text(jsonText(["error": .string(reason)])))
                WHERE id = \(.of(id)) AND site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_batch_id IS NULL
                """)
        }
    }

    /// The site's answers to users' requests (`{id, outcome: done|refused, reason}`): each request is closed; a
    /// refused one leaves its reason in the job's `data.balsam_request_refused`, where the user sees it.
    static func closeRequests(_ items: [JSONValue], siteID: Int, call: Call) throws {
        let c = call.connection
        for (i, item) in items.enumerated() {
            var r = try FieldReader(item, prefix: "requests_done[\(i)]")
            let id = try r.requiredInt("id", in: 1...Int.max)
            let outcome = try r.requiredString("outcome", maxBytes: 16)
            let reason = try r.string("reason", maxBytes: 4096)
            try r.finish()
            guard
                let job = try c.scalar(
                    "SELECT job_id FROM job_requests WHERE id = \(.of(id)) AND site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id))"
                )
            else { continue }
            try c.execute("DELETE FROM job_requests WHERE id = \(.of(id))")
            if outcome == "refused", let row = try c.query("SELECT data FROM jobs WHERE id = \(.of(job))").first {
                var data = (try? JSONValue.parse(row.text(0)))?.objectValue ?? [:]
                data["balsam_request_refused"] = .string(reason ?? "refused by the site")
                try c.execute(
                    "UPDATE jobs SET data = \(.text(jsonText(data))), last_update = \(raw: c.dialect.greatest)(last_update + 1, \(.int(ServerClock.microseconds()))) WHERE id = \(.of(job))"
                )
            }
        }
    }

    /// The site's batch-job policy as its push states it (`allowed_queues` with each queue's `max_nodes`,
    /// `max_walltime` and `max_queued_jobs`, `allowed_projects`, `optional_batch_job_params`), as JSON texts for
    /// the site's record; nil when the push says none (an older site).
    static func sitePolicy(_ site: inout FieldReader) throws -> (
        queues: String, projects: String, params: String
    )? {
        guard site.has("allowed_queues") || site.has("allowed_projects") || site.has("optional_batch_job_params")
        else { return nil }
        var queues: [String: JSONValue] = [:]
        let given = try site.object("allowed_queues", maxBytes: 262_144) ?? [:]
        if given.count > 1000 { throw site.bad("allowed_queues", "has \(given.count) queues; the limit is 1000") }
        for (name, value) in given {
            if name.isEmpty || name.utf8.count > 256 || name.utf8.contains(0) {
                throw site.bad("allowed_queues", "has a queue name that is empty, longer than 256 bytes or holds NUL")
            }
            var q = try FieldReader(value, prefix: "site.allowed_queues.\(name)")
            queues[name] = .object([
                "max_nodes": .int(try q.requiredInt("max_nodes", in: 1...10_000_000)),
                "max_walltime": .int(try q.requiredInt("max_walltime", in: 1...10_000_000)),
                "max_queued_jobs": .int(try q.requiredInt("max_queued_jobs", in: 0...10_000_000)),
            ])
            try q.finish()
        }
        let projects = try site.stringList("allowed_projects", maxCount: 1000, maxBytes: 256) ?? []
        let params = try site.stringMap("optional_batch_job_params") ?? [:]
        return (
            JSONValue.object(queues).serialized(), JSONValue.array(projects.map { .string($0) }).serialized(),
            jsonText(params)
        )
    }

    /// Its launchers' time on their nodes (`[{lease, nodes, start, end, site_batch_id}]`), kept per lease: the
    /// utilization report counts the nodes of those no batch job started as held.
    static func recordLauncherSessions(_ items: [JSONValue], siteID: Int, call: Call) throws {
        for (i, item) in items.enumerated() {
            var s = try FieldReader(item, prefix: "launcher_sessions[\(i)]")
            let lease = try s.requiredString("lease", maxBytes: 256)
            let nodes = try s.requiredInt("nodes", in: 1...10_000_000)
            guard let start = try s.time("start") else { throw s.bad("start", "is required") }
            let end = try s.time("end")
            let batch = try s.int("site_batch_id", in: 1...Int.max)
            try s.finish()
            try call.connection.execute(
                """
                INSERT INTO launcher_sessions (owner_id, site_id, lease, nodes, start_time, end_time, site_batch_id)
                VALUES (\(.of(call.user.id)), \(.of(siteID)), \(.text(lease)), \(.of(nodes)), \(.int(start)), \(end.map { .int($0) } ?? .null), \(batch.map { .of($0) } ?? .null))
                ON CONFLICT (site_id, lease) DO UPDATE SET nodes = excluded.nodes, end_time = excluded.end_time
                """)
        }
    }

    /// The caller's site of that name, made if missing; its path and `last_refresh` are brought up to date.
    static func upsertSite(name: String, path: String, call: Call, now: Int64) throws -> Int {
        guard path.hasPrefix("/") else { throw ServerError.badRequest("must be absolute", field: "site.path") }
        let c = call.connection
        if let id = try c.scalar(
            "SELECT id FROM sites WHERE owner_id = \(.of(call.user.id)) AND name = \(.text(name))\(raw: c.dialect.forUpdate)"
        ) {
            try c.execute(
                "UPDATE sites SET path = \(.text(path)), last_refresh = \(.int(now)) WHERE id = \(.of(id))")
            return id
        }
        return try c.scalar(
            """
            INSERT INTO sites (owner_id, name, path, globus_endpoint_id, backfill_windows, queued_jobs,
            optional_batch_job_params, allowed_projects, allowed_queues, transfer_locations, last_refresh,
            creation_date) VALUES (\(.of(call.user.id)), \(.text(name)), \(.text(path)), NULL, '{}', '{}', '{}', '[]', '{}', '{}', \(.int(now)), \(.int(now))) RETURNING id
            """) ?? 0
    }

    static func existingApps(siteID: Int, call: Call) throws -> [String: Int] {
        var ids: [String: Int] = [:]
        for r in try call.connection.query("SELECT name, id FROM apps WHERE site_id = \(.of(siteID))") {
            ids[r.text(0)] = r.int(1)
        }
        return ids
    }

    /// Keeps with each app of the site why the site could not install it: `refused` holds every app it could
    /// not, so the others' reasons are cleared.
    static func recordAppRefusals(_ refused: [String: String], siteID: Int, call: Call) throws {
        let c = call.connection
        try c.execute(
            "UPDATE apps SET site_refusal = NULL WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_refusal IS NOT NULL"
        )
        for (name, reason) in refused {
            try c.execute(
                "UPDATE apps SET site_refusal = \(.text(reason)) WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND name = \(.text(name))"
            )
        }
    }
}
