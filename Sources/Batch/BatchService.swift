import Logging
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The watcher's scheduler service: submits `pending_submission` batch jobs, follows them through the scheduler's
/// states, cancels those asked to be deleted, records start and end times and how each ended; and, when the site
/// has an `elastic_queue`, asks for batch jobs sized to the backlog. One `sync()` is one round; the watcher calls it
/// every `scheduler.sync_period` seconds on a thread of its own (a slow scheduler never holds up jobs).
///
/// Never twice: before a submission the record is saved with its submit time, and the job carries a name unique to
/// the record; if the watcher dies between the scheduler's answer and saving it, the next round finds the job by
/// that name instead of submitting again.
public final class BatchService {
    public let site: Site
    public private(set) var settings: SiteSettings
    let store: BatchJobStore
    let scheduler: any Scheduler
    /// Where `balsam-launcher` is (the watcher's own directory).
    let binDirectory: String
    /// Where messages go; a batch job's id is in its message and under `batch_job.id`.
    public let logger: Logger
    var lastElastic = -Double.infinity
    /// The failed elastic batch job last reported (the elastic queue says once that it waits after it).
    var reportedElasticFailure: Int?
    var reportedProblems = Set<String>()
    /// Nodes each backlog job needs, from the last count (job files are read once).
    var footprints: [String: Double] = [:]

    /// A service for `site` using the scheduler its settings name (or `scheduler`, for tests).
    public init(
        site: Site, settings: SiteSettings, binDirectory: String, scheduler: (any Scheduler)? = nil,
        logger: Logger = Logger(label: "balsam-watch")
    ) throws(SpoolError) {
        self.site = site
        self.settings = settings
        self.store = BatchJobStore(site: site)
        self.recordsGate = ChangeGate(store.path)
        if let scheduler {
            self.scheduler = scheduler
        } else {
            self.scheduler = try makeScheduler(
                kind: settings.scheduler.kind, site: site, timeoutSeconds: settings.scheduler.commandTimeoutSeconds,
                queueOption: settings.scheduler.queueOption, nodeSelect: settings.scheduler.nodeSelect)
        }
        self.binDirectory = binDirectory
        self.logger = logger
    }

    /// One round: submit, follow, cancel; the elastic queue when its period has passed.
    public func sync() {
        // With no batch job active, batchjobs/ is read again only when it changed (a new record, a deletion
        // asked for) or the elastic queue is due: an idle site lists nothing.
        if let elastic = settings.elasticQueue, Posix.monotonicSeconds() - lastElastic >= elastic.periodSeconds {
            recordsGate.forget()
        }
        if recordsGate.ifChanged({ round() }) == true { recordsGate.forget() }
    }

    /// batchjobs/ as last read with no batch job active.
    var recordsGate: ChangeGate

    /// One round; returns whether it must be read again next time (a batch job active, or a read that failed).
    private func round() -> Bool {
        var records: [BatchJob]
        let all: [BatchJob]
        do {
            let problems: [String]
            (all, problems) = try store.all()
            for problem in problems where reportedProblems.insert(problem).inserted {
                logger.error("batch job record: \(problem)")
            }
            records = all.filter { !$0.state.isFinal }
        } catch {
            logger.error("cannot read batch jobs: \(error)")
            return true
        }
        let now = Posix.monotonicSeconds()
        if let elastic = settings.elasticQueue, now - lastElastic >= elastic.periodSeconds {
            lastElastic = now
            if let made = runElasticQueue(elastic, active: records, all: all) { records.append(made) }
        }
        guard !records.isEmpty else { return false }
        var listing: [SchedulerStatus]?
        if records.contains(where: { $0.state != .pendingSubmission || $0.submitTime != nil }) {
            do { listing = try scheduler.list() } catch {
                logger.error("cannot poll the \(scheduler.kind) scheduler: \(error.message)")
                for job in records where job.state != .pendingSubmission || job.submitTime != nil {
                    var updated = job
                    updated.message = "cannot poll the scheduler: \(error.message)"
                    save(updated, was: job)
                }
            }
        }
        for job in records {
            var updated = job
            follow(&updated, listing: listing)
            save(updated, was: job)
        }
        return true
    }

    /// Records saved so far (the watcher tells the sync when it changed).
    public private(set) var saved = 0

    private func save(_ job: BatchJob, was before: BatchJob?) {
        guard job != before else { return }
        saved += 1
        do { try store.save(job) } catch {
            logger.error("cannot save batch job \(job.id): \(error)", metadata: ["batch_job.id": "\(job.id)"])
        }
        if let before, before.state != job.state {
            let message = job.message.map { ": " + $0 } ?? ""
            logger.info(
                "batch job \(job.id): \(before.state.rawValue) -> \(job.state.rawValue)\(message)",
                metadata: ["batch_job.id": "\(job.id)"])
        }
    }

    private func outputPath(_ name: String) -> String { store.scriptsPath + "/" + name + ".out" }

    /// `; its output (PATH) ends: LINE | LINE ...` for a batch job that failed: the reason is usually there (an
    /// mpirun that refuses to run as root, a module that does not load), and the message is all `balsam queue ls`
    /// shows. Empty when the scheduler kept no output.
    private func outputTail(_ name: String) -> String {
        let path = outputPath(name)
        let tail = Posix.tail(path, lines: 5).split(separator: "\n")
        guard !tail.isEmpty else { return "" }
        return "; its output (\(path)) ends: " + tail.joined(separator: " | ")
    }

