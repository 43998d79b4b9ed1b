import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Moves jobs between states: the one way every program changes a job that exists.
///
/// A move is a compare-and-swap on the job's entry: `rename(2)` from `jobs/FROM/ID` to `jobs/TO/ID` succeeds for
/// exactly one mover; anyone who finds the entry gone has lost the race and gets a `.conflict` error. Then the
/// event is logged, `job.json` rewritten if the move changes it, and the `state` file (the truth) appended to. A
/// crash between the rename and the state file leaves the entry ahead of the state; recovery puts it back and
/// the step is done again, so a step may run twice, never zero times. Events are written before the state file
/// for the same reason: after a crash an event may appear twice, never be missing.
public struct JobStore: Sendable {
    /// The site.
    public let site: Site
    /// Recorded as the actor of every move.
    public var actor: String
    let index: SiteIndex

    /// Moves of this process that failed after claiming their job, whose claim may be left in `tmp/`: the watcher
    /// reads `tmp/` for its own unfinished moves only when this changed, not on a timer.
    package static let cutShort = Atomic<Int>(0)

    /// Makes a store acting as `actor`.
    public init(site: Site, actor: String) {
        self.site = site
        self.actor = actor
        self.index = SiteIndex(site: site)
    }

    /// A job as loaded for a move: its spec and its state record.
    public struct Loaded: Sendable {
        public var job: Job
        public var record: StateRecord
        /// The job's directory.
        public var directory: String
        /// Where its entry is (`jobs/STATE/ID` or in a lease); nil for a job that has ended.
        public var entry: String?
    }

    /// Loads the active job with entry `jobs/STATE/ID`. Returns nil when there is no such entry or the job is in
    /// the middle of a move (its state file does not say `state` yet); throws when its files are unreadable.
    public func load(_ id: String, in state: JobState) throws(SpoolError) -> Loaded? {
        let entry = index.entryPath(state, id)
        guard Posix.exists(entry) else { return nil }
        guard let job = index.readEntry(at: entry) else {
            if !Posix.exists(entry) { return nil }
            throw SpoolError(.invalidInput, "job.json of job \(id) is unreadable", path: entry)
        }
        let record: StateRecord
        do { record = try Query(site: site).readRecord(workdir: job.workdir) } catch {
            if !Posix.exists(entry) { return nil }
            throw error
        }
        guard record.state == state else { return nil }
        return Loaded(job: job, record: record, directory: site.jobDirectory(job.workdir), entry: entry)
    }

    /// Loads a job by ID wherever it is: active entries, then the final index.
    public func load(_ id: String) throws(SpoolError) -> Loaded? {
        if let state = JobState.active.first(where: { Posix.exists(index.entryPath($0, id)) }) {
            return try load(id, in: state)
        }
        for lease in try Lease.all(site) where Posix.exists(lease.entryPath(id)) {
            return try load(entryAt: lease.entryPath(id))
        }
        var filter = JobFilter()
        filter.ids = [id]
        guard let listing = try Query(site: site).list(filter, load: false).first, listing.source == .final,
            let job = listing.job
        else { return nil }
        let record = try Query(site: site).readRecord(workdir: job.workdir)
        return Loaded(job: job, record: record, directory: site.jobDirectory(job.workdir), entry: nil)
    }

    /// Loads a job whose spec the caller read from the entry at `path` before, provided the entry is still that
    /// same file (inode `inode`): only its state file is read. nil if the entry is gone or is another file now.
    public func load(_ job: Job, inode: UInt64, entryAt path: String) throws(SpoolError) -> Loaded? {
        guard let st = try Posix.statIfExists(path), UInt64(st.st_ino) == inode else { return nil }
        let record = try Query(site: site).readRecord(workdir: job.workdir)
        return Loaded(job: job, record: record, directory: site.jobDirectory(job.workdir), entry: path)
    }

    /// Loads the job whose entry is at `path` (in a lease, say); nil if the entry is gone.
    public func load(entryAt path: String) throws(SpoolError) -> Loaded? {
        guard let job = index.readEntry(at: path) else {
            if !Posix.exists(path) { return nil }
            throw SpoolError(.invalidInput, "entry does not lead to a readable job.json", path: path)
        }
        let record = try Query(site: site).readRecord(workdir: job.workdir)
        return Loaded(job: job, record: record, directory: site.jobDirectory(job.workdir), entry: path)
    }

