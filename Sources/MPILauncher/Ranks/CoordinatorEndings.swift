import Logging
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// How the coordinator records what its ranks report: each ended task becomes the job's next state (with its
/// exit status, the tail of its output and a Python app's result), written in batches that survive I/O errors,
/// and kill requests reach the rank running the job.
extension Coordinator {
    /// Records jobs that ended here or on other ranks. True if any did.
    func collectEndings() throws(SpoolError) -> Bool {
        var any = false
        for ended in runner.poll() {
            record(ended)
            any = true
        }
        while let (source, message) = try transport.receive() {
            any = true
            heard(from: source)
            switch message {
            case .ended(let ended): record(ended)
            case .stopped: stoppedRanks.insert(source)
            case .alive: break
            default:
                logger.warning("unexpected message from rank \(source): \(message)", metadata: ["rank": "\(source)"])
            }
        }
        return any
    }

    /// Moves an ended job on: RUN_DONE, RUN_ERROR (status and output tail), RUN_TIMEOUT (the launcher is
    /// ending) or FAILED (killed on request).
    ///
    /// The job's resources are free at once; the move itself waits in `ended` until `recordEndings()`, so that
    /// the next job can be started first (a free slot should not wait for bookkeeping).
    func record(_ ended: TaskRunner.Ended) {
        guard let job = running.removeValue(forKey: ended.id) else { return }
        allocation.release(job.assignment)
        // After a lost lease the job is no longer this launcher's: whoever took it back records it.
        if stopping == Coordinator.lostLease { return }
        endings.append((job, ended, stopping))
    }

    /// Records the endings collected so far (and, when their pause is over, those that failed before).
    func recordEndings() {
        var batch = endings
        endings = []
        let now = Posix.monotonicSeconds()
        if !unrecorded.isEmpty && recordBackoff.isOver(now) {
            batch = unrecorded + batch
            unrecorded = []
        }
        var failure: SpoolError?
        for ending in batch {
            if let error = recordEnding(ending.job, ending.ended, stopping: ending.stopping) {
                unrecorded.append(ending)
                failure = failure ?? error
            }
        }
        if let failure {
            if recordBackoff.failed(failure, now: now, progressed: batch.count > unrecorded.count) {
                logger.error(
                    "cannot record the end of \(unrecorded.count) job(s): \(failure); trying again every 1 to 30 s while \(failure.writeTrouble ?? "writes fail")"
                )
            }
        } else if !batch.isEmpty && unrecorded.isEmpty && recordBackoff.succeeded() {
            logger.info("recording job endings again")
        }
    }