    /// One record's round.
    private func follow(_ job: inout BatchJob, listing: [SchedulerStatus]?) {
        let name = job.schedulerName(site: site)
        // A submission that may have reached the scheduler (the watcher died, or the answer was lost): find it by
        // name first. Not there: a lost answer means it was refused; a crash may have come before the submission.
        if job.state == .pendingSubmission, job.submitTime != nil {
            guard let listing else { return }
            if let found = listing.first(where: { $0.name == name }) {
                job.schedulerID = found.id
                job.submitUncertain = false
                job.move(to: .queued, message: "found by its name as \(scheduler.kind) job \(found.id)")
            } else if job.submitUncertain {
                job.submitUncertain = false
                job.move(
                    to: .submitFailed,
                    message: (job.message ?? "the submission's answer was lost")
                        + "; the scheduler shows no job named \(name)")
                return
            }
        }
        if store.deletionRequested(job.id) {
            switch job.state {
            case .pendingSubmission:
                job.finish(.cancelled, message: "deleted before it was submitted")
                store.clearDeletionRequest(job.id)
                return
            case .queued, .running:
                guard let id = job.schedulerID else { break }
                do {
                    try scheduler.cancel(id: id)
                    job.move(to: .pendingDeletion, message: "cancel asked of the scheduler (balsam queue rm)")
                    store.clearDeletionRequest(job.id)
                } catch {
                    job.message = "cannot cancel yet: \(error.message)"
                }
            default:
                store.clearDeletionRequest(job.id)
            }
        }
        switch job.state {
        case .pendingSubmission: submit(&job, name: name)
        case .queued, .running, .pendingDeletion:
            guard let listing, let id = job.schedulerID else { return }
            if let status = listing.first(where: { $0.id == id }) {
                apply(status, to: &job, name: name)
            } else {
                do {
                    if let status = try scheduler.lookUp(id: id, outputPath: outputPath(name)) {
                        apply(status, to: &job, name: name)
                    } else if job.state == .pendingDeletion {
                        job.finish(.cancelled, message: "cancelled (balsam queue rm); gone from the scheduler")
                    } else {
                        job.finish(
                            .lost,
                            message: "\(scheduler.kind) job \(id) is no longer known to the scheduler, which kept "
                                + "no record of how it ended")
                    }
                } catch {
                    job.message = "cannot look up \(scheduler.kind) job \(id): \(error.message)"
                }
            }
        case .finished, .submitFailed: return
        }
    }

    private func submit(_ job: inout BatchJob, name: String) {
        let script = store.scriptsPath + "/" + name + ".sh"
        do {
            try store.ensureDirectories()
            let (template, path) = try JobScript.template(site: site, settings: settings)
            let text = try JobScript.render(
                template, templatePath: path, job: job, name: name, site: site, binDirectory: binDirectory)
            try Posix.replaceFile(script, Array(text.utf8), sync: false)
            try Posix.makeExecutable(script)
            job.submitTime = Timestamp.now()
            try store.save(job)  // from here on, a restart looks for `name` before submitting again
            let id = try scheduler.submit(script: script, name: name, job: job, outputPath: outputPath(name))
            job.schedulerID = id
            job.move(to: .queued, message: "submitted to \(scheduler.kind) as job \(id)")
        } catch {
            let why = error.message + (error.path.map { " (\($0))" } ?? "")
            // Refused (the tool is missing, or it said no with a non-zero status): failed. Otherwise (no answer in
            // time, an answer that cannot be read) the scheduler may have the job: look for it next round.
            let refused =
                job.submitTime == nil || error.code == .notFound || error.code == .invalidInput
                || error.message.contains("exited with status")
            if refused {
                job.move(to: .submitFailed, message: why)
            } else {
                job.submitUncertain = true
                job.message = why + "; looking for job \(name) at the next round"
            }
        }
    }

    private func apply(_ status: SchedulerStatus, to job: inout BatchJob, name: String) {
        let deleting = job.state == .pendingDeletion
        switch status.phase {
        case .queued:
            if !deleting { job.move(to: .queued) }
            job.message = status.reason.map { "queued: \($0)" } ?? job.message
        case .running:
            if job.startTime == nil { job.startTime = status.startTime ?? Timestamp.now() }
            if !deleting { job.move(to: .running, message: "running as \(scheduler.kind) job \(status.id)") }
        case .ended(var outcome):
            var status = status
            if status.exitCode == nil, let detail = try? scheduler.lookUp(id: status.id, outputPath: outputPath(name)),
                detail.phase == status.phase
            {
                status = detail
            }
            // Torque-style schedulers say only "completed" of a job they cancelled.
            if deleting && outcome == .completed && status.exitCode == nil { outcome = .cancelled }
            // A job cancelled while it waited never started (Slurm then gives it equal start and end times).
            let neverRan =
                outcome == .cancelled && !job.history.contains { $0.state == .running }
                && (status.startTime == nil || status.startTime == status.endTime)
            if job.startTime == nil && !neverRan { job.startTime = status.startTime }
            job.endTime = status.endTime ?? Timestamp.now()
            job.exitCode = status.exitCode
            let code = status.exitCode.map { " (exit code \($0))" } ?? ""
            let message: String
            switch outcome {
            case .completed: message = "completed" + code
            case .cancelled: message = deleting ? "cancelled (balsam queue rm)" : "cancelled through the scheduler"
            case .failed:
                message =
                    "failed: \(status.rawState)" + code + (status.reason.map { ", \($0)" } ?? "")
                    + outputTail(name)
            case .timedOut: message = "timed out at its wall time of \(job.wallTimeMinutes) min"
            case .lost: message = "lost"
            }
            job.finish(outcome, message: message, time: job.endTime ?? Timestamp.now())
        }
    }
}