    /// Moves `loaded` from its current state to `to`. `update` may change the spec (`data`, say) and the record's
    /// counters. The entry goes to `jobs/TO/ID`, or to `entryAt` (a launcher keeps its running jobs in its lease).
    /// Throws `.conflict` if another program moved the job first, and the transition error if `to` is not a legal
    /// successor.
    ///
    /// `leaseHeld`: the entry is in a lease the caller holds and keeps alive (a launcher whose heartbeat is
    /// fresh), so no one else can move the job (the watcher only takes back jobs of expired leases) and the
    /// compare-and-swap claim is skipped: the event, `job.json` and `state` are written with the entry where it
    /// is, then the entry is renamed to its new place. If the launcher dies in between, the lease's reaper finds
    /// the entry in the lease and goes by the state file.
    @discardableResult
    public func move(
        _ loaded: Loaded, to next: JobState, reason: String? = nil, eventData: [String: JSONValue] = [:],
        entryAt target: String? = nil, leaseHeld: Bool = false, update: ((inout Job, inout StateRecord) -> Void)? = nil
    ) throws(SpoolError) -> Loaded {
        try move(
            loaded, through: [(next, reason)], eventData: eventData, entryAt: target, leaseHeld: leaseHeld,
            update: update)
    }

    /// Moves `loaded` through several states in one step (`READY -> STAGED_IN -> PREPROCESSED` when there is
    /// nothing to do in between): every transition is checked, recorded in the history and logged as an event,
    /// but the entry is renamed and the state file written once.
    @discardableResult
    public func move(
        _ loaded: Loaded, through steps: [(state: JobState, reason: String?)], eventData: [String: JSONValue] = [:],
        entryAt target: String? = nil, leaseHeld: Bool = false, update: ((inout Job, inout StateRecord) -> Void)? = nil
    ) throws(SpoolError) -> Loaded {
        guard !steps.isEmpty else { return loaded }
        let planned = Planned(
            loaded: loaded, steps: steps, eventData: eventData, target: target, leaseHeld: leaseHeld, update: update)
        return try move([planned])[0].get()
    }

    /// One job's part of a batch move: what `move(_:through:...)` takes.
    public struct Planned {
        public var loaded: Loaded
        public var steps: [(state: JobState, reason: String?)]
        public var eventData: [String: JSONValue] = [:]
        public var target: String? = nil
        public var leaseHeld = false
        public var update: ((inout Job, inout StateRecord) -> Void)? = nil

        public init(
            loaded: Loaded, steps: [(state: JobState, reason: String?)], eventData: [String: JSONValue] = [:],
            target: String? = nil, leaseHeld: Bool = false, update: ((inout Job, inout StateRecord) -> Void)? = nil
        ) {
            (self.loaded, self.steps, self.eventData) = (loaded, steps, eventData)
            (self.target, self.leaseHeld, self.update) = (target, leaseHeld, update)
        }
    }

    /// A job of a batch between its claim and its publication.
    private struct Claimed {
        var index: Int
        var plan: Planned
        var job: Job
        var record: StateRecord
        var events: [Event]
        var lines: [UInt8]
        /// Where the entry was, nil for a job that had ended; where it is held during the move.
        var source: String?
        var held: String
    }

