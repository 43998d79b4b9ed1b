import Spool
import Wire

/// The site as its push describes it: its record and policy, its apps' refusals, its batch jobs, its launchers'
/// time on their nodes, and its answers to users' requests.
extension SyncRoutes {
    /// The site's batch jobs as it reports them, made or updated by the site's id; and requests it refused,
    /// which become `submit_failed`. A batch job a user asked to delete stays `pending_deletion` until the site
    /// reports it ended (the original's rule).
    static func recordBatchJobs(_ reports: [BatchJobReport], _ refused: [Rejection], siteID: Int, call: Call) throws {
        let c = call.connection
        let owner = SQLValue.of(call.user.id)
        for b in reports {
            let schedulerID = SQLValue.of(b.schedulerID.flatMap { Int($0.prefix { $0.isNumber }) })
            let start = b.startTime.flatMap(ServerClock.parse).map { SQLValue.int($0) } ?? .null
            let end = b.endTime.flatMap(ServerClock.parse).map { SQLValue.int($0) } ?? .null
            if let serverID = b.serverID {
                try c.execute(
                    """
                    UPDATE batch_jobs SET site_batch_id = \(.of(b.siteBatchID)) WHERE id = \(.of(serverID))
                    AND site_id = \(.of(siteID)) AND owner_id = \(owner) AND site_batch_id IS NULL
                    """)
            }
            let info = SQLValue.text(jsonText(b.message.map { ["message": JSONValue.string($0)] } ?? [:]))
            let existing = try c.query(
                """
                SELECT id, state FROM batch_jobs WHERE site_id = \(.of(siteID))
                AND site_batch_id = \(.of(b.siteBatchID))\(raw: c.dialect.forUpdate)
                """
            ).first
            if let existing {
                let keep = existing.text("state") == BatchJob.State.pendingDeletion.rawValue && !b.state.isFinal
                let state = keep ? BatchJob.State.pendingDeletion : b.state
                try c.execute(
                    """
                    UPDATE batch_jobs SET state = \(.text(state.rawValue)), scheduler_id = \(schedulerID),
                    start_time = \(start), end_time = \(end), status_info = \(info) WHERE id = \(.of(existing.int("id")))
                    """)
            } else {
                try c.execute(
                    """
                    INSERT INTO batch_jobs (owner_id, site_id, site_batch_id, scheduler_id, project, queue, num_nodes,
                    wall_time_min, job_mode, optional_params, filter_tags, partitions, state, status_info, start_time,
                    end_time) VALUES (\(owner), \(.of(siteID)), \(.of(b.siteBatchID)), \(schedulerID),
                    \(.text(b.project)), \(.text(b.queue)), \(.of(b.numNodes)), \(.of(b.wallTimeMinutes)), 'mpi',
                    \(.text(jsonText(b.optionalParams))), \(.text(jsonText(b.filterTags))), NULL,
                    \(.text(b.state.rawValue)), \(info), \(start), \(end))
                    """)
            }
            // Runs that ended in it before the server had its row.
            try Rollups.takePending(
                owner: call.user.id, siteID: siteID, siteBatchID: b.siteBatchID, connection: c)
            // Jobs whose run in this batch job the server heard of before the batch job itself.
            try c.execute(
                """
                UPDATE jobs SET batch_job_id = (SELECT id FROM batch_jobs WHERE site_id = \(.of(siteID))
                AND site_batch_id = \(.of(b.siteBatchID))) WHERE site_id = \(.of(siteID))
                AND site_batch_id = \(.of(b.siteBatchID)) AND batch_job_id IS NULL
                """)
        }
        for r in refused {
            try c.execute(
                """
                UPDATE batch_jobs SET state = 'submit_failed', status_info = \(.text(jsonText(["error": .string(r.reason)])))
                WHERE id = \(.of(r.serverID)) AND site_id = \(.of(siteID)) AND owner_id = \(owner) AND site_batch_id IS NULL
                """)
        }
    }

    /// The site's answers to users' requests: each request is closed. A refused one's reason is in the job's
    /// `data.balsam_request_refused`, which the site writes into its job (once the job is not under a launcher)
    /// and pushes with its spec: one value at both ends, written by one of them.
    static func closeRequests(_ answers: [RequestAnswer], siteID: Int, call: Call) throws {
        let c = call.connection
        for answer in answers {
            try c.execute(
                """
                DELETE FROM job_requests WHERE id = \(.of(answer.id)) AND site_id = \(.of(siteID))
                AND owner_id = \(.of(call.user.id))
                """)
        }
    }

    /// Its launchers' time on their nodes, kept per lease: the utilization report counts the nodes of those no
    /// batch job started as held.
    static func recordLauncherSessions(_ sessions: [LauncherSession], siteID: Int, call: Call) throws {
        for s in sessions {
            let end = s.end.flatMap(ServerClock.parse).map { SQLValue.int($0) } ?? .null
            try call.connection.execute(
                """
                INSERT INTO launcher_sessions (owner_id, site_id, lease, nodes, start_time, end_time, site_batch_id)
                VALUES (\(.of(call.user.id)), \(.of(siteID)), \(.text(s.lease)), \(.of(s.nodes)),
                \(.int(ServerClock.parse(s.start) ?? 0)), \(end), \(.of(s.batchJob)))
                ON CONFLICT (site_id, lease) DO UPDATE SET nodes = excluded.nodes, end_time = excluded.end_time
                """)
        }
    }

    /// The caller's site of that name, made if missing, its row then set to `sets` (path, `last_refresh`, ...).
    /// The site's record: by the id the server gave it (kept by the site: a user's rename of the record through
    /// the API stands, and is not a new site), else by its name, else a new one.
    static func upsertSite(
        name: String, path: String, id known: Int? = nil, sets: [(String, SQLValue)], call: Call, now: Int64
    ) throws -> Int {
        guard path.hasPrefix("/") else { throw ServerError.badRequest("must be absolute", field: "site.path") }
        let c = call.connection
        let byID: Int? =
            try known.flatMap { known in
                try c.scalar(
                    "SELECT id FROM sites WHERE owner_id = \(.of(call.user.id)) AND id = \(.of(known))\(raw: c.dialect.forUpdate)"
                )
            }
        let id =
            try byID
            ?? c.scalar(
                "SELECT id FROM sites WHERE owner_id = \(.of(call.user.id)) AND name = \(.text(name))\(raw: c.dialect.forUpdate)"
            )
            ?? c.scalar(
                """
                INSERT INTO sites (owner_id, name, path, globus_endpoint_id, backfill_windows, queued_jobs,
                optional_batch_job_params, allowed_projects, allowed_queues, transfer_locations, last_refresh,
                creation_date) VALUES (\(.of(call.user.id)), \(.text(name)), \(.text(path)), NULL, '{}', '{}', '{}', '[]', '{}', '{}', \(.int(now)), \(.int(now))) RETURNING id
                """) ?? 0
        try c.execute("UPDATE sites SET \(SQL.assignments(sets)) WHERE id = \(.of(id))")
        return id
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
