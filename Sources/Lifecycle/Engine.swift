import Logging
import Processes
import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The watcher's lifecycle services, as one synchronous pass over the site's small queue directories:
/// ingest, stages, hooks, retry policies, dependencies and cleanup. Each pass reads only the directories of
/// active states (never the files of ended jobs) and moves every job it can; `balsam-watch` runs passes when
/// inotify reports a change and on a timer.
public final class Engine {
    /// The site driven.
    public let site: Site
    /// Settings in force (reloaded on SIGHUP).
    public private(set) var settings: SiteSettings
    /// Where messages go; a job's id is in its message and under `job.id`.
    public let logger: Logger
    /// Seconds a failing drop is given to finish being copied in before it is rejected.
    public var dropSettleSeconds: Double = 2
    /// Asked between jobs and while a hook runs: when it says true, the pass stops and a running hook is killed,
    /// leaving its job where it was (it is done again next time).
    public var shouldStop: @Sendable () -> Bool = { false }
    /// The monotonic clock leases' ages are measured on (a test steps it).
    public var clock: @Sendable () -> Double = { Posix.monotonicSeconds() }
    /// How long each lease's heartbeat has gone unchanged (what a previous watcher saw, on this host and boot).
    lazy var leaseAges = LeaseAges.load(site)

    /// Keeps what this engine saw of the leases for the next watcher (see `LeaseAges`); a failure is logged.
    public func saveLeaseAges() {
        do { try leaseAges.save(site) } catch { logger.warning("cannot keep the leases' ages: \(error)") }
    }
    /// Called when a sweep leaves jobs waiting for their transfers (the transfer service then looks at once).
    public var transfersWanted: @Sendable () -> Void = {}
    let store: JobStore
    let index: SiteIndex
    var apps: [String: App] = [:]
    var missingApps: [String: String] = [:]
    /// Whether each app's hook files exist, looked at once like the apps themselves (forgotten on SIGHUP).
    var hookFiles: [String: Bool] = [:]
    var finalStates: FinalStates
    /// Whether the last pass met errors (then the next one finishes moves they cut short).
    var hadErrors = false
    var lastMoveCheck = 0.0

    /// What one pass did.
    public struct Report: Sendable {
        /// Transitions made.
        public var moves = 0
        /// Jobs made or adopted by ingest.
        public var ingested = 0
        /// Problems that did not stop the pass (a job that could not be read, a full disk).
        public var errors: [String] = []
        /// Something waits on the clock, not on a change (a lease's heartbeat, a drop still being copied in):
        /// the watcher passes again after its poll interval even if nothing changes.
        public var pollAgain = false
    }

    /// Makes an engine for `site` with `settings`, or its current ones read now.
    public init(
        site: Site, settings: SiteSettings? = nil, logger: Logger = Logger(label: "balsam-watch")
    ) throws(SpoolError) {
        self.site = site
        if let settings { self.settings = settings } else { self.settings = try SiteSettings.load(site) }
        self.logger = logger
        self.store = JobStore(site: site, actor: "balsam-watch")
        self.index = SiteIndex(site: site)
        self.finalStates = FinalStates(index: index)
        self.leasesGate = ChangeGate(site.jobsPath)
        self.acceptedGate = ChangeGate(site.acceptedPath)
        self.dropBoxGate = ChangeGate(site.dropBoxPath)
    }

    /// Rereads `settings.yml` and forgets cached apps (SIGHUP).
    public func reload() throws(SpoolError) {
        let old = settings.python.executable
        settings = try SiteSettings.load(site)
        let rewritten = try PythonApps.rewriteHooks(site, from: old, to: settings.python.executable)
        if rewritten > 0 {
            logger.info("python.executable is now '\(settings.python.executable)': \(rewritten) hook file(s) rewritten")
        }
        apps = [:]
        missingApps = [:]
        hookFiles = [:]
        classHookFiles = [:]
        slotCache = [:]
    }