    /// Moves a batch of jobs, each as `move(_:through:...)` moves one, with one write of their events and one of
    /// their final-index lines: the crash order holds for each job (its claim, then its event, then its spec and
    /// its state, the truth, then its entry published), and every event of the batch is written before any of
    /// its states. A crash leaves some jobs claimed, each with its event logged or not and its state written or
    /// not; recovery goes by each one's state file, as for a single move: a step may run twice (its event
    /// logged twice), never zero times. A job that cannot be moved (a conflict, an illegal transition, a file
    /// that cannot be written) gets its error in the result, in the batch's order, and stays where it was.
    public func move(_ batch: [Planned]) -> [Result<Loaded, SpoolError>] {
        var results = [Result<Loaded, SpoolError>](
            repeating: .failure(SpoolError(.io, "not moved")), count: batch.count)
        // 1. Each job's new records, and the compare-and-swap that claims it.
        var claimed: [Claimed] = []
        for (i, plan) in batch.enumerated() {
            do throws(SpoolError) { claimed.append(try claim(plan, index: i)) } catch { results[i] = .failure(error) }
        }
        // Undoes a claim: the job stays where it was.
        func giveBack(_ job: Claimed, _ error: SpoolError) {
            if job.held != job.source {
                if let source = job.source { _ = rename(job.held, source) } else { Posix.unlink(job.held) }
            }
            JobStore.cutShort.add(1, ordering: .relaxed)
            results[job.index] = .failure(error)
        }
        // 2. A retry starts the job's unfinished transfers over (before the state says it left FAILED: if the move
        //    fails now, a FAILED job's items were only reset early).
        claimed = claimed.filter { (job) -> Bool in
            let (from, next, dir) = (job.plan.loaded.record.state, job.record.state, job.plan.loaded.directory)
            do throws(SpoolError) {
                if from == .failed { try TransferItem.startOver(directory: dir, for: next) }
                if next == .failed { try TransferItem.skipUnstarted(directory: dir) }
                return true
            } catch {
                giveBack(job, error)
                return false
            }
        }
        // 3. The events, in one write.
        do throws(SpoolError) {
            if !claimed.isEmpty { try EventLog(site: site).append(claimed.flatMap(\.events), sync: false) }
        } catch {
            for job in claimed { giveBack(job, error) }
            claimed = []
        }
        // 4. Each job's spec (the entry relinked to the new file) and its state: the truth, written last.
        claimed = claimed.filter { (job) -> Bool in
            do throws(SpoolError) {
                try commit(job)
                return true
            } catch {
                giveBack(job, error)
                return false
            }
        }
        // 5. Publish the entries in their new places; the ended jobs' final-index lines in one write.
        var ended: [Claimed] = []
        for job in claimed {
            let next = job.record.state
            guard !next.isFinal else {
                ended.append(job)
                continue
            }
            let entry = job.plan.target ?? index.entryPath(next, job.job.id)
            do throws(SpoolError) {
                if entry != job.held { try Posix.rename(job.held, entry) }
                results[job.index] = .success(moved(job, entry: entry))
            } catch {
                JobStore.cutShort.add(1, ordering: .relaxed)
                results[job.index] = .failure(error)
            }
        }
        guard !ended.isEmpty else { return results }
        do throws(SpoolError) {
            try index.appendFinal(
                ended.map {
                    .init(
                        id: $0.job.id, state: $0.record.state, workdir: $0.job.workdir, app: $0.job.app,
                        time: $0.record.since)
                }, sync: false)
            for job in ended {
                Posix.unlink(job.held)
                results[job.index] = .success(moved(job, entry: nil))
            }
        } catch {
            JobStore.cutShort.add(1, ordering: .relaxed)
            for job in ended { results[job.index] = .failure(error) }
        }
        return results
    }

    /// A job's new records and its claim: a job that ends leaves the active index, its entry going to tmp/ until
    /// the final-index line is written; a job that had ended has no entry, so a new one is claimed in tmp/; a job
    /// in a lease the caller holds is not claimed, since nobody else may move it.
    private func claim(_ plan: Planned, index i: Int) throws(SpoolError) -> Claimed {
        let loaded = plan.loaded
        let from = loaded.record.state
        var (record, events, lines) = try loaded.record.moved(
            through: plan.steps, jobID: loaded.job.id, actor: actor, eventData: plan.eventData)
        var job = loaded.job
        plan.update?(&job, &record)
        lines += record.line()
        let id = job.id
        let source = from.isFinal ? nil : (loaded.entry ?? index.entryPath(from, id))
        let held: String
        if let source, plan.leaseHeld, Lease.movingClaim(for: source) != nil {
            held = source
        } else if let source {
            held = Lease.movingClaim(for: source) ?? site.claimPath(id)
            do { try Posix.renameNoReplace(source, held) } catch {
                if error.cause == ENOENT || error.cause == EEXIST {
                    throw SpoolError(
                        .conflict, "job \(id) changed while \(actor) was moving it from \(from.rawValue)")
                }
                throw error
            }
        } else {
            held = try claimEnded(loaded)
        }
        return Claimed(
            index: i, plan: plan, job: job, record: record, events: events, lines: lines, source: source, held: held)
    }

