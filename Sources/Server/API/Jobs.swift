import Spool
import Wire

/// `/jobs/`: bulk create, list with filters, bulk and query updates, deletion; the state rules the original
/// client expects at creation, plus the site's validated transitions on every change.
enum Jobs {
    static let columns = JobField.selectList

    static func write(_ r: SQLRow, to out: inout JSONWriter) { JobField.write(r, to: &out) }

    static let maxCount = Job.Limits.count
    static let payloadBytes = Job.Limits.parametersBytes

    // MARK: - Filters

    /// The list filters of `GET`, `PUT` and `DELETE /jobs/`.
    static func conditions(_ call: inout Call) throws -> Conditions {
        var c = Conditions(owner: call.user.id)
        if let ids = try call.query.ints("id") { c.any("id", ids.map { .of($0) }) }
        if let parents = try call.query.ints("parent_id") {
            c.add("id IN (SELECT job_id FROM job_parents WHERE parent_id IN (\(list: parents.map { .of($0) })))")
        }
        if let app = try call.query.int("app_id") { c.add("app_id = \(.of(app))") }
        if let sites = try call.query.ints("site_id") { c.any("site_id", sites.map { .of($0) }) }
        if let batch = try call.query.int("batch_job_id") { c.add("batch_job_id = \(.of(batch))") }
        if let t = try call.query.time("last_update_before") { c.add("last_update < \(.int(t))") }
        if let t = try call.query.time("last_update_after") { c.add("last_update > \(.int(t))") }
        if let text = try call.query.string("workdir__contains") {
            c.add(call.dialect.contains("workdir", text))
        }
        if let states = try call.query.jobStates("state") { c.any("state", states.map { .text($0.rawValue) }) }
        if let ne = try call.query.jobStates("state__ne") {
            for state in ne { c.add("state <> \(.text(state.rawValue))") }
        }
        if let tags = try call.query.pairsOf("tags") {
            for (key, value) in tags {
                c.add(tagCondition(key: key, value: value, dialect: call.dialect))
            }
        }
        if let pending = try call.query.bool("pending_file_cleanup") {
            c.add("pending_file_cleanup = \(.of(pending))")
        }
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
        return try page(call: &call, table: "jobs", columns: columns, conditions: c, ordering: ordering, write)
    }

    static func one(_ call: inout Call) throws -> Reply {
        try detail(call, table: "jobs", columns: columns, what: "job", write)
    }

    // MARK: - Create

    /// One job of a bulk create, checked.
    struct NewJob {
        var appID = 0
        var workdir = ""
        /// Tags and launch parameters as the JSON text stored and replied.
        var tags = "{}"
        var serializedParameters = ""
        /// `serializedParameters` read, when they are plain values (nil: objects only Python can load).
        var parameters: JSONValue?
        var data = "{}"
        var returnCode: Int?
        var numNodes = 1
        var ranksPerNode = 1
        var threadsPerRank = 1
        var threadsPerCore = 1
        var launchParams = "{}"
        var gpusPerRank = 0.0
        var nodePackingCount = 1
        var wallTimeMin = 0
        var parentIDs: [Int] = []
        var transfers: [(slot: String, alias: String, path: String)] = []
        var state = JobState.stagedIn
        var siteID = 0

        init() {}

        /// What a new job's row holds of each field.
        func values(now: Int64) -> [JobField: SQLValue] {
            [
                .appID: .of(appID), .workdir: .text(workdir), .tags: .text(tags),
                .serializedParameters: .text(serializedParameters), .data: .text(data), .returnCode: .of(returnCode),
                .numNodes: .of(numNodes), .ranksPerNode: .of(ranksPerNode), .threadsPerRank: .of(threadsPerRank),
                .threadsPerCore: .of(threadsPerCore), .launchParams: .text(launchParams),
                .gpusPerRank: .double(gpusPerRank), .nodePackingCount: .of(nodePackingCount),
                .wallTimeMin: .of(wallTimeMin),
                .parentIDs: .text(JSONValue.array(parentIDs.map { .int($0) }).serialized()), .batchJobID: .null,
                .state: .of(state), .lastUpdate: .int(now), .pendingFileCleanup: .of(true),
                .serializedReturnValue: .text(""), .serializedException: .text(""), .siteJobID: .null,
            ]
        }

        /// The job as the reply to its creation shows it.
        func row(id: Int, now: Int64) -> SQLRow {
            var values = values(now: now)
            values[.id] = .of(id)
            return SQLRow(values: JobField.allCases.map { values[$0] ?? .null }, names: JobField.rowNames)
        }

