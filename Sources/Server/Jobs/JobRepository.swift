import Spool
import Wire

/// The SQL of jobs: reads, inserts and updates of `jobs` and the tables that hang off it (events, parents,
/// transfer items, requests to sites), for the API's routes and the sync alike. Nothing here parses a request
/// or decides a state; every statement binds its values (`SQL`).
enum JobRepository {
    /// What the checks need of each app named in a bulk create.
    struct AppFacts {
        var name: String
        var siteID: Int
        var parameters: [String: JSONValue]
        var slots: [String: JSONValue]
        var locations: [String: JSONValue]
        /// Whether it is a Python app: its class has no command template, or its site says so; nil when its
        /// site has not said (a site from before the server asked).
        var python: Bool?

        /// Whether an app with this pickled class (empty: a site's own app) and this site's word is a Python app.
        static func isPython(serializedClass: String, sitePython: Int?) -> Bool? {
            if !serializedClass.isEmpty {
                return Pickle.classAttribute("command_template", inBase64: serializedClass) == nil
            }
            return sitePython.map { $0 != 0 }
        }
    }

    static func appFacts(_ ids: Set<Int>, call: Call) throws -> [Int: AppFacts] {
        var facts: [Int: AppFacts] = [:]
        for chunk in Array(ids).chunked(1000) {
            let rows = try call.connection.query(
                """
                SELECT a.id, a.site_id, a.parameters, a.transfers, s.transfer_locations, a.serialized_class,
                a.site_python, a.name FROM apps a
                JOIN sites s ON s.id = a.site_id WHERE a.owner_id = \(.of(call.user.id)) AND a.id IN (\(list: chunk.map { .of($0) }))
                """)
            for r in rows {
                facts[r.int(0)] = AppFacts(
                    name: r.text(7), siteID: r.int(1), parameters: (try? JSONValue.parse(r.text(2)).objectValue) ?? [:],
                    slots: (try? JSONValue.parse(r.text(3)).objectValue) ?? [:],
                    locations: (try? JSONValue.parse(r.text(4)).objectValue) ?? [:],
                    python: AppFacts.isPython(serializedClass: r.text(5), sitePython: r.optionalInt(6)))
            }
        }
        return facts
    }

    /// Refuses an update that names an app or parents other than the job's own (they are fixed at creation: a
    /// job for another app, or with other parents, is a new job).
    static func checkFixed(_ updates: [(id: Int, patch: Jobs.Patch)], call: Call) throws {
        let named = updates.filter { $0.patch.appID != nil || $0.patch.parentIDs != nil }
        guard !named.isEmpty else { return }
        var apps: [Int: Int] = [:]
        var parents: [Int: Set<Int>] = [:]
        for chunk in named.map(\.id).chunked(1000) {
            let ids = chunk.map { SQLValue.of($0) }
            let owner = SQLValue.of(call.user.id)
            for r in try call.connection.query(
                "SELECT id, app_id FROM jobs WHERE owner_id = \(owner) AND id IN (\(list: ids))")
            {
                apps[r.int(0)] = r.int(1)
            }
            for r in try call.connection.query(
                """
                SELECT p.job_id, p.parent_id FROM job_parents p JOIN jobs j ON j.id = p.job_id
                WHERE j.owner_id = \(owner) AND p.job_id IN (\(list: ids))
                """)
            {
                parents[r.int(0), default: []].insert(r.int(1))
            }
        }
        for u in named {
            if let app = u.patch.appID, let own = apps[u.id], app != own {
                throw ServerError.badRequest(
                    "job \(u.id) is for app \(own): a job's app is fixed when it is made (make a new job)",
                    field: "app_id")
            }
            if let given = u.patch.parentIDs, apps[u.id] != nil, given != parents[u.id, default: []] {
                throw ServerError.badRequest(
                    "job \(u.id)'s parents are fixed when it is made (\(parents[u.id, default: []].sorted())); make a new job",
                    field: "parent_ids")
            }
        }
    }

