#if canImport(Glibc)
    import Glibc
#endif

/// Turns accepted work into job directories: materializes accepted batches and adopts directories dropped
/// into `queue/new/`. The watcher calls this; `balsam ingest` runs it by hand. Idempotent: after a crash,
/// running it again finishes what was started and repeats nothing.
public struct Ingest {
    /// The site worked on.
    public let site: Site
    /// Recorded as the actor of events this writes.
    public var actor: String
    /// A drop that fails to adopt but changed less than this many seconds ago is left for the next pass rather
    /// than rejected: it may still be being copied in. 0 (the default for `balsam ingest`) rejects at once.
    public var settleSeconds: Double = 0
    /// The first lifecycle steps to take as a job's directory is made, given its app and initial state: the
    /// watcher passes `READY -> STAGED_IN -> PREPROCESSED` when there is nothing to do in between (no stage-in,
    /// no preprocess hook), so a bulk submission reaches the ready queue with one write of each file per job.
    /// Every step is checked, kept in the job's history and logged as an event, before any directory is made.
    /// nil (the default for `balsam ingest`) leaves new jobs in their initial state.
    public var advance: ((_ app: String, _ state: JobState) -> [(state: JobState, reason: String?)])?
    let index: SiteIndex

    /// Prepares to ingest into `site`.
    public init(site: Site, actor: String = "balsam-ingest") {
        self.site = site
        self.actor = actor
        self.index = SiteIndex(site: site)
    }

    /// What one pass did.
    public struct Report: Sendable {
        /// Job directories made from accepted batches.
        public var materialized = 0
        /// Batch files finished and removed.
        public var batches = 0
        /// Jobs whose workdir was taken by another job before their directory was made; each was put in
        /// `data/.balsam-conflicts/ID` and FAILED.
        public var conflicts: [String] = []
        /// Drop-box directories adopted as jobs.
        public var adopted: [String] = []
        /// Drop-box entries moved to `rejected/`, with why.
        public var rejected: [(name: String, reason: String)] = []
        /// Drops left for a later pass because they may still be being copied in.
        public var unsettled = 0

        /// Nothing done yet.
        public init() {}
    }

    /// Runs both steps: accepted batches, then the drop box.
    public func run() throws(SpoolError) -> Report {
        var report = try materializePending()
        try adoptDropBox(into: &report)
        return report
    }

    // MARK: - Accepted batches

    /// Makes the directory, `job.json`, `state` and index entry of every job in every accepted batch, oldest
    /// batch first; then flushes the filesystem once (`syncfs`) and removes the batch file.
    ///
    /// A batch is worked through in chunks of `chunkLines` lines: each chunk's events are logged (and flushed),
    /// the marker records that they were, then the chunk's directories are made. A pass that dies is resumed by
    /// the next where it stopped, and logs each event once, whatever the number of kills: only a chunk whose
    /// events were logged but not yet recorded in the marker is logged again (`balsam-watch(1)`, FAULTS).
    public func materializePending() throws(SpoolError) -> Report {
        var report = Report()
        for name in try index.batchNames() {
            let batch: Batch
            do { batch = try index.readBatch(name) } catch  where error.code == .notFound {
                continue  // another ingest pass finished it meanwhile
            }
            var knownParents = Set<String>()
            var finals: [SiteIndex.FinalLine] = []
            // Counts read the batch's lines instead of its header from here on (some jobs get entries before
            // the batch file goes); a marker left by a crash only makes them read more. The marker also holds
            // the steps this pass takes each (app, state) through and when: a later pass, whoever runs it, takes
            // the same ones at the same time, so jobs end where the events logged for them say, in the same words.
            let marker = index.materializingMarker(name)
            var plan: Plan
            if let resumed = Plan.load(marker, batch: batch) {
                plan = resumed
            } else {
                plan = try Plan.make(batch, advance: advance, marker: marker)
            }
            var events: [Event] = []
            var start = 0
            while start < batch.lines.count {
                let end = min(batch.lines.count, start + Ingest.chunkLines)
                let lines = batch.lines[start..<end]
                let records = try advanced(lines, from: start, plan: plan)
                if end > plan.logged {
                    plan.logged = end
                    try plan.save(marker)
                }
                for (line, record) in zip(lines, records) {
                    try materialize(
                        line, record: record, plan: plan, knownParents: &knownParents, finals: &finals,
                        events: &events, report: &report)
                }
                start = end
            }
            try Posix.syncFilesystem(site.dataPath)
            try index.appendFinal(finals, sync: true)
            try EventLog(site: site).append(events, sync: true)
            try Posix.unlinkChecked(site.acceptedPath + "/" + name)
            try Posix.fsyncDirectory(site.acceptedPath)
            Posix.unlink(index.materializingMarker(name))
            report.batches += 1
        }
        return report
    }

