import Spool
import Wire

#if canImport(Glibc)
    import Glibc
#endif

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
    private var appsCache: (stamps: [String: Int], apps: [String: PushedApp])?
    /// settings.yml as last read (the batch-job policy and transfer locations go with every push), and its stamp.
    private var settingsCache: (stamp: [Int], settings: SiteSettings?)?
    /// When each job made but not found was first missed (see `push`).
    private var missingSince: [String: Double] = [:]
    /// Most event lines read per round.
    public var maxEvents = 100_000
    /// Most event lines per request (with their jobs' specs, under the server's limit of items per push).
    public var requestEvents = 5_000
    /// Seconds a push that tells nothing may wait on the server for news for the site (`?wait=`; 0: never).
    /// The watcher sets it while nothing runs at the site, and then the held push is the site's heartbeat.
    public var waitForNews = 0
    /// Asked about once a second while a push waits: true gives the wait up (the site has news of its own).
    public var giveUpWaiting: () -> Bool = { false }
    /// While pushes wait for news: the fewest seconds between two pushes that tell something (`sync.period`), so
    /// that a stream of the site's events goes up in batches; a push with nothing to tell waits at once, and
    /// meanwhile the site still listens (a push that tells nothing waits out the rest).
    public var spacing = 0.0
    /// Asked while a push waits out the spacing: true ends it (the watcher stops).
    public var stopWaiting: () -> Bool = { false }
    /// When the last push that told something went.
    private var lastTold: Double?
    /// The later push fields the server named in its last reply (`PushRequest.laterFields`): only those are sent,
    /// so a site newer than its server keeps pushing. None until the first reply.
    private var serverReads: Set<String> = []

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
        /// Whether the push waited on the server for news (ended by news, its time, or the site's own news).
        public var waited = false
        /// Whether pushes wait for news (`waitForNews`): then the next round goes at once (a push that tells
        /// nothing waits on the server, or listens out the rest of the spacing).
        public var listening = false

        /// An empty round.
        public init() {}
    }

    /// One event line as the site logged it, with where its line ends.
    struct Line {
        var file: String
        var end: Int
        var event: JSONValue
    }

    /// The apps as the server takes them.
    func pushedApps(except fromServer: Set<String>) throws -> [PushedApp] {
        // Every round asks; an app is read again only when its app.yml changed (one stat each otherwise).
        var stamps: [String: Int] = [:]
        for name in try site.appNames() {
            let st = try Posix.statIfExists(site.appsPath + "/" + name + "/app.yml")
            stamps[name] = st.map { Int($0.st_mtim.tv_sec) * 1_000_000_000 + Int($0.st_mtim.tv_nsec) ^ Int($0.st_size) }
        }
        if appsCache?.stamps != stamps {
            var apps: [String: PushedApp] = [:]
            for name in stamps.keys { apps[name] = try pushedApp(name) }
            appsCache = (stamps, apps)
        }
        let apps = appsCache?.apps ?? [:]
        // Apps that came from the server (defined in Python) are not sent back: the server holds their class.
        return apps.keys.sorted().filter { !fromServer.contains($0) }.compactMap { apps[$0] }
    }

    /// One app as the server takes it.
    private func pushedApp(_ name: String) throws -> PushedApp {
        let app = try site.app(name)
        var pushed = PushedApp(name: name)
        for (key, p) in app.parameters {
            let fallback: JSONValue = p.defaultValue.map { .string($0.stringValue ?? $0.serialized()) } ?? .null
            pushed.parameters[key] = .object([
                "required": .bool(p.required), "default": fallback, "help": .string(p.help),
            ])
        }
        pushed.description = app.description
        pushed.sourceCode = app.yamlText()
        pushed.transfers = app.transfers
        return pushed
    }

    /// The site's settings, read again only when settings.yml changed (nil when it does not load).
    private func currentSettings() -> SiteSettings? {
        let stamp = (try? SiteSettings.stamp(site)) ?? []
        if let cached = settingsCache, cached.stamp == stamp { return cached.settings }
        let settings = try? SiteSettings.load(site)
        settingsCache = (stamp, settings)
        return settings
    }

    /// A push that tells nothing, waiting up to `seconds` for news: the server's reply, or nil when the watcher
    /// stopped it.
    private func listen(_ push: PushRequest, _ seconds: Int) throws -> PushReply? {
        do {
            return try post(push, wait: seconds, abort: stopWaiting)
        } catch {
            if error.aborted { return nil }
            throw error
        }
    }

    /// `push` sent with the later fields its server named, and the reply read: the later fields that server reads
    /// remembered. A server that refuses one of them (an older server behind the same address, in the middle of
    /// a rolling upgrade) gets the push again at once without any, and none are sent until a reply names them.
    private func post(_ push: PushRequest, wait: Int, abort: (() -> Bool)?) throws(SyncError) -> PushReply {
        func send() throws(SyncError) -> HTTPResponse {
            let json = push.json(serverReads: serverReads)
            if wait > 0 {
                return try client.send(
                    "POST", "/sync/push?wait=\(wait)", json: json, timeout: client.timeout + wait, abort: abort)
            }
            return try client.send("POST", "/sync/push", json: json)
        }
        let response: HTTPResponse
        do { response = try send() } catch
            where error.status == 400 && !serverReads.isEmpty
            && error.field.map(PushRequest.laterFields.contains) == true
        {
            serverReads = []
            response = try send()
        }
        let reply = PushReply((try? response.json()) ?? .null)
        serverReads = reply.pushFields
        return reply
    }

    /// For each of `lines`, the oldest time (microseconds since the epoch) of it and the lines after it: a push
    /// starting at line k says the oldest line it had not pushed was that old (`unpushedLagSeconds`). An event's
    /// time is the one `parsed` read already; only other lines (removals, changes) are read for theirs.
    private static func oldestFrom(_ lines: [Line], _ parsed: [Logged?]) -> [Int64] {
        var oldest = [Int64](repeating: .max, count: lines.count + 1)
        for k in lines.indices.reversed() {
            let t: Int64?
            if case .event(let e)? = parsed[k] {
                t = e.microseconds > 0 ? e.microseconds : nil
            } else {
                t = lines[k].event.objectValue?["t"]?.stringValue.flatMap(ServerClock.parse)
            }
            oldest[k] = min(t ?? .max, oldest[k + 1])
        }
        return oldest
    }

    /// Seconds from `oldest` (microseconds; `.max`: none) to now, 0 when none or in the future.
    static func lag(_ oldest: Int64, now: Int64 = ServerClock.microseconds()) -> Double {
        oldest == .max ? 0 : Double(max(0, now &- oldest)) / 1e6
    }

    /// The event logs as the last round listed them.
    private var logNames: [String] = []

    /// The event logs' sizes and their directory's stamp, one `stat` each: anything the site does that the
    /// server must hear of is an event line (a launcher's on another node too), so a held push is given up
    /// when this changes.
    func eventLogStamp() -> [Int] {
        var stamp: [Int] = []
        if let st = try? Posix.statIfExists(site.eventsPath) {
            stamp += [Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec), Int(st.st_size)]
        }
        for name in logNames {
            stamp.append((try? Posix.statIfExists(site.eventsPath + "/" + name)).map { Int($0.st_size) } ?? -1)
        }
        return stamp
    }

    /// Reads complete lines after the cursor, at most `maxEvents`, oldest file first.
    func readEvents(_ state: SyncState) throws -> (lines: [Line], caughtUp: Bool) {
        var lines: [Line] = []
        var caughtUp = true
        let names = try Posix.listDirectory(site.eventsPath).filter { $0.hasSuffix(".jsonl") }.sorted()
        logNames = names
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
            guard let job = listing.job else { continue }
            out[listing.id] = PushedJob(id: listing.id, job, state: listing.state, serverID: job.serverID)
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
    // Over 100 lines: one loop over the backlog's requests, whose steps share the round's state; its parts are the functions below it.
    private func push(_ state: inout SyncState) throws -> Round {
        var round = Round()
        let read = try readEvents(state)
        var lines = read.lines
        round.caughtUp = read.caughtUp
        var parsed = lines.map(Logged.init)
        let allJobs = try jobsJSON(Set(parsed.compactMap { $0?.sendsSpec == true ? $0?.id : nil }))
        // A job made but not found is usually in the middle of a move (its entry briefly in tmp/): the round
        // stops before its creation and the next one looks again. Only a job gone for good (removed, which a
        // later line says, or missing for a minute) has its events left out.
        let removedLater = Set(
            parsed.compactMap { p -> String? in
                if case .removed(let id)? = p { return id }
                return nil
            })
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
        let oldest = Self.oldestFrom(lines, parsed)
        let apps = try pushedApps(except: Set(state.remoteApps.keys))
        let digest = JSONValue.array(apps.map(\.json)).serialized()
        let serverIDs = Dictionary(state.adopted.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        let pushedSite = describeSite(id: state.siteID)
        var changedBatches = try changedBatchJobs(state)
        // Launchers' time on their nodes (the server's utilization counts those started by hand as held): the
        // running ones, and the ended ones the server does not have yet.
        let sessions = ((try? LauncherSession.all(site)) ?? []).filter {
            $0.end == nil || !state.sessionsPushed.contains($0.lease)
        }.prefix(1000)
        func request(
            jobs: [String: PushedJob], events: [PushedEvent], removed: Set<String>, born: Set<String> = [],
            forceApps: Bool = false
        ) -> PushRequest {
            Pusher.request(
                state, site: pushedSite, jobs: jobs, serverIDs: serverIDs, born: born, events: events, removed: removed,
                apps: forceApps || digest != state.appsDigest || state.siteID == nil ? apps : [],
                batchJobs: changedBatches.map(\.report), sessions: Array(sessions))
        }
        // Every reply's server ids are recorded, a resend's too (`ServerIDs`: what the commands take).
        // A push that tells nothing may wait on the server for news (then it is the site's heartbeat); given up
        // (the site has news of its own), the round ends and the next one pushes at once.
        func send(_ push: PushRequest, wait: Int = 0) throws -> PushReply {
            let logs = wait > 0 ? eventLogStamp() : []
            let reply = try post(
                push, wait: wait, abort: wait > 0 ? { self.giveUpWaiting() || self.eventLogStamp() != logs } : nil)
            try ServerIDs.append(site, reply.jobs.map { ($0.key, $0.value) })
            return reply
        }
        var last = PushReply(siteID: 0)
        var start = 0
        var listenFirst: (push: PushRequest, seconds: Int)?
        repeat {
            let end = min(lines.count, start + requestEvents)
            let chunk = parsed[start..<end].compactMap { $0 }
            let createdHere = Set(chunk.filter(\.sendsSpec).map(\.id))
            let bornInChunk = Set(chunk.filter(\.created).map(\.id))
            var jobs = allJobs.filter { createdHere.contains($0.key) }
            // Events of jobs gone from the site before the server had them cannot be placed: left out.
            var removed = Set<String>()
            var placed: [PushedEvent] = []
            for item in chunk {
                switch item {
                case .removed(let id): removed.insert(id)
                case .event(let e): placed.append(e)
                case .modified: break
                }
            }
            // Only a job made and removed within this chunk: the server never had it. One it has gets its events
            // first (the server records them before it deletes the job), so that a run's end still counts in
            // the batch job's busy node-seconds, as the site's report counts it.
            let bornHere = Set(placed.filter { $0.from == .created }.map(\.siteJobID))
            placed.removeAll { removed.contains($0.siteJobID) && bornHere.contains($0.siteJobID) }
            var sendable = placed.filter { $0.from != .created || jobs[$0.siteJobID] != nil }
            var push = request(jobs: jobs, events: sendable, removed: removed, born: bornInChunk)
            push.unpushedLagSeconds = Self.lag(oldest[start])
            let wait = lines.isEmpty && push.carriesNothing ? min(waitForNews, PushRequest.longestWait) : 0
            round.listening = waitForNews > 0
            if round.listening && wait == 0 && start == 0 {
                // What the site has to tell goes up at most once a `spacing`: a stream of events in batches.
                let now = Posix.monotonicSeconds()
                if let told = lastTold, now - told < spacing {
                    // Not yet: the site listens meanwhile, with a push that tells nothing.
                    let seconds = max(1, Int(saturating: (spacing - (now - told)).rounded(.up)))
                    var listen = PushRequest(site: pushedSite, appDigests: push.appDigests)
                    listen.unpushedLagSeconds = push.unpushedLagSeconds
                    listenFirst = (listen, seconds)
                    break
                }
                lastTold = now
            }
            do { last = try send(push, wait: wait) } catch let error as SyncError where error.aborted {
                round.waited = true
                return round
            }
            round.waited = wait > 0
            var refusals = last.refused
            // The server lacks jobs made before (a new server, a database restored from a backup, a site record
            // deleted through the API) or the site's apps: send those jobs' specs and events again, with the apps.
            let missingJobs = Set(
                refusals.filter { $0.code == .unknownJob || $0.code == .unknownApp }.map(\.siteJobID))
            if !missingJobs.isEmpty {
                jobs = try jobsJSON(missingJobs)
                sendable = placed.filter { missingJobs.contains($0.siteJobID) && jobs[$0.siteJobID] != nil }
                last = try send(request(jobs: jobs, events: sendable, removed: [], forceApps: true))
                refusals = refusals.filter { !missingJobs.contains($0.siteJobID) } + last.refused
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
            if let was = state.siteID, last.siteID > 0, last.siteID != was {
                state = SyncState()
                state.siteID = last.siteID
                settledBatches.removeAll()
                try state.save(site)
                round.registeredAgain = true
                round.caughtUp = false
                return round
            }
            state.appsDigest = digest
            Pusher.remember(last, lines: lines[start..<end], batchJobs: changedBatches, sessions: sessions, in: &state)
            changedBatches = []
            try state.save(site)
            round.events += last.events
            round.sent += sendable.count
            round.jobs += jobs.count
            start = end
        } while start < lines.count
        if let listenFirst {
            guard let heard = try listen(listenFirst.push, listenFirst.seconds) else { return round }
            round.waited = true
            round.caughtUp = false
            last = heard
            // Whatever ended the listen (news, or the rest of the spacing), what the site has to tell goes next, at
            // once: a listen answered early (the server has work for the site, such as jobs made through the API,
            // which it sends until the site's telling push says it has them) must not be followed by another
            // listen, which the server would answer at once again — hundreds of pushes a second until the spacing
            // ran out (sync-bench found it: 250 requests/s while API jobs arrived twice a second).
            lastTold = nil
        }
        try doWhatTheServerSent(last, state: &state, round: &round)
        return round
    }

    /// A push of `jobs` and `events`, with everything else the site says each time (its record, its answers and
    /// refusals, its apps when they changed, batch jobs that changed, launcher sessions).
    ///
    /// A job is pushed as its adoption (its server id, nothing else) when the sync state says it took the job from
    /// the server, or when its creation is in this push and its own record names a server id: a watcher killed
    /// between taking a job and saving its state would otherwise push the job it took as a new one, and the
    /// server would hold it twice (the differential test found it under load). A later push of its spec (a
    /// modification) is never an adoption.
    static func request(
        _ state: SyncState, site: PushedSite, jobs: [String: PushedJob], serverIDs: [String: String],
        born: Set<String> = [], events: [PushedEvent], removed: Set<String>, apps: [PushedApp],
        batchJobs: [BatchJobReport], sessions: [LauncherSession]
    ) -> PushRequest {
        var push = PushRequest(site: site)
        push.jobs = jobs.keys.sorted().compactMap { id in
            guard var job = jobs[id] else { return nil }
            job.serverID = serverIDs[id].flatMap(Int.init) ?? (born.contains(id) ? job.serverID : nil)
            return .read(job)
        }
        push.events = events.map { .read($0) }
        push.removed = removed.sorted()
        push.appDigests = state.remoteApps
        push.rejected = state.rejected.sorted(by: { $0.key < $1.key }).compactMap { id, reason in
            Int(id).map { Rejection(serverID: $0, reason: reason) }
        }
        push.apps = apps
        push.batchJobs = batchJobs
        push.launcherSessions = sessions
        push.requestsDone = state.requestsDone.sorted(by: { $0.key < $1.key }).compactMap {
            RequestAnswer(kept: $0.value)
        }
        push.refusedApps = Dictionary(
            uniqueKeysWithValues: state.refused.compactMap { key, text in
                key.hasPrefix("app ") ? (String(key.dropFirst(4)), text) : nil
            })
        push.rejectedBatchJobs = state.batchRejected.sorted(by: { $0.key < $1.key }).compactMap { id, reason in
            Int(id).map { Rejection(serverID: $0, reason: reason) }
        }
        return push
    }

    /// What a reply says the server has now, remembered (the cursor past `lines`) and what it took, forgotten.
    static func remember(
        _ last: PushReply, lines: ArraySlice<Line>, batchJobs: [(id: String, text: String, report: BatchJobReport)],
        sessions: some Sequence<LauncherSession>, in state: inout SyncState
    ) {
        if last.siteID > 0 { state.siteID = last.siteID }
        for line in lines { state.cursor[line.file] = max(state.cursor[line.file] ?? 0, line.end) }
        let known = Set(last.jobs.keys)
        state.adopted = state.adopted.filter { !known.contains($0.value) }
        for id in known { state.refuse("job " + id, nil) }
        state.rejected = [:]
        for batch in batchJobs { state.batchDigests[batch.id] = batch.text }
        state.batchAdopted = [:]
        state.batchRejected = [:]
        state.requestsDone = [:]
        for s in sessions where s.end != nil { state.sessionsPushed.insert(s.lease) }
    }

    /// What the server sent to do, done: its apps installed, batch jobs taken, users' requests carried out and
    /// jobs made through the API taken in.
    private func doWhatTheServerSent(_ last: PushReply, state: inout SyncState, round: inout Round) throws {
        try takeApps(last.remoteApps, state: &state, round: &round)
        try takeBatchJobs(last, state: &state)
        let answered = try carryOut(last.requests, state: &state)
        if answered > 0 { round.caughtUp = false }
        let (adopted, refused) = try take(last.remoteJobs, state: &state)
        round.adopted = adopted
        round.refused = refused
        if adopted + refused > 0 { round.caughtUp = false }
        round.newRefusals += state.freshRefusals
        state.freshRefusals = []
    }

    /// The site as a push describes it: its name, path, id on the server, transfer locations and batch-job
    /// policy.
    private func describeSite(id: Int?) -> PushedSite {
        let siteSettings = currentSettings()
        // The batch-job policy, for the original client's `balsam queue submit`, which checks against it.
        let scheduler = siteSettings?.scheduler ?? SiteSettings.Scheduler()
        var pushedSite = PushedSite(name: settings.siteName ?? site.name, path: site.root)
        pushedSite.id = id
        pushedSite.transferLocations = (siteSettings?.transferLocations ?? [:]).mapValues(\.clientURL)
        var policy = PushedSite.Policy()
        (policy.allowedQueues, policy.allowedProjects) = (scheduler.allowedQueues, scheduler.allowedProjects)
        policy.optionalParams = scheduler.optionalParams
        pushedSite.policy = policy
        return pushedSite
    }

    /// Batch jobs whose record changed since the last push (with the server's id for those asked remotely); a
    /// final one already pushed is settled and not read again.
    private func changedBatchJobs(_ state: SyncState) throws -> [(id: String, text: String, report: BatchJobReport)] {
        let store = BatchJobStore(site: site)
        let batchServerIDs = Dictionary(state.batchAdopted.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        var changedBatches: [(id: String, text: String, report: BatchJobReport)] = []
        for id in try store.ids().sorted() where !settledBatches.contains(id) {
            guard let job = try? store.load(id) else { continue }
            // Its own record names the server's id too (a watcher killed before it saved its state): the server
            // links it once, and a report naming a linked batch job changes nothing more.
            let report = BatchJobReport(job, serverID: batchServerIDs[job.id].flatMap(Int.init) ?? job.serverID)
            let text = report.json.serialized()
            if state.batchDigests[String(job.id)] != text {
                changedBatches.append((String(job.id), text, report))
            } else if job.state.isFinal {
                settledBatches.insert(job.id)
            }
        }
        return changedBatches
    }

}

/// A line of the log: an event, or a removal (`balsam rm`, not a state: the server deletes the job), or a change
/// of its spec (`balsam modify`: the job is pushed again, and the server takes its spec).
private enum Logged {
    case event(PushedEvent)
    case removed(String)
    case modified(String)

    init?(_ line: Pusher.Line) {
        guard let o = line.event.objectValue, let job = o["job"]?.stringValue, let t = o["t"]?.stringValue,
            let from = o["from"]?.stringValue, let to = o["to"]?.stringValue
        else { return nil }
        if to == SiteIndex.removedMark {
            self = .removed(job)
        } else if to == EventLog.modifiedMark {
            self = .modified(job)
        } else {
            guard let from = JobState(rawValue: from), let to = JobState(rawValue: to) else { return nil }
            var data = o["data"]?.objectValue ?? [:]
            if let actor = o["actor"]?.stringValue { data["actor"] = .string(actor) }
            self = .event(PushedEvent(siteJobID: job, time: t, from: from, to: to, data: data))
        }
    }

    var id: String {
        switch self {
        case .event(let e): e.siteJobID
        case .removed(let id), .modified(let id): id
        }
    }
    var created: Bool {
        if case .event(let e) = self { return e.from == .created }
        return false
    }
    /// Whether the line sends the job's spec: its creation, or a change of it.
    var sendsSpec: Bool {
        if case .modified = self { return true }
        return created
    }
}
