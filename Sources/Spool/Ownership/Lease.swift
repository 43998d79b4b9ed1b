#if canImport(Glibc)
    import Glibc
#endif

/// What one launcher holds: the directory `jobs/lease.NAME/` with a `.lease` file describing the holder, whose
/// mtime is the lease's heartbeat, and the entries of the jobs it has claimed (moved in by `rename(2)` from
/// `jobs/PREPROCESSED/` or `jobs/RESTART_READY/`) or is running (state `RUNNING`, entry kept here).
///
/// When the heartbeat has not changed for the site's `launcher.lease_timeout_sec` (see `LeaseAges`), the watcher
/// ends the lease: running jobs become `RUN_TIMEOUT` (then their app's policy applies), claimed jobs not yet
/// started go back to their state's directory, and the lease directory is removed.
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
        holder["start"] = Posix.processStartTime(getpid()).map { .int(Int(clamping: $0)) } ?? .null
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

    /// The heartbeat as last written: the holder file's mtime (seconds and nanoseconds since the epoch, by the
    /// clock of whoever set it: the launcher's host, or the file server's), nil if there is no holder file. Only
    /// its changes mean anything to another host (see `LeaseAges`); as a time it dates the launcher's end.
    public func heartbeatStamp() -> Stamp? { Stamp.of(path + "/" + Lease.holderFile) }

    /// A heartbeat's mtime.
    public struct Stamp: Sendable, Equatable {
        public var seconds: Int
        public var nanoseconds: Int

        public init(seconds: Int, nanoseconds: Int) {
            self.seconds = seconds
            self.nanoseconds = nanoseconds
        }

        /// The mtime of the file at `path` (not followed), nil if there is none: a heartbeat's stamp.
        static func of(_ path: String) -> Stamp? {
            guard let st = try? Posix.lstatIfExists(path) else { return nil }
            return Stamp(seconds: Int(st.st_mtim.tv_sec), nanoseconds: Int(st.st_mtim.tv_nsec))
        }
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

    /// Whether its holder is known to be gone: a launcher on this host whose process (pid and start time, as its
    /// `.lease` says) no longer runs. Its heartbeat will never move again, so its lease need not be waited for.
    public func holderIsGone() -> Bool {
        let o = info()
        guard o["host"]?.stringValue == Posix.hostName(), let pid = o["pid"]?.intValue,
            let start = o["start"]?.intValue, let pid32 = Int32(exactly: pid), let start64 = UInt64(exactly: start)
        else { return false }
        return !Posix.isRunning(pid32, startedAt: start64)
    }

    /// The file in which its launcher says which jobs it leaves for others, and why (`{"ID": "why"}`): what
    /// `balsam show` and `ls` tell of a job waiting to run. Gone with the lease.
    static let asideFile = ".aside"

    /// Records the jobs this lease's launcher leaves for others, and why (replacing what it said before).
    public func setAside(_ reasons: [String: String]) throws(SpoolError) {
        let text = JSONValue.object(reasons.mapValues(JSONValue.string)).serialized() + "\n"
        try Posix.replaceFile(path + "/" + Lease.asideFile, Array(text.utf8), sync: false)
    }

    /// What each live launcher of the site says of job `id` it leaves for others: "LEASE: why".
    public static func asideReasons(_ site: Site) -> [String: [String]] {
        var found: [String: [String]] = [:]
        for lease in (try? all(site)) ?? [] {
            guard let bytes = try? Posix.readFile(lease.path + "/" + asideFile, limit: 1 << 24),
                let object = (try? JSONValue.parse(bytes))?.objectValue
            else { continue }
            for (id, why) in object {
                found[id, default: []].append("launcher \(lease.name): \(why.stringValue ?? why.serialized())")
            }
        }
        return found
    }

    /// Removes an emptied lease.
    public func remove() {
        Posix.unlink(path + "/" + Lease.asideFile)
        Posix.unlink(path + "/" + Lease.holderFile)
        // ENOTEMPTY: a job was handed in meanwhile; the lease stays for the watcher's reaper.
        rmdir(path)
    }
}

/// How long each lease's heartbeat has gone unchanged, on this process's monotonic clock: the watcher's rule for
/// when a lease expires.
///
/// A heartbeat's mtime is set by another host's clock (or a file server's), and the watcher's own time of day
/// may be stepped (NTP): comparing the two would reap a live launcher's lease when either clock jumps ahead, or
/// keep a dead one's when it jumps back. So a lease's age is the time since its stamp was last seen to change,
/// counted from when it was first seen. What a watcher saw is kept in `SITE/watcher.leases.json` (when it stops,
/// and after each `--once` pass) for the next one on the same host and boot, whose monotonic clock is the same;
/// a watcher on another host, or after a reboot, gives each lease it finds the full timeout before taking its
/// jobs back, whatever the stamp says.
public struct LeaseAges: Sendable {
    private var seen: [String: (stamp: Lease.Stamp, since: Double)] = [:]

    public init() {}

    /// Where a site's watcher keeps what it saw.
    public static func path(_ site: Site) -> String { site.root + "/watcher.leases.json" }

    /// This boot of this host, which a monotonic time belongs to.
    static func boot() -> String {
        let id = (try? Posix.readFile("/proc/sys/kernel/random/boot_id", limit: 64)).flatMap {
            String(decoding: $0, as: UTF8.self).split(separator: "\n").first
        }
        return Posix.hostName() + "/" + String(id ?? "")
    }

    /// What a previous watcher of `site` on this host and boot saw (nothing otherwise, or if unreadable).
    public static func load(_ site: Site) -> LeaseAges {
        var ages = LeaseAges()
        guard let bytes = try? Posix.readFile(path(site), limit: 16 << 20),
            case .object(let o)? = try? JSONValue.parse(bytes), o["boot"]?.stringValue == boot(),
            case .object(let leases)? = o["leases"]
        else { return ages }
        for (name, value) in leases {
            guard case .array(let a) = value, a.count == 3, let seconds = a[0].intValue,
                let nanoseconds = a[1].intValue, let since = a[2].doubleValue, since.isFinite
            else { continue }
            ages.seen[name] = (Lease.Stamp(seconds: seconds, nanoseconds: nanoseconds), since)
        }
        return ages
    }

    /// Keeps what this watcher saw for the next one (replacing the file whole).
    public func save(_ site: Site) throws(SpoolError) {
        let leases = seen.mapValues { entry -> JSONValue in
            .array([.int(entry.stamp.seconds), .int(entry.stamp.nanoseconds), .double(entry.since)])
        }
        let text = JSONValue.object(["boot": .string(LeaseAges.boot()), "leases": .object(leases)]).serialized()
        try Posix.replaceFile(LeaseAges.path(site), Array((text + "\n").utf8), sync: false)
    }

    /// Seconds `lease`'s heartbeat has not changed at monotonic time `now`, its stamp being `stamp` (infinity
    /// with no stamp: a lease without its holder file has no heartbeat at all).
    public mutating func age(of lease: String, stamp: Lease.Stamp?, now: Double) -> Double {
        guard let stamp else {
            seen[lease] = nil
            return .infinity
        }
        if let last = seen[lease], last.stamp == stamp { return max(0, now - last.since) }
        seen[lease] = (stamp, now)
        return 0
    }

    /// Forgets leases that are gone (so a long-running watcher's table does not grow).
    public mutating func keep(only leases: Set<String>) {
        seen = seen.filter { leases.contains($0.key) }
    }
}
