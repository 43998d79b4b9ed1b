/// Which jobs a query selects: the original `balsam job ls` filters.
public struct JobFilter: Sendable {
    /// Only these states (nil: all).
    public var states: Set<JobState>?
    /// Not these states.
    public var excludeStates: Set<JobState> = []
    /// Jobs whose tags contain all of these.
    public var tags: [String: String] = [:]
    /// Only this app.
    public var app: String?
    /// Jobs whose workdir this selects (`-w`).
    public var workdir: WorkdirPattern?
    /// Only these IDs.
    public var ids: Set<String>?

    /// A filter that selects every job.
    public init() {}

    /// Whether this filter selects every job.
    public var selectsEverything: Bool {
        states == nil && excludeStates.isEmpty && tags.isEmpty && app == nil && workdir == nil && ids == nil
    }

    func allows(_ state: JobState) -> Bool {
        (states?.contains(state) ?? true) && !excludeStates.contains(state)
    }

    func allowsCheap(id: String, state: JobState, workdir: String, app: String) -> Bool {
        if !allows(state) { return false }
        if let ids, !ids.contains(id) { return false }
        if let a = self.app, a != app { return false }
        if let pattern = self.workdir, !pattern.matches(workdir) { return false }
        return true
    }
}

/// One job found by a query: where it is, what state it is in, and (when loaded) its spec and state record.
public struct JobListing: Sendable {
    /// Where the query found the job.
    public enum Source: String, Sendable {
        /// An active entry under `jobs/STATE/`.
        case active
        /// An accepted batch whose directory is not made yet.
        case accepted
        /// The final index.
        case final
    }

    public var id: String
    public var state: JobState
    public var workdir: String
    public var app: String
    public var source: Source
    /// The spec, when loaded.
    public var job: Job?
    /// The state file, when loaded (absent for accepted jobs).
    public var record: StateRecord?
}

/// Reads jobs out of a site through its indexes. Listing or counting active jobs reads only `jobs/STATE/`
/// directories and accepted-batch headers, never the final index or finished jobs' files.
public struct Query: Sendable {
    /// The site read.
    public let site: Site
    let index: SiteIndex

    /// Makes a query over `site`.
    public init(site: Site) {
        self.site = site
        self.index = SiteIndex(site: site)
    }

    /// Jobs per state. Costs a `readdir` per active state, a header read per accepted batch, and (only if the
    /// site has ended jobs) one read of the final index.
    public func countByState() throws(SpoolError) -> [JobState: Int] {
        var counts: [JobState: Int] = [:]
        var activeKeys = Set<JobKey>()
        for state in JobState.active {
            let ids = try index.activeIDs(state)
            counts[state, default: 0] += ids.count
            for id in ids { if let key = JobKey(id.utf8) { activeKeys.insert(key) } }
        }
        for leased in try index.leasedJobs() {
            counts[leased.state, default: 0] += 1
            if let key = JobKey(leased.id.utf8) { activeKeys.insert(key) }
        }
        var seen = activeKeys
        for name in try index.batchNames() {
            guard index.isMaterializing(name) else {
                for (state, n) in try index.readBatchHeader(name).counts { counts[state, default: 0] += n }
                continue
            }
            // Half made: a job with an entry is counted there; one whose directory holds a state file but has no
            // entry has ended (or its workdir was taken) and is counted from the final index; the rest by the
            // state its line gives (one stat each, only while a batch is being made).
            let batch: Batch
            do { batch = try index.readBatch(name) } catch  where error.code == .notFound { continue }  // just done
            for line in batch.lines {
                guard let key = JobKey(line.id.utf8), !seen.contains(key) else { continue }
                if Posix.exists(site.jobDirectory(line.workdir) + "/state") { continue }
                seen.insert(key)
                counts[line.state, default: 0] += 1
            }
        }
        for (state, n) in try index.finalCounts(excluding: seen) { counts[state, default: 0] += n }
        return counts
    }

    /// Jobs per state among those `filter` selects: `countByState()` when it selects every job, else a `list`.
    public func countByState(_ filter: JobFilter) throws(SpoolError) -> [JobState: Int] {
        if filter.selectsEverything { return try countByState() }
        return try list(filter, load: false).reduce(into: [:]) { $0[$1.state, default: 0] += 1 }
    }

    /// The jobs with these IDs, each with its spec, found the cheap way first: each ID's entry is looked for in
    /// the active directories (most likely first, stopping at the first found), then only the IDs still missing
    /// are looked for in accepted batches and, last, the final index. `list` with `ids` reads every batch and
    /// the whole final index whatever it finds; the sync, which asks for the jobs just made, cannot afford that
    /// on a large site. Jobs not found (removed) are left out.
    public func lookup(_ ids: Set<String>) throws(SpoolError) -> [JobListing] {
        let order: [JobState] =
            [.ready, .awaitingParents, .stagedIn, .preprocessed, .running, .restartReady]
            + JobState.active.filter {
                ![.ready, .awaitingParents, .stagedIn, .preprocessed, .running, .restartReady].contains($0)
            }
        var found: [JobListing] = []
        var missing = Set<String>()
        for id in ids {
            var hit = false
            for state in order where Posix.exists(index.entryPath(state, id)) {
                guard let job = index.readEntry(state, id: id) else { continue }  // moved meanwhile
                found.append(
                    JobListing(id: id, state: state, workdir: job.workdir, app: job.app, source: .active, job: job))
                hit = true
                break
            }
            if !hit { missing.insert(id) }
        }
        if !missing.isEmpty {
            var filter = JobFilter()
            filter.ids = missing
            found += try list(filter, load: false)
        }
        return found
    }

