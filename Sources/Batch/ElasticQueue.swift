import Logging
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The backlog the elastic queue serves, in nodes.
public struct Backlog: Sendable, Equatable {
    /// Nodes the runnable jobs need (`Job.nodeFootprint`): a multi-node job its `num_nodes`, a single-node job
    /// `1 / nodePackingCount` where the launcher packs nodes.
    public var runnable: Double
    /// Nodes the running jobs hold, counted the same way.
    public var running: Double
}

extension BatchService {
    /// The states counted as backlog: runnable (PREPROCESSED, RESTART_READY) and about to be (READY, STAGED_IN:
    /// only the watcher's own steps are left). Jobs waiting for parents are not counted: they may never run.
    public static let backlogStates: [JobState] = [.ready, .stagedIn, .preprocessed, .restartReady]

    /// Measures the backlog of jobs this site launches (its `filter_tags`).
    func measureBacklog() -> Backlog {
        let index = SiteIndex(site: site)
        var seen: [String: Double] = [:]
        var backlog = Backlog(runnable: 0, running: 0)
        let packing = settings.launcher.nodePacking
        for state in BatchService.backlogStates + [.running] {
            for id in (try? index.activeIDs(state)) ?? [] {
                let need: Double
                if let known = footprints[id] {
                    need = known
                } else {
                    guard let job = index.readEntry(at: index.entryPath(state, id)) else { continue }
                    need = job.hasTags(settings.filterTags) ? job.nodeFootprint(packing: packing) : 0
                }
                seen[id] = need
                if state == .running { backlog.running += need } else { backlog.runnable += need }
            }
        }
        // Running jobs held in launchers' leases are not in jobs/RUNNING: count them from the leases.
        for (id, state, job) in (try? index.leasedJobs()) ?? [] where state == .running && seen[id] == nil {
            let need = job.hasTags(settings.filterTags) ? job.nodeFootprint(packing: packing) : 0
            seen[id] = need
            backlog.running += need
        }
        footprints = seen
        return backlog
    }

