import Spool
import Wire

/// `POST /sync/push`: a site mirrors itself. An extension of the original API (our additions are extra routes,
/// never changed ones): one request registers or refreshes the site, upserts its apps, creates the jobs made at
/// the site, and records the site's events with the site's own times. Idempotent: a push repeated after a crash
/// creates no job and no event twice. The site owns its jobs' lifecycle, so the events are recorded as the site
/// reports them (no transition check, none of the server's automatic steps), and each job's state becomes the
/// `to` of its latest event.
///
/// Body: `{"site": {"name", "path"}, "apps": [{name, description, parameters, source_code}], "jobs": [{site_job_id,
/// app, workdir, tags, parameters, data, num_nodes, ..., parent_site_ids, state}], "events": [{site_job_id, t,
/// from, to, data}]}`. Reply: `{"site_id", "apps": {name: id}, "jobs": {site_job_id: id}, "events": inserted,
/// "refused": [SyncRefusal]}`.
///
/// One object the server refuses never blocks the others: a job or event it cannot take is answered in `refused`
/// (`SyncRefusal`: what, which, a code the site switches on, and why) and the rest of the push is recorded. Only a push that is
/// wrong as a whole (no site, another site's token, too many items) is a 400.
enum SyncRoutes {
    static func push(_ call: inout Call) throws -> Reply {
        var input = try FieldReader(try call.json())
        guard case .object(let siteObject)? = input.value("site") else {
            throw ServerError.badRequest("the push needs the site: {name, path}", field: "site")
        }
        var site = try FieldReader(.object(siteObject), prefix: "site")
        let siteName = try site.requiredString("name", maxBytes: 128)
        if let bound = call.user.siteName, bound != siteName {
            throw ServerError(
                status: 403, "this token was made for site '\(bound)'; it cannot push as site '\(siteName)'",
                field: "site.name")
        }
        let sitePath = try site.requiredString("path")
        let locations = try site.stringMap("transfer_locations")
        let policy = try sitePolicy(&site)
        try site.finish()
        let apps = try input.list("apps")
        let jobs = try input.list("jobs")
        let events = try input.list("events")
        let rejected = try input.list("rejected")
        let appDigests = (try input.object("app_digests") ?? [:]).compactMapValues(\.stringValue)
        let removed = try input.list("removed").compactMap(\.stringValue)
        let requestsDone = try input.list("requests_done")
        let batchJobs = try input.list("batch_jobs")
        let rejectedBatchJobs = try input.list("rejected_batch_jobs")
        let sessions = try input.list("launcher_sessions")
        if sessions.count > 1000 {
            throw ServerError.badRequest("a push holds at most 1000 launcher sessions", field: "launcher_sessions")
        }
        // Apps from the server the site could not install, with its reason (absent: a site that does not say).
        let refusedApps = try input.stringMap("refused_apps", maxBytes: 65_536)
        try input.finish()
        if jobs.count + events.count + apps.count > call.limits.bulkItems * 4 {
            throw ServerError.badRequest("a push holds at most \(call.limits.bulkItems * 4) apps, jobs and events")
        }
        let c = call.connection
        let owner = call.user.id
        let now = ServerClock.microseconds()
        return try c.transaction {
            let siteID = try upsertSite(name: siteName, path: sitePath, call: call, now: now)
            if let locations {
                // The site's transfer locations (ALIAS: URL), which its jobs' slots name.
                try c.execute(
                    "UPDATE sites SET transfer_locations = \(.text(jsonText(locations))) WHERE id = \(.of(siteID))")
            }
            if let policy {
                // Its batch-job policy, which the original client's `balsam queue submit` checks against.
                try c.execute(
                    "UPDATE sites SET allowed_queues = \(.text(policy.queues)), allowed_projects = \(.text(policy.projects)), optional_batch_job_params = \(.text(policy.params)) WHERE id = \(.of(siteID))"
                )
            }
            var appIDs = try existingApps(siteID: siteID, call: call)
            for (i, app) in apps.enumerated() {
                var a = try FieldReader(app, prefix: "apps[\(i)]")
                let name = try a.requiredString("name", maxBytes: 128)
                try Apps.validateName(name, input: a)
                let description = try a.string("description", maxBytes: 65_536) ?? ""
                let parameters = try a.object("parameters") ?? [:]
                try Apps.checkParameters(parameters, input: a)
                let source = try a.string("source_code", maxBytes: 1 << 20) ?? ""
                let slots = try a.object("transfers") ?? [:]
                try a.finish()
                let (p, t) = (SQLValue.text(jsonText(parameters)), SQLValue.text(jsonText(slots)))
                if let id = appIDs[name] {
                    try c.execute(
                        """
                        UPDATE apps SET description = \(.text(description)), parameters = \(p),
                        source_code = \(.text(source)), transfers = \(t) WHERE id = \(.of(id))
                        """)
                } else {
                    appIDs[name] = try c.scalar(
                        """
                        INSERT INTO apps (owner_id, site_id, name, serialized_class, description, parameters,
                        source_code, transfers) VALUES (\(.of(owner)), \(.of(siteID)), \(.text(name)), '',
                        \(.text(description)), \(p), \(.text(source)), \(t)) RETURNING id
                        """)
                }
            }
            var refused: [SyncRefusal] = []
            if let refusedApps { try recordAppRefusals(refusedApps, siteID: siteID, call: call) }
            let jobIDs = try createJobs(
                jobs, siteID: siteID, appIDs: appIDs, call: call, now: now, refused: &refused)
            let inserted = try recordEvents(
                events, siteID: siteID, jobIDs: jobIDs, call: call, now: now, refused: &refused)
            try reject(rejected, siteID: siteID, call: call, now: now)
            // Jobs removed at the site (`balsam rm`) go here too, with their events.
            for chunk in removed.chunked(5000) where !chunk.isEmpty {
                try c.execute(
                    "DELETE FROM jobs WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(owner)) AND site_job_id IN (\(list: chunk.map { .text($0) }))"
                )
            }
            try recordBatchJobs(batchJobs, rejectedBatchJobs, siteID: siteID, call: call)
            try recordLauncherSessions(sessions, siteID: siteID, call: call)
            try closeRequests(requestsDone, siteID: siteID, call: call)
            var out = JSONWriter()
            out.beginObject()
            out.field("site_id", siteID)
            out.value("apps", .object(appIDs.mapValues { .int($0) }))
            out.value("jobs", .object(jobIDs.mapValues { .int($0) }))
            out.field("events", inserted)
            out.value("refused", .array(refused.map(\.json)))
            try writeRemoteJobs(siteID: siteID, call: call, to: &out)
            try writeRemoteApps(siteID: siteID, known: appDigests, call: call, to: &out)
            try writeRemoteBatchJobs(siteID: siteID, call: call, to: &out)
            let requests = try c.query(
                """
                SELECT r.id, j.site_job_id, r.kind, r.target FROM job_requests r JOIN jobs j ON j.id = r.job_id
                WHERE r.site_id = \(.of(siteID)) AND r.owner_id = \(.of(owner)) ORDER BY r.id LIMIT 1000
                """)
            out.value(
                "requests",
                .array(
                    requests.map { r in
                        .object([
                            "id": .int(r.int(0)), "site_job_id": .string(r.text(1)), "kind": .string(r.text(2)),
                            "target": r.optionalText(3).map { .string($0) } ?? .null,
                        ])
                    }))
            out.endObject()
            return .json(out)
        }
    }

