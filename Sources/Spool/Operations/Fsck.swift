#if canImport(Glibc)
    import Glibc
#endif

/// The recovery pass: makes the indexes agree with the job directories, whose `state` files are the truth.
/// Read-only unless asked to repair; idempotent; reports everything it finds.
///
/// The quick pass (the watcher's start-up) checks what can be wrong after a crash: moves and submissions cut
/// short in `tmp/` and `data/.balsam-staging/`, and every active entry against its job's state file. It reads
/// the final index once but no ended job's files. The full pass (`balsam fsck`) also walks all of `data/` to
/// find jobs that have no entry or final-index line at all (lost indexes).
public struct Fsck {
    /// The site checked.
    public let site: Site
    let index: SiteIndex

    /// Prepares a check of `site`.
    public init(site: Site) {
        self.site = site
        self.index = SiteIndex(site: site)
    }

    /// One disagreement found.
    public struct Problem: Sendable, CustomStringConvertible {
        /// What is wrong, in a sentence.
        public var message: String
        /// The file or directory concerned.
        public var path: String
        /// Whether it was repaired.
        public var repaired: Bool

        public var description: String { "\(path): \(message)" + (repaired ? " (repaired)" : "") }
    }

    /// What a pass saw.
    public struct Report: Sendable {
        /// Jobs checked: active entries, plus (full pass) job directories under `data/`.
        public var jobs = 0
        /// Disagreements, in the order found.
        public var problems: [Problem] = []
    }

    /// Checks the site; with `repair`, fixes what it finds; with `full`, walks every job directory.
    public func run(repair: Bool, full: Bool = true) throws(SpoolError) -> Report {
        var report = Report()
        var pass = Pass(fsck: self, repair: repair)
        try pass.interruptedWrites()
        try pass.activeEntries()
        if full {
            try pass.jobDirectories()
            try pass.ghosts()
            try pass.nesting()
        }
        report.jobs = pass.checked
        report.problems = pass.problems
        return report
    }

    /// Finishes moves this process itself left in `tmp/` (`ID.HOST.PID-START.moving`) when one of its writes
    /// failed after the claim (a full disk): judged on the job's state file as recovery judges a dead writer's.
    /// Call it between passes, when no move of this process is under way. Returns what it repaired.
    public func finishOwnInterruptedMoves() throws(SpoolError) -> [Problem] {
        var pass = Pass(fsck: self, repair: true)
        try pass.interruptedWrites(ownOnly: true)
        return pass.problems
    }

    /// How the rsync transfers' staging trees start (`transfer.MICROS.HOST.PID-START`).
    package static let transferStagingPrefix = "transfer."

    /// What a leftover in the staging directory is: an rsync batch's tree, or a submission's job directory.
    static func leftover(_ name: String) -> String {
        guard name.hasPrefix(transferStagingPrefix) else { return "leftover of an interrupted submission" }
        let owner = name.split(separator: ".").last?.split(separator: "-").first.map { "pid \($0)" } ?? "a process"
        return "staging of an rsync transfer whose watcher (\(owner)) has ended"
    }

    /// Removes the staging trees of rsync transfers whose watcher has ended (on this host): what its transfers
    /// fetched before they were cut short. The watcher does it at start and then now and again, so a tree that a
    /// killed watcher's transfer went on writing is not left until the next start. Returns what it removed.
    package static func sweepTransferStaging(_ site: Site) -> [String] {
        var removed: [String] = []
        for name in (try? Posix.listDirectory(site.stagingPath)) ?? [] where name.hasPrefix(transferStagingPrefix) {
            let path = site.stagingPath + "/" + name
            guard isAbandoned(name: name, path: path) else { continue }
            Posix.removeTree(path)
            removed.append(path)
        }
        return removed
    }

    /// Whether a temporary file or claim was left by a writer that is gone: its name ends in `.HOST.PID-START`
    /// (before an optional `.moving`) and no process with that pid and start time runs on this host; or,
    /// written elsewhere or unnamed, it is older than two minutes (no write takes that long).
    static func isAbandoned(name: String, path: String) -> Bool {
        var base = Substring(name)
        if base.hasSuffix(".moving") { base = base.dropLast(".moving".count) }
        if let dot = base.lastIndex(of: "."), base[..<dot].hasSuffix("." + Posix.hostName()) {
            let owner = base[base.index(after: dot)...].split(separator: "-")
            if owner.count == 2, let pid = Int32(owner[0]), let start = UInt64(owner[1]) {
                if pid == getpid() { return false }
                return !Posix.isRunning(pid, startedAt: start)  // gone, or its pid now belongs to another
            }
        }
        guard let st = try? Posix.lstatIfExists(path) else { return false }
        let now = Posix.wallClock()
        return now.tv_sec - st.st_mtim.tv_sec > 120
    }

