import Hummingbird
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

}

extension SyncRoutes {
    /// `/sync/push`: the one route a site's token may call (with `/auth/password/me`).
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(e, [(.post, "/push", push)], siteTokens: true)
    }
}
