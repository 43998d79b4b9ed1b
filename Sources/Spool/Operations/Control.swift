#if canImport(Glibc)
    import Glibc
#endif

/// What users do to jobs that exist: kill, retry, remove, modify. These work with or without a watcher running,
/// through the same compare-and-swap moves the watcher uses. Nothing is skipped silently: every selected job is
/// reported as done, requested (its launcher will act), or not done and why.
public struct Control {
    /// The site.
    public let site: Site
    /// Recorded as the actor of the changes (`balsam kill`, ...).
    public var actor: String
    let index: SiteIndex

    /// Prepares control of `site` as `actor`.
    public init(site: Site, actor: String) {
        self.site = site
        self.actor = actor
        self.index = SiteIndex(site: site)
    }

    /// What happened to one selected job.
    public struct Outcome: Sendable, CustomStringConvertible {
        public enum Kind: String, Sendable {
            /// Done now.
            case done
            /// Handed to the job's launcher, which acts on it when it next looks.
            case requested
            /// Nothing to do (already ended, say): reported, not an error.
            case unchanged
            /// Could not be done now (the job is held by a launcher, or kept changing): try again.
            case notNow = "not now"
            /// Refused or failed for good: bad values (`code` .invalidInput), a full disk (.io), ...
            case failed
        }

        public var id: String
        public var kind: Kind
        public var message: String
        /// Why it failed, when `kind` is `.failed`.
        public var code: SpoolError.Code?
        public var description: String { "\(id) \(kind.rawValue): \(message)" }

        /// An outcome of `kind`.
        public init(id: String, kind: Kind, message: String, code: SpoolError.Code? = nil) {
            self.id = id
            self.kind = kind
            self.message = message
            self.code = code
        }
    }

    /// Jobs matching `filter`, after making the directories of accepted bulk submissions (so every job can be
    /// acted on).
    public func select(_ filter: JobFilter) throws(SpoolError) -> [JobListing] {
        _ = try Ingest(site: site, actor: actor).materializePending()
        return try Query(site: site).list(filter, load: false)
    }

    /// Kills jobs: `FAILED` at once, with `reason`; a job held by a launcher (claimed or running) gets a kill
    /// request in `queue/control/` that its launcher carries out. The watcher then fails its waiting children.
    public func kill(_ jobs: [JobListing], reason: String = "killed by the user") -> [Outcome] {
        jobs.map { listing in
            act(listing) { (store, loaded) throws(SpoolError) -> Outcome in
                if loaded.record.state.isFinal {
                    return Outcome(
                        id: listing.id, kind: .unchanged, message: "already ended \(loaded.record.state.rawValue)")
                }
                if isLeased(loaded) || loaded.record.state == .running {
                    try requestKill(listing.id, reason: reason)
                    return Outcome(
                        id: listing.id, kind: .requested,
                        message: "\(loaded.record.state.rawValue) under a launcher; it stops the job and fails it")
                }
                try store.move(loaded, to: .failed, reason: reason)
                return Outcome(id: listing.id, kind: .done, message: "FAILED")
            }
        }
    }

    /// Retries `FAILED` jobs: to `READY` (preprocess again), or with `restart` to `RESTART_READY` (run again
    /// directly). Their retry counters start over.
    public func retry(_ jobs: [JobListing], restart: Bool, withChildren: Bool = false) -> [Outcome] {
        retry(jobs, to: restart ? .restartReady : .ready, withChildren: withChildren)
    }