    /// The state of one pass.
    struct Pass {
        let fsck: Fsck
        let repair: Bool
        var problems: [Problem] = []
        var checked = 0
        var entered = Set<String>()
        /// Workdir -> ID of every active job seen (entries and leases), for `nesting`.
        var workdirs: [String: String] = [:]
        private var finalStates: FinalStates
        private var pending: Set<String>?

        init(fsck: Fsck, repair: Bool) {
            self.fsck = fsck
            self.repair = repair
            self.finalStates = FinalStates(index: fsck.index)
        }

        var site: Site { fsck.site }
        var index: SiteIndex { fsck.index }

        mutating func note(
            _ message: String, _ path: String, repairable: Bool = true, _ fix: () throws(SpoolError) -> Void
        )
            throws(SpoolError)
        {
            if repair && repairable { try fix() }
            problems.append(Problem(message: message, path: path, repaired: repair && repairable))
        }

        mutating func pendingIDs() throws(SpoolError) -> Set<String> {
            if let pending { return pending }
            var ids = Set<String>()
            for name in try index.batchNames() { for line in try index.readBatch(name).lines { ids.insert(line.id) } }
            pending = ids
            return ids
        }

        mutating func finalState(of id: String) throws(SpoolError) -> JobState? { try finalStates.state(of: id) }

        /// A job known to have ended: make sure the final index says so.
        mutating func ensureFinal(_ job: Job, _ record: StateRecord) throws(SpoolError) {
            guard try finalState(of: job.id) != record.state else { return }
            finalStates.record(job.id, record.state)
            let line = SiteIndex.FinalLine(
                id: job.id, state: record.state, workdir: job.workdir, app: job.app, time: record.since)
            // Written at once, before the caller removes the job's last entry or claim: a recovery killed in
            // between must not leave the job in no index at all.
            if repair { try index.appendFinal([line], sync: true) }
            problems.append(
                Problem(
                    message: "ended \(record.state.rawValue) but is not in the final index",
                    path: site.jobDirectory(job.workdir), repaired: repair))
        }

        /// Moves cut short (`tmp/ID.moving`) are finished from the job's state file; other leftovers of
        /// interrupted writes were never reported as done and are removed.
        mutating func interruptedWrites(ownOnly: Bool = false) throws(SpoolError) {
            for name in try Posix.listDirectory(site.tmpPath).sorted() {
                let path = site.tmpPath + "/" + name
                if ownOnly {
                    guard name.hasSuffix(Site.ownerSuffix + ".moving") else { continue }
                } else {
                    guard Fsck.isAbandoned(name: name, path: path) else { continue }  // a write still under way
                }
                guard name.hasSuffix(".moving"), let job = index.readEntry(at: path),
                    let record = try? Query(site: site).readRecord(workdir: job.workdir)
                else {
                    try note("leftover of an interrupted write", path) { Posix.removeTree(path) }
                    continue
                }
                if record.state.isFinal {
                    try ensureFinal(job, record)
                    try note("move of job \(job.id) to \(record.state.rawValue) was cut short", path) {
                        Posix.unlink(path)
                    }
                } else {
                    let entry = index.entryPath(record.state, job.id)
                    try note("move of job \(job.id) was cut short; it is \(record.state.rawValue)", path) {
                        () throws(SpoolError) in
                        if (try? Posix.renameNoReplace(path, entry)) == nil { Posix.unlink(path) }
                    }
                }
            }
            if ownOnly { return }
            for name in try Posix.listDirectory(site.stagingPath) {
                let path = site.stagingPath + "/" + name
                guard Fsck.isAbandoned(name: name, path: path) else { continue }
                try note(Fsck.leftover(name), path) { Posix.removeTree(path) }
            }
        }

