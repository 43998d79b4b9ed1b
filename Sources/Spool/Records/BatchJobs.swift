#if canImport(Glibc)
    import Glibc
#endif

/// The site's batch jobs: `batchjobs/ID.json`, one file per record, each replaced whole (new file, rename).
/// A record is made by `balsam queue submit` or the elastic queue and from then on written only by the watcher's
/// scheduler service; others ask for a deletion with a request file (`ID.delete`), so no two writers ever race on
/// one record.
public struct BatchJobStore: Sendable {
    public let site: Site

    public init(site: Site) { self.site = site }

    /// `SITE/batchjobs` (made on first use in sites created before batch jobs existed).
    public var path: String { site.root + "/batchjobs" }

    /// Where the watcher writes the scripts it submits and where their output goes.
    public var scriptsPath: String { path + "/scripts" }

    func recordPath(_ id: Int) -> String { path + "/\(id).json" }
    func deletionPath(_ id: Int) -> String { path + "/\(id).delete" }

    /// Stores a new record under the next free number and returns it with its ID.
    public func create(_ job: BatchJob) throws(SpoolError) -> BatchJob {
        try ensureDirectories()
        var job = job
        job.id = (try ids().max() ?? 0) + 1
        if job.history.isEmpty { job.history = [.init(time: job.createdTime, state: job.state, message: job.message)] }
        for _ in 0..<1000 {
            let temp = site.tmpPath + "/batchjob.\(job.id)" + Site.ownerSuffix
            try Posix.createFile(temp, Array((job.json.serialized() + "\n").utf8), sync: true, exclusive: false)
            do {
                try Posix.renameNoReplace(temp, recordPath(job.id))
                return job
            } catch  where error.cause == EEXIST {
                Posix.unlink(temp)
                job.id += 1  // taken meanwhile by another writer
            } catch {
                Posix.unlink(temp)
                throw error
            }
        }
        throw SpoolError(.cannotCreate, "no free batch job number", path: path)
    }

    /// Replaces a stored record (the watcher's scheduler service only).
    public func save(_ job: BatchJob) throws(SpoolError) {
        try Posix.replaceFile(
            recordPath(job.id), Array((job.json.serialized() + "\n").utf8), sync: false, tempDirectory: site.tmpPath)
    }

    /// One record; nil if there is none.
    public func load(_ id: Int) throws(SpoolError) -> BatchJob? {
        let file = recordPath(id)
        guard Posix.exists(file) else { return nil }
        let bytes = try Posix.readFile(file, limit: 1 << 20)
        do { return try BatchJob(json: try JSONValue.parse(bytes), path: file) } catch let error as JSONParseError {
            throw SpoolError(.invalidInput, "malformed JSON: \(error)", path: file)
        } catch let error as SpoolError {
            throw error
        } catch {
            throw SpoolError(.invalidInput, "\(error)", path: file)
        }
    }

    /// Every record, by ID, and the files that could not be read (with why).
    public func all() throws(SpoolError) -> (jobs: [BatchJob], problems: [String]) {
        var jobs: [BatchJob] = []
        var problems: [String] = []
        for id in try ids().sorted() {
            do {
                if let job = try load(id) { jobs.append(job) }
            } catch {
                problems.append(error.description)
            }
        }
        return (jobs, problems)
    }

    /// Asks the watcher to delete a batch job (cancel it with the scheduler, or drop it if not yet submitted).
    public func requestDeletion(_ id: Int) throws(SpoolError) {
        guard let job = try load(id) else {
            throw SpoolError(.notFound, "no batch job \(id) (see 'balsam queue ls --history')", path: path)
        }
        if job.state.isFinal {
            throw SpoolError(.conflict, "batch job \(id) has already ended (\(job.state.rawValue))")
        }
        try Posix.createFile(deletionPath(id), Array((Timestamp.now() + "\n").utf8), sync: false, exclusive: false)
    }

    /// Whether a deletion was asked for.
    public func deletionRequested(_ id: Int) -> Bool { Posix.exists(deletionPath(id)) }

    /// Forgets a handled deletion request.
    public func clearDeletionRequest(_ id: Int) { Posix.unlink(deletionPath(id)) }

    /// The IDs of every record.
    public func ids() throws(SpoolError) -> [Int] {
        guard Posix.isDirectory(path) else { return [] }
        return try Posix.listDirectory(path).compactMap { name in
            name.hasSuffix(".json") ? Int(name.dropLast(5)) : nil
        }
    }

    /// Makes `batchjobs/` and `batchjobs/scripts/` if missing.
    public func ensureDirectories() throws(SpoolError) {
        for dir in [path, scriptsPath] where !Posix.isDirectory(dir) {
            do { try Posix.mkdir(dir) } catch  where error.cause == EEXIST {}
        }
    }
}
