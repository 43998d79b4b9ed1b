#if canImport(Glibc)
    import Glibc
#endif

/// Puts new jobs into a site: one at a time (directory made before returning), in bulk (accepted into a
/// durable batch; directories made by ``Ingest``), or by adopting a hand-made directory.
///
/// Every path is all-or-nothing per job, and for a bulk call all-or-nothing for the whole call.
public struct Submission {
    /// The site jobs go into.
    public let site: Site
    /// Recorded as the actor of creation events.
    public var actor: String
    let index: SiteIndex
    private var apps: [String: App] = [:]
    private var pendingWorkdirs: Set<String>?
    /// Every proper ancestor of a pending or claimed workdir: a new workdir must not be one of them.
    private var reservedAncestors = Set<String>()
    private var pendingStates: [String: JobState]?
    private var finalStates: FinalStates

    /// Largest `--from` input accepted in one call.
    public static let bulkInputLimit = 1 << 31

    /// Prepares to submit into `site`.
    public init(site: Site, actor: String = "balsam-submit") {
        self.site = site
        self.actor = actor
        self.index = SiteIndex(site: site)
        self.finalStates = FinalStates(index: index)
    }

    // MARK: - Validation against the site

    mutating func app(_ name: String) throws(SpoolError) -> App {
        if let app = apps[name] { return app }
        let app = try site.app(name)
        apps[name] = app
        return app
    }

    /// The site's transfer locations, read once.
    private var locations: [String: TransferLocation]?

    /// Checks a job's transfers: each slot the app's, every required slot given, each alias a location.
    mutating func checkTransfers(_ job: Job, app: App) throws(SpoolError) {
        guard !job.transfers.isEmpty || !app.transfers.isEmpty else { return }
        let items = try TransferItem.items(for: job, app: app)
        if locations == nil { locations = try SiteSettings.load(site).transferLocations }
        for item in items where locations?[item.alias] == nil {
            let known = (locations ?? [:]).keys.sorted().joined(separator: ", ")
            throw SpoolError(
                .invalidInput,
                "transfer slot '\(item.slot)': no transfer location '\(item.alias)' in settings.yml "
                    + "(transfer_locations: \(known.isEmpty ? "none" : known))")
        }
    }

    /// Checks a job against the site (app, parameters, transfers, workdir, parents) and returns its initial state.
    mutating func check(_ job: Job, claimedWorkdirs: Set<String> = []) throws(SpoolError) -> JobState {
        let app = try app(job.app)
        try app.checkParameters(job.parameters, serialized: !job.serializedParameters.isEmpty)
        try checkTransfers(job, app: app)
        try checkWorkdirFree(job.workdir, claimedWorkdirs: claimedWorkdirs)
        var parentStates: [JobState] = []
        for parent in job.parentIDs {
            guard let state = try state(of: parent) else {
                throw SpoolError(.invalidInput, "unknown parent job \(parent)")
            }
            parentStates.append(state)
        }
        return JobState.initial(parentStates: parentStates)
    }

    mutating func checkWorkdirFree(_ workdir: String, claimedWorkdirs: Set<String>) throws(SpoolError) {
        if claimedWorkdirs.contains(workdir) {
            throw SpoolError(.cannotCreate, "workdir '\(workdir)' is used by another job of this submission")
        }
        let path = site.jobDirectory(workdir)
        var st = stat()
        // lstat(2) asks whether the workdir is free: ENOENT, or a directory that holds no job (inputs staged
        // before the job was made, adopted with its files). ENOTDIR is handled below.
        if lstat(path, &st) == 0 {
            if let taken = Self.occupant(of: path, workdir: workdir) {
                throw SpoolError(.cannotCreate, taken, path: path)
            }
        } else if errno == ENOTDIR {
            throw SpoolError(
                .cannotCreate, "workdir '\(workdir)': a parent of it is a file, not a directory", path: path)
        }
        if pendingWorkdirs == nil { try loadPending() }
        if pendingWorkdirs?.contains(workdir) == true {
            throw SpoolError(
                .cannotCreate, "workdir '\(workdir)' belongs to an accepted job whose directory is not made yet")
        }
        // One job's directory never holds another's: cleanup globs and hooks of the outer job would reach in.
        for name in Job.enclosingWorkdirs(of: workdir)
        where claimedWorkdirs.contains(name) || pendingWorkdirs?.contains(name) == true
            || Posix.exists(site.jobDirectory(name) + "/job.json")
        {
            throw SpoolError(.cannotCreate, "workdir '\(workdir)' would be inside the directory of job '\(name)'")
        }
        if reservedAncestors.contains(workdir) {
            throw SpoolError(.cannotCreate, "workdir '\(workdir)' would contain the directory of another job")
        }
    }