    /// Jobs made through the API for this site that the site has not adopted yet (oldest first, so parents come
    /// before their children), as `remote_jobs`: the reply to every push, so one round trip a period carries both
    /// directions. Each names its app and its parents by the server's ids and, where adopted, the site's.
    static func writeRemoteJobs(siteID: Int, call: Call, to out: inout JSONWriter) throws {
        let rows = try call.connection.query(
            """
            SELECT j.id, a.name, j.workdir, j.tags, j.serialized_parameters, j.data, j.num_nodes, j.ranks_per_node,
            j.threads_per_rank, j.threads_per_core, j.launch_params, j.gpus_per_rank, j.node_packing_count,
            j.wall_time_min, j.parent_ids, a.transfers FROM jobs j JOIN apps a ON a.id = j.app_id
            WHERE j.site_id = \(.of(siteID)) AND j.owner_id = \(.of(call.user.id)) AND j.site_job_id IS NULL AND j.state NOT IN (\(.of(JobState.failed)), \(.of(JobState.jobFinished)))
            ORDER BY j.id LIMIT 1000
            """)
        // Their transfer items, as the job's slots ({slot: "ALIAS:/path"}): the server keeps no slot name, so the
        // app's slot of that direction and local path is the one.
        var transfers: [Int: [String: JSONValue]] = [:]
        let slotsByApp = Dictionary(
            rows.map { ($0.int(0), (try? JSONValue.parse($0.text(15)))?.objectValue ?? [:]) },
            uniquingKeysWith: { a, _ in a })
        for chunk in rows.map({ $0.int(0) }).chunked(5000) where !chunk.isEmpty {
            for r in try call.connection.query(
                """
                SELECT job_id, direction, local_path, remote_path, location_alias FROM transfer_items
                WHERE job_id IN (\(list: chunk.map { .of($0) }))
                """)
            {
                let slot = slotsByApp[r.int(0)]?.first { _, spec in
                    spec.objectValue?["direction"]?.stringValue == r.text(1)
                        && spec.objectValue?["local_path"]?.stringValue == r.text(2)
                }
                guard let name = slot?.key else { continue }
                transfers[r.int(0), default: [:]][name] = .string(r.text(4) + ":" + r.text(3))
            }
        }
        var parents = Set<Int>()
        for r in rows {
            for case .int(let p) in (try? JSONValue.parse(r.text(14)))?.arrayValue ?? [] { parents.insert(p) }
        }
        var parentSiteIDs: [Int: String] = [:]
        for chunk in Array(parents).chunked(5000) where !chunk.isEmpty {
            for r in try call.connection.query(
                "SELECT id, site_job_id FROM jobs WHERE site_job_id IS NOT NULL AND id IN (\(list: chunk.map { .of($0) }))"
            ) {
                parentSiteIDs[r.int(0)] = r.text(1)
            }
        }
        func object(_ text: String) -> [String: JSONValue] { (try? JSONValue.parse(text))?.objectValue ?? [:] }
        let remote = rows.map { r in
            var spec = JobSpec(workdir: r.text(2), app: r.text(1))
            spec.tags = object(r.text(3)).compactMapValues(\.stringValue)
            spec.data = object(r.text(5))
            spec.transfers = transfers[r.int(0)] ?? [:]
            spec.numNodes = r.int(6)
            spec.ranksPerNode = r.int(7)
            spec.threadsPerRank = r.int(8)
            spec.threadsPerCore = r.int(9)
            spec.launchParams = object(r.text(10)).compactMapValues(\.stringValue)
            spec.gpusPerRank = r.double(11)
            spec.nodePackingCount = r.int(12)
            spec.wallTimeMin = r.int(13)
            var job = RemoteJob(id: r.int(0), spec: spec)
            job.serializedParameters = r.text(4)
            job.parentIDs = ((try? JSONValue.parse(r.text(14)))?.arrayValue ?? []).compactMap(\.intValue)
            job.parentSiteIDs = job.parentIDs.reduce(into: [:]) { ids, id in ids[id] = parentSiteIDs[id] }
            return job.json
        }
        out.value("remote_jobs", .array(remote))
    }