        /// Every active entry must be the current `job.json` of a job whose state file names that state.
        ///
        /// Other programs (launchers, `balsam` commands) may move jobs while this runs, so what one look at an
        /// entry and a state file shows can be a move half seen rather than damage. An entry that looks wrong is
        /// therefore first claimed the way a move claims it (renamed into `tmp/`), and judged on the state file
        /// as it is once nobody else can move the job; a mover that got there first has taken the entry away.
        mutating func activeEntries() throws(SpoolError) {
            // Jobs held by launchers are theirs; the watcher's lease reaper handles expired leases.
            for leased in try index.leasedJobs() {
                entered.insert(leased.id)
                workdirs[leased.job.workdir] = leased.id
                if !Posix.isDirectory(site.jobDirectory(leased.job.workdir)) {
                    // Its launcher fails it when it next touches it; an expired lease's reaper does.
                    try note(
                        "job \(leased.id), held by a launcher, has no directory (deleted or renamed by hand)",
                        site.jobDirectory(leased.job.workdir), repairable: false
                    ) {}
                }
            }
            for state in JobState.active {
                for id in try index.activeIDs(state).sorted() {
                    let path = index.entryPath(state, id)
                    guard Posix.exists(path) else { continue }
                    if let job = index.readEntry(at: path), job.id == id,
                        let record = try? Query(site: site).readRecord(workdir: job.workdir), record.state == state,
                        index.entryIsCurrent(path, workdir: job.workdir)
                    {
                        checked += 1
                        entered.insert(id)
                        workdirs[job.workdir] = id
                        continue
                    }
                    try settle(path, id: id, state: state)
                }
            }
        }

        /// Judges an entry that looked wrong (see `activeEntries`). Without `repair`, reports what it sees.
        private mutating func settle(_ path: String, id: String, state: JobState) throws(SpoolError) {
            var held = path  // where the entry is while it is judged
            if repair {
                held = site.claimPath(id)
                do { try Posix.renameNoReplace(path, held) } catch { return }  // moved meanwhile: not ours to judge
            }
            // Puts the entry back where it was (repairing) — it turned out to be right, or cannot be judged.
            func putBack() { if held != path && (try? Posix.renameNoReplace(held, path)) == nil { Posix.unlink(held) } }

            guard let job = index.readEntry(at: held), job.id == id else {
                if try pendingIDs().contains(id) { return putBack() }
                return try note("entry does not lead to a readable job.json of job \(id)", path) { Posix.unlink(held) }
            }
            workdirs[job.workdir] = id
            checked += 1
            guard let record = try? Query(site: site).readRecord(workdir: job.workdir) else {
                if !Posix.isDirectory(site.jobDirectory(job.workdir)) {
                    let store = JobStore(site: site, actor: "balsam fsck")
                    return try note(
                        "job \(id) is \(state.rawValue) but its directory is gone (deleted or renamed by hand)",
                        site.jobDirectory(job.workdir)
                    ) { () throws(SpoolError) in
                        try store.forceFail(id, entryAt: held, from: state, reason: "job directory gone")
                    }
                }
                putBack()
                if try pendingIDs().contains(id) { return }
                return try note(
                    "state file of job \(id) is missing or unreadable", site.jobDirectory(job.workdir),
                    repairable: false
                ) {}
            }
            if record.state == state {
                entered.insert(id)
                if !index.entryIsCurrent(held, workdir: job.workdir) {
                    let index = self.index
                    let fresh = site.tmpPath + "/" + id + Site.ownerSuffix + ".relink"
                    do {
                        try note("entry is not the job's current job.json", path) { () throws(SpoolError) in
                            try index.makeEntry(at: fresh, workdir: job.workdir)
                            try Posix.rename(fresh, held)
                        }
                    } catch {
                        Posix.unlink(fresh)
                        putBack()
                        throw error
                    }
                }
                return putBack()
            }
            let message = "entry says \(state.rawValue) but the job's state file says \(record.state.rawValue)"
            if record.state.isFinal {
                try ensureFinal(job, record)
                try note(message, path) { Posix.unlink(held) }
            } else {
                // Moved to the state's entry unless that exists (a duplicate); the loop checks it when it gets there.
                let right = index.entryPath(record.state, id)
                try note(message, path) { if (try? Posix.renameNoReplace(held, right)) == nil { Posix.unlink(held) } }
                entered.insert(id)
            }
        }