        /// A site's job with `spec`, pushed in `state`.
        init(_ spec: JobSpec, appID: Int, siteID: Int, state: JobState) {
            self.appID = appID
            self.siteID = siteID
            self.state = state
            workdir = spec.workdir
            tags = jsonText(spec.tags)
            data = jsonText(spec.data)
            numNodes = spec.numNodes
            ranksPerNode = spec.ranksPerNode
            threadsPerRank = spec.threadsPerRank
            threadsPerCore = spec.threadsPerCore
            launchParams = jsonText(spec.launchParams)
            gpusPerRank = spec.gpusPerRank
            nodePackingCount = spec.nodePackingCount
            wallTimeMin = spec.wallTimeMin
            for (slot, value) in spec.transfers.sorted(by: { $0.key < $1.key }) {
                guard let (alias, path) = try? Job.transferTarget(slot: slot, value) else { continue }
                transfers.append((slot, alias, path))
            }
        }
    }

    static func parseNew(_ value: JSONValue, index: Int) throws -> NewJob {
        var input = try FieldReader(value, prefix: "[\(index)]")
        var job = NewJob()
        job.appID = try input.requiredInt("app_id", in: 1...Int.max)
        job.workdir = try input.requiredString("workdir", maxBytes: Job.Limits.workdirBytes)
        do { try Job.validateWorkdir(job.workdir) } catch { throw input.bad("workdir", error.message) }
        job.tags = jsonText(
            try input.stringMap("tags", maxEntries: Job.Limits.tags, maxBytes: Job.Limits.tagBytes) ?? [:])
        job.serializedParameters = try input.string("serialized_parameters", maxBytes: payloadBytes) ?? ""
        job.parameters = try checkPickle(job.serializedParameters, input: input)
        if let data = try input.object("data", maxBytes: Job.Limits.dataBytes) { job.data = jsonText(data) }
        job.returnCode = try input.int("return_code", in: Int(Int32.min)...Int(Int32.max))
        job.numNodes = try input.int("num_nodes", in: 1...maxCount) ?? 1
        job.ranksPerNode = try input.int("ranks_per_node", in: 1...maxCount) ?? 1
        job.threadsPerRank = try input.int("threads_per_rank", in: 1...maxCount) ?? 1
        job.threadsPerCore = try input.int("threads_per_core", in: 1...maxCount) ?? 1
        job.launchParams = jsonText(try input.stringMap("launch_params") ?? [:])
        job.gpusPerRank = try input.double("gpus_per_rank", in: 0...1024) ?? 0
        job.nodePackingCount = try input.int("node_packing_count", in: 1...maxCount) ?? 1
        job.wallTimeMin = try input.int("wall_time_min", in: 0...maxCount) ?? 0
        job.parentIDs = Array(Set(try input.intList("parent_ids", maxCount: Job.Limits.parents) ?? [])).sorted()
        if let transfers = try input.object("transfers") {
            for (slot, item) in transfers.sorted(by: { $0.key < $1.key }) {
                let field = "transfers.\(slot)"
                var alias: String
                var path: String
                switch item {
                case .string(let text):
                    guard let colon = text.firstIndex(of: ":") else { throw input.bad(field, "must be ALIAS:/path") }
                    alias = String(text[..<colon])
                    path = String(text[text.index(after: colon)...])
                default:
                    var t = try FieldReader(item, prefix: input.name(field))
                    alias = try t.requiredString("location_alias")
                    path = try t.requiredString("path")
                    try t.finish()
                }
                if !path.hasPrefix("/") { throw input.bad(field, "the remote path '\(path)' must be absolute") }
                job.transfers.append((slot, alias, path))
            }
        }
        // Sent by the original client on every create; the server decides them.
        for ignored in ["parameters", "site_name", "state", "id", "last_update", "batch_job_id"] {
            _ = input.value(ignored)
        }
        try input.finish()
        return job
    }

    /// What the checks need of each app named in a bulk create.
    struct AppFacts {
        var siteID: Int
        var parameters: [String: JSONValue]
        var slots: [String: JSONValue]
        var locations: [String: JSONValue]
    }