    /// The jobs `filter` selects, oldest first, each with its spec (active entries and accepted batches hold
    /// it; an ended job's `job.json` is read). `load` also reads each job's `state` file.
    public func list(_ filter: JobFilter, load: Bool) throws(SpoolError) -> [JobListing] {
        var found: [String: JobListing] = [:]
        for state in JobState.active where filter.allows(state) {
            let ids: [String]
            if let wanted = filter.ids {
                ids = wanted.filter { Posix.exists(index.entryPath(state, $0)) }
            } else {
                ids = try index.activeIDs(state)
            }
            for id in ids {
                guard let job = index.readEntry(state, id: id) else { continue }  // moved meanwhile
                found[id] = JobListing(
                    id: id, state: state, workdir: job.workdir, app: job.app, source: .active, job: job)
            }
        }
        for leased in try index.leasedJobs() where filter.allows(leased.state) {
            if let wanted = filter.ids, !wanted.contains(leased.id) { continue }
            found[leased.id] = JobListing(
                id: leased.id, state: leased.state, workdir: leased.job.workdir, app: leased.job.app, source: .active,
                job: leased.job)
        }
        var acceptedJSON: [String: ArraySlice<UInt8>] = [:]
        for name in try index.batchNames() {
            let header = try index.readBatchHeader(name)
            guard header.counts.keys.contains(where: filter.allows) else { continue }
            for line in try index.readBatch(name).lines
            where filter.allowsCheap(id: line.id, state: line.state, workdir: line.workdir, app: line.app) {
                found[line.id] = JobListing(
                    id: line.id, state: line.state, workdir: line.workdir, app: line.app, source: .accepted)
                acceptedJSON[line.id] = line.jobJSON
            }
        }
        if filter.allows(.jobFinished) || filter.allows(.failed) {
            var seenFinal = Set<String>()
            for line in try index.finalLines() {
                if let existing = found[line.id] {
                    guard existing.source == .final else { continue }
                }
                let again = !seenFinal.insert(line.id).inserted
                guard filter.allowsCheap(id: line.id, state: line.state, workdir: line.workdir, app: line.app) || again
                else { continue }
                var listing = JobListing(
                    id: line.id, state: line.state, workdir: line.workdir, app: line.app, source: .final)
                if again {
                    // Ended more than once (retried): the state file decides.
                    listing.record = try? readRecord(workdir: line.workdir)
                    listing.state = listing.record?.state ?? line.state
                }
                found[line.id] = listing
            }
        }
        var result: [JobListing] = []
        for id in found.keys.sorted() {
            guard var listing = found[id],
                filter.allowsCheap(id: id, state: listing.state, workdir: listing.workdir, app: listing.app)
            else { continue }
            if listing.job == nil {
                if let bytes = acceptedJSON[id] {
                    listing.job = try? Job(bytes: Array(bytes))
                } else {
                    let path = site.jobDirectory(listing.workdir) + "/job.json"
                    listing.job = try? Job(bytes: Posix.readFile(path, limit: Job.Limits.fileBytes))
                }
            }
            if load && listing.record == nil && listing.source != .accepted {
                listing.record = try? readRecord(workdir: listing.workdir)
            }
            if !filter.tags.isEmpty {
                guard listing.job?.hasTags(filter.tags) == true else { continue }
            }
            result.append(listing)
        }
        return result
    }

    /// One job by ID, by workdir, or by the id the server gave it (digits: `ServerIDs`), with its spec and state
    /// record loaded. Digits that are both a job's workdir and another job's server id are refused as ambiguous.
    public func find(_ key: String) throws(SpoolError) -> JobListing {
        if ServerIDs.isServerID(key), let id = ServerIDs.load(site).jobID(key) {
            let byWorkdir = try? findLocal(key)
            if let byWorkdir, byWorkdir.id != id {
                throw SpoolError(
                    .usage,
                    "'\(key)' is the workdir of job \(byWorkdir.id) and the server id of job \(id); give the job's ID")
            }
            return try findLocal(id)
        }
        return try findLocal(key)
    }

    /// One job by ID or by workdir.
    private func findLocal(_ key: String) throws(SpoolError) -> JobListing {
        if JobID.isValid(key) {
            var filter = JobFilter()
            filter.ids = [key]
            if let listing = try list(filter, load: true).first { return listing }
        }
        let workdir = key.hasSuffix("/") ? String(key.dropLast()) : key
        let dir = site.jobDirectory(workdir)
        if (try? Job.validateWorkdir(workdir)) != nil, Posix.exists(dir + "/job.json") {
            let job = try Job(bytes: Posix.readFile(dir + "/job.json", limit: Job.Limits.fileBytes))
            let record = try readRecord(workdir: workdir)
            return JobListing(
                id: job.id, state: record.state, workdir: workdir, app: job.app, source: .active, job: job,
                record: record)
        }
        var filter = JobFilter()
        filter.workdir = WorkdirPattern(workdir)
        if let listing = try list(filter, load: true).first(where: { $0.workdir == workdir }) { return listing }
        throw SpoolError(.notFound, "no job with ID or workdir '\(key)'", path: site.root)
    }

    /// A job's `state` file.
    public func readRecord(workdir: String) throws(SpoolError) -> StateRecord {
        let path = site.jobDirectory(workdir) + "/state"
        return try StateRecord(bytes: Posix.readFile(path, limit: 1 << 20), path: path)
    }
}
