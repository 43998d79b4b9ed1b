import Spool
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// What the site's sync remembers between rounds, in `SITE/sync/state.json` (written whole, fsynced, renamed
/// into place): the site's id on the server, how far into each event log the server has everything, and when
/// the last round succeeded or failed.
public struct SyncState: Sendable, Equatable {
    /// The site's id on the server, once registered.
    public var siteID: Int?
    /// Bytes of each `events/*.jsonl` the server holds.
    public var cursor: [String: Int] = [:]
    /// The apps as last pushed (pushed again when they change).
    public var appsDigest = ""
    /// When the last round succeeded, and what it pushed.
    public var lastSuccess: String?
    public var lastPushed = 0
    /// The last failure (cleared by a success), and when it happened.
    public var lastError: String?
    public var lastErrorTime: String?
    /// Jobs made through the server's API that this site has taken, by server id, until the server knows.
    public var adopted: [String: String] = [:]
    /// Jobs made through the API that this site refused, with the reason, until the server knows.
    public var rejected: [String: String] = [:]
    /// Apps defined through the API (in Python, with a command template) as last written here, by digest.
    public var remoteApps: [String: String] = [:]
    /// Batch jobs asked for through the API and made here, server id to site id, until the server knows.
    public var batchAdopted: [String: Int] = [:]
    /// Batch job requests refused here, with the reason, until the server knows.
    public var batchRejected: [String: String] = [:]
    /// Each batch job's record as last pushed, by site id (pushed again when it changes).
    public var batchDigests: [String: String] = [:]
    /// Users' requests carried out or refused here, by request id, until the server knows.
    public var requestsDone: [String: JSONValue] = [:]
    /// What one end refused of the other, kept until it is taken: `job ID` or `event ID` (the server refused the
    /// site's job or its events), `app NAME` (an app from the server the site cannot install); each with its
    /// code and reason. A refusal never stops the sync: the cursor moves on, and this says what was left out.
    public var refused: [String: String] = [:]
    /// Ended launcher sessions the server has (by lease name); running ones are sent every push.
    public var sessionsPushed: Set<String> = []

    /// Keeps (or, with nil, forgets) the refusal under `key`; whether it is new or changed, so that the log says
    /// each once.
    @discardableResult
    mutating func refuse(_ key: String, _ text: String?) -> Bool {
        defer { refused[key] = text }
        return text != nil && refused[key] != text
    }

    /// The state file of `site`.
    public static func path(_ site: Site) -> String { site.root + "/sync/state.json" }