    /// Runs sweeps until one moves nothing (at most `maxSweeps`), after ingesting new work.
    @discardableResult
    public func pass(maxSweeps: Int = 8) -> Report {
        var report = Report()
        defer { hadErrors = !report.errors.isEmpty }
        do {
            var ingester = Ingest(site: site, actor: "balsam-watch")
            ingester.settleSeconds = dropSettleSeconds
            ingester.advance = { name, state in
                // Only what the READY step below would do at once; a missing app is left to that step.
                guard state == .ready, let app = try? self.app(name) else { return [] }
                // Jobs that may stage in wait in READY for the transfer service.
                if (try? self.slots(app))?.values.contains(where: { $0.direction == .in }) != false { return [] }
                return self.hasHook(.preprocess, app: name)
                    ? [(.stagedIn, "no stage-in")] : [(.stagedIn, "no stage-in"), (.preprocessed, nil)]
            }
            // Each queue is read only when its stamp changed since a read that left nothing in it to come back to.
            var ingest =
                try acceptedGate.ifChanged { () throws(SpoolError) in try ingester.materializePending() }
                ?? Ingest.Report()
            if try dropBoxGate.ifChanged({ () throws(SpoolError) in try ingester.adoptDropBox(into: &ingest) }) != nil,
                ingest.unsettled > 0
            {
                dropBoxGate.forget()
            }
            report.ingested = ingest.materialized + ingest.adopted.count
            if ingest.unsettled > 0 { report.pollAgain = true }
            for (name, reason) in ingest.rejected { logger.warning("rejected queue/new/\(name): \(reason)") }
            for id in ingest.conflicts {
                logger.warning(
                    "job \(id) FAILED: its workdir was taken before it was made", metadata: ["job.id": "\(id)"])
            }
        } catch {
            report.errors.append("ingest: \(error)")
            logger.error("ingest: \(error)")
        }
        housekeeping(&report)
        // A RUNNING job's entry lives in its launcher's lease; one in jobs/RUNNING/ was given back by a launcher
        // that could not record its end (a full disk): nobody runs it, so it is handled like a run cut short. Once
        // a pass, with the leases, not in every sweep: such jobs are rare and nothing in a sweep makes them.
        step(.running, &report) { (loaded) throws(SpoolError) in
            try self.move(
                loaded, to: .runTimeout, reason: "its launcher left without recording its end (given back RUNNING)")
        }
        for _ in 0..<maxSweeps where !shouldStop() {
            let before = report.moves
            sweep(&report)
            if report.moves == before { break }
        }
        return report
    }

    /// The steps, in lifecycle order, so that a job can go through several in one sweep.
    func sweep(_ report: inout Report) {
        step(.ready, &report) { (loaded) throws(SpoolError) in
            // Without a preprocess hook there is nothing to wait for: straight through to the ready queue. A job
            // with stage-ins waits here for the transfer service, which moves it on.
            let app = try self.app(loaded.job.app)
            if try self.stages(.in, loaded.job, app) { return self.waitForTransfers(loaded) }
            if self.hasHook(.preprocess, app: app.name) {
                self.plan(loaded, through: [(.stagedIn, "no stage-in")])
            } else {
                self.plan(loaded, through: [(.stagedIn, "no stage-in"), (.preprocessed, nil)])
            }
        }
        step(.stagedIn, &report) { (loaded) throws(SpoolError) in
            try self.runHook(.preprocess, loaded, default: .preprocessed)
        }
        step(.runDone, &report) { (loaded) throws(SpoolError) in
            // Without a postprocess hook (and no stage-out) nothing is left to wait for: straight to the end in
            // one move, each step still recorded.
            let app = try self.app(loaded.job.app)
            if self.hasHook(.postprocess, app: app.name) {
                try self.runHook(.postprocess, loaded, default: .postprocessed)
            } else if try self.stages(.out, loaded.job, app) {
                self.plan(loaded, through: [(.postprocessed, nil)]) { _ in self.transfersWanted() }
            } else {
                self.plan(
                    loaded, through: [(.postprocessed, nil), (.stagedOut, "no stage-out"), (.jobFinished, nil)],
                    then: self.cleanup)
            }
        }
        step(.runError, &report) { (loaded) throws(SpoolError) in try self.afterRun(loaded, hook: .onError) }
        step(.runTimeout, &report) { (loaded) throws(SpoolError) in try self.afterRun(loaded, hook: .onTimeout) }
        step(.postprocessed, &report) { (loaded) throws(SpoolError) in
            // Stage-outs: the transfer service moves the job on once they are done.
            if try self.stages(.out, loaded.job, try self.app(loaded.job.app)) { return self.waitForTransfers(loaded) }
            self.plan(loaded, through: [(.stagedOut, "no stage-out"), (.jobFinished, nil)], then: self.cleanup)
        }
        step(.stagedOut, &report) { (loaded) throws(SpoolError) in
            self.plan(loaded, through: [(.jobFinished, nil)], then: self.cleanup)
        }
        step(.awaitingParents, &report) { (loaded) throws(SpoolError) in try self.checkParents(loaded) }
    }