    /// Retries `FAILED` jobs to `target` (`READY`, `RESTART_READY`, or `AWAITING_PARENTS`: to wait for parents
    /// retried meanwhile); a job whose parents have not all finished goes to `AWAITING_PARENTS` whatever the
    /// target, and runs after them. The jobs that failed because one of them did (straight from `AWAITING_PARENTS`, their
    /// reason naming the parent or ancestor), and theirs, are said for each; with `withChildren` they go back to
    /// `AWAITING_PARENTS` too and run when their parents finish.
    public func retry(_ jobs: [JobListing], to target: JobState, withChildren: Bool = false) -> [Outcome] {
        // Read once, and only once a job was retried (it lists every FAILED job with its files).
        var scanned: [String: [JobListing]]?
        let selected = Set(jobs.map(\.id))
        var outcomes: [Outcome] = []
        var revived = Set<String>()
        for listing in jobs {
            var outcome = act(listing) { (store, loaded) throws(SpoolError) -> Outcome in
                guard loaded.record.state == .failed else {
                    return Outcome(
                        id: listing.id, kind: .unchanged, message: "is \(loaded.record.state.rawValue), not FAILED")
                }
                // A job whose parents have not all finished (retried themselves, or failed) waits for them: it
                // would otherwise run before them.
                let unfinished = loaded.job.parentIDs.filter { (try? Query(site: site).find($0).state) != .jobFinished }
                let to = unfinished.isEmpty ? target : .awaitingParents
                try store.move(loaded, to: to, reason: "retried by the user") { _, record in
                    record.errorRetries = 0
                    record.timeoutRetries = 0
                }
                let waiting = unfinished.isEmpty || target == .awaitingParents ? "" : " (parents not finished)"
                return Outcome(id: listing.id, kind: .done, message: to.rawValue + waiting)
            }
            guard outcome.kind == .done else {
                outcomes.append(outcome)
                continue
            }
            // Every job that failed through this one, however deep, not selected itself.
            let dependents = scanned ?? ((try? dependencyFailures()) ?? [:])
            scanned = dependents
            var below: [JobListing] = []
            var queue = [listing.id]
            while let parent = queue.popLast() {
                for child in dependents[parent] ?? [] where !selected.contains(child.id) && !revived.contains(child.id)
                {
                    if below.contains(where: { $0.id == child.id }) { continue }
                    below.append(child)
                    queue.append(child.id)
                }
            }
            if withChildren {
                outcomes.append(outcome)
                for child in below {
                    revived.insert(child.id)
                    outcomes.append(
                        act(child) { (store, loaded) throws(SpoolError) -> Outcome in
                            guard loaded.record.state == .failed else {
                                return Outcome(
                                    id: child.id, kind: .unchanged,
                                    message: "is \(loaded.record.state.rawValue), not FAILED")
                            }
                            try store.move(loaded, to: .awaitingParents, reason: "retried with parent \(listing.id)") {
                                _, record in
                                record.errorRetries = 0
                                record.timeoutRetries = 0
                            }
                            return Outcome(
                                id: child.id, kind: .done,
                                message: "AWAITING_PARENTS (retried with \(listing.id), workdir \(listing.workdir))")
                        })
                }
            } else {
                if !below.isEmpty {
                    let sample =
                        below.prefix(3).map(\.workdir).joined(separator: ", ") + (below.count > 3 ? ", ..." : "")
                    outcome.message +=
                        "; \(below.count) job(s) that failed because it did stay FAILED (\(sample)):"
                        + " retry them too with --with-children"
                }
                outcomes.append(outcome)
            }
        }
        return outcomes
    }

    /// The `FAILED` jobs that failed because a parent did, by that parent: they moved straight from
    /// `AWAITING_PARENTS` to `FAILED` with the reason the watcher gives (`parent P ...`, `ancestor A ...`), so
    /// nothing of theirs ran.
    func dependencyFailures() throws(SpoolError) -> [String: [JobListing]] {
        var filter = JobFilter()
        filter.states = [.failed]
        var byParent: [String: [JobListing]] = [:]
        for var listing in try Query(site: site).list(filter, load: true) {
            if listing.record == nil { listing.record = try? Query(site: site).readRecord(workdir: listing.workdir) }
            guard let record = listing.record, record.state == .failed, let job = listing.job,
                record.history.dropLast().last?.state == .awaitingParents,
                let reason = record.reason, reason.hasPrefix("parent ") || reason.hasPrefix("ancestor ")
            else { continue }
            // The parent it came through: named last in an ancestor's reason, first in a parent's.
            let through =
                reason.hasPrefix("parent ")
                ? reason.dropFirst("parent ".count).prefix { $0 != " " }
                : reason.ranges(of: "(through parent ").last.map { reason[$0.upperBound...].prefix { $0 != ")" } }
                    ?? ""
            guard job.parentIDs.contains(String(through)) else { continue }
            byParent[String(through), default: []].append(listing)
        }
        return byParent
    }

    /// Removes jobs not held by a launcher: out of the indexes, and their directories deleted (or, with
    /// `keepFiles`, left with `job.json` and `state` renamed to `*.removed`, so they are no longer jobs).
    /// A job whose directory is gone (deleted by hand) is removed from the indexes all the same
    /// (`JobStore.removeGone`), unless a launcher holds it.
    public func remove(_ jobs: [JobListing], keepFiles: Bool) -> [Outcome] {
        jobs.map { listing in
            if !Posix.isDirectory(site.jobDirectory(listing.workdir)) && listing.source != .accepted {
                do throws(SpoolError) {
                    try JobStore(site: site, actor: actor).removeGone(
                        listing.id, workdir: listing.workdir, app: listing.app, state: listing.state)
                    return Outcome(id: listing.id, kind: .done, message: "removed (its directory was already gone)")
                } catch {
                    return Outcome(id: listing.id, kind: .failed, message: error.description, code: error.code)
                }
            }
            return act(listing) { (_, loaded) throws(SpoolError) -> Outcome in
                if isLeased(loaded) || loaded.record.state == .running {
                    return Outcome(
                        id: listing.id, kind: .notNow,
                        message: "\(loaded.record.state.rawValue) under a launcher; kill it first, then remove it")
                }
                // Claimed as every move claims it: an active entry renamed into tmp/, an ended job through the
                // shared claim of ended jobs (so a retry at the same moment cannot revive what is being removed).
                let claim: String
                if let entry = loaded.entry {
                    claim = site.claimPath(listing.id)
                    do { try Posix.renameNoReplace(entry, claim) } catch {
                        throw SpoolError(.conflict, "changed while being removed")
                    }
                } else {
                    claim = try JobStore(site: site, actor: actor).claimEnded(loaded)
                }
                defer { Posix.unlink(claim) }
                try EventLog(site: site).appendMark(
                    SiteIndex.removedMark, id: listing.id, from: loaded.record.state, actor: actor)
                if keepFiles {
                    // Best effort: the job is removed from every index already; these renames only mark it.
                    _ = rename(loaded.directory + "/job.json", loaded.directory + "/job.json.removed")
                    _ = rename(loaded.directory + "/state", loaded.directory + "/state.removed")
                } else {
                    Posix.removeTree(loaded.directory)
                }
                try index.appendRemoved([(listing.id, loaded.job.workdir, loaded.job.app)])
                return Outcome(id: listing.id, kind: .done, message: keepFiles ? "removed (files kept)" : "removed")
            }
        }
    }