    /// Reads the state (empty when the site never synced).
    public static func load(_ site: Site) throws(SpoolError) -> SyncState {
        let path = path(site)
        guard Posix.exists(path) else { return SyncState() }
        let value: JSONValue
        do { value = try JSONValue.parse(try Posix.readFile(path, limit: 16 << 20)) } catch let error as SpoolError {
            throw error
        } catch {
            throw SpoolError(.invalidInput, "malformed sync state: \(error)", path: path)
        }
        let o = value.objectValue ?? [:]
        var state = SyncState()
        state.siteID = o["site_id"]?.intValue
        state.cursor = (o["cursor"]?.objectValue ?? [:]).compactMapValues(\.intValue)
        state.appsDigest = o["apps_digest"]?.stringValue ?? ""
        state.lastSuccess = o["last_success"]?.stringValue
        state.lastPushed = o["last_pushed"]?.intValue ?? 0
        state.lastError = o["last_error"]?.stringValue
        state.lastErrorTime = o["last_error_time"]?.stringValue
        state.adopted = (o["adopted"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.rejected = (o["rejected"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.remoteApps = (o["remote_apps"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.batchAdopted = (o["batch_adopted"]?.objectValue ?? [:]).compactMapValues(\.intValue)
        state.batchRejected = (o["batch_rejected"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.batchDigests = (o["batch_digests"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.requestsDone = o["requests_done"]?.objectValue ?? [:]
        state.refused = (o["refused"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.sessionsPushed = Set((o["sessions_pushed"]?.arrayValue ?? []).compactMap(\.stringValue))
        return state
    }

    /// Writes the state durably: a cursor that went back would push events twice (the server drops them), one
    /// that went forward without the server having them would lose them.
    public func save(_ site: Site) throws(SpoolError) {
        var o: [String: JSONValue] = [
            "cursor": .object(cursor.mapValues { .int($0) }), "apps_digest": .string(appsDigest),
            "last_pushed": .int(lastPushed), "adopted": .object(adopted.mapValues { .string($0) }),
            "rejected": .object(rejected.mapValues { .string($0) }),
            "remote_apps": .object(remoteApps.mapValues { .string($0) }),
            "batch_adopted": .object(batchAdopted.mapValues { .int($0) }),
            "batch_rejected": .object(batchRejected.mapValues { .string($0) }),
            "batch_digests": .object(batchDigests.mapValues { .string($0) }),
            "requests_done": .object(requestsDone), "refused": .object(refused.mapValues { .string($0) }),
            "sessions_pushed": .array(sessionsPushed.sorted().map { .string($0) }),
        ]
        if let siteID { o["site_id"] = .int(siteID) }
        if let lastSuccess { o["last_success"] = .string(lastSuccess) }
        if let lastError { o["last_error"] = .string(lastError) }
        if let lastErrorTime { o["last_error_time"] = .string(lastErrorTime) }
        let path = SyncState.path(site)
        try Posix.makeDirectories(Posix.parentPath(path))
        try Posix.replaceFile(path, Array((JSONValue.object(o).serialized() + "\n").utf8), sync: true)
    }
}

/// Pushes the site to its server from the site's own records: its event logs are the changelog, read from the
/// durable cursor in `SITE/sync/state.json`. One request per round carries the site's registration, its apps
/// when they changed, the jobs made since (their specs) and their events, with the site's own times.
public final class Pusher {
    /// The site pushed.
    public let site: Site
    let settings: SiteSettings.Sync
    let client: HTTPClient
    /// Batch jobs that ended and whose last record the server has: they never change again, and are not read.
    private var settledBatches = Set<Int>()
    /// The apps' JSON, and the modification times of the `app.yml` files it was made from.
    private var appsCache: (stamps: [String: Int], json: [String: JSONValue])?
    /// When each job made but not found was first missed (see `push`).
    private var missingSince: [String: Double] = [:]
    /// Most event lines read per round.
    public var maxEvents = 100_000
    /// Most event lines per request (with their jobs' specs, under the server's limit of items per push).
    public var requestEvents = 5_000

    /// A pusher for `site` with its `sync:` settings; the token comes from `token_file`, else the client file.
    public init(site: Site, settings: SiteSettings.Sync) throws {
        self.site = site
        self.settings = settings
        let token: String
        if let file = settings.tokenFile.map({ Posix.expandTilde($0) }) {
            let text = String(decoding: try Posix.readInput(file, limit: 16_384), as: UTF8.self)
            token = String(text.split(whereSeparator: \.isWhitespace).first ?? "")
        } else {
            token = try ClientFile.read(ClientFile.defaultPath).token
        }
        if token.isEmpty { throw SpoolError(.invalidInput, "sync: the token file holds no token") }
        client = try HTTPClient(root: settings.url, token: token, caFile: settings.caFile.map { Posix.expandTilde($0) })
    }

    /// What one round did.
    public struct Round: Sendable {
        /// Events the server recorded (a repeated push records none).
        public var events = 0
        /// Refusals first seen this round (`SyncState.refused`'s entries), for the log: each is logged once.
        public var newRefusals: [String] = []
        /// Whether the server had lost this site's record (deleted through the API) and the site registered again:
        /// the whole site is pushed again from the start of its logs.
        public var registeredAgain = false
        /// Events read from the logs and sent.
        public var sent = 0
        /// Jobs sent with their specs.
        public var jobs = 0
        /// Whether the logs were read to their end (false: more is waiting for the next round).
        public var caughtUp = true
        /// Jobs made through the server's API that this round took into the site, and refused.
        public var adopted = 0
        public var refused = 0

        /// An empty round.
        public init() {}
    }

    /// One event line as the site logged it, with where its line ends.
    struct Line {
        var file: String
        var end: Int
        var event: JSONValue
    }

    /// The site's name on the server: letters, digits and `_` (an app name must be a Python identifier for the
    /// original client; a site app's `-` and `.` become `_`).
    static func serverAppName(_ name: String) -> String {
        var out = String(
            name.map { c -> Character in
                c.isASCII && (c.isLetter || c.isNumber || c == "_") ? c : "_"
            })
        if let first = out.first, first.isNumber { out = "_" + out }
        return out
    }

    /// The apps as the server takes them.
    func appsJSON(except fromServer: Set<String>) throws -> JSONValue {
        // Every round asks; an app is read again only when its app.yml changed (one stat each otherwise).
        var stamps: [String: Int] = [:]
        for name in try site.appNames() {
            let st = try Posix.statIfExists(site.appsPath + "/" + name + "/app.yml")
            stamps[name] = st.map { Int($0.st_mtim.tv_sec) * 1_000_000_000 + Int($0.st_mtim.tv_nsec) ^ Int($0.st_size) }
        }
        if appsCache?.stamps != stamps {
            var json: [String: JSONValue] = [:]
            for name in stamps.keys { json[name] = try appJSON(name) }
            appsCache = (stamps, json)
        }
        let json = appsCache?.json ?? [:]
        // Apps that came from the server (defined in Python) are not sent back: the server holds their class.
        return .array(json.keys.sorted().filter { !fromServer.contains($0) }.compactMap { json[$0] })
    }

    /// One app as the server takes it.
    private func appJSON(_ name: String) throws -> JSONValue {
        let app = try site.app(name)
        var parameters: [String: JSONValue] = [:]
        for (key, p) in app.parameters {
            let fallback: JSONValue = p.defaultValue.map { .string($0.stringValue ?? $0.serialized()) } ?? .null
            parameters[key] = .object(["required": .bool(p.required), "default": fallback, "help": .string(p.help)])
        }
        return .object([
            "name": .string(Pusher.serverAppName(name)), "description": .string(app.description),
            "parameters": .object(parameters), "source_code": .string(app.yamlText()),
            "transfers": .object(app.transfers),
        ])
    }

    /// Reads complete lines after the cursor, at most `maxEvents`, oldest file first.
    func readEvents(_ state: SyncState) throws -> (lines: [Line], caughtUp: Bool) {
        var lines: [Line] = []
        var caughtUp = true
        let names = try Posix.listDirectory(site.eventsPath).filter { $0.hasSuffix(".jsonl") }.sorted()
        for name in names {
            let path = site.eventsPath + "/" + name
            let offset = state.cursor[name] ?? 0
            let bytes = try readFrom(path, offset: offset, limit: 32 << 20)
            var start = 0
            var k = 0
            while k < bytes.count {
                if bytes[k] == 0x0A {
                    let line = bytes[start..<k]
                    start = k + 1
                    // A line cut short by a crash, then completed by a newline, is not JSON: skipped, as readers do.
                    if let event = try? JSONValue.parse(line), event.objectValue != nil {
                        lines.append(Line(file: name, end: offset + start, event: event))
                    } else {
                        lines.append(Line(file: name, end: offset + start, event: .null))
                    }
                    if lines.count >= maxEvents {
                        caughtUp = false
                        return (lines, caughtUp)
                    }
                }
                k += 1
            }
        }
        return (lines, caughtUp)
    }

    private func readFrom(_ path: String, offset: Int, limit: Int) throws -> [UInt8] {
        let fd = try Posix.open(path, O_RDONLY)
        defer { Posix.close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var position = offset
        while out.count < limit {
            let n = try Posix.call("read", path: path) {
                chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(position)) }
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            position += n
        }
        return out
    }

    /// The specs of `ids`, as the server takes them (jobs no longer at the site are left out).
    func jobsJSON(_ ids: Set<String>) throws -> [String: PushedJob] {
        guard !ids.isEmpty else { return [:] }
        // Jobs just made are active (an entry, found in a stat or two) or in an accepted batch: a lookup by id
        // finds them without reading the final index. For very many (a first sync), one walk of the site's
        // indexes costs less than a look per job.
        let listings: [JobListing]
        if ids.count > 20_000 {
            listings = try Query(site: site).list(JobFilter(), load: false)
        } else {
            listings = try Query(site: site).lookup(ids)
        }
        var out: [String: PushedJob] = [:]
        for listing in listings where ids.contains(listing.id) {
            guard var job = listing.job else { continue }
            job.app = Pusher.serverAppName(job.app)
            out[listing.id] = PushedJob(id: listing.id, job, state: listing.state)
        }
        return out
    }

    /// One round: read what the server lacks, push it in one request, move the cursor. Throws (and records the
    /// failure in the state file) when the server cannot be reached or refuses; the cursor then stays.
    @discardableResult
    public func round() throws -> Round {
        var state = try SyncState.load(site)
        do {
            let result = try push(&state)
            state.lastSuccess = Timestamp.now()
            state.lastPushed = result.events
            state.lastError = nil
            state.lastErrorTime = nil
            try state.save(site)
            return result
        } catch {
            var failed = try SyncState.load(site)
            failed.lastError = "\(error)"
            failed.lastErrorTime = Timestamp.now()
            try? failed.save(site)
            throw error
        }
    }

    /// Reads up to `maxEvents` lines past the cursor, loads the specs of the jobs made since in one pass, and
    /// pushes them in requests of `requestEvents` lines, saving the cursor after each: a large backlog (the first
    /// sync of a big site) costs one walk of the site, and a failure part-way keeps what the server took.
    private func push(_ state: inout SyncState) throws -> Round {
        var round = Round()
        let read = try readEvents(state)
        var lines = read.lines
        round.caughtUp = read.caughtUp
        func event(_ line: Line) -> (id: String, created: Bool, json: JSONValue)? {
            guard let o = line.event.objectValue, let job = o["job"]?.stringValue, let t = o["t"]?.stringValue,
                let from = o["from"]?.stringValue, let to = o["to"]?.stringValue
            else { return nil }
            // A removal (`balsam rm`) is not a state: the server deletes the job.
            if to == "REMOVED" { return (job, false, .object(["site_job_id": .string(job), "removed": .bool(true)])) }
            guard JobState(rawValue: from) != nil, JobState(rawValue: to) != nil else { return nil }
            var data = o["data"]?.objectValue ?? [:]
            if let actor = o["actor"]?.stringValue { data["actor"] = .string(actor) }
            let json = JSONValue.object([
                "site_job_id": .string(job), "t": .string(t), "from": .string(from), "to": .string(to),
                "data": .object(data),
            ])
            return (job, from == JobState.created.rawValue, json)
        }
        var parsed = lines.map(event)
        let allJobs = try jobsJSON(Set(parsed.compactMap { $0?.created == true ? $0?.id : nil }))
        // A job made but not found is usually in the middle of a move (its entry briefly in tmp/): the round
        // stops before its creation and the next one looks again. Only a job gone for good (removed, which a
        // later line says, or missing for a minute) has its events left out.
        let removedLater = Set(parsed.compactMap { $0?.json.objectValue?["removed"] != nil ? $0?.id : nil })
        let now = Posix.monotonicSeconds()
        for (k, p) in parsed.enumerated() {
            guard let p, p.created, allJobs[p.id] == nil, !removedLater.contains(p.id) else { continue }
            let since = missingSince[p.id] ?? now
            missingSince[p.id] = since
            if now - since < 60 {
                lines = Array(lines.prefix(k))
                parsed = Array(parsed.prefix(k))
                round.caughtUp = false
                break
            }
        }
        for id in missingSince.keys where allJobs[id] != nil { missingSince[id] = nil }
        let apps = try appsJSON(except: Set(state.remoteApps.keys))
        let digest = apps.serialized()
        let serverIDs = Dictionary(state.adopted.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        let siteSettings = try? SiteSettings.load(site)
        let locations = siteSettings?.transferLocations ?? [:]
        // The batch-job policy, for the original client's `balsam queue submit`, which checks against it.
        let scheduler = siteSettings?.scheduler ?? SiteSettings.Scheduler()
        let queues = scheduler.allowedQueues.mapValues { q -> JSONValue in
            .object([
                "max_nodes": .int(q.maxNodes), "max_walltime": .int(q.maxWallTimeMinutes),
                "max_queued_jobs": .int(q.maxQueuedJobs),
            ])
        }
        func body(jobs: [String: PushedJob], events: [JSONValue], removed: Set<String>, forceApps: Bool = false)
            -> JSONValue
        {
            let specs = jobs.keys.sorted().compactMap { id -> JSONValue? in
                guard var job = jobs[id] else { return nil }
                job.serverID = serverIDs[id].flatMap(Int.init)
                return job.json
            }
            var o: [String: JSONValue] = [
                "site": .object([
                    "name": .string(settings.siteName ?? site.name), "path": .string(site.root),
                    "transfer_locations": .object(locations.mapValues { .string($0.url) }),
                    "allowed_queues": .object(queues),
                    "allowed_projects": .array(scheduler.allowedProjects.map { .string($0) }),
                    "optional_batch_job_params": .object(scheduler.optionalParams.mapValues { .string($0) }),
                ]),
                "jobs": .array(specs), "events": .array(events),
                "removed": .array(removed.sorted().map { .string($0) }),
                "app_digests": .object(state.remoteApps.mapValues { .string($0) }),
                "rejected": .array(
                    state.rejected.sorted(by: { $0.key < $1.key }).compactMap { id, reason in
                        Int(id).map { .object(["server_id": .int($0), "reason": .string(reason)]) }
                    }),
            ]
            if forceApps || digest != state.appsDigest || state.siteID == nil { o["apps"] = apps }
            return .object(o)
        }
        // Batch jobs whose record changed since the last push (with the server's id for those asked remotely).
        let store = BatchJobStore(site: site)
        let batchServerIDs = Dictionary(state.batchAdopted.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        var changedBatches: [(String, String, JSONValue)] = []
        for id in try store.ids().sorted() where !settledBatches.contains(id) {
            guard let job = try? store.load(id) else { continue }
            var o: [String: JSONValue] = [
                "site_batch_id": .int(job.id), "project": .string(job.project), "queue": .string(job.queue),
                "num_nodes": .int(job.numNodes), "wall_time_min": .int(job.wallTimeMinutes),
                "filter_tags": .object(job.filterTags.mapValues { .string($0) }),
                "optional_params": .object(job.optionalParams.mapValues { .string($0) }),
                "state": .string(job.state.rawValue),
            ]
            if let id = job.schedulerID { o["scheduler_id"] = .string(id) }
            if let t = job.startTime { o["start_time"] = .string(t) }
            if let t = job.endTime { o["end_time"] = .string(t) }
            if let m = job.message { o["message"] = .string(m) }
            if let serverID = batchServerIDs[job.id].flatMap(Int.init) { o["server_id"] = .int(serverID) }
            let text = JSONValue.object(o).serialized()
            if state.batchDigests[String(job.id)] != text {
                changedBatches.append((String(job.id), text, .object(o)))
            } else if job.state.isFinal {
                settledBatches.insert(job.id)
            }
        }
        // Launchers' time on their nodes (the server's utilization counts those started by hand as held): the
        // running ones, and the ended ones the server does not have yet.
        let sessions = ((try? LauncherSession.all(site)) ?? []).filter {
            $0.end == nil || !state.sessionsPushed.contains($0.lease)
        }.prefix(1000)
        // Untyped, so that one failure kind can be caught below (a typed-throws catch with a condition crashes
        // this compiler).
        func send(_ body: JSONValue) throws -> HTTPResponse {
            guard case .object(var o) = body else { return try client.send("POST", "/sync/push", json: body) }
            o["batch_jobs"] = .array(changedBatches.map(\.2))
            o["launcher_sessions"] = .array(
                sessions.map { s in
                    var session: [String: JSONValue] = [
                        "lease": .string(s.lease), "nodes": .int(s.nodes), "start": .string(s.start),
                        "end": s.end.map(JSONValue.string) ?? .null,
                    ]
                    if let b = s.batchJob { session["site_batch_id"] = .int(b) }
                    return .object(session)
                })
            o["requests_done"] = .array(state.requestsDone.sorted(by: { $0.key < $1.key }).map(\.value))
            o["refused_apps"] = .object(
                Dictionary(
                    uniqueKeysWithValues: state.refused.compactMap { key, text in
                        key.hasPrefix("app ") ? (String(key.dropFirst(4)), JSONValue.string(text)) : nil
                    }))
            o["rejected_batch_jobs"] = .array(
                state.batchRejected.sorted(by: { $0.key < $1.key }).compactMap { id, reason in
                    Int(id).map { .object(["server_id": .int($0), "reason": .string(reason)]) }
                })
            return try client.send("POST", "/sync/push", json: .object(o))
        }
        var last: [String: JSONValue] = [:]
        var start = 0
        repeat {
            let end = min(lines.count, start + requestEvents)
            let chunk = parsed[start..<end].compactMap { $0 }
            let createdHere = Set(chunk.filter(\.created).map(\.id))
            var jobs = allJobs.filter { createdHere.contains($0.key) }
            // Events of jobs gone from the site before the server had them cannot be placed: left out.
            let removed = Set(chunk.filter { $0.json.objectValue?["removed"] != nil }.map(\.id))
            let placed = chunk.filter { $0.json.objectValue?["removed"] == nil && !removed.contains($0.id) }
            var sendable = placed.filter { !$0.created || jobs[$0.id] != nil }.map(\.json)
            var reply = try send(body(jobs: jobs, events: sendable, removed: removed))
            last = (try? reply.json())?.objectValue ?? [:]
            var refusals = Pusher.refusals(in: last)
            // The server lacks jobs made before (a new server, a database restored from a backup, a site record
            // deleted through the API) or the site's apps: send those jobs' specs and events again, with the apps.
            let missingJobs = Set(
                refusals.filter { $0.code == .unknownJob || $0.code == .unknownApp }.map(\.siteJobID))
            if !missingJobs.isEmpty {
                jobs = try jobsJSON(missingJobs)
                sendable = placed.filter { missingJobs.contains($0.id) && jobs[$0.id] != nil }.map(\.json)
                reply = try send(body(jobs: jobs, events: sendable, removed: [], forceApps: true))
                last = (try? reply.json())?.objectValue ?? [:]
                refusals = refusals.filter { !missingJobs.contains($0.siteJobID) } + Pusher.refusals(in: last)
            }
            for r in refusals where state.refuse(r.key, r.text) { round.newRefusals.append("\(r.key): \(r.text)") }
            // A job the user deleted through the API before the site's adoption reached the server: the user's
            // deletion is carried out here too, as a deletion through the API of a site's job would be.
            let deleted = refusals.filter { $0.code == .deleted }.map(\.siteJobID)
            if !deleted.isEmpty {
                var filter = JobFilter()
                filter.ids = Set(deleted)
                let control = Control(site: site, actor: "balsam-sync")
                _ = control.remove(try control.select(filter), keepFiles: false)
            }
            // A site id other than the one this site had: the server lost the site's record (deleted through the
            // API) and registered it again just now. Everything is pushed again, from the start of the logs.
            if let was = state.siteID, let now = last["site_id"]?.intValue, now != was {
                state = SyncState()
                state.siteID = now
                settledBatches.removeAll()
                try state.save(site)
                round.registeredAgain = true
                round.caughtUp = false
                return round
            }
            state.siteID = last["site_id"]?.intValue ?? state.siteID
            state.appsDigest = digest
            for line in lines[start..<end] { state.cursor[line.file] = max(state.cursor[line.file] ?? 0, line.end) }
            // What the server now knows is forgotten here.
            let known = Set((last["jobs"]?.objectValue ?? [:]).keys)
            state.adopted = state.adopted.filter { !known.contains($0.value) }
            for id in known { state.refuse("job " + id, nil) }
            state.rejected = [:]
            for (id, text, _) in changedBatches { state.batchDigests[id] = text }
            changedBatches = []
            state.batchAdopted = [:]
            state.batchRejected = [:]
            state.requestsDone = [:]
            for s in sessions where s.end != nil { state.sessionsPushed.insert(s.lease) }
            try state.save(site)
            round.events += last["events"]?.intValue ?? 0
            round.sent += sendable.count
            round.jobs += jobs.count
            start = end
        } while start < lines.count
        // What the server sent to do is done.
        try takeApps(last["remote_apps"]?.arrayValue ?? [], state: &state, round: &round)
        try takeBatchJobs(last, state: &state)
        let answered = try carryOut(last["requests"]?.arrayValue ?? [], state: &state)
        if answered > 0 { round.caughtUp = false }
        let (adopted, refused) = try take(last["remote_jobs"]?.arrayValue ?? [], state: &state)
        round.adopted = adopted
        round.refused = refused
        if adopted + refused > 0 { round.caughtUp = false }
        return round
    }

    /// The refusals of a push's reply.
    static func refusals(in reply: [String: JSONValue]) -> [SyncRefusal] {
        (reply["refused"]?.arrayValue ?? []).compactMap(SyncRefusal.init(json:))
    }

    /// Makes the apps defined in Python through the API (`class Hello(ApplicationDefinition)`) at the site, or
    /// replaces them when their definition changed: `app.yml` (a shell app with its `command_template`, or a
    /// Python app whose `run()` the site's Python runs), the pickled class in `class.b64`, and a hook file for
    /// each lifecycle method the class defines (see `PythonApps`). An app that does not make a valid app here is
    /// refused (in `SyncState.refused`, shown by `balsam sync status` and logged once) and taken as seen, so
    /// that the server does not send it every round; a new definition of it is tried again.
    func takeApps(_ remote: [JSONValue], state: inout SyncState, round: inout Round) throws {
        guard !remote.isEmpty else { return }
        let python = try SiteSettings.load(site).python.executable
        for item in remote {
            guard let o = item.objectValue, let name = o["name"]?.stringValue, let digest = o["digest"]?.stringValue
            else { continue }
            let template = o["command_template"]?.stringValue
            var parameters: [String: App.Parameter] = [:]
            for (key, spec) in o["parameters"]?.objectValue ?? [:] {
                let s = spec.objectValue ?? [:]
                let required = s["required"] != .bool(false)
                let fallback = s["default"].flatMap { $0 == .null ? nil : $0 }
                parameters[key] = App.Parameter(
                    required: required, defaultValue: required ? nil : fallback, help: s["help"]?.stringValue ?? "")
            }
            var refusal: String?
            do {
                var app = try App(name: name, commandTemplate: template ?? "", python: template == nil)
                app.parameters = parameters
                app.description = o["description"]?.stringValue ?? ""
                try app.validate()
                if let classText = o["serialized_class"]?.stringValue, !classText.isEmpty {
                    try PythonApps.install(
                        app, classText: classText, overridden: PythonApps.overriddenMethods(classText: classText),
                        site: site, python: python)
                } else if Posix.exists(site.appsPath + "/" + name + "/app.yml") {
                    try Posix.replaceFile(
                        site.appsPath + "/" + name + "/app.yml", Array(app.yamlText().utf8), sync: true)
                } else {
                    try site.createApp(app)
                }
            } catch {
                // The reason goes back to the server with every push: no NUL (a string the server refuses; the
                // error may quote the app's own text) and a bounded length.
                let text = "cannot install: \(error)".replacingAll("\u{0}", with: "\\0")
                refusal = text.utf8.count > 4096 ? String(decoding: text.utf8.prefix(4096), as: UTF8.self) : text
            }
            if state.refuse("app " + name, refusal), let refusal { round.newRefusals.append("app \(name): \(refusal)") }
            state.remoteApps[name] = digest
            try state.save(site)
        }
    }

    /// Carries out users' requests about this site's jobs with the site's own control operations: a kill
    /// (`FAILED`), a retry (`READY` or `RESTART_READY` from `FAILED`), a deletion. What cannot be done now (a job
    /// under a launcher, for a deletion) waits for a later round; what cannot be done at all (a kill of an ended
    /// job, any other state) is refused with the reason. Returns how many were answered.
    func carryOut(_ requests: [JSONValue], state: inout SyncState) throws -> Int {
        guard !requests.isEmpty else { return 0 }
        let control = Control(site: site, actor: "balsam-sync")
        var answered = 0
        for item in requests {
            guard let o = item.objectValue, let id = o["id"]?.intValue, let job = o["site_job_id"]?.stringValue,
                let kind = o["kind"]?.stringValue
            else { continue }
            let key = String(id)
            if state.requestsDone[key] != nil { continue }
            func answer(_ outcome: String, _ reason: String?) throws {
                var a: [String: JSONValue] = ["id": .int(id), "outcome": .string(outcome)]
                if let reason { a["reason"] = .string(reason) }
                state.requestsDone[key] = .object(a)
                try state.save(site)
                answered += 1
            }
            var filter = JobFilter()
            filter.ids = [job]
            let selected = try control.select(filter)
            guard !selected.isEmpty else {
                try answer("refused", "job \(job) is no longer at site \(site.name)")
                continue
            }
            let target = o["target"]?.stringValue
            let outcomes: [Control.Outcome]
            switch (kind, target) {
            case ("state", JobState.failed.rawValue?):
                outcomes = control.kill(selected, reason: "killed through the API")
            case ("state", JobState.ready.rawValue?): outcomes = control.retry(selected, restart: false)
            case ("state", JobState.restartReady.rawValue?): outcomes = control.retry(selected, restart: true)
            case ("delete", _): outcomes = control.remove(selected, keepFiles: false)
            case ("modify", let text?):
                let change = (try? JSONValue.parse(text))?.objectValue ?? [:]
                outcomes = control.modify(selected) { job in Pusher.apply(change, to: &job) }
            case ("transfer", let text?):
                let (outcome, reason) = try TransferChange(site: site).apply(text, to: selected[0])
                try answer(outcome, reason)
                continue
            default:
                try answer(
                    "refused",
                    "site \(site.name) moves its jobs itself; through the API it takes kills (FAILED), retries "
                        + "(READY, RESTART_READY), changes of the spec and deletions, not \(target ?? kind)")
                continue
            }
            guard let outcome = outcomes.first else { continue }
            switch outcome.kind {
            case .done, .requested: try answer("done", nil)
            case .unchanged where kind == "modify": try answer("done", nil)
            case .notNow: continue
            case .unchanged, .failed: try answer("refused", outcome.message)
            }
        }
        return answered
    }

    /// A user's change of a job's spec, as the server forwards it (the original's field names).
    static func apply(_ change: [String: JSONValue], to job: inout Job) {
        for (key, value) in change {
            switch key {
            case "tags": job.tags = (value.objectValue ?? [:]).compactMapValues(\.stringValue)
            case "data": job.data = value.objectValue ?? [:]
            case "parameters": job.parameters = value.objectValue ?? [:]
            case "launch_params": job.launchParams = (value.objectValue ?? [:]).compactMapValues(\.stringValue)
            case "num_nodes": job.numNodes = value.intValue ?? job.numNodes
            case "ranks_per_node": job.ranksPerNode = value.intValue ?? job.ranksPerNode
            case "threads_per_rank": job.threadsPerRank = value.intValue ?? job.threadsPerRank
            case "threads_per_core": job.threadsPerCore = value.intValue ?? job.threadsPerCore
            case "gpus_per_rank": job.gpusPerRank = value.doubleValue ?? job.gpusPerRank
            case "node_packing_count": job.nodePackingCount = value.intValue ?? job.nodePackingCount
            case "wall_time_min": job.wallTimeMin = value.intValue ?? job.wallTimeMin
            default: break
            }
        }
    }

    /// Batch jobs asked for through the API go through `balsam queue submit`'s checks against the site's policy
    /// (queues, projects, sizes, optional parameters) and into `batchjobs/`, where the scheduler service submits
    /// them; refused ones are reported with the reason. Deletions asked through the API become the site's own
    /// deletion requests.
    func takeBatchJobs(_ reply: [String: JSONValue], state: inout SyncState) throws {
        let store = BatchJobStore(site: site)
        let remote = reply["remote_batch_jobs"]?.arrayValue ?? []
        if !remote.isEmpty {
            let policy = try SiteSettings.load(site).scheduler
            for item in remote {
                guard let o = item.objectValue, let serverID = o["id"]?.intValue else { continue }
                let key = String(serverID)
                if state.batchAdopted[key] != nil || state.batchRejected[key] != nil { continue }
                var job = BatchJob(
                    project: o["project"]?.stringValue ?? "", queue: o["queue"]?.stringValue ?? "",
                    numNodes: o["num_nodes"]?.intValue ?? 1, wallTimeMinutes: o["wall_time_min"]?.intValue ?? 1)
                job.filterTags = (o["filter_tags"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
                job.optionalParams = (o["optional_params"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
                job.origin = "balsam-server (batch job \(serverID))"
                do {
                    try job.validate(against: policy, active: try store.all().jobs.filter { !$0.state.isFinal })
                    let made = try store.create(job)
                    state.batchAdopted[key] = made.id
                } catch {
                    state.batchRejected[key] = "\(error)"
                }
                try state.save(site)
            }
        }
        for case .int(let id) in reply["batch_deletions"]?.arrayValue ?? [] {
            guard let job = try store.load(id), !job.state.isFinal, !store.deletionRequested(id) else { continue }
            try store.requestDeletion(id)
        }
    }

    /// Takes jobs made through the server's API into the site, through the same checks as `balsam-submit`. A
    /// job the site cannot take (no such app, parameters only Python can read, a bad workdir) is refused with
    /// the reason, which the next push carries to the server. Each taking is recorded durably before the
    /// next, so a crash never makes a job twice: its workdir would be taken, and the job there is recognized by
    /// the server id in its data.
    func take(_ remote: [JSONValue], state: inout SyncState) throws -> (Int, Int) {
        guard !remote.isEmpty else { return (0, 0) }
        var submission = Submission(site: site, actor: "balsam-sync")
        let names = try site.appNames()
        let apps = Dictionary(names.map { (Pusher.serverAppName($0), $0) }, uniquingKeysWith: { a, _ in a })
        let pythonApps = Set(names.filter { (try? site.app($0))?.isPython == true })
        var adopted = 0
        var refused = 0
        for (i, item) in remote.enumerated() {
            guard let serverID = item.objectValue?["id"]?.intValue else { continue }
            let key = String(serverID)
            if state.adopted[key] != nil || state.rejected[key] != nil { continue }
            func refuse(_ reason: String) throws {
                state.rejected[key] = reason
                try state.save(site)
                refused += 1
            }
            let o: RemoteJob
            do { o = try RemoteJob(item, at: "remote_jobs[\(i)]") } catch {
                try refuse("the server sent it wrong: \(error)")
                continue
            }
            let appName = o.spec.app
            guard let app = apps[appName] else {
                try refuse(
                    "site \(site.name) has no app '\(appName)' (its apps: \(names.isEmpty ? "none" : names.joined(separator: ", ")))"
                )
                continue
            }
            let pickled = o.serializedParameters
            let parameters: [String: JSONValue]
            let isPython = pythonApps.contains(app)
            var decoded: JSONValue?
            var problem = ""
            do { decoded = try Pickle.decodeBase64(pickled) } catch { problem = "\(error)" }
            if case .object(let plain)? = decoded {
                parameters = plain
            } else if isPython {
                parameters = [:]  // only the site's Python reads them (a numpy array, say)
            } else if decoded != nil {
                try refuse("its parameters are not a dict of names to values")
                continue
            } else {
                try refuse(
                    "its parameters are not plain values (\(problem)): a shell app takes strings, numbers, booleans, "
                        + "None, lists and dicts; objects only Python can load need a Python app")
                continue
            }
            var parents: [String] = []
            var waiting = false
            for parent in o.parentIDs {
                if let id = o.parentSiteIDs[parent] ?? state.adopted[String(parent)] {
                    parents.append(id)
                } else {
                    waiting = true
                }
            }
            if waiting { continue }  // a parent not at the site yet: taken with a later round
            var spec = o.spec
            spec.app = app
            var job = spec.job
            job.parameters = parameters
            if isPython { job.serializedParameters = pickled }
            job.data["balsam_server_id"] = .int(serverID)
            job.parentIDs = parents
            do {
                let (made, _) = try submission.submit(job)
                state.adopted[key] = made.id
                try state.save(site)
                adopted += 1
            } catch {
                if let existing = try madeBefore(workdir: job.workdir, serverID: serverID) {
                    state.adopted[key] = existing
                    try state.save(site)
                    adopted += 1
                } else {
                    try refuse("\(error)")
                }
            }
        }
        return (adopted, refused)
    }

    /// The site's job at `workdir` made from server job `serverID` before a crash, if there is one.
    private func madeBefore(workdir: String, serverID: Int) throws -> String? {
        var filter = JobFilter()
        filter.workdir = WorkdirPattern(workdir)
        return try Query(site: site).list(filter, load: false).first {
            $0.workdir == workdir && $0.job?.data["balsam_server_id"]?.intValue == serverID
        }?.id
    }
}