    /// Applies `body` to every job in `state`, oldest first; the moves it plans are made in batches (`plan`). A job
    /// another program moved meanwhile is skipped; a job whose files are broken is failed with the reason; an I/O
    /// error is reported and the pass goes on.
    func step(_ state: JobState, _ report: inout Report, _ body: (JobStore.Loaded) throws(SpoolError) -> Void) {
        let ids: [String]
        do { ids = try entries(state).sorted() } catch {
            report.errors.append("\(error)")
            return
        }
        // Jobs waiting for the transfer service are not loaded again while they wait: one stat says whether the
        // entry is the one left waiting (a job that failed and was retried, or was changed, is a new visit).
        if let waiting = waitingForTransfers[state], !waiting.isEmpty {
            let listed = Set(ids)
            waitingForTransfers[state] = waiting.filter { listed.contains($0.key) }
        }
        defer { makePlannedMoves(state, &report) }
        for id in ids {
            if shouldStop() { return }
            if let seen = waitingForTransfers[state]?[id] {
                // With the entries kept from inotify, a new visit is heard (its entry arrives again: `heard`
                // forgets the wait), so no stat is needed: 10,000 jobs waiting for their stage-ins cost 20,000
                // stats a pass otherwise, the most of the watcher's time while they wait.
                if keepsEntries && known[state] != nil { continue }
                if seen == Visit(directory: seen.directory, entry: index.entryPath(state, id)) { continue }
                waitingForTransfers[state]?[id] = nil
            }
            do {
                guard let loaded = try store.load(id, in: state) else {
                    if !Posix.exists(index.entryPath(state, id)) { known[state]?.remove(id) }
                    continue
                }
                guard selected(loaded.job) else { continue }
                leftAlone = []
                let plannedBefore = planned.count
                try body(loaded)
                if planned.count >= Engine.batchSize { makePlannedMoves(state, &report) }
                if !leftAlone.isEmpty || planned.count > plannedBefore { continue }
                report.moves += 1
            } catch {
                failed(id, in: state, error, &report)
            }
        }
    }

    /// What a job's error does: a job another program moved meanwhile is skipped; a job whose files are broken is
    /// failed with the reason; an I/O error is reported and the pass goes on.
    func failed(_ id: String, in state: JobState, _ error: SpoolError, _ report: inout Report) {
        switch error.code {
        case .conflict:
            logger.debug("job \(id) moved meanwhile: \(error.message)", metadata: ["job.id": "\(id)"])
        case .invalidInput, .notFound:
            logger.error("job \(id): \(error)", metadata: ["job.id": "\(id)"])
            quarantine(id, in: state, reason: error.description, &report)
        default:
            report.errors.append("job \(id): \(error)")
            logger.error("job \(id): \(error)", metadata: ["job.id": "\(id)"])
        }
    }

    // MARK: - Moves in batches

    /// Moves the step's jobs planned (`plan`), each with what to do once it is moved.
    var planned: [(move: JobStore.Planned, then: ((JobStore.Loaded) -> Void)?)] = []
    /// Jobs moved together at most: their events are one write, their final-index lines another.
    static let batchSize = 512

    /// Plans a move with nothing to wait for (no hook, no transfer): it is made with the others of its step, in
    /// one batch (`JobStore.move(_:)`), when the step ends or the batch is full; `then` runs once it is made.
    func plan(
        _ loaded: JobStore.Loaded, through steps: [(state: JobState, reason: String?)],
        then: ((JobStore.Loaded) -> Void)? = nil
    ) {
        planned.append((JobStore.Planned(loaded: loaded, steps: steps), then))
    }