    /// Why the existing `path` cannot become the directory of a new job in `workdir`, or nil if it can: a
    /// directory that holds no job, at its top (`job.json`, `state`) or beneath it (a `job.json`: one job's
    /// directory never holds another's), is adopted as the job's directory with everything in it. The walk
    /// beneath is the user's own tree, read once per submission of such a workdir.
    static func occupant(of path: String, workdir: String) -> String? {
        guard let st = try? Posix.lstatIfExists(path) else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: break
        case S_IFLNK:
            return "workdir '\(workdir)' is a symbolic link; a job's directory must be a directory of its own"
        default: return "workdir '\(workdir)' already exists and is not a directory"
        }
        guard let names = try? Posix.listDirectory(path) else {
            return "workdir '\(workdir)' exists and cannot be read"
        }
        if let name = names.first(where: { $0 == "job.json" || $0 == "state" }) {
            return "workdir '\(workdir)' already exists and holds a job (its \(name))"
        }
        var pending = names.map { (path + "/" + $0, $0) }
        while let (inner, relative) = pending.popLast() {
            guard let st = try? Posix.lstatIfExists(inner), st.st_mode & S_IFMT == S_IFDIR,
                let names = try? Posix.listDirectory(inner)
            else { continue }
            if names.contains("job.json") {
                return "workdir '\(workdir)' would contain the directory of job '\(workdir)/\(relative)'"
            }
            pending += names.map { (inner + "/" + $0, relative + "/" + $0) }
        }
        return nil
    }

    /// Records the ancestors of a workdir that is now taken (pending, or claimed in this call).
    mutating func reserveAncestors(of workdir: String) {
        var ancestor = Substring(workdir)
        while let slash = ancestor.lastIndex(of: "/") {
            ancestor = ancestor[..<slash]
            if !reservedAncestors.insert(String(ancestor)).inserted { break }
        }
    }

    mutating func loadPending() throws(SpoolError) {
        var workdirs = Set<String>()
        var states: [String: JobState] = [:]
        for name in try index.batchNames() {
            for line in try index.readBatch(name).lines {
                workdirs.insert(line.workdir)
                reserveAncestors(of: line.workdir)
                states[line.id] = line.state
            }
        }
        pendingWorkdirs = workdirs
        pendingStates = states
    }

    /// The current state of any job, looked up in the active entries, then accepted batches, then the final
    /// index (read once, only if needed).
    mutating func state(of id: String) throws(SpoolError) -> JobState? {
        if let state = index.activeState(of: id) { return state }
        if pendingStates == nil { try loadPending() }
        if let state = pendingStates?[id] { return state }
        return try finalStates.state(of: id)
    }

    // MARK: - One job

    /// Submits one job: validates it, makes its directory with `job.json` and `state`, indexes it, logs the
    /// creation event, and makes all of it durable before returning.
    public mutating func submit(_ request: Job) throws(SpoolError) -> (Job, JobState) {
        var job = request
        // A job made in code (a remote job, taken from the server) is judged by the site's own rules, as one read
        // from a file is (`Job.init(json:)`): the site trusts no one for what it would refuse locally.
        try job.validate()
        let state = try check(job)
        job.id = JobID.make()
        job.created = Timestamp.now()
        let target = site.jobDirectory(job.workdir)
        if Posix.exists(target) {
            try publishInPlace(target, job: job, state: state)
            return (job, state)
        }
        let staging = site.stagingPath + "/" + job.id + Site.ownerSuffix
        do {
            try Posix.mkdir(staging)
            try Posix.createFile(staging + "/job.json", job.fileBytes(), sync: true)
            let record = StateRecord(initial: state, actor: actor, time: job.created)
            try Posix.createFile(staging + "/state", record.fileBytes(), sync: true)
            try publish(staging, job: job, state: state)
        } catch {
            Posix.removeTree(staging)
            throw error
        }
        return (job, state)
    }

    /// Moves a prepared directory to `data/WORKDIR` (never over an existing one), indexes it, logs it.
    private func publish(_ directory: String, job: Job, state: JobState) throws(SpoolError) {
        let target = site.jobDirectory(job.workdir)
        let parent = Posix.parentPath(target)
        try Posix.makeDirectories(parent)
        do { try Posix.renameNoReplace(directory, target) } catch {
            if error.cause == EEXIST || error.cause == ENOTEMPTY {
                throw SpoolError(.cannotCreate, "workdir '\(job.workdir)' already exists", path: target)
            }
            if error.cause == EXDEV {
                throw SpoolError(
                    .cannotCreate, "is on another filesystem than the site; copy it into \(site.dropBoxPath) instead",
                    path: directory)
            }
            throw error
        }
        do { try record(job, state: state, published: parent) } catch {
            // Undo the publication so a failed submit leaves no job behind.
            if rename(target, directory) != 0 { Posix.removeTree(target) }
            throw error
        }
    }

    /// Makes `target`, an existing directory that holds no job (`occupant`), the job's directory in place: its
    /// `job.json`, created exclusively, is the claim (of two submitters at once, one gets it), then its state,
    /// entry and event. On failure the two files go and the directory holds what it held.
    private func publishInPlace(_ target: String, job: Job, state: JobState) throws(SpoolError) {
        do { try Posix.createFile(target + "/job.json", job.fileBytes(), sync: true) } catch
            where error.cause == EEXIST
        {
            throw SpoolError(
                .cannotCreate, "workdir '\(job.workdir)' already exists and holds a job (its job.json)", path: target)
        }
        do {
            let stateRecord = StateRecord(initial: state, actor: actor, time: job.created)
            try Posix.createFile(target + "/state", stateRecord.fileBytes(), sync: true)
            try record(job, state: state, published: target)
        } catch {
            Posix.unlink(target + "/state")
            Posix.unlink(target + "/job.json")
            throw error
        }
    }

    /// The steps after a job's directory holds its `job.json` and `state` (`published`: the directory whose new
    /// entry made it so): its index entry and its creation event, durable. On failure the entry is removed.
    private func record(_ job: Job, state: JobState, published: String) throws(SpoolError) {
        do {
            try Posix.fsyncDirectory(published)
            try index.createEntry(state, id: job.id, workdir: job.workdir)
            try Posix.fsyncDirectory(site.activePath(state))
            try EventLog(site: site).append(
                [Event(time: job.created, jobID: job.id, from: .created, to: state, actor: actor)], sync: true)
        } catch {
            Posix.unlink(index.entryPath(state, job.id))
            throw error
        }
    }

    // MARK: - A hand-made directory

    /// Adopts a directory holding a `job.json` (without `id`; `workdir` defaults to `defaultWorkdir`): the
    /// directory itself becomes the job's directory, with everything in it. On failure it is left as it was.
    public mutating func adopt(directory: String, defaultWorkdir: String? = nil) throws(SpoolError) -> (Job, JobState) {
        let dir = Posix.absolute(directory)
        guard let st = try Posix.lstatIfExists(dir) else { throw SpoolError(.notFound, "no such directory", path: dir) }
        if (st.st_mode & S_IFMT) == S_IFLNK {
            throw SpoolError(.invalidInput, "is a symbolic link; give the job directory itself", path: dir)
        }
        if (st.st_mode & S_IFMT) != S_IFDIR { throw SpoolError(.invalidInput, "is not a directory", path: dir) }
        let specPath = dir + "/job.json"
        let original = try Posix.readFile(specPath, limit: Job.Limits.fileBytes)
        if Posix.exists(dir + "/state") {
            throw SpoolError(.invalidInput, "already has a state file; it looks like a submitted job", path: dir)
        }
        var job: Job
        do {
            var value = try JSONValue.parse(original)
            if case .object(var o) = value {
                if o["id"] != nil { throw SpoolError(.invalidInput, "job.json must not have an 'id'; one is assigned") }
                if o["workdir"] == nil { o["workdir"] = .string(defaultWorkdir ?? Posix.lastComponent(dir)) }
                value = .object(o)
            }
            job = try Job(json: value)
        } catch let error as JSONParseError {
            throw SpoolError(.invalidInput, "malformed JSON: \(error)", path: specPath)
        } catch let error as SpoolError {
            throw SpoolError(error.code, error.message, path: specPath, cause: error.cause)
        } catch {
            throw SpoolError(.invalidInput, "\(error)", path: specPath)
        }
        let state: JobState
        do { state = try check(job) } catch {
            throw SpoolError(error.code, error.message, path: specPath, cause: error.cause)
        }
        job.id = JobID.make()
        job.created = Timestamp.now()
        do {
            try Posix.replaceFile(specPath, job.fileBytes(), sync: true)
            let record = StateRecord(initial: state, actor: actor, time: job.created)
            try Posix.createFile(dir + "/state", record.fileBytes(), sync: true)
            try publish(dir, job: job, state: state)
        } catch {
            Posix.unlink(dir + "/state")
            try? Posix.replaceFile(specPath, original, sync: true)
            throw error
        }
        return (job, state)
    }

    // MARK: - Many jobs

    /// The outcome of a bulk submission.
    public struct BulkResult: Sendable {
        /// Accepted jobs with their initial states, in input order (empty if any line failed).
        public var accepted: [(job: Job, state: JobState)] = []
        /// Lines that failed: 1-based line number and the problem.
        public var failures: [(line: Int, error: SpoolError)] = []
    }

    /// Accepts many jobs in one durable step: every line is checked first; if any fails, nothing is
    /// submitted and every failure is reported. Otherwise all jobs are written to one batch file, fsynced,
    /// and renamed into `queue/accepted/`. From then on they are numbered, durable and visible to queries;
    /// ``Ingest/materializePending()`` makes their directories.
    public mutating func accept(_ input: [UInt8], maxFailures: Int = 1000) throws(SpoolError) -> BulkResult {
        var result = BulkResult()
        if pendingWorkdirs == nil { try loadPending() }
        // Ancestors reserved by lines of this call count only if the call succeeds.
        let reservedBefore = reservedAncestors
        var jobs: [(Job, JobState)] = []
        var claimed = Set<String>()
        var lineNumber = 0
        var start = 0
        while start < input.count {
            let end = input[start...].firstIndex(of: 0x0A) ?? input.count
            lineNumber += 1
            let line = input[start..<end]
            start = end + 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            if result.failures.count >= maxFailures { continue }
            do throws(SpoolError) {
                if line.count > Job.Limits.fileBytes {
                    throw SpoolError(.invalidInput, "line is \(line.count) bytes; the limit is \(Job.Limits.fileBytes)")
                }
                let job = try Job(bytes: Array(line))
                if !job.id.isEmpty { throw fieldError("id", "must not be given; IDs are assigned at submission") }
                let state = try check(job, claimedWorkdirs: claimed)
                claimed.insert(job.workdir)
                reserveAncestors(of: job.workdir)
                jobs.append((job, state))
            } catch {
                result.failures.append((lineNumber, error))
            }
        }
        if !result.failures.isEmpty || jobs.isEmpty {
            reservedAncestors = reservedBefore
            return result
        }

        let time = Timestamp.now()
        var counts: [JobState: Int] = [:]
        var lines: [Batch.Line] = []
        lines.reserveCapacity(jobs.count)
        var events: [UInt8] = []
        events.reserveCapacity(jobs.count * 150)
        for i in jobs.indices {
            jobs[i].0.id = JobID.make()
            jobs[i].0.created = time
            let (job, state) = jobs[i]
            counts[state, default: 0] += 1
            var json = job.fileBytes()
            json.removeLast()
            lines.append(Batch.Line(id: job.id, state: state, workdir: job.workdir, app: job.app, jobJSON: json[...]))
            Event(time: time, jobID: job.id, from: .created, to: state, actor: actor).write(to: &events)
        }
        let batch = Batch(header: Batch.Header(time: time, counts: counts), lines: lines)
        let name = jobs[0].0.id + ".tsv"
        let staging = site.tmpPath + "/" + name + Site.ownerSuffix
        do {
            try Posix.createFile(staging, batch.fileBytes(), sync: true)
            try Posix.renameNoReplace(staging, site.acceptedPath + "/" + name)
        } catch {
            Posix.unlink(staging)
            throw error
        }
        do {
            try Posix.fsyncDirectory(site.acceptedPath)
            try index.appendToHostFile(directory: site.eventsPath, suffix: ".jsonl", events, sync: true)
        } catch {
            Posix.unlink(site.acceptedPath + "/" + name)
            throw error
        }
        result.accepted = jobs.map { (job: $0.0, state: $0.1) }
        for (job, state) in jobs {
            pendingWorkdirs?.insert(job.workdir)
            pendingStates?[job.id] = state
        }
        return result
    }
}

