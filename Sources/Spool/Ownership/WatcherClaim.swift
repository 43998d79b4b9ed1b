#if canImport(Glibc)
    import Glibc
#endif

/// The claim that makes one `balsam-watch` the site's watcher: `SITE/watcher.json` with the holder's host, pid
/// and start time, its mtime refreshed as a heartbeat. It is created with `link(2)` (atomic, fails if present)
/// and taken over only when its holder is gone: on this host, no such process; on another host, no heartbeat
/// for `expirySeconds`. No `flock`/`fcntl` lock is involved, so it works on NFS and Lustre.
public struct WatcherClaim: Sendable {
    /// Who holds a claim.
    public struct Holder: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var pid: Int32
        public var since: String
        /// The process's start time (clock ticks since boot), so a reused pid is not mistaken for the holder.
        public var start: UInt64?

        public var description: String { "balsam-watch pid \(pid) on \(host), running since \(since)" }
    }

    /// The site claimed.
    public let site: Site
    /// A heartbeat older than this frees a claim held from another host.
    public var expirySeconds: Double
    /// This process, as it appears in the claim.
    public let me: Holder

    /// The claim file.
    public var path: String { site.root + "/watcher.json" }

    /// Prepares to claim `site` for this process.
    public init(site: Site, expirySeconds: Double = 30) {
        self.site = site
        self.expirySeconds = expirySeconds
        self.me = Holder(
            host: Posix.hostName(), pid: getpid(), since: Timestamp.now(), start: Posix.processStartTime(getpid()))
    }

    /// Reads the current claim, if any.
    public func holder() -> Holder? {
        guard let bytes = try? Posix.readFile(path, limit: 65536), case .object(let o)? = try? JSONValue.parse(bytes),
            let host = o["host"]?.stringValue, let pid = o["pid"]?.intValue
        else { return nil }
        return Holder(
            host: host, pid: Int32(pid), since: o["since"]?.stringValue ?? "",
            start: o["start"]?.intValue.map { UInt64($0) })
    }

    /// Whether a claim's holder is still there.
    ///
    /// From another host, its heartbeat (the claim's mtime, refreshed every few seconds) is looked at by the time of
    /// day only as a first guess: a fresh one means alive; an old one may only mean a clock was stepped (this
    /// host's ahead, or the holder's behind), so it is watched for `confirmSeconds` on the monotonic clock, and
    /// any change means alive.
    public func isAlive(_ holder: Holder, confirmSeconds: Double = 3) -> Bool {
        if holder.host == me.host {
            if let start = holder.start { return Posix.isRunning(holder.pid, startedAt: start) }
            // kill(2) with signal 0 asks whether the pid exists: its failure (ESRCH) is the answer.
            return kill(holder.pid, 0) == 0 || errno == EPERM
        }
        guard let first = Lease.Stamp.of(path) else { return false }
        if Double(Posix.wallClock().tv_sec - first.seconds) < expirySeconds { return true }
        let until = Posix.monotonicSeconds() + confirmSeconds
        while Posix.monotonicSeconds() < until {
            Posix.sleep(seconds: 0.2)
            guard let now = Lease.Stamp.of(path) else { return false }
            if now != first { return true }
        }
        return false
    }

    /// Takes the claim, or throws `.unavailable` naming the watcher that holds it.
    public func acquire() throws(SpoolError) {
        let bytes = Array(
            (JSONValue.object([
                "host": .string(me.host), "pid": .int(Int(me.pid)), "since": .string(me.since),
                "start": me.start.map { .int(Int($0)) } ?? .null,
            ]).serialized() + "\n").utf8)
        let staging = site.tmpPath + "/watcher" + Site.ownerSuffix
        try Posix.createFile(staging, bytes, sync: true, exclusive: false)
        defer { Posix.unlink(staging) }
        for _ in 0..<5 {
            // link(2) is the compare-and-swap: EEXIST (someone holds the claim) is an answer, handled below.
            if link(staging, path) == 0 { return }
            guard errno == EEXIST else { throw .system("claim the site", path: path, errno: errno) }
            guard let current = holder() else {
                // Unreadable or half-written by a crashed writer: treat as stale below.
                try takeOver(expected: nil)
                continue
            }
            if current == me { return }
            if isAlive(current) {
                throw SpoolError(.unavailable, "the site is already watched by \(current)", path: path)
            }
            try takeOver(expected: current)
        }
        throw SpoolError(.unavailable, "could not claim the site: it kept changing hands", path: path)
    }

    /// Moves a stale claim aside; if what was moved turns out to be a fresh claim of another watcher (it won the
    /// race), puts it back.
    private func takeOver(expected: Holder?) throws(SpoolError) {
        let aside = site.tmpPath + "/watcher.stale" + Site.ownerSuffix
        guard rename(path, aside) == 0 else { return }  // someone else moved it first
        defer { Posix.unlink(aside) }
        let moved = (try? Posix.readFile(aside, limit: 65536)).flatMap { try? JSONValue.parse($0) }
        let movedHolder = moved?.objectValue.flatMap { o -> Holder? in
            guard let host = o["host"]?.stringValue, let pid = o["pid"]?.intValue else { return nil }
            return Holder(
                host: host, pid: Int32(pid), since: o["since"]?.stringValue ?? "",
                start: o["start"]?.intValue.map { UInt64($0) })
        }
        if movedHolder != expected, let movedHolder, isAlive(movedHolder) {
            // Put the live holder's claim back; if a third watcher took the name meanwhile, it holds the site.
            _ = link(aside, path)
            throw SpoolError(.unavailable, "the site is already watched by \(movedHolder)", path: path)
        }
    }

    /// Refreshes the heartbeat; returns false if the claim is no longer this process's (someone took it over).
    /// Throws when the claim, still this process's, cannot be touched (a read-only or full filesystem): nobody
    /// else can take it meanwhile on that filesystem, so the caller waits and tries again rather than leave.
    public func heartbeat() throws(SpoolError) -> Bool {
        guard let current = holder() else {
            // No readable claim: gone (taken over and released), or unreadable (an I/O error says which).
            if let st = try Posix.lstatIfExists(path), st.st_size > 0 {
                throw SpoolError(.io, "cannot read the claim", path: path)
            }
            return false
        }
        guard current == me else { return false }
        try Posix.call("refresh the claim", path: path) { utimensat(AT_FDCWD, path, nil, 0) }
        return true
    }

    /// Gives the claim up, if it is still this process's.
    public func release() {
        if holder() == me { Posix.unlink(path) }
    }
}