    /// Writes a claimed job's spec, if the move changed it, and its state.
    private func commit(_ claimed: Claimed) throws(SpoolError) {
        let (loaded, job, held) = (claimed.plan.loaded, claimed.job, claimed.held)
        let dir = loaded.directory
        if job != loaded.job {
            try Posix.replaceFile(dir + "/job.json", job.fileBytes(), sync: false)
            let fresh = Posix.parentPath(held) + "/." + Posix.lastComponent(held) + ".relink"
            do throws(SpoolError) {
                try index.makeEntry(at: fresh, workdir: job.workdir)
                try Posix.rename(fresh, held)
            } catch {
                Posix.unlink(fresh)
                throw error
            }
        }
        // A claim inside a launcher's lease can be taken back by the watcher's reaper if the lease expires
        // meanwhile (the launcher stopped or starved past the lease timeout): look again just before the commit,
        // so that a launcher never records a step the reaper has already taken the job away from.
        if Lease.isLeasePath(held), !Posix.exists(held) {
            throw SpoolError(.conflict, "job \(job.id) was taken back from \(actor)'s expired lease")
        }
        try Posix.appendLines(
            dir + "/state", claimed.lines, sync: false, endsWithNewline: loaded.record.fileEndsWithNewline)
    }

    /// What a claimed job is once moved.
    private func moved(_ claimed: Claimed, entry: String?) -> Loaded {
        var record = claimed.record
        record.fileEndsWithNewline = true
        return Loaded(job: claimed.job, record: record, directory: claimed.plan.loaded.directory, entry: entry)
    }

    /// Claims a job that has ended (it has no entry to rename): an entry is made under this process's own name,
    /// then renamed, without replacing, to `tmp/ID.moving`, the one name every writer of an ended job uses; of
    /// two at once (two `balsam retry`, a `retry` beside an `rm`), one gets it and the other gets a conflict. The
    /// state file is then read again: if the job moved since `loaded` was read (a retry that finished in between),
    /// the claim is given back and the caller gets a conflict. Returns the claim's path, which the caller removes
    /// (or the move's publishing rename takes away). A claim left by a crash is finished by recovery from the state
    /// file.
    public func claimEnded(_ loaded: Loaded) throws(SpoolError) -> String {
        let id = loaded.job.id
        let mine = site.claimPath(id)
        let shared = site.tmpPath + "/" + id + ".moving"
        try index.makeEntry(at: mine, workdir: loaded.job.workdir)
        do { try Posix.renameNoReplace(mine, shared) } catch {
            Posix.unlink(mine)
            if error.cause == EEXIST {
                throw SpoolError(.conflict, "job \(id) is being changed by another command; try again")
            }
            throw error
        }
        let current = try? Query(site: site).readRecord(workdir: loaded.job.workdir)
        guard let current, current.state.isFinal, current.state == loaded.record.state,
            current.history.count == loaded.record.history.count
        else {
            Posix.unlink(shared)
            throw SpoolError(.conflict, "job \(id) changed while \(actor) was moving it")
        }
        return shared
    }

    /// Fails a job whose files cannot be used (a state file edited into nonsense, say): its entry leaves the
    /// active index, its state file is kept as `state.broken`, and a new `FAILED` record says why. An entry that
    /// does not even lead to a readable `job.json` is moved to `rejected/ID.entry` with a reason file.
    public func forceFail(_ id: String, in state: JobState, reason: String) throws(SpoolError) {
        try forceFail(id, entryAt: index.entryPath(state, id), from: state, reason: reason)
    }