    /// Lines of a batch whose events are logged, and recorded as logged, at once.
    static let chunkLines = 2000

    /// The state record each of `lines` (starting at line `first` of its batch) starts with: its initial state,
    /// then the steps of `plan`. The events of those steps are logged (and flushed) here, before any directory
    /// says the job took them, except for lines before `plan.logged` (logged by a pass that died): after a crash
    /// an event may appear twice (one chunk's), never be missing. A line whose directory has a state file
    /// already (an interrupted pass, or a workdir taken) is not advanced; one whose directory holds only inputs
    /// staged there is (`resume` adopts the directory).
    private func advanced(_ lines: ArraySlice<Batch.Line>, from first: Int, plan: Plan) throws(SpoolError)
        -> [StateRecord]
    {
        var events: [Event] = []
        var records: [StateRecord] = []
        records.reserveCapacity(lines.count)
        for (offset, line) in zip(first..., lines) {
            var record = StateRecord(initial: line.state, actor: "balsam-submit", time: plan.batchTime)
            if let steps = plan.steps[Ingest.planKey(line.app, line.state)], !steps.isEmpty,
                !Posix.exists(site.jobDirectory(line.workdir) + "/state")
            {
                let moved = try record.moved(through: steps, jobID: line.id, actor: actor, time: plan.time)
                record = moved.record
                if offset >= plan.logged { events += moved.events }
            }
            records.append(record)
        }
        let log = EventLog(site: site)
        // The chunk a dead pass logged but had not yet recorded as logged: its last event is at the end of this
        // host's log if it was (each chunk is one write). Then it is not logged again.
        if let last = events.last, plan.resumed, first == plan.logged,
            log.recentlyLogged(last, within: 64 << 20)
        {
            return records
        }
        if !events.isEmpty { try log.append(events, sync: true) }
        return records
    }

    static func planKey(_ app: String, _ state: JobState) -> String { app + "\t" + state.rawValue }

    /// What a pass over one batch decided before it logged anything, kept in the batch's marker so that a pass
    /// that resumes it decides the same: the steps each (app, initial state) is taken through, the time they are
    /// recorded at, and how many of the batch's lines have had their events logged.
    struct Plan {
        var steps: [String: [(state: JobState, reason: String?)]] = [:]
        var time: String
        var batchTime: String
        var logged = 0
        /// Whether a pass that died recorded it (then the events of line `logged` on may be logged already).
        var resumed = false

        /// This pass's plan: the steps `advance` gives, now; recorded in `marker` before any event is logged.
        static func make(
            _ batch: Batch, advance: ((_ app: String, _ state: JobState) -> [(state: JobState, reason: String?)])?,
            marker: String
        ) throws(SpoolError) -> Plan {
            var plan = Plan(time: Timestamp.now(), batchTime: batch.header.time)
            if let advance {
                for line in batch.lines where plan.steps[Ingest.planKey(line.app, line.state)] == nil {
                    plan.steps[Ingest.planKey(line.app, line.state)] = advance(line.app, line.state)
                }
            }
            try plan.save(marker)
            return plan
        }

        /// The plan a pass that died in this batch recorded, if any.
        /// A marker of an earlier version holds only the steps (its time unknown: now, and every event again).
        static func load(_ marker: String, batch: Batch) -> Plan? {
            guard let bytes = try? Posix.readFile(marker, limit: 1 << 20), !bytes.isEmpty,
                let o = try? JSONValue.parse(bytes).objectValue
            else { return nil }
            guard let steps = o["steps"]?.objectValue else {
                return Plan(steps: parse(o), time: Timestamp.now(), batchTime: batch.header.time)
            }
            return Plan(
                steps: parse(steps), time: o["time"]?.stringValue ?? Timestamp.now(),
                batchTime: o["batch_time"]?.stringValue ?? batch.header.time,
                logged: max(0, o["logged"]?.intValue ?? 0), resumed: true)
        }