    /// Changes the spec of jobs not held by a launcher (tags, data, parameters, resources); the result must
    /// still be a valid job for its app.
    public func modify(_ jobs: [JobListing], change: (inout Job) throws(SpoolError) -> Void) -> [Outcome] {
        var apps: [String: App] = [:]
        return jobs.map { listing in
            act(listing) { (_, loaded) throws(SpoolError) -> Outcome in
                if isLeased(loaded) || loaded.record.state == .running {
                    return Outcome(
                        id: listing.id, kind: .notNow, message: "\(loaded.record.state.rawValue) under a launcher")
                }
                var job = loaded.job
                try change(&job)
                try job.validate()
                if apps[job.app] == nil { apps[job.app] = try site.app(job.app) }
                try apps[job.app]?.checkParameters(job.parameters, serialized: !job.serializedParameters.isEmpty)
                if job == loaded.job { return Outcome(id: listing.id, kind: .unchanged, message: "no change") }
                try rewrite(loaded, job)
                // The sync pushes the job's spec again on this line, so that the server has what the site has.
                try EventLog(site: site).appendMark(
                    EventLog.modifiedMark, id: listing.id, from: loaded.record.state, actor: actor)
                return Outcome(id: listing.id, kind: .done, message: "modified")
            }
        }
    }

    // MARK: - Helpers

    /// Loads the job and applies `body`, retrying once on a conflict; errors become outcomes.
    private func act(_ listing: JobListing, _ body: (JobStore, JobStore.Loaded) throws(SpoolError) -> Outcome)
        -> Outcome
    {
        let store = JobStore(site: site, actor: actor)
        var lastError: SpoolError?
        for _ in 0..<3 {
            do {
                guard let loaded = try store.load(listing.id) else {
                    return Outcome(id: listing.id, kind: .unchanged, message: "no longer exists")
                }
                return try body(store, loaded)
            } catch  where error.code == .conflict {
                lastError = error
            } catch {
                return Outcome(id: listing.id, kind: .failed, message: error.description, code: error.code)
            }
        }
        return Outcome(id: listing.id, kind: .notNow, message: lastError?.message ?? "kept changing")
    }

    private func isLeased(_ loaded: JobStore.Loaded) -> Bool {
        loaded.entry?.contains("/jobs/lease.") ?? false
    }

    /// A request for the job's launcher: `queue/control/kill.ID`.
    private func requestKill(_ id: String, reason: String) throws(SpoolError) {
        let text = JSONValue.object(["reason": .string(reason), "time": .string(Timestamp.now()), "by": .string(actor)])
        try Posix.replaceFile(site.controlPath + "/kill." + id, Array((text.serialized() + "\n").utf8), sync: true)
    }

    /// Replaces `job.json` under the entry's compare-and-swap, then points the entry at the new file.
    private func rewrite(_ loaded: JobStore.Loaded, _ job: Job) throws(SpoolError) {
        let spec = loaded.directory + "/job.json"
        guard let entry = loaded.entry else {
            try Posix.replaceFile(spec, job.fileBytes(), sync: true)
            return
        }
        let claim = site.claimPath(job.id)
        do { try Posix.renameNoReplace(entry, claim) } catch { throw SpoolError(.conflict, "changed while modified") }
        do {
            try Posix.replaceFile(spec, job.fileBytes(), sync: true)
        } catch {
            // Hand the entry back; if even that fails, the next watcher pass repairs it from tmp/ (recovery).
            _ = rename(claim, entry)
            throw error
        }
        Posix.unlink(claim)
        try index.makeEntry(at: entry, workdir: job.workdir)
    }
}

extension EventLog {
    /// The `to` of a line saying that a job's spec was changed (`balsam modify`): not a state.
    public static let modifiedMark = "MODIFIED"

    /// Logs a line that is not a move: a job removed (`"to": "REMOVED"`) or modified (`"to": "MODIFIED"`).
    func appendMark(_ mark: String, id: String, from: JobState, actor: String, data: [String: JSONValue] = [:])
        throws(SpoolError)
    {
        var out: [UInt8] = []
        JSONValue.object([
            "t": .string(Timestamp.now()), "job": .string(id), "from": .string(from.rawValue),
            "to": .string(mark), "actor": .string(actor), "data": .object(data),
        ]).write(to: &out)
        out.append(0x0A)
        try SiteIndex(site: site).appendToHostFile(directory: site.eventsPath, suffix: ".jsonl", out, sync: true)
    }
}
