import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Starting a watcher in the background and stopping the one that runs: what `balsam-watch --daemon` and
/// `--stop` do, through the site's watcher claim.
public enum WatcherDaemon {
    /// How a stop request ended.
    public enum Stopped: Sendable, Equatable {
        /// No watcher held the site.
        case notRunning
        /// This watcher (its claim's description) exited.
        case stopped(String)
    }

    /// The live watcher of the site (its claim's description: program, pid, host), or nil when none holds it.
    public static func running(_ site: Site) -> String? {
        let claim = WatcherClaim(site: site)
        guard let holder = claim.holder(), claim.isAlive(holder) else { return nil }
        return holder.description
    }

    /// Sends SIGHUP to the watcher named in the site's claim (on this host): it reopens its log and rereads its
    /// settings. Nil when none runs; else its description.
    public static func reload(_ site: Site) throws(SpoolError) -> String? {
        let claim = WatcherClaim(site: site)
        guard let holder = claim.holder(), claim.isAlive(holder) else { return nil }
        guard holder.host == claim.me.host else {
            throw SpoolError(.unavailable, "the watcher runs on \(holder.host) (pid \(holder.pid)); reload it there")
        }
        _ = kill(holder.pid, SIGHUP)
        return holder.description
    }

    /// Sends SIGTERM to the watcher named in the site's claim and waits (at most `timeout` seconds) until it has
    /// let go. A watcher on another host cannot be signalled from here: that is an error naming the host.
    public static func stop(_ site: Site, timeout: Double = 60) throws(SpoolError) -> Stopped {
        let claim = WatcherClaim(site: site)
        guard let holder = claim.holder(), claim.isAlive(holder) else { return .notRunning }
        guard holder.host == claim.me.host else {
            throw SpoolError(.unavailable, "the watcher runs on \(holder.host) (pid \(holder.pid)); stop it there")
        }
        // kill(2) of a pid the claim names: ESRCH means it is gone already, which the wait below sees.
        _ = kill(holder.pid, SIGTERM)
        let deadline = Posix.monotonicSeconds() + timeout
        while claim.holder() == holder && kill(holder.pid, 0) == 0 {
            if Posix.monotonicSeconds() > deadline {
                throw SpoolError(
                    .conflict, "watcher pid \(holder.pid) did not stop within \(Int(saturating: timeout)) s")
            }
            Posix.sleep(seconds: 0.02)
        }
        return .stopped(holder.description)
    }

    /// Starts `executable` with `arguments` (a watcher in the foreground, logging to `logPath`) in its own process
    /// group, and waits (at most `timeout` seconds) until it holds the site's claim; returns its pid.
    ///
    /// A re-exec rather than fork(): the caller already runs threads. Through `Posix.spawn`, not `ChildProcess`,
    /// which waits for its child to end: a daemon must outlive the command that started it.
    public static func start(
        _ site: Site, executable: String, arguments: [String], logPath: String, timeout: Double = 30
    ) throws(SpoolError) -> Int32 {
        let claim = WatcherClaim(site: site)
        if let holder = claim.holder(), claim.isAlive(holder) {
            throw SpoolError(.unavailable, "the site is already watched by \(holder)")
        }
        let devnull = try Posix.open("/dev/null", O_WRONLY)
        defer { Posix.close(devnull) }
        let pid = try Posix.spawn(
            executable, arguments: arguments, environment: Posix.environment(),
            directory: Posix.currentDirectory(), outputFD: devnull)
        let deadline = Posix.monotonicSeconds() + timeout
        while Posix.monotonicSeconds() <= deadline {
            if let holder = claim.holder(), holder.pid == pid { return pid }
            if Posix.reap(pid) != nil {
                throw SpoolError(.unavailable, "the watcher exited at start; see \(logPath)")
            }
            Posix.sleep(seconds: 0.02)
        }
        throw SpoolError(
            .unavailable,
            "the watcher (pid \(pid)) did not claim the site within \(Int(saturating: timeout)) s; see \(logPath)")
    }
}