        private static func parse(_ steps: [String: JSONValue]) -> [String: [(state: JobState, reason: String?)]] {
            var plan: [String: [(state: JobState, reason: String?)]] = [:]
            for (key, value) in steps {
                plan[key] = (value.arrayValue ?? []).compactMap { step in
                    guard let o = step.objectValue, let state = o["state"]?.stringValue.flatMap(JobState.init)
                    else { return nil }
                    return (state, o["reason"]?.stringValue)
                }
            }
            return plan
        }

        /// Records the plan (and its progress) in `marker`, flushed, replacing it whole.
        func save(_ marker: String) throws(SpoolError) {
            let text = JSONValue.object([
                "time": .string(time), "batch_time": .string(batchTime), "logged": .int(logged),
                "steps": .object(
                    steps.mapValues { steps in
                        .array(
                            steps.map {
                                .object([
                                    "state": .string($0.state.rawValue),
                                    "reason": $0.reason.map { .string($0) } ?? .null,
                                ])
                            })
                    }),
            ])
            try Posix.replaceFile(marker, Array(text.serialized().utf8), sync: true)
        }
    }

    private func materialize(
        _ line: Batch.Line, record: StateRecord, plan: Plan, knownParents: inout Set<String>,
        finals: inout [SiteIndex.FinalLine], events: inout [Event], report: inout Report
    ) throws(SpoolError) {
        let dir = site.jobDirectory(line.workdir)
        let parent = Posix.parentPath(dir)
        var jobBytes = Array(line.jobJSON)
        jobBytes.append(0x0A)
        if !knownParents.contains(parent) {
            // One job's directory never holds another's. Submission checks it, but two submitters at once each
            // see only their own jobs: the later directory is refused here, when it is made.
            if let outer = enclosingJob(of: line.workdir) {
                try conflict(
                    line, record: record, jobBytes: jobBytes, finals: &finals, events: &events,
                    reason: "workdir '\(line.workdir)' would be inside the directory of job '\(outer)'")
                report.conflicts.append(line.id)
                return
            }
            if parent != site.dataPath { try Posix.makeDirectories(parent) }
            knownParents.insert(parent)
        }
        // mkdir(2) is the test of whether the workdir is free: EEXIST is an answer (resume or conflict).
        if mkdir(dir, 0o777) != 0 {
            let err = errno
            guard err == EEXIST else { throw .system("create job directory", path: dir, errno: err) }
            if try resume(line, in: dir, jobBytes: jobBytes, plan: plan) {
                report.materialized += 1
                return
            }
            try conflict(line, record: record, jobBytes: jobBytes, finals: &finals, events: &events)
            report.conflicts.append(line.id)
            return
        }
        try Posix.createFile(dir + "/job.json", jobBytes, sync: false)
        try Posix.createFile(dir + "/state", record.fileBytes(), sync: false)
        try index.createEntry(record.state, id: line.id, workdir: line.workdir)
        report.materialized += 1
    }

    /// A directory already at the workdir: if it is this job's (an earlier pass was interrupted) or holds no job
    /// (inputs staged before the job was made: `Submission.occupant`), complete it as this job's and return
    /// true; if it belongs to something else, return false.
    /// A state file the dead pass did not finish is written as the plan says: the pass logged the steps' events
    /// before it made the directory.
    private func resume(_ line: Batch.Line, in dir: String, jobBytes: [UInt8], plan: Plan) throws(SpoolError) -> Bool {
        // Only a directory of its own: a file or a symbolic link there is somebody else's.
        guard let st = try? Posix.lstatIfExists(dir), st.st_mode & S_IFMT == S_IFDIR else { return false }
        let existing = try? Posix.readFile(dir + "/job.json", limit: Job.Limits.fileBytes)
        let existingID = existing.flatMap { try? JSONValue.parse($0) }?.objectValue?["id"]?.stringValue
        if existingID != line.id {
            // Not this job's spec: it is ours only if the directory holds nothing but torn leftovers
            // (job.json and state are written in place, so a crash can cut them short).
            let names = (try? Posix.listDirectory(dir)) ?? []
            let torn = existingID == nil && names.allSatisfy({ $0 == "job.json" || $0 == "state" })
            guard torn || Submission.occupant(of: dir, workdir: line.workdir) == nil else { return false }
            try Posix.replaceFile(dir + "/job.json", jobBytes, sync: false)
        }
        let statePath = dir + "/state"
        let stateBytes = try? Posix.readFile(statePath, limit: 1 << 20)
        var state = line.state
        if let stateBytes, let record = try? StateRecord(bytes: stateBytes, path: statePath) {
            state = record.state
        } else {
            var record = StateRecord(initial: line.state, actor: "balsam-submit", time: plan.batchTime)
            if let steps = plan.steps[Ingest.planKey(line.app, line.state)], !steps.isEmpty {
                record = try record.moved(through: steps, jobID: line.id, actor: actor, time: plan.time).record
            }
            state = record.state
            try Posix.replaceFile(statePath, record.fileBytes(), sync: false)
        }
        if !state.isFinal && index.activeState(of: line.id) == nil {
            do { try index.createEntry(state, id: line.id, workdir: line.workdir) } catch  where error.cause == EEXIST {
                // Another pass made it between our look and our link.
            }
        }
        return true
    }