    /// Makes the moves planned in `state`'s step.
    func makePlannedMoves(_ state: JobState, _ report: inout Report) {
        guard !planned.isEmpty else { return }
        let batch = planned
        planned = []
        for ((move, then), result) in zip(batch, store.move(batch.map(\.move))) {
            switch result {
            case .success(let moved):
                remember(move.loaded, moved: moved)
                report.moves += 1
                then?(moved)
            case .failure(let error):
                failed(move.loaded.job.id, in: state, error, &report)
            }
        }
    }

    func selected(_ job: Job) -> Bool {
        job.hasTags(settings.filterTags)
    }

    func quarantine(_ id: String, in state: JobState, reason: String, _ report: inout Report) {
        do {
            try store.forceFail(id, in: state, reason: "quarantined: \(reason)")
            known[state]?.remove(id)
            finalStates.record(id, .failed)
            report.moves += 1
        } catch {
            report.errors.append("job \(id): cannot quarantine: \(error)")
            logger.error("job \(id): cannot quarantine: \(error)", metadata: ["job.id": "\(id)"])
        }
    }

    @discardableResult
    func move(
        _ loaded: JobStore.Loaded, to next: JobState, reason: String?, eventData: [String: JSONValue] = [:],
        update: ((inout Job, inout StateRecord) -> Void)? = nil
    ) throws(SpoolError) -> JobStore.Loaded {
        try move(loaded, through: [(next, reason)], eventData: eventData, update: update)
    }

    /// Moves through steps with nothing to do between them in one move; a final state is remembered.
    @discardableResult
    func move(
        _ loaded: JobStore.Loaded, through steps: [(state: JobState, reason: String?)],
        eventData: [String: JSONValue] = [:], update: ((inout Job, inout StateRecord) -> Void)? = nil
    ) throws(SpoolError) -> JobStore.Loaded {
        let moved = try store.move(loaded, through: steps, eventData: eventData, update: update)
        remember(loaded, moved: moved)
        return moved
    }

    /// Keeps what a move changed: the entries kept, the final state of a job that ended.
    func remember(_ loaded: JobStore.Loaded, moved: JobStore.Loaded) {
        let next = moved.record.state
        known[loaded.record.state]?.remove(loaded.job.id)
        if next.isFinal { finalStates.record(loaded.job.id, next) } else { known[next]?.insert(loaded.job.id) }
        logger.debug(
            "job \(loaded.job.id) \(loaded.record.state.rawValue) -> \(next.rawValue)",
            metadata: ["job.id": "\(loaded.job.id)"])
    }

    /// The queues ingest reads, as last read.
    var acceptedGate: ChangeGate
    var dropBoxGate: ChangeGate

    /// What a pass does besides moving jobs, and all an idle watcher does (every 30 s): leases' heartbeats, and
    /// moves cut short. Neither lists a directory when nothing changed: the leases are looked for only when
    /// `jobs/`'s stamp changed, moves cut short only when a move failed; an idle site costs a `stat`.
    public func housekeeping(_ report: inout Report) {
        reapExpiredLeases(&report)
        finishInterruptedMoves(&report)
    }

    /// `JobStore.cutShort` when `finishInterruptedMoves` last read `tmp/`.
    var cutShortSeen = JobStore.cutShort.load(ordering: .relaxed)

    /// After a pass with errors (a full disk, say), and every 30 s when a move of this process failed after its
    /// claim since the last look (`JobStore.cutShort`): moves of this watcher cut short are finished from the
    /// jobs' state files, so a job whose end could not be recorded reappears as soon as the disk has room,
    /// without a restart. Nothing else leaves this process's claims in `tmp/`, so otherwise it is not read.
    func finishInterruptedMoves(_ report: inout Report) {
        let now = Posix.monotonicSeconds()
        let cutShort = JobStore.cutShort.load(ordering: .relaxed)
        guard hadErrors || (cutShort != cutShortSeen && now - lastMoveCheck >= 30) else { return }
        lastMoveCheck = now
        do {
            for problem in try Fsck(site: site).finishOwnInterruptedMoves() {
                logger.warning("finished a move cut short: \(problem)")
                report.moves += 1
            }
            cutShortSeen = cutShort
        } catch {
            report.errors.append("finishing moves cut short: \(error)")
        }
    }