    /// Apps defined in Python through the API (a pickled class), as `remote_apps`, only those whose digest
    /// differs from the site's `app_digests`: `{name, serialized_class, command_template, parameters,
    /// description, digest}`. `command_template` is read out of the pickle without running it
    /// (`Pickle.classAttribute`); null means a Python app, whose `run()` the site's Python runs.
    static func writeRemoteApps(siteID: Int, known: [String: String], call: Call, to out: inout JSONWriter) throws {
        let rows = try call.connection.query(
            "SELECT name, serialized_class, parameters, description FROM apps WHERE site_id = \(.of(siteID)) AND serialized_class <> ''"
        )
        out.beginArray("remote_apps")
        for r in rows {
            // "2": apps are sent with their class since issue #14 (sites that had only the template get it).
            let digest = String(FNV1a.hash64("2\u{0}" + r.text(1) + "\u{0}" + r.text(2)), radix: 16)
            guard known[r.text(0)] != digest else { continue }
            out.beginObject()
            out.field("name", r.text(0))
            out.field("serialized_class", r.text(1))
            if let template = Pickle.classAttribute("command_template", inBase64: r.text(1)) {
                out.field("command_template", template)
            } else {
                out.raw("command_template", "null")
            }
            out.raw("parameters", r.text(2))
            out.field("description", r.text(3))
            out.field("digest", digest)
            out.endObject()
        }
        out.endArray()
    }

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

