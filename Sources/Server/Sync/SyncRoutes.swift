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
        if call.body.isEmpty { throw ServerError.badRequest("the request needs a JSON body") }
        // `wait=N`: a push that tells nothing and is answered with nothing is held until news for the site
        // (SiteNews), at most N seconds.
        let wait = try call.query.int("wait")
        if let wait, wait < 0 || wait > PushRequest.longestWait {
            throw ServerError.badRequest("must be between 0 and \(PushRequest.longestWait) seconds", field: "wait")
        }
        // Item by item, the lists' lengths checked before an item is built: memory bounded by the body.
        let push = try PushRequest(body: call.body, maxItems: call.limits.bulkItems * 4)
        if let bound = call.user.siteName, bound != push.site.name {
            throw ServerError(
                status: 403, "this token was made for site '\(bound)'; it cannot push as site '\(push.site.name)'",
                field: "site.name")
        }
        for (i, app) in push.apps.enumerated() {
            // A site's app keeps the name it has at the site (letters, digits, `_`, `-`, `.`): the same name on
            // both ends, and two apps of a site never share one.
            do { try App.validateName(app.name) } catch { throw WireError(error.message, field: "apps[\(i)].name") }
            try Apps.checkParameters(app.parameters, input: try FieldReader(.object([:]), prefix: "apps[\(i)]"))
        }
        let c = call.connection
        let owner = call.user.id
        let now = ServerClock.microseconds()
        let (answer, siteID, taken, refused) = try c.transaction { () -> (Reply, Int, Int, [SyncRefusal]) in
            let siteID = try recordSite(push.site, call: call, now: now)
            // Read before this transaction looks for work: news posted after it moves the mark.
            let mark = call.news?.mark(owner: owner, site: siteID)
            let appIDs = try recordApps(push.apps, siteID: siteID, call: call)
            var reply = PushReply(siteID: siteID)
            reply.pushFields = PushRequest.laterFields
            reply.apps = appIDs
            if let refusedApps = push.refusedApps { try recordAppRefusals(refusedApps, siteID: siteID, call: call) }
            reply.jobs = try createJobs(
                push.jobs, siteID: siteID, appIDs: appIDs, call: call, now: now, refused: &reply.refused)
            // Batch jobs before events: a run's end adds its node-seconds to the batch job its RUNNING event names,
            // which must exist by then (a batch job made, run and ended within one push lost them, and the server's
            // report differed from the site's: found by DifferentialTests).
            try recordBatchJobs(push.batchJobs, push.rejectedBatchJobs, siteID: siteID, call: call)
            reply.events = try recordEvents(
                push.events, siteID: siteID, jobIDs: reply.jobs, call: call, now: now, refused: &reply.refused)
            try reject(push.rejected, siteID: siteID, call: call, now: now)
            // Jobs removed at the site (`balsam rm`) go here too, with their events.
            for chunk in push.removed.chunked(5000) where !chunk.isEmpty {
                try c.execute(
                    """
                    DELETE FROM jobs WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(owner))
                    AND site_job_id IN (\(list: chunk.map { .text($0) }))
                    """)
            }
            try recordLauncherSessions(push.launcherSessions, siteID: siteID, call: call)
            try closeRequests(push.requestsDone, siteID: siteID, call: call)
            reply.remoteJobs = try remoteJobs(siteID: siteID, call: call).map { .read($0) }
            reply.remoteApps = try remoteApps(siteID: siteID, known: push.appDigests, call: call)
            (reply.remoteBatchJobs, reply.batchDeletions) = try remoteBatchJobs(siteID: siteID, call: call)
            reply.requests = try c.query(
                """
                SELECT r.id, j.site_job_id, r.kind, r.target FROM job_requests r JOIN jobs j ON j.id = r.job_id
                WHERE r.site_id = \(.of(siteID)) AND r.owner_id = \(.of(owner)) ORDER BY r.id LIMIT 1000
                """
            ).map { r in
                JobRequest(
                    id: r.int("id"), siteJobID: r.text("site_job_id"), kind: JobRequest.Kind(r.text("kind")),
                    target: r.optionalText("target"))
            }
            var answer = Reply.json(reply.json)
            // Only a small body is held (an idle push is a few hundred bytes): a held request keeps its body for
            // the rerun, and must not keep megabytes for a minute.
            if let wait, wait > 0, let mark, call.mayHold, call.body.count <= SyncRoutes.largestHeldBody,
                push.carriesNothing, reply.bringsNothing
            {
                answer.holdForNews = (owner, siteID, mark, Double(wait))
            }
            return (answer, siteID, reply.events, reply.refused)
        }
        // Counted once committed; a held push run again after news counts its events, not a second push.
        call.metrics?.push(events: taken, refused: refused, first: call.mayHold)
        if let lag = push.unpushedLagSeconds { call.metrics?.siteLag(siteID, seconds: lag) }
        return answer
    }

    /// The site's record, made or brought up to date, with its transfer locations and batch-job policy: one
    /// UPDATE of its row per push (each push is the site's heartbeat, so this runs every second per site).
    static func recordSite(_ site: PushedSite, call: Call, now: Int64) throws -> Int {
        var sets: [(String, SQLValue)] = [("path", .text(site.path)), ("last_refresh", .int(now))]
        if let locations = site.transferLocations {
            // The site's transfer locations (ALIAS: URL), which its jobs' slots name.
            sets.append(("transfer_locations", .text(jsonText(locations))))
        }
        if let policy = site.policy {
            // Its batch-job policy, which the original client's `balsam queue submit` checks against.
            let queues = JSONValue.object(
                policy.allowedQueues.mapValues { q in
                    .object([
                        "max_nodes": .int(q.maxNodes), "max_walltime": .int(q.longestWallTimeMinutes),
                        "max_queued_jobs": .int(q.maxQueuedJobs),
                    ])
                }
            ).serialized()
            let projects = JSONValue.array(policy.allowedProjects.map { .string($0) }).serialized()
            sets += [
                ("allowed_queues", .text(queues)), ("allowed_projects", .text(projects)),
                ("optional_batch_job_params", .text(jsonText(policy.optionalParams))),
            ]
        }
        return try upsertSite(name: site.name, path: site.path, id: site.id, sets: sets, call: call, now: now)
    }

    /// The site's apps, made or updated; returns every app of the site with its id.
    static func recordApps(_ apps: [PushedApp], siteID: Int, call: Call) throws -> [String: Int] {
        let c = call.connection
        var appIDs = try existingApps(siteID: siteID, call: call)
        for app in apps {
            let (p, t) = (SQLValue.text(jsonText(app.parameters)), SQLValue.text(jsonText(app.transfers)))
            let (description, source) = (SQLValue.text(app.description), SQLValue.text(app.sourceCode))
            let python = app.isPython.map { SQLValue.of($0 ? 1 : 0) } ?? .null
            if let id = appIDs[app.name] {
                try c.execute(
                    """
                    UPDATE apps SET description = \(description), parameters = \(p), source_code = \(source),
                    transfers = \(t), site_python = \(python) WHERE id = \(.of(id))
                    """)
            } else {
                appIDs[app.name] = try c.scalar(
                    """
                    INSERT INTO apps (owner_id, site_id, name, serialized_class, description, parameters,
                    source_code, transfers, site_python) VALUES (\(.of(call.user.id)), \(.of(siteID)),
                    \(.text(app.name)), '', \(description), \(p), \(source), \(t), \(python)) RETURNING id
                    """)
            }
        }
        return appIDs
    }
}

extension SyncRoutes {
    /// The largest push that may wait for news.
    static let largestHeldBody = 64 << 10

    /// `/sync/push`: the one route a site's token may call (with `/auth/password/me`).
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(e, [(.post, "/push", push)], siteTokens: true)
    }
}