    /// Records one ending; returns the I/O error it met if it should be tried again (other errors are logged:
    /// the job was moved by someone else, or its directory is gone).
    func recordEnding(_ job: Running, _ ended: TaskRunner.Ended, stopping: String?) -> SpoolError? {
        let status = Int(ended.status)
        // Output cut at the site's cap: said in the event and in the reason the history keeps.
        let cut = ended.outputCut.map { "output cut at \($0) bytes (launcher.max_output_mb)" }
        let cutData: [String: JSONValue] = ended.outputCut.map { ["output_cut_bytes": .int($0)] } ?? [:]
        var facts = EventFacts(returnCode: status)
        facts.other = cutData
        do {
            if let reason = killRequests[ended.id] {
                try store.move(
                    job.loaded, to: .failed, reason: reason, eventData: EventFacts(returnCode: status).data,
                    leaseHeld: leaseFresh
                ) {
                    _, record in record.returnCode = status
                }
                killRequests[ended.id] = nil
                Posix.unlink(site.controlPath + "/kill." + ended.id)
                summary.killed += 1
                logger.info("job \(ended.id) killed: \(reason)", metadata: ["job.id": "\(ended.id)"])
            } else if let why = stopping {
                // A signal is its operator's (Ctrl-C) or its batch system's (a cancel): the run was interrupted,
                // not too long, and runs again without spending a retry (balsam-launcher(1), SIGNALS).
                let interrupted = why == "signal"
                var stopped = EventFacts(returnCode: status)
                stopped.interrupted = interrupted
                try store.move(
                    job.loaded, to: .runTimeout,
                    reason: interrupted
                        ? "interrupted: its launcher was stopped by a signal" : "stopped by the launcher (\(why))",
                    eventData: stopped.data, leaseHeld: leaseFresh
                ) { _, record in
                    record.returnCode = status
                    record.interrupted = interrupted
                }
                summary.timedOut += 1
            } else if status == 0 && ended.error == nil {
                let result = pythonResult(job.loaded)
                (facts.returnValue, facts.exception, facts.returnCode) = (
                    result.facts.returnValue, result.facts.exception, nil
                )
                try store.move(
                    job.loaded, to: .runDone, reason: cut, eventData: facts.data, leaseHeld: leaseFresh
                ) { _, record in record.returnCode = 0 }
                summary.done += 1
            } else {
                let tail = ended.error ?? Posix.tail(job.loaded.directory + "/job.out", lines: settings.errorTailLines)
                let result = pythonResult(job.loaded)
                let reason =
                    "exit status \(status)"
                    + ((result.exception.map { ": run() raised \($0)" } ?? ended.error.map { ": \($0)" }) ?? "")
                (facts.returnValue, facts.exception, facts.tail) = (
                    result.facts.returnValue, result.facts.exception, tail
                )
                if facts.exception == nil {
                    // No exception of its own (a shell app): the client's job.result() raises one saying why.
                    let output = ended.error == nil && !tail.isEmpty ? "\nlast lines of job.out:\n" + tail : ""
                    facts.exception = Pickle.exceptionBase64("job \(job.loaded.job.workdir): " + reason + output)
                }
                try store.move(
                    job.loaded, to: .runError, reason: reason + (cut.map { "; " + $0 } ?? ""), eventData: facts.data,
                    leaseHeld: leaseFresh
                ) { _, record in record.returnCode = status }
                summary.errors += 1
            }
        } catch {
            if let entry = job.loaded.entry,
                failIfDirectoryGone(ended.id, workdir: job.loaded.job.workdir, entry: entry, from: .running)
            {
                return nil
            }
            if error.code == .io { return error }
            logger.error(
                "job \(ended.id): cannot record its end (status \(status)): \(error)",
                metadata: ["job.id": "\(ended.id)"])
        }
        return nil
    }

    /// What a Python app's run left in its directory (rank 0 writes it; see balsam_runner.py): its pickled
    /// return value or exception, for the event (the sync takes it to the server, where `job.result()` reads
    /// it), and the exception's one-line text.
    func pythonResult(_ loaded: JobStore.Loaded) -> (facts: EventFacts, exception: String?) {
        guard apps[loaded.job.app]?.isPython == true,
            let bytes = try? Posix.readFile(
                loaded.directory + "/" + Coordinator.resultName, limit: Coordinator.resultLimit),
            case .object(let o)? = try? JSONValue.parse(bytes)
        else { return (EventFacts(), nil) }
        // The runner writes the two under the event's own names (balsam_runner.py).
        let written = EventFacts(data: o)
        return (EventFacts(returnValue: written.returnValue, exception: written.exception), o["exception"]?.stringValue)
    }

    /// The file a Python app's run leaves its result in, and the largest read.
    static let resultName = ".balsam-result.json"

    static let resultLimit = 8 << 20

    /// Carries out `queue/control/kill.ID` requests for jobs this launcher runs.
    func checkKillRequests() {
        guard !running.isEmpty, let names = try? Posix.listDirectory(site.controlPath) else { return }
        for name in names where name.hasPrefix("kill.") {
            let id = String(name.dropFirst(5))
            guard let job = running[id], killRequests[id] == nil else { continue }
            var reason = "killed by the user"
            if let bytes = try? Posix.readFile(site.controlPath + "/" + name, limit: 64 * 1024),
                let text = (try? JSONValue.parse(bytes))?.objectValue?["reason"]?.stringValue
            {
                reason = text
            }
            killRequests[id] = reason
            logger.info("job \(id): stopping it (\(reason))", metadata: ["job.id": "\(id)"])
            deliver(.kill(id: id), to: job.assignment.nodes[0])
        }
    }