/// The site's append-only event logs, `events/HOST.jsonl`: one JSON line per state change.
public struct EventLog: Sendable {
    /// The site logged.
    public let site: Site

    /// Makes a writer for `site`.
    public init(site: Site) { self.site = site }

    /// Appends events in one write.
    public func append(_ events: [Event], sync: Bool) throws(SpoolError) {
        var out: [UInt8] = []
        for event in events { event.write(to: &out) }
        try SiteIndex(site: site).appendToHostFile(directory: site.eventsPath, suffix: ".jsonl", out, sync: sync)
    }

    /// Whether `event`, exactly as it is written, is among the last `within` bytes of this host's event log: a
    /// pass that resumes work a dead one began asks before logging its events again.
    public func recentlyLogged(_ event: Event, within: Int) -> Bool {
        var line: [UInt8] = []
        event.write(to: &line)
        let path = site.eventsPath + "/" + Posix.hostName() + ".jsonl"
        guard let fd = try? Posix.open(path, O_RDONLY) else { return false }
        defer { Posix.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        let start = max(0, Int(st.st_size) - max(0, within))
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size) - start)
        var filled = 0
        while filled < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buffer in
                buffer.baseAddress.map { pread(fd, $0 + filled, buffer.count - filled, off_t(start + filled)) } ?? 0
            }
            if n <= 0 { break }
            filled += n
        }
        // A whole line: after a newline, or at the very start of the file.
        if start == 0 && bytes[..<filled].starts(with: line) { return true }
        return bytes[..<filled].firstRange(of: [0x0A] + line) != nil
    }
}
