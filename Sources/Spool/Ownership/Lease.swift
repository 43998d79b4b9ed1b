#if canImport(Glibc)
    import Glibc
#endif

/// What one launcher holds: the directory `jobs/lease.NAME/` with a `.lease` file describing the holder, whose
/// mtime is the lease's heartbeat, and the entries of the jobs it has claimed (moved in by `rename(2)` from
/// `jobs/PREPROCESSED/` or `jobs/RESTART_READY/`) or is running (state `RUNNING`, entry kept here).
///
/// When the heartbeat is older than the site's `launcher.lease_timeout_sec`, the watcher ends the lease: running
/// jobs become `RUN_TIMEOUT` (then their app's policy applies), claimed jobs not yet started go back to their
/// state's directory, and the lease directory is removed.
public struct Lease: Sendable, Equatable {
    /// The lease's name (`HOST.PID.ID`).
    public let name: String
    /// Its directory.
    public let path: String

    static let prefix = "lease."
    static let holderFile = ".lease"

    init(site: Site, name: String) {
        self.name = name
        self.path = site.jobsPath + "/" + Lease.prefix + name
    }

    /// Every lease of the site.
    public static func all(_ site: Site) throws(SpoolError) -> [Lease] {
        try Posix.listDirectory(site.jobsPath).filter { $0.hasPrefix(prefix) }.sorted()
            .map { Lease(site: site, name: String($0.dropFirst(prefix.count))) }
    }

    /// Creates a new lease for this process; `info` is recorded in `.lease` (batch job ID, nodes, ...).
    public static func create(_ site: Site, info: [String: JSONValue] = [:]) throws(SpoolError) -> Lease {
        let lease = Lease(site: site, name: "\(Posix.hostName()).\(getpid()).\(JobID.make())")
        // Assembled in tmp/ and renamed into place whole: a lease directory without its holder file has no
        // heartbeat, and the watcher's reaper would end it as expired between the mkdir and the write.
        let staging = site.tmpPath + "/" + prefix + lease.name + Site.ownerSuffix
        try Posix.mkdir(staging)
        var holder = info
        holder["host"] = .string(Posix.hostName())
        holder["pid"] = .int(Int(getpid()))
        holder["created"] = .string(Timestamp.now())
        try Posix.createFile(
            staging + "/" + holderFile, Array((JSONValue.object(holder).serialized() + "\n").utf8), sync: true)
        try Posix.rename(staging, lease.path)
        try Posix.fsyncDirectory(site.jobsPath)
        return lease
    }

    /// Refreshes the heartbeat.
    public func heartbeat() throws(SpoolError) {
        if utimensat(AT_FDCWD, path + "/" + Lease.holderFile, nil, 0) != 0 {
            throw .system("refresh lease", path: path, errno: errno)
        }
    }

    /// Seconds since the last heartbeat (infinity if the lease has no holder file).
    public func age() -> Double {
        guard let st = try? Posix.lstatIfExists(path + "/" + Lease.holderFile) else { return .infinity }
        let now = Posix.wallClock()
        return Double(now.tv_sec - st.st_mtim.tv_sec) + Double(now.tv_nsec - st.st_mtim.tv_nsec) / 1e9
    }

    /// IDs of the jobs whose entries are in the lease, including those in the middle of a move
    /// (`ID.moving`, see `entryPath(_:)`).
    public func jobIDs() throws(SpoolError) -> [String] {
        var ids = Set<String>()
        for name in try Posix.listDirectory(path) where !name.hasPrefix(".") {
            ids.insert(name.hasSuffix(Lease.movingSuffix) ? String(name.dropLast(Lease.movingSuffix.count)) : name)
        }
        return ids.sorted()
    }

    /// Where the entry of job `id` is: `ID`, or `ID.moving` while its holder moves it. A move of a leased job
    /// claims the entry under that name inside the lease rather than in `tmp/`, so that if the launcher dies
    /// mid-move the job is still found in its lease when the lease expires.
    public func entryPath(_ id: String) -> String {
        let plain = path + "/" + id
        if !Posix.exists(plain), Posix.exists(plain + Lease.movingSuffix) { return plain + Lease.movingSuffix }
        return plain
    }

    /// The claim name of a move of a job whose entry is at `entry`, when that entry is in a lease.
    static func movingClaim(for entry: String) -> String? {
        let parent = Posix.parentPath(entry)
        guard Posix.lastComponent(parent).hasPrefix(prefix) else { return nil }
        return entry + movingSuffix
    }

    static let movingSuffix = ".moving"

    /// Whether `path` is an entry or a claim inside a lease directory.
    static func isLeasePath(_ path: String) -> Bool {
        Posix.lastComponent(Posix.parentPath(path)).hasPrefix(prefix)
    }

    /// Claims a runnable job: renames its entry from `jobs/STATE/ID` into the lease. False if another launcher
    /// (or the watcher) took it first.
    public func claim(_ id: String, from state: JobState, site: Site) -> Bool {
        // rename(2) is the claim: its failure (ENOENT: someone else took the job) is the answer.
        rename(SiteIndex(site: site).entryPath(state, id), path + "/" + id) == 0
    }

    /// What its `.lease` file says (empty when it cannot be read).
    public func info() -> [String: JSONValue] {
        let bytes = (try? Posix.readFile(path + "/" + Lease.holderFile, limit: 1 << 20)) ?? []
        return (try? JSONValue.parse(bytes))?.objectValue ?? [:]
    }

    /// This launcher's time on its nodes, ending `end` (nil: it still runs).
    public func session(end: String?) -> LauncherSession? {
        let o = info()
        guard let start = o["created"]?.stringValue else { return nil }
        return LauncherSession(
            lease: name, nodes: max(1, o["nodes"]?.arrayValue?.count ?? 1), start: start, end: end,
            batchJob: o[LauncherSession.batchJobKey]?.intValue)
    }

    /// Removes an emptied lease.
    public func remove() {
        Posix.unlink(path + "/" + Lease.holderFile)
        // ENOTEMPTY: a job was handed in meanwhile; the lease stays for the watcher's reaper.
        rmdir(path)
    }
}