    /// Whether each job's app (of `ids` owned by the caller) is a Python app (`AppFacts.isPython`).
    static func appKinds(_ ids: [Int], call: Call) throws -> [Int: Bool?] {
        var kinds: [Int: Bool?] = [:]
        for chunk in ids.chunked(1000) {
            let rows = try call.connection.query(
                """
                SELECT j.id, a.serialized_class, a.site_python FROM jobs j JOIN apps a ON a.id = j.app_id
                WHERE j.owner_id = \(.of(call.user.id)) AND j.id IN (\(list: chunk.map { .of($0) }))
                """)
            for r in rows {
                kinds[r.int(0)] = AppFacts.isPython(serializedClass: r.text(1), sitePython: r.optionalInt(2))
            }
        }
        return kinds
    }

    /// The states of `ids` owned by the caller.
    static func states(_ ids: [Int], call: Call, lock: Bool = false) throws -> [Int: JobState] {
        var states: [Int: JobState] = [:]
        for chunk in ids.chunked(10_000) {
            let rows = try call.connection.query(
                """
                SELECT id, state FROM jobs WHERE owner_id = \(.of(call.user.id)) AND id IN (\(list: chunk.map { .of($0) }))
                ORDER BY id\(raw: lock ? call.dialect.forUpdate : "")
                """)
            for r in rows { states[r.int(0)] = JobState(rawValue: r.text(1)) ?? .failed }
        }
        return states
    }

    /// A workdir is a directory at its site: one job each. A new job whose site already has a job there is
    /// refused (400 naming the item), not taken and then failed by the site.
    static func checkWorkdirsFree(_ jobs: [Jobs.NewJob], call: Call) throws {
        var bySite: [Int: [(index: Int, workdir: String)]] = [:]
        for (i, job) in jobs.enumerated() { bySite[job.siteID, default: []].append((i, job.workdir)) }
        for (site, items) in bySite.sorted(by: { $0.key < $1.key }) {
            for chunk in items.chunked(5000) {
                let rows = try call.connection.query(
                    "SELECT workdir, id FROM jobs WHERE site_id = \(.of(site)) AND workdir IN (\(list: chunk.map { .text($0.workdir) }))"
                )
                guard let taken = rows.first else { continue }
                let index = chunk.first { $0.workdir == taken.text(0) }?.index ?? chunk[0].index
                throw ServerError.badRequest(
                    "workdir '\(taken.text(0))' is taken at this site by job \(taken.int(1)); a site holds one job per "
                        + "workdir", field: "[\(index)].workdir")
            }
        }
    }

    /// The fields a new job's INSERT sets: all but its id and its batch job (a run sets it).
    private static let insertFields = JobField.columns.filter { ![.id, .batchJobID].contains($0) }

    /// Multi-row INSERTs; ids come back by workdir (unique in a request), so row order does not matter.
    static func insert(_ jobs: [Jobs.NewJob], owner: Int, now: Int64, connection c: any SQLConnection) throws -> [Int] {
        let names = (["owner_id", "site_id"] + insertFields.map(\.name)).joined(separator: ", ")
        var ids: [Int] = []
        ids.reserveCapacity(jobs.count)
        for chunk in jobs.chunked(c.rowsPerStatement(columns: insertFields.count + 2)) {
            let rows = chunk.map { job in [.of(owner), .of(job.siteID)] + insertFields.map { job.value($0, now: now) } }
            let made = try c.query(
                "INSERT INTO jobs (\(raw: names)) VALUES \(SQL.rows(rows)) RETURNING id, workdir")
            var byWorkdir: [String: Int] = [:]
            for r in made { byWorkdir[r.text("workdir")] = r.int("id") }
            for job in chunk { ids.append(byWorkdir[job.workdir] ?? 0) }
        }
        return ids
    }

    /// Events `(job, from, to, data JSON)` at `time`.
    static func insertEvents(
        _ events: [(Int, String, String, String)], owner: Int, time: Int64, connection c: any SQLConnection
    ) throws {
        try insertEvents(events.map { ($0.0, $0.1, $0.2, $0.3, time) }, owner: owner, connection: c)
    }