    /// Stops every job (RUN_TIMEOUT), lets the other ranks go, gives back anything unstarted, releases the lease.
    func shutdown(reason: String) throws(SpoolError) {
        stopping = reason
        summary.reason = reason
        logger.info("stopping (\(reason)): \(running.count) job(s) running")
        runner.killAll()
        // A rank given up for silent is not waited for: it stops by itself if it ever runs again.
        let others = (0..<transport.size).filter { $0 != transport.rank && !silentRanks.contains($0) }
        for rank in others { deliver(.stop, to: rank) }
        // Every rank stops its jobs within the grace period; a rank that does not answer is given a while more.
        let limit = Posix.monotonicSeconds() + settings.launcher.killGraceSeconds + 30
        while (runner.count > 0 || !Set(others).isSubset(of: stoppedRanks)) && Posix.monotonicSeconds() < limit {
            if try !collectEndings() { usleep(1000) }
            recordEndings()
        }
        for id in Array(running.keys) {
            logger.warning("job \(id): no word from its rank; recorded as timed out", metadata: ["job.id": "\(id)"])
            record(TaskRunner.Ended(id: id, status: 137, error: "no answer from its launcher rank"))
        }
        recordEndings()
        // Endings the disk had no room for: tried for another minute (the lease kept alive meanwhile), then
        // given back RUNNING, which the watcher treats as a run cut short. A read-only or failing filesystem does
        // not come back by itself: 5 s, so the allocation is not held for nothing.
        let recordLimit = Posix.monotonicSeconds() + (recordBackoff.waitsForRoom ? 60 : 5)
        while !unrecorded.isEmpty && Posix.monotonicSeconds() < recordLimit {
            try? lease?.heartbeat()
            Posix.sleep(seconds: 0.5)
            recordBackoff.retryNow()
            recordEndings()
        }
        if !unrecorded.isEmpty {
            logger.error(
                "\(unrecorded.count) job ending(s) could not be recorded; given back RUNNING for the watcher to retry")
        }
        if let lease {
            for id in (try? lease.jobIDs()) ?? [] { giveBack(lease.entryPath(id), id: id) }
            // Its time on the nodes, for the utilization reports (nodes a launcher started by hand held).
            do { try lease.session(end: Timestamp.now())?.record(site) } catch {
                logger.warning("cannot record this launcher's session in \(LauncherSession.logPath(site)): \(error)")
            }
            lease.remove()
        }
        logger.info(
            """
            done: \(summary.started) started, \(summary.done) RUN_DONE, \(summary.errors) RUN_ERROR, \
            \(summary.timedOut) RUN_TIMEOUT, \(summary.killed) killed
            """)
    }

    // MARK: - Silent ranks

    /// Notes a message from `rank`; a rank given up for silent that speaks again is told to stop.
    func heard(from rank: Int) {
        guard rank < lastHeard.count else { return }
        let now = Posix.monotonicSeconds()
        if silentRanks.contains(rank) && !toldToStop.contains(rank) {
            toldToStop.insert(rank)
            logger.warning(
                "rank \(rank) (node \(nodes[rank].host)) answers again after \(Int(saturating: now - lastHeard[rank])) s; its jobs were given back: stopping it, and nothing more runs there",
                metadata: ["rank": "\(rank)"])
            deliver(.stop, to: rank)
        }
        lastHeard[rank] = now
    }

    /// Gives back the jobs of every rank that has said nothing for the lease timeout (a hung node, a stopped
    /// rank): RUN_TIMEOUT, the app's timeout policy then applies, and its node takes no more jobs. Called after
    /// `collectEndings`, so what arrived while this rank itself was held up counts.
    func giveUpSilentRanks() {
        let now = Posix.monotonicSeconds()
        for rank in lastHeard.indices
        where rank != transport.rank && !silentRanks.contains(rank) && !stoppedRanks.contains(rank)
            && now - lastHeard[rank] > settings.leaseTimeoutSeconds
        {
            silentRanks.insert(rank)
            allocation.retire(rank)
            let silence = Int(saturating: now - lastHeard[rank])
            let jobs = running.filter { $0.value.assignment.nodes[0] == rank }
            logger.error(
                "rank \(rank) (node \(nodes[rank].host)) silent for \(silence) s (launcher.lease_timeout_sec \(settings.leaseTimeoutSeconds)); giving back its \(jobs.count) job(s), placing nothing more there",
                metadata: ["rank": "\(rank)"])
            for (id, job) in jobs {
                running[id] = nil
                allocation.release(job.assignment)
                endings.append(
                    (
                        job, TaskRunner.Ended(id: id, status: 137, error: "no answer from its node"),
                        "node \(nodes[rank].host) (rank \(rank)) silent for \(silence) s"
                    ))
            }
        }
    }
}