    /// Batch jobs asked for through the API that the site has not taken (`remote_batch_jobs`), and the site's
    /// batch jobs a user asked to delete (`batch_deletions`, by the site's ids).
    static func writeRemoteBatchJobs(siteID: Int, call: Call, to out: inout JSONWriter) throws {
        let rows = try call.connection.query(
            """
            SELECT id, project, queue, num_nodes, wall_time_min, job_mode, filter_tags, optional_params
            FROM batch_jobs WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_batch_id IS NULL
            AND state = 'pending_submission' ORDER BY id LIMIT 100
            """)
        out.beginArray("remote_batch_jobs")
        for r in rows {
            out.beginObject()
            out.field("id", r.int(0))
            out.field("project", r.text(1))
            out.field("queue", r.text(2))
            out.field("num_nodes", r.int(3))
            out.field("wall_time_min", r.int(4))
            out.field("job_mode", r.text(5))
            out.raw("filter_tags", r.text(6))
            out.raw("optional_params", r.text(7))
            out.endObject()
        }
        out.endArray()
        let deletions = try call.connection.query(
            "SELECT site_batch_id FROM batch_jobs WHERE site_id = \(.of(siteID)) AND state = 'pending_deletion' AND site_batch_id IS NOT NULL"
        )
        out.value("batch_deletions", .array(deletions.map { .int($0.int(0)) }))
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

    /// Remote jobs the site could not take (`[{server_id, reason}]`): FAILED, with the reason as the event's
    /// message and in the job's record (an exception its `job.result()` raises), so the user sees why.
    static func reject(_ items: [JSONValue], siteID: Int, call: Call, now: Int64) throws {
        var reasons: [Int: String] = [:]
        for (i, item) in items.enumerated() {
            var r = try FieldReader(item, prefix: "rejected[\(i)]")
            let id = try r.requiredInt("server_id", in: 1...Int.max)
            reasons[id] = try r.requiredString("reason", maxBytes: 4096)
            try r.finish()
        }
        // Only this site's jobs that it has not taken.
        var mine = Set<Int>()
        for chunk in Array(reasons.keys).sorted().chunked(5000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                "SELECT id FROM jobs WHERE site_id = \(.of(siteID)) AND site_job_id IS NULL AND id IN (\(list: chunk.map { .of($0) }))"
            )
            for r in rows { mine.insert(r.int(0)) }
        }
        let states = try Jobs.states(mine.sorted(), call: call, lock: true)
        for (id, state) in states.sorted(by: { $0.key < $1.key }) where !state.isFinal {
            let reason = reasons[id] ?? ""
            let data = JSONValue.object(["message": .string(reason)]).serialized()
            try Jobs.move([(id, state, .failed)], data: data, now: now, call: call)
            try call.connection.execute(
                "UPDATE jobs SET serialized_exception = \(.text(Pickle.exceptionBase64("the site did not take job \(id): \(reason)"))) WHERE id = \(.of(id))"
            )
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

    private static func existingApps(siteID: Int, call: Call) throws -> [String: Int] {
        var ids: [String: Int] = [:]
        for r in try call.connection.query("SELECT name, id FROM apps WHERE site_id = \(.of(siteID))") {
            ids[r.text(0)] = r.int(1)
        }
        return ids
    }

    /// The server ids of `siteJobIDs` at the site, for those it has.
    static func serverIDs(_ siteJobIDs: [String], siteID: Int, call: Call) throws -> [String: Int] {
        var ids: [String: Int] = [:]
        for chunk in siteJobIDs.chunked(5000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                "SELECT site_job_id, id FROM jobs WHERE site_id = \(.of(siteID)) AND site_job_id IN (\(list: chunk.map { .text($0) }))"
            )
            for r in rows { ids[r.text(0)] = r.int(1) }
        }
        return ids
    }

    /// Creates the jobs the server does not have yet (by the site's id); returns every pushed job's server id.
    private static func createJobs(
        _ items: [JSONValue], siteID: Int, appIDs: [String: Int], call: Call, now: Int64,
        refused: inout [SyncRefusal]
    ) throws -> [String: Int] {
        var parsed: [(siteJobID: String, job: Jobs.NewJob, parents: [String])] = []
        var adopted: [String: Int] = [:]
        for (i, item) in items.enumerated() {
            var code = SyncRefusal.Code.invalid
            let error: WireError
            do {
                if let one = try parseJob(item, index: i, siteID: siteID, appIDs: appIDs, call: call, adopted: &adopted)
                {
                    parsed.append(one)
                }
                continue
            } catch let item as ItemRefused {
                (code, error) = (item.code, item.error)
            } catch let bad as WireError {
                error = bad
            }
            refused.append(
                SyncRefusal(
                    kind: "job", siteJobID: item.objectValue?["site_job_id"]?.stringValue ?? "", code: code,
                    message: error.message, field: error.field))
        }
        return try insertJobs(parsed, adopted: adopted, siteID: siteID, call: call, now: now)
    }

    /// Keeps with each app of the site why the site could not install it: `refused` holds every app it could
    /// not, so the others' reasons are cleared.
    private static func recordAppRefusals(_ refused: [String: String], siteID: Int, call: Call) throws {
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

    /// A pushed job refused for a reason the site acts on (not just a wrong field).
    struct ItemRefused: Error {
        let code: SyncRefusal.Code
        let error: WireError
    }

    /// One pushed job: its spec to insert, or nil when it adopts a job made through the API (recorded in
    /// `adopted`). Throws `ItemRefused` for an app the server lacks, or a job the user deleted before the
    /// adoption arrived, and `WireError` for a wrong field.
    private static func parseJob(
        _ item: JSONValue, index i: Int, siteID: Int, appIDs: [String: Int], call: Call, adopted: inout [String: Int]
    ) throws -> (siteJobID: String, job: Jobs.NewJob, parents: [String])? {
        let pushed = try PushedJob(item, at: "jobs[\(i)]")
        let siteJobID = pushed.siteJobID
        // A job made through the API and taken by the site: it gets the site's id, and its history becomes
        // the site's (the server's creation event goes; the site's own follows in events).
        if let serverID = pushed.serverID {
            let taken = try call.connection.execute(
                "UPDATE jobs SET site_job_id = \(.text(siteJobID)) WHERE id = \(.of(serverID)) AND site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_job_id IS NULL"
            )
            if taken == 1 {
                try call.connection.execute("DELETE FROM events WHERE job_id = \(.of(serverID))")
            } else if try call.connection.scalar(
                "SELECT id FROM jobs WHERE id = \(.of(serverID)) AND site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_job_id = \(.text(siteJobID))"
            ) == nil {
                // Deleted through the API before the adoption arrived: nothing to attach the site's job to.
                throw ItemRefused(
                    code: .deleted,
                    error: WireError("job \(serverID) was deleted on the server", field: "jobs[\(i)].server_id"))
            }
            adopted[siteJobID] = serverID
            return nil
        }
        guard let appID = appIDs[pushed.spec.app] else {
            throw ItemRefused(
                code: .unknownApp,
                error: WireError("the site has no app '\(pushed.spec.app)' on the server", field: "jobs[\(i)].app"))
        }
        var job = Jobs.NewJob(pushed.spec, appID: appID, siteID: siteID, state: pushed.state)
        job.serializedParameters = Pickle.encodeBase64(.object(pushed.parameters))
        return (siteJobID, job, pushed.parentSiteIDs)
    }

    /// Inserts the parsed jobs the server does not have yet; returns every pushed job's server id.
    private static func insertJobs(
        _ parsed: [(siteJobID: String, job: Jobs.NewJob, parents: [String])], adopted: [String: Int], siteID: Int,
        call: Call, now: Int64
    ) throws -> [String: Int] {
        var ids = try serverIDs(parsed.map(\.siteJobID) + adopted.keys, siteID: siteID, call: call)
        let missing = parsed.filter { ids[$0.siteJobID] == nil }
        guard !missing.isEmpty else { return ids }
        // Made in the order given; workdirs of one site are unique at the site, so the RETURNING map holds.
        let created = try Jobs.insert(missing.map(\.job), owner: call.user.id, now: now, connection: call.connection)
        for (k, item) in missing.enumerated() { ids[item.siteJobID] = created[k] }
        // The site's transfer items, as the server lists them; their states come with the site's events.
        let withTransfers = missing.indices.filter { !missing[$0].job.transfers.isEmpty }
        if !withTransfers.isEmpty {
            let facts = try Jobs.appFacts(Set(withTransfers.map { missing[$0].job.appID }), call: call)
            try Jobs.insertTransfers(
                withTransfers.map { missing[$0].job }, ids: withTransfers.map { created[$0] }, facts: facts,
                owner: call.user.id, connection: call.connection)
        }
        var sets: [(Int, [SQLValue])] = []
        for (k, item) in missing.enumerated() { sets.append((created[k], [.text(item.siteJobID)])) }
        try Jobs.updateRows(columns: ["site_job_id"], rows: sets, now: now, connection: call.connection)
        // Parents the server knows; the rest arrive with a later push and are linked then by the site's ids.
        let parentIDs = try serverIDs(Array(Set(missing.flatMap(\.parents))), siteID: siteID, call: call).merging(
            ids, uniquingKeysWith: { a, _ in a })
        var links: [[SQLValue]] = []
        for (k, item) in missing.enumerated() {
            let known = item.parents.compactMap { parentIDs[$0] }
            for parent in known { links.append([.of(created[k]), .of(parent)]) }
            if !known.isEmpty {
                try call.connection.execute(
                    "UPDATE jobs SET parent_ids = \(.text(JSONValue.array(known.map { .int($0) }).serialized())) WHERE id = \(.of(created[k]))"
                )
            }
        }
        for chunk in links.chunked(call.connection.rowsPerStatement(columns: 2)) where !chunk.isEmpty {
            try call.connection.execute("INSERT INTO job_parents (job_id, parent_id) VALUES \(SQL.rows(chunk))")
        }
        return ids
    }

    /// Records the site's events not recorded yet; each affected job takes the state of its latest event.
    private static func recordEvents(
        _ items: [JSONValue], siteID: Int, jobIDs known: [String: Int], call: Call, now: Int64,
        refused: inout [SyncRefusal]
    ) throws -> Int {
        guard !items.isEmpty else { return 0 }
        var pending: [(siteJobID: String, time: Int64, from: JobState, to: JobState, data: String)] = []
        // A Python app's return value or exception rides its RUN_DONE / RUN_ERROR event; it goes to the job's
        // columns, not into the event log.
        var results: [String: (time: Int64, value: String, exception: String)] = [:]
        var cleared = Set<String>()
        // A transfer's outcome rides the move it caused: it goes to the job's transfer items.
        var transferStates: [(siteJobID: String, items: [JSONValue])] = []
        for (i, item) in items.enumerated() {
            let siteJobID: String
            let time: Int64
            let from: JobState
            let to: JobState
            var data: [String: JSONValue]
            do {
                var e = try FieldReader(item, prefix: "events[\(i)]")
                siteJobID = try e.requiredString("site_job_id", maxBytes: 64)
                guard let t = try e.time("t") else { throw e.bad("t", "is required") }
                time = t
                from = try e.jobState("from")
                to = try e.jobState("to")
                data = try e.object("data") ?? [:]
                try e.finish()
            } catch let error as WireError {
                refused.append(
                    SyncRefusal(
                        kind: "event", siteJobID: item.objectValue?["site_job_id"]?.stringValue ?? "", code: .invalid,
                        message: error.message, field: error.field))
                continue
            }
            if let items = data.removeValue(forKey: "transfers")?.arrayValue, !items.isEmpty {
                transferStates.append((siteJobID, items))
            }
            let value = data.removeValue(forKey: "serialized_return_value")?.stringValue
            let exception = data.removeValue(forKey: "serialized_exception")?.stringValue
            if value != nil || exception != nil, results[siteJobID].map({ $0.time <= time }) ?? true {
                results[siteJobID] = (time, value ?? "", exception ?? "")
            } else if to == .runDone {
                // A run that ended well without a result (a shell app): what a failed run left goes.
                if let earlier = results[siteJobID] {
                    if earlier.time <= time { results[siteJobID] = (time, "", "") }
                } else {
                    cleared.insert(siteJobID)
                }
            }
            pending.append((siteJobID, time, from, to, jsonText(data)))
        }
        var ids = known
        let unknown = Array(Set(pending.map(\.siteJobID)).filter { ids[$0] == nil })
        ids.merge(try serverIDs(unknown, siteID: siteID, call: call), uniquingKeysWith: { a, _ in a })
        var unknownJobs = Set<String>()
        for (i, e) in pending.enumerated() where ids[e.siteJobID] == nil && unknownJobs.insert(e.siteJobID).inserted {
            refused.append(
                SyncRefusal(
                    kind: "event", siteJobID: e.siteJobID, code: .unknownJob,
                    message: "job \(e.siteJobID) is not on the server: push it (in jobs) first",
                    field: "events[\(i)].site_job_id"))
        }
        // What is recorded already (a repeated push) is not recorded again.
        let jobs = Array(Set(pending.compactMap { ids[$0.siteJobID] }))
        var seen = Set<String>()
        for chunk in jobs.chunked(5000) {
            let rows = try call.connection.query(
                "SELECT job_id, timestamp, from_state, to_state FROM events WHERE job_id IN (\(list: chunk.map { .of($0) }))"
            )
            for r in rows { seen.insert("\(r.int(0)) \(r.int(1)) \(r.text(2)) \(r.text(3))") }
        }
        var fresh: [(Int, String, String, String, Int64)] = []
        for e in pending {
            guard let job = ids[e.siteJobID] else { continue }
            let key = "\(job) \(e.time) \(e.from.rawValue) \(e.to.rawValue)"
            if seen.insert(key).inserted { fresh.append((job, e.from.rawValue, e.to.rawValue, e.data, e.time)) }
        }
        try Jobs.insertEvents(fresh, owner: call.user.id, siteID: siteID, connection: call.connection)
        // Each job's state is its latest event's, whatever order the site's hosts pushed them in.
        var latest: [String: [(Int, [SQLValue])]] = [:]
        for chunk in Set(fresh.map(\.0)).map({ $0 }).chunked(5000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                """
                SELECT e.job_id, e.to_state FROM events e WHERE e.job_id IN (\(list: chunk.map { .of($0) }))
                AND e.id = (SELECT e2.id FROM events e2 WHERE e2.job_id = e.job_id
                ORDER BY e2.timestamp DESC, e2.id DESC LIMIT 1)
                """)
            for r in rows { latest[r.text(1), default: []].append((r.int(0), [.text(r.text(1))])) }
        }
        for (_, rows) in latest {
            try Jobs.updateRows(columns: ["state"], rows: rows, now: now, connection: call.connection)
        }
        // A hook's change of the job's data, in its event's `data.data`, is applied in time order (null deletes).
        let dataChanges = fresh.compactMap { e -> (Int, Int64, [String: JSONValue])? in
            guard let d = (try? JSONValue.parse(e.3))?.objectValue?["data"]?.objectValue else { return nil }
            return (e.0, e.4, d)
        }.sorted { $0.1 < $1.1 }
        for (job, _, change) in dataChanges {
            guard let row = try call.connection.query("SELECT data FROM jobs WHERE id = \(.of(job))").first else {
                continue
            }
            var data = (try? JSONValue.parse(row.text(0)))?.objectValue ?? [:]
            for (key, value) in change { data[key] = value == .null ? nil : value }
            try call.connection.execute("UPDATE jobs SET data = \(.text(jsonText(data))) WHERE id = \(.of(job))")
        }
        // A run's exit status, as the site's events give it (RUN_DONE is 0), becomes the job's return_code.
        var codes: [Int: (Int64, Int)] = [:]
        for e in fresh {
            let code: Int? =
                e.2 == JobState.runDone.rawValue
                ? 0 : (try? JSONValue.parse(e.3))?.objectValue?["return_code"]?.intValue
            guard let code else { continue }
            if codes[e.0].map({ $0.0 <= e.4 }) ?? true { codes[e.0] = (e.4, code) }
        }
        if !codes.isEmpty {
            try Jobs.updateRows(
                columns: ["return_code"], rows: codes.map { ($0.key, [.of($0.value.1)]) }, now: now,
                connection: call.connection)
        }
        for (siteJobID, items) in transferStates {
            guard let job = ids[siteJobID] else { continue }
            for case .object(let item) in items {
                guard let state = item["state"]?.stringValue, Transfers.states.contains(state) else { continue }
                let info = item["error"].map { jsonText(["error": $0]) } ?? "{}"
                try call.connection.execute(
                    """
                    UPDATE transfer_items SET state = \(.text(state)), transfer_info = \(.text(info)) WHERE job_id = \(.of(job)) AND direction = \(.text(item["direction"]?.stringValue ?? ""))
                    AND local_path = \(.text(item["local_path"]?.stringValue ?? "")) AND remote_path = \(.text(item["remote_path"]?.stringValue ?? "")) AND location_alias = \(.text(item["location_alias"]?.stringValue ?? ""))
                    """)
            }
        }
        let resultRows = results.compactMap { siteJobID, r in
            ids[siteJobID].map { ($0, [SQLValue.text(r.value), .text(r.exception)]) }
        }
        for chunk in cleared.compactMap({ ids[$0] }).chunked(5000) {
            try call.connection.execute(
                """
                UPDATE jobs SET serialized_exception = '' WHERE id IN (\(list: chunk.map { .of($0) }))
                AND serialized_exception <> ''
                """)
        }
        if !resultRows.isEmpty {
            try Jobs.updateRows(
                columns: ["serialized_return_value", "serialized_exception"], rows: resultRows, now: now,
                connection: call.connection)
        }
        return fresh.count
    }
}

extension JSONValue {
    /// The strings of a list of strings; nil for anything else.
    func arrayOfStrings() -> [String]? {
        guard case .array(let items) = self else { return nil }
        let strings = items.compactMap(\.stringValue)
        return strings.count == items.count ? strings : nil
    }
}