    /// Events `(job, from, to, data JSON, time)`; `siteID` when every job is that site's (a push), so that the
    /// rollups need not look their sites up.
    static func insertEvents(
        _ events: [(Int, String, String, String, Int64)], owner: Int, siteID: Int? = nil,
        connection c: any SQLConnection
    ) throws {
        let perStatement = c.rowsPerStatement(columns: 6)
        for chunk in events.chunked(perStatement) {
            let rows = chunk.map { e -> [SQLValue] in
                [.of(owner), .of(e.0), .int(e.4), .text(e.1), .text(e.2), .text(e.3)]
            }
            try c.execute(
                "INSERT INTO events (owner_id, job_id, timestamp, from_state, to_state, data) VALUES \(SQL.rows(rows))")
        }
        try Rollups.record(events, owner: owner, siteID: siteID, connection: c)
    }

    static func insertParentsAndTransfers(
        _ jobs: [Jobs.NewJob], ids: [Int], facts: [Int: AppFacts], owner: Int, connection c: any SQLConnection
    ) throws {
        var links: [[SQLValue]] = []
        for (i, job) in jobs.enumerated() {
            for parent in job.parentIDs { links.append([.of(ids[i]), .of(parent)]) }
        }
        for chunk in links.chunked(c.rowsPerStatement(columns: 2)) {
            try c.execute("INSERT INTO job_parents (job_id, parent_id) VALUES \(SQL.rows(chunk))")
        }
        try insertTransfers(jobs, ids: ids, facts: facts, owner: owner, connection: c)
    }

    /// The jobs' transfer items, from their slots as their apps define them.
    static func insertTransfers(
        _ jobs: [Jobs.NewJob], ids: [Int], facts: [Int: AppFacts], owner: Int, connection c: any SQLConnection
    ) throws {
        var items: [[SQLValue]] = []
        for (i, job) in jobs.enumerated() {
            for t in job.transfers {
                let slot = facts[job.appID]?.slots[t.slot]?.objectValue ?? [:]
                let direction = slot["direction"]?.stringValue ?? "in"
                items.append([
                    .of(owner), .of(ids[i]), .text(direction), .text(slot["local_path"]?.stringValue ?? "."),
                    .text(t.path), .text(t.alias), .of(slot["recursive"] == .bool(true)),
                    .text(direction == "in" ? "pending" : "awaiting_job"), .text(""), .text("{}"),
                ])
            }
        }
        for chunk in items.chunked(c.rowsPerStatement(columns: 10)) {
            try c.execute(
                """
                INSERT INTO transfer_items (owner_id, job_id, direction, local_path, remote_path, location_alias,
                recursive, state, task_id, transfer_info) VALUES \(SQL.rows(chunk))
                """)
        }
    }

    /// Sets `columns` of many jobs at once, `UPDATE ... FROM (VALUES ...)`, and moves their `last_update` on.
    static func updateRows(
        columns: [String], rows: [(Int, [SQLValue])], now: Int64, connection c: any SQLConnection
    ) throws {
        let d = c.dialect
        func cast(_ expression: String, _ column: String) -> String {
            JobField.cast(expression, column: column, dialect: d)
        }
        let selected =
            ["CAST(column1 AS BIGINT) AS id"]
            + columns.enumerated().map { "\(cast("column\($0.offset + 2)", $0.element)) AS \($0.element)" }
        let assignments = columns.map { "\($0) = v.\($0), " }.joined()
        for chunk in rows.chunked(c.rowsPerStatement(columns: columns.count + 1)) {
            let values = SQL.rows(chunk.map { [.of($0.0)] + $0.1 })
            try c.execute(
                """
                UPDATE jobs SET \(raw: assignments)last_update = \(raw: d.greatest)(jobs.last_update + 1, \(.int(now)))
                FROM (SELECT \(raw: selected.joined(separator: ", ")) FROM (VALUES \(values)) AS t) AS v
                WHERE jobs.id = v.id
                """)
        }
    }