        /// No job's directory holds another job's (hooks and cleanup globs of the outer job would reach the
        /// inner one's files, and removing the outer job would delete them). Reported, not repaired: which of
        /// the two should move is the user's call.
        /// Uses the active jobs `activeEntries` saw and the final index.
        mutating func nesting() throws(SpoolError) {
            var workdirs = self.workdirs
            for line in try index.finalLines() where !line.workdir.hasPrefix(".balsam") {
                workdirs[line.workdir] = line.id
            }
            for (workdir, id) in workdirs.sorted(by: { $0.key < $1.key }) {
                for ancestor in Job.enclosingWorkdirs(of: workdir) {
                    guard let outer = workdirs[ancestor], Posix.exists(site.jobDirectory(ancestor) + "/job.json")
                    else { continue }
                    problems.append(
                        Problem(
                            message: "job \(id) lies inside the directory of job \(outer) (workdir '\(ancestor)'): "
                                + "move one of them; balsam rm of the outer job would delete the inner one's files",
                            path: site.jobDirectory(workdir), repaired: false))
                    break
                }
            }
        }

        /// Every ended job still in the final index has its directory: one deleted by hand is removed (as
        /// `balsam rm` removes a job: `JobStore.removeGone`), so that it is no longer listed, nor its workdir
        /// taken twice. (An active job whose directory is gone was failed by `activeEntries`, and is one now.)
        mutating func ghosts() throws(SpoolError) {
            var latest: [String: SiteIndex.FinalLine] = [:]
            for line in try index.finalLines() where !line.workdir.hasPrefix(".balsam") { latest[line.id] = line }
            let store = JobStore(site: site, actor: "balsam fsck")
            for (id, line) in latest.sorted(by: { $0.key < $1.key }) {
                let state = line.state
                // One stat per ended job; the active lookup (a stat per state) only for a directory that is gone.
                guard !entered.contains(id), !Posix.isDirectory(site.jobDirectory(line.workdir)),
                    index.activeState(of: id) == nil
                else { continue }
                try note(
                    "job \(id) ended \(state.rawValue) but its directory is gone (deleted or renamed by hand); "
                        + "removed from the indexes", site.jobDirectory(line.workdir)
                ) { () throws(SpoolError) in
                    try store.removeGone(id, workdir: line.workdir, app: line.app, state: state)
                }
            }
        }

        /// Every job directory under `data/` has its entry (active) or final-index line (ended).
        mutating func jobDirectories() throws(SpoolError) {
            try walk(site.dataPath, relative: "")
        }

        private mutating func walk(_ path: String, relative: String) throws(SpoolError) {
            for name in try Posix.listDirectory(path).sorted() where !(relative.isEmpty && name == ".balsam-staging") {
                let child = path + "/" + name
                guard let st = try Posix.lstatIfExists(child), (st.st_mode & S_IFMT) == S_IFDIR else { continue }
                let workdir = relative.isEmpty ? name : relative + "/" + name
                if Posix.exists(child + "/job.json") {
                    try checkDirectory(workdir)
                } else {
                    try walk(child, relative: workdir)
                }
            }
        }

        private mutating func checkDirectory(_ workdir: String) throws(SpoolError) {
            let dir = site.jobDirectory(workdir)
            guard let job = try? Job(bytes: Posix.readFile(dir + "/job.json", limit: Job.Limits.fileBytes)),
                JobID.isValid(job.id)
            else {
                problems.append(Problem(message: "job.json is unreadable or has no id", path: dir, repaired: false))
                return
            }
            guard let record = try? Query(site: site).readRecord(workdir: workdir) else {
                if try pendingIDs().contains(job.id) { return }  // the next ingest pass completes it
                problems.append(Problem(message: "state file is missing or unreadable", path: dir, repaired: false))
                return
            }
            if !entered.contains(job.id) { checked += 1 }
            if job.workdir != workdir && !workdir.hasPrefix(".balsam-conflicts/") {
                // Moved or renamed by hand: its job (if any still is) lives at its own workdir; this copy is not
                // a job of the site until the user moves it back or resubmits it.
                problems.append(
                    Problem(
                        message: "holds job \(job.id) of workdir '\(job.workdir)' (moved or renamed by hand?); "
                            + "not a job here: move it back or resubmit it", path: dir, repaired: false))
                return
            }
            if record.state.isFinal {
                try ensureFinal(job, record)
            } else if !entered.contains(job.id) {
                entered.insert(job.id)
                let index = self.index
                try note("has no index entry for \(record.state.rawValue)", dir) { () throws(SpoolError) in
                    try index.createEntry(record.state, id: job.id, workdir: workdir)
                }
            }
        }
    }
}