    static func appFacts(_ ids: Set<Int>, call: Call) throws -> [Int: AppFacts] {
        var facts: [Int: AppFacts] = [:]
        for chunk in Array(ids).chunked(1000) {
            let rows = try call.connection.query(
                """
                SELECT a.id, a.site_id, a.parameters, a.transfers, s.transfer_locations FROM apps a
                JOIN sites s ON s.id = a.site_id WHERE a.owner_id = \(.of(call.user.id)) AND a.id IN (\(list: chunk.map { .of($0) }))
                """)
            for r in rows {
                facts[r.int(0)] = AppFacts(
                    siteID: r.int(1), parameters: (try? JSONValue.parse(r.text(2)).objectValue) ?? [:],
                    slots: (try? JSONValue.parse(r.text(3)).objectValue) ?? [:],
                    locations: (try? JSONValue.parse(r.text(4)).objectValue) ?? [:])
            }
        }
        return facts
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

    /// Refuses parameters no site could read: not base64, cut short, nested deeper or larger than a job's
    /// parameters may be (`Pickle.maxDepth`, `Pickle.maxSize`). Objects only Python can load pass: a Python app's
    /// parameters may hold them, and the site's Python reads them (a shell app's site refuses them, with the
    /// reason). Returns the value read, or nil for such objects.
    @discardableResult
    static func checkPickle(_ text: String, input: FieldReader) throws -> JSONValue? {
        let problem: Pickle.Unsupported
        do {
            return try Pickle.decodeBase64(text)
        } catch {
            problem = error
        }
        if !problem.onlyPythonCanLoad { throw input.bad("serialized_parameters", "cannot be read: \(problem)") }
        return nil
    }

    /// Checks a job's parameters against its app when they can be read (the plain values a shell app takes);
    /// a Python app's parameters (objects only Python can load) are the site's to check.
    static func checkParameters(_ job: NewJob, _ app: AppFacts, index: Int) throws {
        guard !app.parameters.isEmpty || !job.serializedParameters.isEmpty else { return }
        guard case .object(let given)? = job.parameters else { return }
        let field = "[\(index)].parameters"
        for (name, spec) in app.parameters.sorted(by: { $0.key < $1.key }) {
            let required = spec.objectValue?["required"].map { $0 != .bool(false) } ?? true
            if required && given[name] == nil {
                throw ServerError.badRequest("the app's required parameter '\(name)' is missing", field: field)
            }
        }
        if !app.parameters.isEmpty {
            for name in given.keys.sorted() where app.parameters[name] == nil {
                let known = app.parameters.keys.sorted().joined(separator: ", ")
                throw ServerError.badRequest(
                    "the app has no parameter '\(name)' (its parameters: \(known))", field: field)
            }
        }
    }

    /// A workdir is a directory at its site: one job each. A new job whose site already has a job there is
    /// refused (400 naming the item), not taken and then failed by the site.
    static func checkWorkdirsFree(_ jobs: [NewJob], call: Call) throws {
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
            let facts = try appFacts(Set(jobs.map(\.appID)), call: call)
            let parentStates = try states(Array(Set(jobs.flatMap(\.parentIDs))), call: call)
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
                jobs[i].state = !parentsDone ? .awaitingParents : hasStageIn ? .ready : .stagedIn
            }
            try checkWorkdirsFree(jobs, call: call)
            let ids = try insert(jobs, owner: call.user.id, now: now, connection: c)
            try insertEvents(
                jobs.indices.map { (ids[$0], JobState.created.rawValue, jobs[$0].state.rawValue, "{}") },
                owner: call.user.id, time: now, connection: c)
            try insertParentsAndTransfers(jobs, ids: ids, facts: facts, owner: call.user.id, connection: c)
            return ids
        }
        var out = JSONWriter(capacity: jobs.count * 512)
        out.beginArray()
        for i in jobs.indices { JobField.write(jobs[i].row(id: created[i], now: now), to: &out) }
        out.endArray()
        return .json(out, status: 201)
    }

    /// The fields a new job's INSERT sets: all but its id and what only the sites and runs set.
    private static let insertFields = JobField.allCases.filter { ![.id, .batchJobID, .siteJobID].contains($0) }

    /// Multi-row INSERTs; ids come back by workdir (unique in a request), so row order does not matter.
    static func insert(_ jobs: [NewJob], owner: Int, now: Int64, connection c: any SQLConnection) throws -> [Int] {
        let names = (["owner_id", "site_id"] + insertFields.map(\.name)).joined(separator: ", ")
        var ids: [Int] = []
        ids.reserveCapacity(jobs.count)
        for chunk in jobs.chunked(c.rowsPerStatement(columns: insertFields.count + 2)) {
            let rows = chunk.map { job in
                let values = job.values(now: now)
                return [.of(owner), .of(job.siteID)] + insertFields.map { values[$0] ?? .null }
            }
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

    private static func insertParentsAndTransfers(
        _ jobs: [NewJob], ids: [Int], facts: [Int: AppFacts], owner: Int, connection c: any SQLConnection
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
        _ jobs: [NewJob], ids: [Int], facts: [Int: AppFacts], owner: Int, connection c: any SQLConnection
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

    // MARK: - Update

    /// The changes one update asks for.
    struct Patch {
        var sets: [(String, SQLValue)] = []
        var state: JobState?
        var stateTimestamp: Int64?
        var stateData = "{}"
    }

    static func parsePatch(_ input: inout FieldReader) throws -> Patch {
        var p = Patch()
        if let workdir = try input.string("workdir", maxBytes: Job.Limits.workdirBytes) {
            do { try Job.validateWorkdir(workdir) } catch { throw input.bad("workdir", error.message) }
            p.sets.append(("workdir", .text(workdir)))
        }
        if let tags = try input.stringMap("tags", maxEntries: Job.Limits.tags, maxBytes: Job.Limits.tagBytes) {
            p.sets.append(("tags", .text(jsonText(tags))))
        }
        for key in ["serialized_parameters", "serialized_return_value", "serialized_exception"] {
            if let text = try input.string(key, maxBytes: payloadBytes) {
                if key == "serialized_parameters" { try checkPickle(text, input: input) }
                p.sets.append((key, .text(text)))
            }
        }
        if let data = try input.object("data", maxBytes: Job.Limits.dataBytes) {
            p.sets.append(("data", .text(jsonText(data))))
        }
        if input.has("return_code") {
            p.sets.append(("return_code", .of(try input.int("return_code", in: Int(Int32.min)...Int(Int32.max)))))
        } else {
            _ = input.value("return_code")
        }
        for key in ["num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "node_packing_count"] {
            if let n = try input.int(key, in: 1...maxCount) { p.sets.append((key, .of(n))) }
        }
        if let n = try input.int("wall_time_min", in: 0...maxCount) { p.sets.append(("wall_time_min", .of(n))) }
        if let gpus = try input.double("gpus_per_rank", in: 0...1024) {
            p.sets.append(("gpus_per_rank", .double(gpus)))
        }
        if let params = try input.stringMap("launch_params") {
            p.sets.append(("launch_params", .text(jsonText(params))))
        }
        if let batch = try input.int("batch_job_id", in: 1...Int.max) { p.sets.append(("batch_job_id", .of(batch))) }
        if let pending = try input.bool("pending_file_cleanup") {
            p.sets.append(("pending_file_cleanup", .of(pending)))
        }
        if input.has("state") { p.state = try input.jobState("state") } else { _ = input.value("state") }
        p.stateTimestamp = try input.time("state_timestamp")
        if let data = try input.object("state_data", maxBytes: Job.Limits.dataBytes) { p.stateData = jsonText(data) }
        // Read-only members the client may echo back.
        for ignored in ["id", "app_id", "parent_ids", "last_update", "parameters", "transfers", "site_name"] {
            _ = input.value(ignored)
        }
        try input.finish()
        return p
    }

    /// Applies updates to the caller's jobs in one transaction; every requested state change must be a legal
    /// transition (else 400 naming the job and both states). Returns how many jobs were updated.
    @discardableResult
    static func apply(_ updates: [(id: Int, patch: Patch)], call: Call) throws -> Int {
        let c = call.connection
        let owner = call.user.id
        return try c.transaction {
            let current = try states(updates.map(\.id).sorted(), call: call, lock: true)
            let now = ServerClock.microseconds()
            // The batch job a patch names must be the caller's.
            let batchIDs = Set(updates.flatMap { u in u.patch.sets.filter { $0.0 == "batch_job_id" }.map { $0.1 } })
            for case .int(let batch) in batchIDs {
                guard
                    try c.scalar("SELECT id FROM batch_jobs WHERE id = \(.int(batch)) AND owner_id = \(.of(owner))")
                        != nil
                else { throw ServerError.notFound("batch job \(batch)") }
            }
            var targets: [Int: JobState] = [:]
            let siteOwned = try siteOwnedJobs(updates.map(\.id), call: call)
            for u in updates {
                guard let from = current[u.id] else { throw ServerError.notFound("job \(u.id)") }
                guard let to = u.patch.state, to != from else { continue }
                do { try from.validateTransition(to: to) } catch let error as SpoolError {
                    throw ServerError.badRequest("job \(u.id): \(error.message)", field: "state")
                }
                // A site's job moves at its site: the change is held as a request the site carries out (kill,
                // retry) and then reports; the job here changes when the site says so.
                if let site = siteOwned[u.id] {
                    try request(job: u.id, site: site, kind: "state", target: to.rawValue, call: call, now: now)
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
                var change: [String: JSONValue] = [:]
                for (column, value) in u.patch.sets where JobField.forwardedNames.contains(column) {
                    switch (column, value) {
                    case ("serialized_parameters", .text(let text)):
                        if case .object(let p)? = try? Pickle.decodeBase64(text) { change["parameters"] = .object(p) }
                    case (_, .text(let text)): change[column] = (try? JSONValue.parse(text)) ?? .string(text)
                    case (_, .int(let n)): change[column] = .int(Int(n))
                    case (_, .double(let d)): change[column] = .double(d)
                    default: break
                    }
                }
                if !change.isEmpty {
                    try request(
                        job: u.id, site: site, kind: "modify", target: JSONValue.object(change).serialized(),
                        call: call,
                        now: now)
                }
            }
            let waiting = try unfinishedTransfers(Array(targets.keys), call: call)
            var events: [(Int, String, String, String, Int64)] = []
            var finished: [Int] = []
            var stageOutsDue: [Int] = []
            // Updates that set the same columns go together, one UPDATE per chunk: the rows are locked already.
            var groups: [[String]: [(Int, [SQLValue])]] = [:]
            for u in updates {
                var sets = u.patch.sets
                if let to = targets[u.id], let from = current[u.id] {
                    let final = advance(to, id: u.id, waiting: waiting)
                    if to == .postprocessed && final == .postprocessed { stageOutsDue.append(u.id) }
                    if final == .jobFinished { finished.append(u.id) }
                    sets.append(("state", .text(final.rawValue)))
                    events.append(
                        (u.id, from.rawValue, final.rawValue, u.patch.stateData, u.patch.stateTimestamp ?? now))
                }
                groups[sets.map(\.0), default: []].append((u.id, sets.map(\.1)))
            }
            for (columns, rows) in groups {
                try updateRows(columns: columns, rows: rows, now: now, connection: c)
            }
            try insertEvents(events, owner: owner, connection: c)
            for chunk in stageOutsDue.chunked(10_000) {
                try c.execute(
                    "UPDATE transfer_items SET state = 'pending' WHERE direction = 'out' AND state = 'awaiting_job' AND job_id IN (\(list: chunk.map { .of($0) }))"
                )
            }
            try releaseChildren(of: finished, call: call, now: now)
            return updates.count
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

    /// Where a job that was asked to enter `state` ends up: `READY` with every stage-in done (or none) is
    /// `STAGED_IN`; `POSTPROCESSED` with every stage-out done is `JOB_FINISHED`, passing `STAGED_OUT`, which is
    /// how the original server reports it.
    static func advance(_ state: JobState, id: Int, waiting: (stageIns: Set<Int>, stageOuts: Set<Int>)) -> JobState {
        switch state {
        case .ready where !waiting.stageIns.contains(id): .stagedIn
        case .postprocessed where !waiting.stageOuts.contains(id): .jobFinished
        case .stagedOut: .jobFinished
        default: state
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
                ready.map { ($0, .awaitingParents, advance(.ready, id: $0, waiting: waiting)) },
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
            try requestSiteDeletions(where: c.sql, call: call)
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
            try requestSiteDeletions(where: "owner_id = \(.of(call.user.id)) AND id = \(.of(id))", call: call)
            try call.connection.execute("DELETE FROM jobs WHERE id = \(.of(id)) AND site_job_id IS NULL")
        }
        return .noContent
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
    static func request(job: Int, site: Int, kind: String, target: String?, call: Call, now: Int64) throws {
        try call.connection.execute(
            "INSERT INTO job_requests (owner_id, site_id, job_id, kind, target, created) VALUES (\(.of(call.user.id)), \(.of(site)), \(.of(job)), \(.text(kind)), \(target.map { .text($0) } ?? .null), \(.int(now)))"
        )
    }

    /// Deleting a site's jobs is asked of the site: it removes them and reports, and they go here then.
    static func requestSiteDeletions(where clause: SQL, call: Call) throws {
        let now = ServerClock.microseconds()
        let rows = try call.connection.query(
            "SELECT id, site_id FROM jobs WHERE site_job_id IS NOT NULL AND \(clause)")
        for r in rows { try request(job: r.int(0), site: r.int(1), kind: "delete", target: nil, call: call, now: now) }
    }
}

extension Array {
    /// Consecutive slices of at most `size` elements.
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(1, size)).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