    // MARK: - Leases

    /// `jobs/` as last listed for leases, whether that listing found any, and when (on `clock`).
    var leasesGate: ChangeGate
    var leasesHeld = true
    var leasesLooked = -Double.infinity

    /// Ends leases whose launcher stopped heartbeating: running jobs become RUN_TIMEOUT, claimed jobs not yet
    /// started go back to be claimed again, and the lease is removed.
    func reapExpiredLeases(_ report: inout Report) {
        // Leases are made (renamed into jobs/) and removed whole: while there are none, jobs/ is listed again
        // only when its stamp changed.
        // While some are held, their heartbeats are read again once a second (a lease expires in tens of
        // seconds), not at every pass: a launcher finishing hundreds of jobs a second makes a pass per millisecond.
        if leasesHeld && clock() - leasesLooked >= 1 { leasesGate.forget() }
        let found: [Lease]?
        do { found = try leasesGate.ifChanged { () throws(SpoolError) in try Lease.all(site) } } catch { return }
        guard let leases = found else { return }
        leasesHeld = !leases.isEmpty
        leasesLooked = clock()
        // A lease's age is measured on the clock, not on changes: while one is held, the watcher looks again;
        // and once more soon after jobs/ changed too recently for its stamp to vouch for this listing.
        if leasesHeld || !leasesGate.trusts { report.pollAgain = true }
        let now = clock()
        leaseAges.keep(only: Set(leases.map(\.name)))
        for lease in leases {
            let stamp = lease.heartbeatStamp()
            var age = leaseAges.age(of: lease.name, stamp: stamp, now: now)
            // A launcher of this host that has ended beats no more: its lease is waited for only as long as its
            // jobs take to stop (their task servers stop them within the kill grace), not the whole timeout that
            // a watcher that starts would otherwise give it from its first look.
            let settled = min(settings.leaseTimeoutSeconds, settings.launcher.killGraceSeconds + 5)
            if age <= settings.leaseTimeoutSeconds && age > settled && lease.holderIsGone() { age = .infinity }
            guard age > settings.leaseTimeoutSeconds else { continue }
            let seconds = age.isFinite ? "\(Int(saturating: age)) s" : "ever"
            logger.warning("lease \(lease.name) expired (no heartbeat for \(seconds)); taking its jobs back")
            for id in (try? lease.jobIDs()) ?? [] {
                // The entry (or a move its launcher did not finish, ID.moving) leaves the lease first, under the
                // name its state file gives it: a launcher that is only slow, not dead, then finds its claim gone
                // before it commits a step (see JobStore.move) instead of recording over the reaper.
                let path = lease.entryPath(id)
                do {
                    guard let loaded = try store.load(entryAt: path) else { continue }
                    let state = loaded.record.state
                    if state.isFinal {
                        Posix.unlink(path)
                        continue
                    }
                    let entry = index.entryPath(state, id)
                    do { try Posix.renameNoReplace(path, entry) } catch  where error.cause == ENOENT { continue }
                    known[state]?.insert(id)
                    if state == .running {
                        var taken = loaded
                        taken.entry = entry
                        try move(taken, to: .runTimeout, reason: "lease \(lease.name) expired while the job ran")
                    }
                    report.moves += 1
                } catch {
                    report.errors.append("lease \(lease.name), job \(id): \(error)")
                    logger.error("lease \(lease.name), job \(id): \(error)", metadata: ["job.id": "\(id)"])
                }
            }
            if ((try? lease.jobIDs()) ?? []).isEmpty {
                // Its launcher's session ended with its last heartbeat, dated as it was written.
                let end = stamp.map { Timestamp.format(seconds: Double($0.seconds)) } ?? Timestamp.now()
                try? lease.session(end: end)?.record(site)
                lease.remove()
            }
        }
    }

    // MARK: - Entries heard, not listed