    /// Jobs among `ids` with a stage-in, or a stage-out, not yet done.
    static func unfinishedTransfers(_ ids: [Int], call: Call) throws -> (stageIns: Set<Int>, stageOuts: Set<Int>) {
        var ins = Set<Int>()
        var outs = Set<Int>()
        for chunk in ids.chunked(10_000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                "SELECT DISTINCT job_id, direction FROM transfer_items WHERE state <> 'done' AND job_id IN (\(list: chunk.map { .of($0) }))"
            )
            for r in rows {
                if r.text(1) == "in" { ins.insert(r.int(0)) } else { outs.insert(r.int(0)) }
            }
        }
        return (ins, outs)
    }

    /// Children waiting on `finished` jobs whose parents have now all finished become `READY` (or `STAGED_IN`),
    /// with an event "All parents finished". A deleted parent counts as not finished.
    static func releaseChildren(of finished: [Int], call: Call, now: Int64) throws {
        let c = call.connection
        for chunk in finished.chunked(10_000) where !chunk.isEmpty {
            let candidates = try c.query(
                """
                SELECT DISTINCT p.job_id FROM job_parents p JOIN jobs j ON j.id = p.job_id
                WHERE j.state = \(.of(JobState.awaitingParents)) AND p.parent_id IN (\(list: chunk.map { .of($0) }))
                """
            ).map { $0.int(0) }
            guard !candidates.isEmpty else { continue }
            let blocked = Set(
                try c.query(
                    """
                    SELECT DISTINCT p.job_id FROM job_parents p LEFT JOIN jobs j ON j.id = p.parent_id
                    WHERE p.job_id IN (\(list: candidates.map { .of($0) })) AND (j.id IS NULL OR j.state <> \(.of(JobState.jobFinished)))
                    """
                ).map { $0.int(0) })
            let ready = candidates.filter { !blocked.contains($0) }
            let waiting = try unfinishedTransfers(ready, call: call)
            try move(
                ready.map {
                    (
                        $0, .awaitingParents,
                        JobState.ready.entered(stageInsDone: !waiting.stageIns.contains($0), stageOutsDone: true)
                    )
                },
                data: #"{"message":"All parents finished"}"#, now: now, call: call)
        }
    }

    /// The server's own moves `(job, from, to)` (no client asked for them): the state, `last_update` and one
    /// event each.
    static func move(_ moves: [(Int, JobState, JobState)], data: String, now: Int64, call: Call) throws {
        guard !moves.isEmpty else { return }
        var byState: [JobState: [(Int, [SQLValue])]] = [:]
        for (id, _, to) in moves { byState[to, default: []].append((id, [.text(to.rawValue)])) }
        for (_, rows) in byState {
            try updateRows(columns: ["state"], rows: rows, now: now, connection: call.connection)
        }
        try insertEvents(
            moves.map { ($0.0, $0.1.rawValue, $0.2.rawValue, data) }, owner: call.user.id, time: now,
            connection: call.connection)
    }

    /// Jobs among `ids` that a site owns (pushed by it), with their site.
    static func siteOwnedJobs(_ ids: [Int], call: Call) throws -> [Int: Int] {
        var owned: [Int: Int] = [:]
        for chunk in ids.chunked(10_000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                "SELECT id, site_id FROM jobs WHERE site_job_id IS NOT NULL AND id IN (\(list: chunk.map { .of($0) }))")
            for r in rows { owned[r.int(0)] = r.int(1) }
        }
        return owned
    }

    /// Holds a user's request about a site's job for the site (`kind` `state` with a target, or `delete`).
    static func request(job: Int, site: Int, kind: JobRequest.Kind, target: String?, call: Call, now: Int64) throws {
        try call.connection.execute(
            "INSERT INTO job_requests (owner_id, site_id, job_id, kind, target, created) VALUES (\(.of(call.user.id)), \(.of(site)), \(.of(job)), \(.text(kind.name)), \(target.map { .text($0) } ?? .null), \(.int(now)))"
        )
    }

    /// Deleting a site's jobs is asked of the site: it removes them and reports, and they go here then.
    static func requestSiteDeletions(where clause: SQL, call: Call) throws {
        let now = ServerClock.microseconds()
        let rows = try call.connection.query(
            "SELECT id, site_id FROM jobs WHERE site_job_id IS NOT NULL AND \(clause)")
        for r in rows { try request(job: r.int(0), site: r.int(1), kind: .delete, target: nil, call: call, now: now) }
    }

    /// Stage-outs of `jobs` (just postprocessed) may start.
    static func startStageOuts(of jobs: [Int], connection c: any SQLConnection) throws {
        for chunk in jobs.chunked(10_000) {
            try c.execute(
                """
                UPDATE transfer_items SET state = 'pending' WHERE direction = 'out' AND state = 'awaiting_job'
                AND job_id IN (\(list: chunk.map { .of($0) }))
                """)
        }
    }
}