    /// `forceFail` of the job whose entry is at `entry` (an active directory's or a lease's). A job whose
    /// directory is gone (deleted or renamed by hand) cannot have a state file: its entry, still a link to its
    /// spec, is kept as `rejected/ID.entry` with the reason, and the event log and final index record it
    /// `FAILED`.
    public func forceFail(_ id: String, entryAt entry: String, from state: JobState, reason: String)
        throws(SpoolError)
    {
        guard let job = index.readEntry(at: entry) else {
            try keepRejected(entry, id: id, reason: reason)
            return
        }
        let claim = site.claimPath(id)
        if entry != claim {  // fsck --repair has claimed it already
            do { try Posix.renameNoReplace(entry, claim) } catch {
                throw SpoolError(.conflict, "job \(id) changed while \(actor) was failing it")
            }
        }
        let dir = site.jobDirectory(job.workdir)
        if !Posix.isDirectory(dir) {
            let reason = "job directory data/\(job.workdir) is gone (deleted or renamed)"
            let time = Timestamp.now()
            try EventLog(site: site).append(
                [
                    Event(
                        time: time, jobID: id, from: state, to: .failed, actor: actor, data: ["reason": .string(reason)]
                    )
                ],
                sync: false)
            try index.appendFinal(
                [.init(id: id, state: .failed, workdir: job.workdir, app: job.app, time: time)], sync: false)
            try keepRejected(claim, id: id, reason: reason)
            return
        }
        if Posix.exists(dir + "/state") { _ = rename(dir + "/state", dir + "/state.broken") }
        let record = StateRecord(initial: .failed, actor: actor, reason: reason)
        try EventLog(site: site).append(
            [
                Event(
                    time: record.since, jobID: id, from: state, to: .failed, actor: actor,
                    data: ["reason": .string(reason)])
            ],
            sync: false)
        try Posix.replaceFile(dir + "/state", record.fileBytes(), sync: false)
        try index.appendFinal(
            [.init(id: id, state: .failed, workdir: job.workdir, app: job.app, time: record.since)], sync: false)
        Posix.unlink(claim)
    }

    /// Removes a job whose directory is gone (deleted or renamed by hand), as `balsam rm` removes a job: out of
    /// the indexes (its active entry, or a removal line in the final index), with a `REMOVED` line in the event
    /// log whose reason says so (the server deletes it too). Claimed as every change claims a job: an active
    /// entry renamed into `tmp/`, an ended job through the shared `tmp/ID.moving` (made empty here: there is no
    /// `job.json` left to link). A job held by a launcher, or whose directory is back, is not removed.
    public func removeGone(_ id: String, workdir: String, app: String, state: JobState) throws(SpoolError) {
        let claim: String
        if state.isFinal {
            claim = site.tmpPath + "/" + id + ".moving"
            do { try Posix.createFile(claim, [], sync: false) } catch  where error.cause == EEXIST {
                throw SpoolError(.conflict, "job \(id) is being changed by another command; try again")
            }
        } else {
            claim = site.claimPath(id)
            do { try Posix.renameNoReplace(index.entryPath(state, id), claim) } catch {
                throw SpoolError(
                    .conflict, "job \(id) is no longer \(state.rawValue) (a launcher holds it, or it moved); try again")
            }
        }
        defer { Posix.unlink(claim) }
        let dir = site.jobDirectory(workdir)
        if Posix.isDirectory(dir) {
            if !state.isFinal { _ = rename(claim, index.entryPath(state, id)) }
            throw SpoolError(.conflict, "job \(id)'s directory is there again; nothing removed", path: dir)
        }
        try EventLog(site: site).appendMark(
            SiteIndex.removedMark, id: id, from: state, actor: actor,
            data: ["reason": .string("job directory data/\(workdir) is gone (deleted or renamed by hand)")])
        try index.appendRemoved([(id, workdir, app)])
    }

    /// Keeps an entry that can no longer be a job's as `rejected/ID.entry`, with `rejected/ID.entry.reason`.
    private func keepRejected(_ entry: String, id: String, reason: String) throws(SpoolError) {
        let target = site.rejectedPath + "/" + id + ".entry"
        try Posix.createFile(target + ".reason", Array((Timestamp.now() + " " + reason + "\n").utf8), sync: true)
        try Posix.rename(entry, target)
    }
}