    /// Whether the entries of the active directories may be kept from inotify's names (`heard`) and this engine's
    /// own moves instead of being listed at every step: the watcher says so on a node-local filesystem with
    /// inotify working, where every change raises an event here; `forgetEntries()` after an overflow.
    public var keepsEntries = false {
        didSet { known = [:] }
    }
    /// Each active directory's entries, as listed once and kept since; a directory not here is listed when stepped.
    /// An ID may linger after its entry left unheard (it costs a `stat`, then is dropped); one never goes missing
    /// while inotify reports every change, since the last change heard for a name says whether it is there.
    var known: [JobState: Set<String>] = [:]

    /// The IDs with entries in `jobs/STATE/`: listed, or as kept.
    package func entries(_ state: JobState) throws(SpoolError) -> Set<String> {
        if keepsEntries, let kept = known[state] { return kept }
        let listed = Set(try index.activeIDs(state))
        if keepsEntries { known[state] = listed }
        return listed
    }

    /// Takes what inotify said of the active directories' entries, in the order it happened.
    package func heard(_ changes: [ChangeMonitor.NamedChange]) {
        guard keepsEntries, !known.isEmpty else { return }
        for change in changes where !change.name.hasPrefix(".") {
            guard let state = statesByPath[change.directory], known[state] != nil else { continue }
            if change.arrived { known[state]?.insert(change.name) } else { known[state]?.remove(change.name) }
            // An entry that arrives (a retry brought the job back, `balsam modify` replaced its spec) is a new
            // visit: a job left waiting for transfers there is looked at again.
            if change.arrived { waitingForTransfers[state]?[change.name] = nil }
        }
    }

    /// Forgets the kept entries (inotify's queue overflowed): each directory is listed again when next stepped.
    public func forgetEntries() { known = [:] }

    lazy var statesByPath = Dictionary(uniqueKeysWithValues: JobState.active.map { (site.activePath($0), $0) })

    // MARK: - Apps and hooks

    /// Jobs left in READY or POSTPROCESSED for the transfer service, by state, and which visit of the state each was
    /// left in.
    var waitingForTransfers: [JobState: [String: Visit]] = [:]

    /// A job's visit of a state, told by two `stat`s: its entry's inode (a spec replaced, as `balsam modify` does,
    /// is a new inode) and its state file's size (every move appends to it, so a job that left the state and came
    /// back, a retry, has a longer one).
    struct Visit: Equatable {
        var directory: String
        var inode: UInt?
        var stateSize: Int?

        init(directory: String, entry: String) {
            self.directory = directory
            let entryStat: stat? = try? Posix.lstatIfExists(entry)
            let stateStat: stat? = try? Posix.lstatIfExists(directory + "/state")
            inode = entryStat.map { UInt($0.st_ino) }
            stateSize = stateStat.map { Int($0.st_size) }
        }
    }

    /// Jobs a step looked at and left where they were (not counted as moves).
    var leftAlone = Set<String>()

    /// Leaves `loaded` where it is, for the transfer service, which is told to look.
    func waitForTransfers(_ loaded: JobStore.Loaded) {
        let state = loaded.record.state
        waitingForTransfers[state, default: [:]][loaded.job.id] = Visit(
            directory: loaded.directory, entry: loaded.entry ?? index.entryPath(state, loaded.job.id))
        leftAlone.insert(loaded.job.id)
        transfersWanted()
    }

    /// Each app's transfer slots, read once like the apps.
    var slotCache: [String: [String: TransferSlot]] = [:]

    func slots(_ app: App) throws(SpoolError) -> [String: TransferSlot] {
        if let known = slotCache[app.name] { return known }
        let slots = try TransferSlot.slots(of: app)
        slotCache[app.name] = slots
        return slots
    }

    /// Whether `job` fills a transfer slot of `direction`.
    func stages(_ direction: TransferSlot.Direction, _ job: Job, _ app: App) throws(SpoolError) -> Bool {
        guard !job.transfers.isEmpty else { return false }
        let slots = try slots(app)
        return job.transfers.keys.contains { slots[$0]?.direction == direction }
    }

    /// The warm hook servers, by Python.
    var warm: [String: WarmHooks] = [:]
    /// Whether each hook file is exactly the class hook the site wrote (read once per file).
    var classHookFiles: [String: Bool] = [:]

