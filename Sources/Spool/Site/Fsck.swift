#if canImport(Glibc)
    import Glibc
#endif

/// The recovery pass: makes the indexes agree with the job directories, whose `job.json` and `state` files are
/// the truth. Read-only unless asked to repair; idempotent; reports everything it finds.
///
/// It walks all of `data/`, so it is for start-up and on-demand checks, never for steady state.
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
        /// Job directories found under `data/`.
        public var jobs = 0
        /// Disagreements, in the order found.
        public var problems: [Problem] = []
    }

    /// Checks the site; with `repair`, fixes what it finds.
    public func run(repair: Bool) throws(SpoolError) -> Report {
        var report = Report()
        func note(_ message: String, _ path: String, _ fix: () throws(SpoolError) -> Void) throws(SpoolError) {
            if repair { try fix() }
            report.problems.append(Problem(message: message, path: path, repaired: repair))
        }

        // 1. Leftovers of interrupted submissions: never reported as submitted, safe to remove.
        let staging = try Posix.listDirectory(site.stagingPath).map { site.stagingPath + "/" + $0 }
        for path in try Posix.listDirectory(site.tmpPath).map({ site.tmpPath + "/" + $0 }) + staging {
            try note("leftover of an interrupted write", path) { Posix.removeTree(path) }
        }

        // 2. The truth: every job directory under data/.
        var jobs: [String: (workdir: String, state: JobState, app: String, since: String)] = [:]
        try walk(site.dataPath, relative: "") { (workdir) throws(SpoolError) in
            let dir = site.jobDirectory(workdir)
            guard let job = try? Job(bytes: Posix.readFile(dir + "/job.json", limit: Job.Limits.fileBytes)),
                JobID.isValid(job.id)
            else {
                report.problems.append(
                    Problem(message: "job.json is unreadable or has no id", path: dir, repaired: false))
                return
            }
            guard let record = try? Query(site: site).readRecord(workdir: workdir) else {
                if try pendingIDs().contains(job.id) { return }  // the next ingest pass completes it
                report.problems.append(
                    Problem(message: "state file is missing or unreadable", path: dir, repaired: false))
                return
            }
            report.jobs += 1
            jobs[job.id] = (workdir, record.state, job.app, record.since)
        }

        // 3. Active entries must point at a job in that state.
        var entered = Set<String>()
        for state in JobState.active {
            for id in try index.activeIDs(state) {
                let path = index.entryPath(state, id)
                guard let truth = jobs[id] else {
                    if try pendingIDs().contains(id) { continue }
                    try note("entry for a job whose directory is gone", path) { Posix.unlink(path) }
                    continue
                }
                if truth.state != state || entered.contains(id) {
                    let message = "entry says \(state.rawValue) but the job's state file says \(truth.state.rawValue)"
                    try note(message, path) { Posix.unlink(path) }
                    continue
                }
                if !index.entryIsCurrent(path, workdir: truth.workdir) {
                    try note("entry is not the job's current job.json", path) { Posix.unlink(path) }
                    continue
                }
                entered.insert(id)
            }
        }

        // 4. Every job has its entry (active) or its final-index line (ended).
        let finalLines = try index.finalLines()
        var finalState: [String: JobState] = [:]
        for line in finalLines { finalState[line.id] = line.state }
        var missingFinal: [SiteIndex.FinalLine] = []
        for (id, truth) in jobs.sorted(by: { $0.key < $1.key }) {
            if truth.state.isFinal {
                if finalState[id] != truth.state {
                    missingFinal.append(
                        .init(id: id, state: truth.state, workdir: truth.workdir, app: truth.app, time: truth.since))
                    report.problems.append(
                        Problem(
                            message: "ended \(truth.state.rawValue) but is not in the final index",
                            path: site.jobDirectory(truth.workdir), repaired: repair))
                }
            } else if !entered.contains(id) {
                try note("has no index entry for \(truth.state.rawValue)", site.jobDirectory(truth.workdir)) {
                    () throws(SpoolError) in
                    try index.createEntry(truth.state, id: id, workdir: truth.workdir)
                }
            }
        }
        if repair && !missingFinal.isEmpty { try index.appendFinal(missingFinal, sync: true) }
        return report
    }

    private func pendingIDs() throws(SpoolError) -> Set<String> {
        var ids = Set<String>()
        for name in try index.batchNames() { for line in try index.readBatch(name).lines { ids.insert(line.id) } }
        return ids
    }

    /// Calls `body` for every job directory (one holding `job.json`) below `path`; does not descend into them.
    private func walk(_ path: String, relative: String, _ body: (String) throws(SpoolError) -> Void) throws(SpoolError)
    {
        for name in try Posix.listDirectory(path).sorted() where !(relative.isEmpty && name == ".balsam-staging") {
            let child = path + "/" + name
            guard let st = try Posix.lstatIfExists(child), (st.st_mode & S_IFMT) == S_IFDIR else { continue }
            let workdir = relative.isEmpty ? name : relative + "/" + name
            if Posix.exists(child + "/job.json") {
                try body(workdir)
            } else {
                try walk(child, relative: workdir, body)
            }
        }
    }
}