    /// The workdir of a job whose directory would hold `workdir`'s (an ancestor with a `job.json`), if any.
    private func enclosingJob(of workdir: String) -> String? {
        Job.enclosingWorkdirs(of: workdir).first { Posix.exists(site.jobDirectory($0) + "/job.json") }
    }

    /// The job's workdir was taken after it was accepted (or lies inside another job's directory): keep the job,
    /// FAILED, under a reserved name.
    private func conflict(
        _ line: Batch.Line, record initial: StateRecord, jobBytes: [UInt8], finals: inout [SiteIndex.FinalLine],
        events: inout [Event],
        reason: String? = nil
    ) throws(SpoolError) {
        let workdir = ".balsam-conflicts/" + line.id
        let dir = site.jobDirectory(workdir)
        try Posix.makeDirectories(dir)
        try Posix.replaceFile(dir + "/job.json", jobBytes, sync: false)
        let reason =
            reason ?? "workdir '\(line.workdir)' was taken by another job or file before this job's directory was made"
        let record = try initial.moved(to: .failed, actor: actor, reason: reason)
        try Posix.replaceFile(dir + "/state", record.fileBytes(), sync: false)
        finals.append(
            SiteIndex.FinalLine(id: line.id, state: .failed, workdir: workdir, app: line.app, time: record.since))
        events.append(
            Event(
                time: record.since, jobID: line.id, from: initial.state, to: .failed, actor: actor,
                data: ["reason": .string(reason)]))
    }

    // MARK: - Drop box

    /// Adopts every complete directory in `queue/new/` (names starting with `.` are still being copied and
    /// are skipped). One that cannot be adopted is moved to `rejected/NAME` with `rejected/NAME.reason`.
    public func adoptDropBox(into report: inout Report) throws(SpoolError) {
        var submission = Submission(site: site, actor: actor)
        var failure: SpoolError?
        for name in try Posix.listDirectory(site.dropBoxPath).sorted() where !name.hasPrefix(".") {
            let path = site.dropBoxPath + "/" + name
            do {
                _ = try submission.adopt(directory: path, defaultWorkdir: name)
                report.adopted.append(name)
            } catch  where error.code == .io {
                // A full or failing disk: leave this drop where it is for the next pass, but go on with the
                // others (one unreadable drop must not hold up the rest); the first such error is reported.
                if failure == nil { failure = error }
            } catch {
                if settleSeconds > 0 && isYoung(path) {  // perhaps still being copied in
                    report.unsettled += 1
                    continue
                }
                try reject(name, reason: error.description)
                report.rejected.append((name, error.description))
            }
        }
        if let failure { throw failure }
    }

    /// Whether the directory or its job.json changed within the last `settleSeconds`.
    private func isYoung(_ path: String) -> Bool {
        let now = Posix.wallClock()
        let times = [path, path + "/job.json"].compactMap { try? Posix.lstatIfExists($0) }.map {
            Double($0.st_mtim.tv_sec) + Double($0.st_mtim.tv_nsec) / 1e9
        }
        let newest = times.max() ?? 0
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 - newest < settleSeconds
    }

    private func reject(_ name: String, reason: String) throws(SpoolError) {
        var target = site.rejectedPath + "/" + name
        var n = 1
        while Posix.exists(target) || Posix.exists(target + ".reason") {
            target = site.rejectedPath + "/" + name + ".\(n)"
            n += 1
        }
        try Posix.createFile(target + ".reason", Array((Timestamp.now() + " " + reason + "\n").utf8), sync: true)
        try Posix.renameNoReplace(site.dropBoxPath + "/" + name, target)
        try Posix.fsyncDirectory(site.rejectedPath)
    }
}
