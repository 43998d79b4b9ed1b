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
            // the steps this pass takes each (app, state) through: a later pass, whoever runs it, takes the same
            // ones, so jobs end where the events logged for them say.
            let marker = index.materializingMarker(name)
            let plan = try plannedSteps(batch, marker: marker)
            let records = try advanced(batch, plan: plan)
            var events: [Event] = []
            for (line, record) in zip(batch.lines, records) {
                try materialize(
                    line, record: record, time: batch.header.time, knownParents: &knownParents, finals: &finals,
                    events: &events, report: &report)
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

    /// The state record each line of `batch` starts with: its initial state, then the steps `advance` gives.
    /// The events of those steps are logged (and flushed) here, before any directory says the job took them:
    /// after a crash an event may appear twice, never be missing. A line whose directory exists already (an
    /// interrupted pass, or a workdir taken) is not advanced.
    private func advanced(_ batch: Batch, plan: [String: [(state: JobState, reason: String?)]]) throws(SpoolError)
        -> [StateRecord]
    {
        let now = Timestamp.now()
        var events: [Event] = []
        var records: [StateRecord] = []
        records.reserveCapacity(batch.lines.count)
        for line in batch.lines {
            var record = StateRecord(initial: line.state, actor: "balsam-submit", time: batch.header.time)
            if let steps = plan[Ingest.planKey(line.app, line.state)], !steps.isEmpty,
                !Posix.exists(site.jobDirectory(line.workdir))
            {
                let moved = try record.moved(through: steps, jobID: line.id, actor: actor, time: now)
                record = moved.record
                events += moved.events
            }
            records.append(record)
        }
        if !events.isEmpty { try EventLog(site: site).append(events, sync: true) }
        return records
    }

    static func planKey(_ app: String, _ state: JobState) -> String { app + "\t" + state.rawValue }

    /// The steps each (app, initial state) of `batch` is taken through: those a pass that died in this batch
    /// recorded in its marker, else this pass's `advance` (recorded now, before any event is logged).
    private func plannedSteps(_ batch: Batch, marker: String) throws(SpoolError) -> [String: [(
        state: JobState, reason: String?
    )]] {
        if let bytes = try? Posix.readFile(marker, limit: 1 << 20), !bytes.isEmpty,
            let recorded = try? JSONValue.parse(bytes).objectValue
        {
            var plan: [String: [(state: JobState, reason: String?)]] = [:]
            for (key, value) in recorded {
                plan[key] = (value.arrayValue ?? []).compactMap { step in
                    guard let o = step.objectValue, let state = o["state"]?.stringValue.flatMap(JobState.init)
                    else { return nil }
                    return (state, o["reason"]?.stringValue)
                }
            }
            return plan
        }
        var plan: [String: [(state: JobState, reason: String?)]] = [:]
        if let advance {
            for line in batch.lines where plan[Ingest.planKey(line.app, line.state)] == nil {
                plan[Ingest.planKey(line.app, line.state)] = advance(line.app, line.state)
            }
        }
        let text = JSONValue.object(
            plan.mapValues { steps in
                .array(
                    steps.map {
                        .object(["state": .string($0.state.rawValue), "reason": $0.reason.map { .string($0) } ?? .null])
                    })
            })
        try Posix.createFile(marker, Array(text.serialized().utf8), sync: true, exclusive: false)
        return plan
    }

    private func materialize(
        _ line: Batch.Line, record: StateRecord, time: String, knownParents: inout Set<String>,
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
            if try resume(line, in: dir, jobBytes: jobBytes, time: time) {
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

    /// A directory already at the workdir: if it is this job's (an earlier pass was interrupted), complete
    /// it and return true; if it belongs to something else, return false.
    private func resume(_ line: Batch.Line, in dir: String, jobBytes: [UInt8], time: String) throws(SpoolError) -> Bool
    {
        let existing = try? Posix.readFile(dir + "/job.json", limit: Job.Limits.fileBytes)
        let existingID = existing.flatMap { try? JSONValue.parse($0) }?.objectValue?["id"]?.stringValue
        if existingID != line.id {
            // Not this job's spec: it is ours only if the directory holds nothing but torn leftovers
            // (job.json and state are written in place, so a crash can cut them short).
            let names = (try? Posix.listDirectory(dir)) ?? []
            guard existingID == nil, names.allSatisfy({ $0 == "job.json" || $0 == "state" }) else { return false }
            try Posix.replaceFile(dir + "/job.json", jobBytes, sync: false)
        }
        let statePath = dir + "/state"
        let stateBytes = try? Posix.readFile(statePath, limit: 1 << 20)
        var state = line.state
        if let stateBytes, let record = try? StateRecord(bytes: stateBytes, path: statePath) {
            state = record.state
        } else {
            let record = StateRecord(initial: line.state, actor: "balsam-submit", time: time)
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
                if settleSeconds > 0 && isYoung(path) { continue }  // perhaps still being copied in
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