    // MARK: - Dependencies

    func checkParents(_ loaded: JobStore.Loaded) throws(SpoolError) {
        var waiting = false
        for parent in loaded.job.parentIDs {
            switch try parentState(parent) {
            case .jobFinished?: continue
            case .failed?:
                try move(loaded, to: .failed, reason: Engine.dependencyFailure(parent: parent, site: site))
                return
            case nil:
                try move(loaded, to: .failed, reason: "parent \(parent) no longer exists")
                return
            default:
                waiting = true
            }
        }
        if !waiting { try move(loaded, to: .ready, reason: "all parents finished") }
    }

    /// Why a job fails with its parent: the job that failed first (id, workdir, its own reason), so a user with a
    /// deep DAG finds the cause in one look, and the parent it came through.
    /// `parent P (workdir W) ended FAILED: REASON` when P failed on its own;
    /// `ancestor A (workdir V) ended FAILED: REASON (through parent P)` when P failed because of A.
    static func dependencyFailure(parent: String, site: Site) -> String {
        guard let listing = try? Query(site: site).find(parent) else { return "parent \(parent) ended FAILED" }
        let own = listing.record?.reason ?? ""
        let inherited = ["parent ", "ancestor "].first { own.hasPrefix($0) }
        guard let inherited else {
            let reason = own.isEmpty ? "" : ": " + String(own.prefix(300))
            return "parent \(parent) (workdir \(listing.workdir)) ended FAILED\(reason)"
        }
        var root = own.dropFirst(inherited.count)
        if let through = root.ranges(of: " (through parent ").last { root = root[..<through.lowerBound] }
        return "ancestor \(root) (through parent \(parent))"
    }

    /// A parent's state: active, accepted (not made yet: READY or waiting), or ended. nil: it does not exist.
    func parentState(_ id: String) throws(SpoolError) -> JobState? {
        if let state = index.activeState(of: id) { return state }
        if let state = try finalStates.state(of: id) {
            // FAILED in the final index may be old news: a retried job stays listed there, and between its active
            // entries (in a launcher's lease, in the middle of a move) only its state file says where it is.
            if state == .failed, let now = try? Query(site: site).find(id).record?.state { return now }
            return state
        }
        // Not seen yet: an accepted batch, or a job that ended through another program. Read the final index.
        for name in try index.batchNames() where try index.readBatch(name).lines.contains(where: { $0.id == id }) {
            return .awaitingParents
        }
        if let state = try finalStates.state(of: id, reread: true) { return state }
        return index.activeState(of: id)
    }

    // MARK: - Cleanup

    /// Deletes the app's `cleanup_files` globs from the finished job's directory: regular files only, and only
    /// files whose real path is inside that directory.
    func cleanup(_ loaded: JobStore.Loaded) {
        guard let app = try? self.app(loaded.job.app), !app.cleanupFiles.isEmpty else { return }
        guard let root = realPath(loaded.directory) else { return }
        for pattern in app.cleanupFiles {
            if pattern.hasPrefix("/") || pattern.split(separator: "/").contains("..") {
                logger.warning("app \(app.name): cleanup glob '\(pattern)' may not leave the job directory; skipped")
                continue
            }
            var matches = glob_t()
            defer { globfree(&matches) }
            guard glob(loaded.directory + "/" + pattern, 0, nil, &matches) == 0 else { continue }
            for i in 0..<Int(matches.gl_pathc) {
                guard let cPath = matches.gl_pathv[i] else { continue }
                let path = String(cString: cPath)
                guard let real = realPath(path), real.hasPrefix(root + "/"),
                    !Engine.spoolFiles.contains(String(real.dropFirst(root.count + 1))),
                    let st = try? Posix.lstatIfExists(path), (st.st_mode & S_IFMT) == S_IFREG
                else { continue }
                Posix.unlink(path)
            }
        }
    }

    /// The files of a job directory that belong to the spool, never cleanup targets whatever the globs say:
    /// without them the job could not be listed, shown or checked.
    static let spoolFiles: Set<String> = [
        "job.json", "state", "job.out", HookRunner.logName, HookRunner.resultName, "state.broken",
    ]

    func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