    /// One elastic round (reference §6.5, with the documented behaviour where code and docs disagree): delete
    /// batch jobs queued too long; then, if the runnable backlog exceeds what queued and running batch jobs leave
    /// idle, ask for one batch job sized to the difference, within the node and wall-time bounds and
    /// `max_queued_jobs`. `active`: the site's batch jobs not yet ended; `all`: every one (its failures in a row
    /// set a wait, `failureBackoff`). Returns the batch job it asked for.
    func runElasticQueue(_ e: SiteSettings.ElasticQueue, active: [BatchJob], all: [BatchJob]) -> BatchJob? {
        let records = active.filter { $0.queue == e.queue }
        let now = time(nil)
        for job in records where job.state == .queued && job.origin == BatchService.elasticOrigin {
            guard let submitted = job.submitTime.flatMap(Timestamp.seconds),
                Double(now) - submitted > Double(e.maxQueueWaitMinutes * 60), !store.deletionRequested(job.id)
            else { continue }
            logger.info(
                "elastic queue: batch job \(job.id) queued over \(e.maxQueueWaitMinutes) min; deleting it",
                metadata: ["batch_job.id": "\(job.id)"])
            try? store.requestDeletion(job.id)
        }
        let elasticFailures = BatchService.failuresInARow(all)
        if let last = elasticFailures.first, let ended = last.endTime.flatMap(Timestamp.seconds) {
            let wait = BatchService.failureBackoff(period: e.periodSeconds, failures: elasticFailures.count)
            if Double(now) - ended < wait {
                if reportedElasticFailure != last.id {
                    reportedElasticFailure = last.id
                    logger.warning(
                        """
                        elastic queue: its last \(elasticFailures.count) batch job(s) failed (batch job \(last.id): \
                        \(last.message ?? "no message")); asking again \(Int(saturating: wait)) s after it ended
                        """, metadata: ["batch_job.id": "\(last.id)"])
                }
                return nil
            }
        }
        let live = records.filter { !store.deletionRequested($0.id) }
        guard live.count < e.maxQueuedJobs else {
            logger.debug(
                "elastic queue: \(live.count) batch jobs queued or running (max_queued_jobs \(e.maxQueuedJobs))")
            return nil
        }
        let backlog = measureBacklog()
        let reserved = Double(live.reduce(0) { $0 + $1.numNodes })
        let idle = max(0, reserved - backlog.running)
        guard backlog.runnable > idle else {
            logger.debug(
                "elastic queue: backlog \(format(backlog.runnable)) nodes, \(format(idle)) idle: nothing to ask for")
            return nil
        }
        var window = BackfillWindow(nodes: e.maxNodes, minutes: e.maxWallTimeMinutes)
        if e.useBackfill {
            let reported: [BackfillWindow]?
            do { reported = try scheduler.backfillWindows(queue: e.queue) } catch {
                logger.warning("elastic queue: cannot read backfill windows: \(error.message)")
                return nil
            }
            // A scheduler that does not say (nil): the fixed size. One that says: the largest window that fits,
            // or nothing this round.
            if let reported {
                let usable = reported.map {
                    BackfillWindow(
                        nodes: $0.nodes,
                        minutes: $0.minutes >= BackfillWindow.unlimited
                            ? e.maxWallTimeMinutes : min($0.minutes - e.wallTimePadMinutes, e.maxWallTimeMinutes))
                }.filter { $0.minutes >= e.minWallTimeMinutes && $0.nodes >= e.minNodes }
                guard let best = usable.max(by: { $0.nodes * $0.minutes < $1.nodes * $1.minutes }) else {
                    logger.debug("elastic queue: no backfill window of \(e.minNodes)+ nodes: nothing to ask for")
                    return nil
                }
                window = best
            }
        }
        let wanted = Int(saturating: (backlog.runnable - idle).rounded(.up))
        let nodes = min(max(e.minNodes, wanted), window.nodes, e.maxNodes)
        var job = BatchJob(project: e.project, queue: e.queue, numNodes: nodes, wallTimeMinutes: window.minutes)
        job.filterTags = settings.filterTags
        job.origin = BatchService.elasticOrigin
        do {
            try job.validate(against: settings.scheduler, active: active)
            let made = try store.create(job)
            logger.info(
                """
                elastic queue: backlog \(format(backlog.runnable)) nodes, \(format(idle)) idle in queued and running \
                batch jobs: asked for batch job \(made.id) of \(nodes) nodes for \(window.minutes) min
                """, metadata: ["batch_job.id": "\(made.id)"])
            return made
        } catch {
            let text = "elastic queue: cannot ask for a batch job: \(error.message)"
            if reportedProblems.insert(text).inserted { logger.warning("\(text)") }
            return nil
        }
    }

    /// The elastic queue's batch jobs that ended failed with none of its batch jobs since, the latest first.
    static func failuresInARow(_ all: [BatchJob]) -> [BatchJob] {
        Array(
            all.filter { $0.origin == elasticOrigin }.sorted { $0.id > $1.id }
                .prefix { $0.state.isFinal && ($0.outcome == .failed || $0.state == .submitFailed) })
    }

    /// Seconds the elastic queue waits after the last of `failures` batch jobs in a row failed: its period doubled
    /// for each, at most 10 minutes. A batch job that fails at once (a job template that cannot work, a launcher
    /// that cannot start) is asked for again at that pace, never each period.
    static func failureBackoff(period: Double, failures: Int) -> Double {
        failures <= 0 ? 0 : min(600, max(1, period) * Double(1 << min(failures, 10)))
    }

    /// The `origin` of the elastic queue's batch jobs.
    public static let elasticOrigin = "elastic queue"

    private func format(_ nodes: Double) -> String {
        nodes == nodes.rounded() ? String(Int(saturating: nodes)) : String(Double(Int(saturating: nodes * 100)) / 100)
    }
}
