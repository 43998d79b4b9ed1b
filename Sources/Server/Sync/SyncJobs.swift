import Spool
import Wire

/// The site's jobs and events as its push carries them: jobs made at the site are created (or adopted, for
/// jobs made through the API), events recorded once with the site's own times, each job taking the state of its
/// latest event; jobs the site refused are failed with the reason.
extension SyncRoutes {
    /// Remote jobs the site could not take (`[{server_id, reason}]`): FAILED, with the reason as the event's
    /// message and in the job's record (an exception its `job.result()` raises), so the user sees why.
    static func reject(_ rejections: [Rejection], siteID: Int, call: Call, now: Int64) throws {
        let reasons = Dictionary(rejections.map { ($0.serverID, $0.reason) }, uniquingKeysWith: { _, b in b })
        // Only this site's jobs that it has not taken.
        var mine = Set<Int>()
        for chunk in Array(reasons.keys).sorted().chunked(5000) where !chunk.isEmpty {
            let rows = try call.connection.query(
                "SELECT id FROM jobs WHERE site_id = \(.of(siteID)) AND site_job_id IS NULL AND id IN (\(list: chunk.map { .of($0) }))"
            )
            for r in rows { mine.insert(r.int(0)) }
        }
        let states = try JobRepository.states(mine.sorted(), call: call, lock: true)
        for (id, state) in states.sorted(by: { $0.key < $1.key }) where !state.isFinal {
            let reason = reasons[id] ?? ""
            let data = JSONValue.object(["message": .string(reason)]).serialized()
            try JobRepository.move([(id, state, .failed)], data: data, now: now, call: call)
            try call.connection.execute(
                "UPDATE jobs SET serialized_exception = \(.text(Pickle.exceptionBase64("the site did not take job \(id): \(reason)"))) WHERE id = \(.of(id))"
            )
        }
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
    static func createJobs(
        _ items: [PushItem<PushedJob>], siteID: Int, appIDs: [String: Int], call: Call, now: Int64,
        refused: inout [SyncRefusal]
    ) throws -> [String: Int] {
        var parsed: [(siteJobID: String, job: Jobs.NewJob, parents: [String])] = []
        var adopted: [String: Int] = [:]
        for (i, item) in items.enumerated() {
            let (siteJobID, code, error): (String, SyncRefusal.Code, WireError)
            switch item {
            case .unreadable(let id, let wrong): (siteJobID, code, error) = (id, .invalid, wrong)
            case .read(let pushed):
                do {
                    if let one = try parseJob(
                        pushed, index: i, siteID: siteID, appIDs: appIDs, call: call, adopted: &adopted)
                    {
                        parsed.append(one)
                    }
                    continue
                } catch let item as ItemRefused {
                    (siteJobID, code, error) = (pushed.siteJobID, item.code, item.error)
                }
            }
            refused.append(
                SyncRefusal(
                    kind: "job", siteJobID: siteJobID, code: code, message: error.message, field: error.field))
        }
        return try insertJobs(parsed, adopted: adopted, siteID: siteID, call: call, now: now)
    }

    /// A pushed job refused for a reason the site acts on (not just a wrong field).
    struct ItemRefused: Error {
        let code: SyncRefusal.Code
        let error: WireError
    }

    /// One pushed job: its spec to insert, or nil when it adopts a job made through the API (recorded in
    /// `adopted`). Throws `ItemRefused` for an app the server lacks, or a job the user deleted before the
    /// adoption arrived, and `WireError` for a wrong field.
    static func parseJob(
        _ pushed: PushedJob, index i: Int, siteID: Int, appIDs: [String: Int], call: Call, adopted: inout [String: Int]
    ) throws -> (siteJobID: String, job: Jobs.NewJob, parents: [String])? {
        let siteJobID = pushed.siteJobID
        // A job made through the API and taken by the site: it gets the site's id. Its history is one: its
        // creation here (the server's CREATED event, which the original client shows), then the site's, from
        // its adoption (the site's own CREATED event, by balsam-sync) on. No event is rewritten or deleted.
        if let serverID = pushed.serverID {
            let taken = try call.connection.execute(
                "UPDATE jobs SET site_job_id = \(.text(siteJobID)) WHERE id = \(.of(serverID)) AND site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_job_id IS NULL"
            )
            if taken == 1 {
                try forwardWhatChangedBeforeAdoption(serverID, siteID: siteID, call: call)
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
        job.siteJobID = siteJobID
        job.serializedParameters = Pickle.encodeBase64(.object(pushed.parameters))
        // Plain values the site has: taken again when the job is pushed again (none: parameters only the
        // site's Python reads, which the server keeps as it has them).
        job.parameters = pushed.parameters.isEmpty ? nil : .object(pushed.parameters)
        return (siteJobID, job, pushed.parentSiteIDs)
    }

    /// A job the server has, pushed again (its spec changed at the site, `balsam modify`; or its creation sent
    /// again): the site is the truth of its jobs' spec, which the server takes, every spec column by the job's
    /// declaration, and its plain parameters.
    static func updateSpecs(_ known: [(id: Int, job: Jobs.NewJob)], call: Call, now: Int64) throws {
        guard !known.isEmpty else { return }
        let fields = JobField.spec.filter { $0.column != nil }
        var rows: [(Int, [SQLValue])] = []
        var withParameters: [(Int, [SQLValue])] = []
        for (id, job) in known {
            rows.append((id, fields.map { $0.stored(job.spec) }))
            if job.parameters != nil { withParameters.append((id, [.text(job.serializedParameters)])) }
        }
        try JobRepository.updateRows(columns: fields.map(\.name), rows: rows, now: now, connection: call.connection)
        if !withParameters.isEmpty {
            try JobRepository.updateRows(
                columns: [JobField.serializedParameters.name], rows: withParameters, now: now,
                connection: call.connection)
        }
    }

    /// A user's change of a job made through the API, between the reply that took it to the site and the
    /// adoption that tells the server: it applied here only, so it goes to the site now, as a change of a site's
    /// job would (a kill as a kill; a change of the spec, made after the job's creation, as a modify).
    static func forwardWhatChangedBeforeAdoption(_ id: Int, siteID: Int, call: Call) throws {
        let now = ServerClock.microseconds()
        guard
            let row = try call.connection.query(
                """
                SELECT j.last_update, j.state, j.serialized_parameters, \(raw: JobField.specList("j")),
                (SELECT min(e.timestamp) FROM events e WHERE e.job_id = j.id) AS made FROM jobs j WHERE j.id = \(.of(id))
                """
            ).first
        else { return }
        if row.text("state") == JobState.failed.rawValue {
            try JobRepository.request(
                job: id, site: siteID, kind: .state, target: JobState.failed.rawValue, call: call, now: now)
        }
        guard !row.isNull(row.names.positions(["made"])[0]), row.int("last_update") > row.int("made") else { return }
        let spec = JobField.spec(row, app: "")
        let change = Jobs.forwardedChange(
            JobField.spec.filter(\.forwarded).map { ($0.name, $0.stored(spec)) }
                + [(JobField.serializedParameters.name, .text(row.text(JobField.serializedParameters.name)))])
        try JobRepository.request(
            job: id, site: siteID, kind: .modify, target: JSONValue.object(change).serialized(), call: call, now: now)
    }

    /// Inserts the parsed jobs the server does not have yet; returns every pushed job's server id.
    static func insertJobs(
        _ parsed: [(siteJobID: String, job: Jobs.NewJob, parents: [String])], adopted: [String: Int], siteID: Int,
        call: Call, now: Int64
    ) throws -> [String: Int] {
        var ids = try serverIDs(parsed.map(\.siteJobID) + adopted.keys, siteID: siteID, call: call)
        try updateSpecs(parsed.compactMap { p in ids[p.siteJobID].map { ($0, p.job) } }, call: call, now: now)
        let missing = parsed.filter { ids[$0.siteJobID] == nil }
        guard !missing.isEmpty else { return ids }
        // Made in the order given; workdirs of one site are unique at the site, so the RETURNING map holds.
        let created = try JobRepository.insert(
            missing.map(\.job), owner: call.user.id, now: now, connection: call.connection)
        for (k, item) in missing.enumerated() { ids[item.siteJobID] = created[k] }
        // The site's transfer items, as the server lists them; their states come with the site's events.
        let withTransfers = missing.indices.filter { !missing[$0].job.transfers.isEmpty }
        if !withTransfers.isEmpty {
            let facts = try JobRepository.appFacts(Set(withTransfers.map { missing[$0].job.appID }), call: call)
            try JobRepository.insertTransfers(
                withTransfers.map { missing[$0].job }, ids: withTransfers.map { created[$0] }, facts: facts,
                owner: call.user.id, connection: call.connection)
        }
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

    /// An event as the server takes it from a push: the job by the server's id, the move, and its facts.
    struct Taken {
        var job: Int
        var time: Int64
        var from: String
        var to: String
        var facts: EventFacts
        /// Its `data` as the site sent it.
        var data: [String: JSONValue]

        /// What makes an event itself: a repeated push's copy of one is the same.
        struct Key: Hashable {
            var job: Int
            var time: Int64
            var from: String
            var to: String
        }
        var key: Key { Key(job: job, time: time, from: from, to: to) }
    }

    /// Records the site's events not recorded yet; each affected job takes the state of its latest event, its
    /// return code, result, data changes, transfer items and batch job from their facts.
    static func recordEvents(
        _ items: [PushItem<PushedEvent>], siteID: Int, jobIDs known: [String: Int], call: Call, now: Int64,
        refused: inout [SyncRefusal]
    ) throws -> Int {
        guard !items.isEmpty else { return 0 }
        var pending: [PushedEvent] = []
        for (i, item) in items.enumerated() {
            guard case .read(let event) = item else {
                if case .unreadable(let id, let error) = item {
                    refused.append(
                        SyncRefusal(
                            kind: "event", siteJobID: id, code: .invalid, message: error.message, field: error.field))
                }
                continue
            }
            if let wrong = ServerClock.outsideWindow(event.microseconds, now: now) {
                refused.append(
                    SyncRefusal(
                        kind: "event", siteJobID: event.siteJobID, code: .invalid,
                        message: "\(event.time) is \(wrong): is the site's clock right?", field: "events[\(i)].t"))
                continue
            }
            pending.append(event)
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
        let taken = pending.compactMap { e in
            ids[e.siteJobID].map {
                Taken(
                    job: $0, time: e.microseconds, from: e.from.rawValue, to: e.to.rawValue, facts: e.facts,
                    data: e.data)
            }
        }
        let (fresh, latest) = try freshEvents(taken, call: call)
        // A run's results and transfer outcomes go to the job's columns and items, not into the event log.
        try JobRepository.insertEvents(
            fresh.map { e in
                var logged = e.data
                for key in [EventFacts.Key.returnValue, .exception, .transfers] { logged[key.rawValue] = nil }
                return (e.job, e.from, e.to, jsonText(logged), e.time)
            }, owner: call.user.id, siteID: siteID, connection: call.connection)
        try linkBatchJobs(ranIn(fresh), siteID: siteID, connection: call.connection)
        try applyMoves(fresh, latest: latest, call: call, now: now)
        try applyFacts(taken, call: call, now: now)
        return fresh.count
    }

    /// Of `taken`, those not recorded already (a repeated push), in order, with each affected job's latest
    /// state, recorded before or now (newest time first; at one time, the last recorded). A job made through the
    /// API has the site's creation of it recorded as its adoption: a step from the state the server gave it.
    static func freshEvents(_ taken: [Taken], call: Call) throws -> ([Taken], [Int: String]) {
        var seen = Set<Taken.Key>()
        // A job's events rank by time, then recorded before this push (by row id) below recorded now (in order).
        var latest: [Int: (rank: (Int64, Int, Int), state: String)] = [:]
        func note(_ job: Int, rank: (Int64, Int, Int), _ state: String) {
            if let was = latest[job], was.rank > rank { return }
            latest[job] = (rank, state)
        }
        // The CREATED events recorded of each job (time, state), earliest first: a job's creation pushed again is
        // one of them; one that is not is the site's adoption of a job made here, through the API.
        var creations: [Int: [(time: Int64, state: String)]] = [:]
        let created = JobState.created.rawValue
        for chunk in Array(Set(taken.map(\.job))).chunked(5000) {
            let rows = try call.connection.query(
                "SELECT job_id, timestamp, from_state, to_state, id FROM events WHERE job_id IN (\(list: chunk.map { .of($0) })) ORDER BY timestamp, id"
            )
            for r in rows {
                let (job, time, from, to) = (r.int(0), Int64(r.int(1)), r.text(2), r.text(3))
                seen.insert(Taken.Key(job: job, time: time, from: from, to: to))
                note(job, rank: (time, 0, r.int(4)), to)
                if from == created { creations[job, default: []].append((time, to)) }
            }
        }
        var fresh: [Taken] = []
        for var e in taken {
            if e.from == JobState.created.rawValue, let made = creations[e.job]?.first,
                creations[e.job]?.contains(where: { $0.time == e.time && $0.state == e.to }) == false
            {
                e.from = made.state
            }
            if seen.insert(e.key).inserted { fresh.append(e) }
        }
        for (k, e) in fresh.enumerated() { note(e.job, rank: (e.time, 1, k), e.to) }
        // Only a state a fresh event set is news.
        return (fresh, latest.compactMapValues { $0.rank.1 == 1 ? $0.state : nil })
    }

    /// Each job changed once: its state when its latest event is new, its return code when a fresh event gave
    /// one (RUN_DONE is 0); then hooks' changes of its data, in time order (null deletes).
    static func applyMoves(_ fresh: [Taken], latest: [Int: String], call: Call, now: Int64) throws {
        var codes: [Int: (Int64, Int)] = [:]
        for e in fresh {
            guard let code = e.to == JobState.runDone.rawValue ? 0 : e.facts.returnCode else { continue }
            if codes[e.job].map({ $0.0 <= e.time }) ?? true { codes[e.job] = (e.time, code) }
        }
        let (state, returnCode) = (JobField.state.name, JobField.returnCode.name)
        var changes: [[String]: [(Int, [SQLValue])]] = [:]
        for job in Set(fresh.map(\.job)) {
            switch (latest[job], codes[job]?.1) {
            case (let s?, let c?): changes[[state, returnCode], default: []].append((job, [.text(s), .of(c)]))
            case (let s?, nil): changes[[state], default: []].append((job, [.text(s)]))
            case (nil, let c?): changes[[returnCode], default: []].append((job, [.of(c)]))
            case (nil, nil): break
            }
        }
        for (columns, rows) in changes.sorted(by: { $0.key.count < $1.key.count }) {
            try JobRepository.updateRows(columns: columns, rows: rows, now: now, connection: call.connection)
        }
        for e in fresh.filter({ $0.facts.dataChange != nil }).sorted(by: { $0.time < $1.time }) {
            guard let change = e.facts.dataChange,
                let row = try call.connection.query("SELECT data FROM jobs WHERE id = \(.of(e.job))").first
            else { continue }
            var data = (try? JSONValue.parse(row.text(0)))?.objectValue ?? [:]
            for (key, value) in change { data[key] = value == .null ? nil : value }
            try call.connection.execute("UPDATE jobs SET data = \(.text(jsonText(data))) WHERE id = \(.of(e.job))")
        }
    }

    /// What every pushed event says of its job's transfer items and of its run's result (also a repeated
    /// push's: the latest result of a job wins, and a run that ended well without one clears a failed run's).
    static func applyFacts(_ taken: [Taken], call: Call, now: Int64) throws {
        var results: [Int: (time: Int64, value: String, exception: String)] = [:]
        var cleared = Set<Int>()
        for e in taken {
            for case .object(let item) in e.facts.transfers ?? [] {
                guard let state = item["state"]?.stringValue, Transfers.states.contains(state) else { continue }
                let info = item["error"].map { jsonText(["error": $0]) } ?? "{}"
                try call.connection.execute(
                    """
                    UPDATE transfer_items SET state = \(.text(state)), transfer_info = \(.text(info)) WHERE job_id = \(.of(e.job)) AND direction = \(.text(item["direction"]?.stringValue ?? ""))
                    AND local_path = \(.text(item["local_path"]?.stringValue ?? "")) AND remote_path = \(.text(item["remote_path"]?.stringValue ?? "")) AND location_alias = \(.text(item["location_alias"]?.stringValue ?? ""))
                    """)
            }
            if e.facts.hasResult, results[e.job].map({ $0.time <= e.time }) ?? true {
                results[e.job] = (e.time, e.facts.returnValue ?? "", e.facts.exception ?? "")
            } else if e.to == JobState.runDone.rawValue {
                if let earlier = results[e.job] {
                    if earlier.time <= e.time { results[e.job] = (e.time, "", "") }
                } else {
                    cleared.insert(e.job)
                }
            }
        }
        for chunk in Array(cleared).chunked(5000) where !chunk.isEmpty {
            try call.connection.execute(
                """
                UPDATE jobs SET serialized_exception = '' WHERE id IN (\(list: chunk.map { .of($0) }))
                AND serialized_exception <> ''
                """)
        }
        if !results.isEmpty {
            try JobRepository.updateRows(
                columns: [JobField.serializedReturnValue.name, JobField.serializedException.name],
                rows: results.map { ($0.key, [SQLValue.text($0.value.value), .text($0.value.exception)]) }, now: now,
                connection: call.connection)
        }
    }

    /// The site's batch job each job's latest new RUNNING event names (the site's id), by job.
    static func ranIn(_ fresh: [Taken]) -> [Int: Int] {
        var latest: [Int: (time: Int64, batch: Int)] = [:]
        for e in fresh where e.to == JobState.running.rawValue {
            guard let batch = e.facts.batchJob else { continue }
            if latest[e.job].map({ $0.time <= e.time }) ?? true { latest[e.job] = (e.time, batch) }
        }
        return latest.mapValues(\.batch)
    }

    /// Records which of the site's batch jobs each job last ran in, and links the job to that batch job's row
    /// (NULL until the site reports the batch job: `recordBatchJobs` links it then).
    static func linkBatchJobs(_ runs: [Int: Int], siteID: Int, connection c: any SQLConnection) throws {
        for (batch, jobs) in Dictionary(grouping: runs, by: \.value) {
            for chunk in jobs.map(\.key).chunked(5000) {
                try c.execute(
                    """
                    UPDATE jobs SET site_batch_id = \(.of(batch)), batch_job_id = (SELECT id FROM batch_jobs
                    WHERE site_id = \(.of(siteID)) AND site_batch_id = \(.of(batch))) WHERE id IN (\(list: chunk.map { .of($0) }))
                    """)
            }
        }
    }
}
