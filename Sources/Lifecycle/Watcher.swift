import Batch
import Foundation
import Logging
import ServiceLifecycle
import Spool
import Sync
import Synchronization
import Transfers
import UnixSignals

/// `balsam-watch`'s main loop: claim the site, repair what a crash left, then run engine passes whenever inotify
/// reports a change and at least every poll interval, until asked to stop.
public final class Watcher: Sendable {
    /// How the watcher runs.
    public struct Options: Sendable {
        /// Seconds between rescans when nothing is reported (changes from other nodes raise no events).
        public var pollInterval: Double = 1
        /// Whether to use inotify at all.
        public var inotify = true
        /// Run one pass and return.
        public var once = false
        /// On SIGHUP, before settings are reread: opens the log again at its path (after logrotate moved it).
        public var reopenLog: (@Sendable () -> Void)?
        /// Where to write the site's metrics (`SiteMetrics`) every `metricsInterval` seconds, replaced whole.
        public var metricsFile: String?
        public var metricsInterval: Double = 15

        public init() {}
    }

    private struct Flags {
        var stop = false
        var reload = false
        /// The engine left jobs waiting for transfers: the transfer service should look now.
        var transfersWanted = false
        /// The site changed (a pass moved jobs, a batch job's record changed): a push waiting on the server
        /// for news gives up, and the sync pushes now.
        var syncWanted = false
    }

    /// The services' threads sleep on these between rounds: a stop rings all three, the engine's call for the
    /// transfer service rings its own (a thread asleep makes no wake-ups, where polling a flag would).
    private let bells = (
        batch: DispatchSemaphore(value: 0), sync: DispatchSemaphore(value: 0), transfers: DispatchSemaphore(value: 0),
        metrics: DispatchSemaphore(value: 0)
    )

    /// The site watched.
    public let site: Site
    let options: Options
    let logger: Logger
    private let flags = Mutex(Flags())
    private let monitor: Mutex<ChangeMonitor?> = Mutex(nil)
    /// settings.yml as last read, and the file's identity then (inode, size, mtime).
    private let loaded: Mutex<(stamp: [Int], settings: SiteSettings)?> = Mutex(nil)

    /// Prepares a watcher; nothing happens until `run()`.
    public init(site: Site, options: Options, logger: Logger) {
        self.site = site
        self.options = options
        self.logger = logger
    }

    /// Asks the loop to stop after the current job (a running hook is killed; its job is redone next time).
    public func requestStop() {
        flags.withLock { $0.stop = true }
        monitor.withLock { $0?.wake() }
        for bell in [bells.batch, bells.sync, bells.transfers, bells.metrics] { bell.signal() }
    }

    /// Asks the loop to reread settings and apps before its next pass.
    public func requestReload() {
        flags.withLock { $0.reload = true }
        monitor.withLock { $0?.wake() }
    }

    /// The site's settings for the services: settings.yml read again when it changed. A file that no longer
    /// loads (a typo'd key, broken YAML) leaves the settings in force, and says so once per change of the file;
    /// only a first read that fails is an error.
    private func settings() throws(SpoolError) -> SiteSettings {
        let stamp = try SiteSettings.stamp(site)
        // Under the lock: the services asking at once read the file once, and its error is said once.
        return try loaded.withLock { (last) throws(SpoolError) -> SiteSettings in
            if let last, last.stamp == stamp { return last.settings }
            do throws(SpoolError) {
                let fresh = try SiteSettings.load(site)
                last = (stamp, fresh)
                return fresh
            } catch {
                guard let kept = last?.settings else { throw error }
                logger.error("\(error); keeping the settings in force until it is fixed")
                last = (stamp, kept)
                return kept
            }
        }
    }

    private var stopping: Bool { flags.withLock { $0.stop } }

    /// The site changed: the sync pushes now (a push waiting on the server for news gives up).
    private func wantSync() {
        // The bell rings when the flag goes up, not once per pass (each ring is a round).
        let raised = flags.withLock { flags in
            defer { flags.syncWanted = true }
            return !flags.syncWanted
        }
        if raised { bells.sync.signal() }
    }
    private let servicesStopped = DispatchSemaphore(value: 0)

    /// Runs `round` until the watcher stops (once with `once`), waiting the seconds it returns between rounds. A
    /// failure is logged when it first happens and when it changes, not at every round (a server away for an
    /// hour is one line, and one more when it is back), and waits `retry` seconds.
    private func runPeriodic(
        _ name: String, once: Bool, bell: DispatchSemaphore, retry: @escaping () -> Double,
        _ round: () throws -> Double
    ) {
        defer { if !once { servicesStopped.signal() } }
        var lastProblem = ""
        var failingSince = 0.0
        while !stopping {
            let started = Posix.monotonicSeconds()
            var wait: Double
            do {
                wait = try round()
                if !lastProblem.isEmpty {
                    logger.notice("\(name): working again after \(Int(saturating: started - failingSince)) s")
                }
                lastProblem = ""
            } catch {
                let text = "\(name): \(error)"
                if text != lastProblem { logger.error("\(text)") }
                if lastProblem.isEmpty { failingSince = started }
                lastProblem = text
                wait = retry()
            }
            if once { return }
            // Asleep until the round is due or the bell rings (a stop, or work for this service).
            let left = started + wait - Posix.monotonicSeconds()
            if !stopping && left > 0 { _ = bell.wait(timeout: .now() + left) }
        }
    }

    /// The scheduler service (batch jobs, elastic queue), on a thread of its own so that a slow scheduler command
    /// never holds up jobs: a round every `scheduler.sync_period` seconds, settings reread each round.
    private func runBatchService(once: Bool) {
        let binDirectory = Posix.parentPath(Posix.executablePath() ?? "./balsam-watch")
        var service: BatchService?
        runPeriodic(
            "scheduler service", once: once, bell: bells.batch, retry: { service?.settings.scheduler.syncSeconds ?? 10 }
        ) {
            let settings = try settings()
            if service?.settings != settings {
                service = try BatchService(site: site, settings: settings, binDirectory: binDirectory, logger: logger)
            }
            let saved = service?.saved
            service?.sync()
            if service?.saved != saved { wantSync() }
            return service?.settings.scheduler.syncSeconds ?? 10
        }
    }

    /// The sync service, on a thread of its own: while `settings.yml` names a server, push what it lacks every
    /// `sync.period` seconds (at once again while a backlog remains). A server away or refusing leaves every job
    /// running here; the pushes back off, doubling up to a minute, and catch up when it answers.
    private func runSyncService(once: Bool) {
        var pusher: (settings: SiteSettings.Sync, pusher: Pusher)?
        var schedule = SyncSchedule(period: 1)
        runPeriodic("sync", once: once, bell: bells.sync, retry: { schedule.failed() }) {
            guard let settings = try settings().sync else {
                pusher = nil
                return 5
            }
            if pusher?.settings != settings {
                let made = try Pusher(site: site, settings: settings)
                made.waitForNews = settings.waitForNewsSeconds
                made.spacing = settings.periodSeconds
                made.giveUpWaiting = { [weak self] in
                    self?.flags.withLock { $0.stop || $0.syncWanted } ?? true
                }
                made.stopWaiting = { [weak self] in self?.flags.withLock { $0.stop } ?? true }
                pusher = (settings, made)
            }
            guard let current = pusher else { return 5 }
            schedule.period = settings.periodSeconds
            flags.withLock { $0.syncWanted = false }
            let round = try current.pusher.round()
            for refusal in round.newRefusals { logger.warning("sync: refused: \(refusal)") }
            if round.registeredAgain {
                logger.notice("sync: the server had lost this site's record; registered again, pushing the whole site")
            }
            if round.events > 0 {
                logger.debug("sync: \(round.events) events and \(round.jobs) jobs pushed")
            }
            return schedule.succeeded(round)
        }
    }

    /// The transfer service, on a thread of its own: jobs' stage-ins and stage-outs, a round every
    /// `transfers.service_period` seconds (at once again while tasks are in flight and moving), settings reread.
    private func runTransferService(once: Bool) {
        var service: TransferService?
        var lastLook = 0.0
        var lastSweep = 0.0
        var staging = ChangeGate(site.stagingPath)
        runPeriodic("transfers", once: once, bell: bells.transfers, retry: { 5 }) {
            let woken = flags.withLock { flags in
                defer { flags.transfersWanted = false }
                return flags.transfersWanted
            }
            // Settings are read again when settings.yml changed (rounds come every 50 ms while tasks run).
            let settings = try settings()
            if service?.settings != settings {
                service = TransferService(site: site, settings: settings, logger: logger)
                lastLook = -.infinity
            }
            guard let current = service else { return 5 }
            let now = Posix.monotonicSeconds()
            // Idle, it looks only when the engine calls (every job that waits for transfers passes the engine).
            let full =
                woken
                || now - lastLook >= current.settings.transfers.periodSeconds && (current.busy || lastLook.isInfinite)
            if full { lastLook = now }
            if now - lastSweep >= 30 {
                lastSweep = now
                // Read again only when a tree came or went since the last clean read.
                _ = staging.ifChanged {
                    for tree in Fsck.sweepTransferStaging(site) {
                        logger.notice("transfers: removed \(tree), left by a watcher that has ended")
                    }
                }
            }
            let round = try current.round(look: full)
            if round.submitted + round.done + round.failed + round.moved > 0 {
                logger.debug(
                    "transfers: \(round.submitted) submitted, \(round.done) done, \(round.failed) failed, \(round.moved) jobs moved"
                )
            }
            // While tasks run, look often (a local copy of small files ends in milliseconds); idle, sleep until
            // the engine rings or the staging sweep is due.
            let period = current.settings.transfers.periodSeconds
            if round.inFlight > 0 || round.holding { return min(0.05, period) }
            return current.busy ? period : max(period, 30)
        }
    }

    /// The metrics file's writer (`--metrics-file`), on a thread of its own: the site's metrics every
    /// `metricsInterval` seconds, replaced whole (a rename), so that node_exporter never reads half a file.
    private func runMetricsService(once: Bool, path: String) {
        runPeriodic("metrics file", once: once, bell: bells.metrics, retry: { self.options.metricsInterval }) {
            let text = try SiteMetrics.text(site, sync: try settings().sync, now: Timestamp.nowSeconds())
            try Posix.replaceFile(path, Array(text.utf8), sync: false)
            return options.metricsInterval
        }
    }

    /// Runs until stopped (blocking). Throws if the site cannot be claimed or watched.
    // Over 100 lines: the watcher's start and loop in order, each step a call.
    public func run() throws(SpoolError) {
        // A settings.yml that does not load is said before anything starts (exit 65).
        _ = try settings()
        let claim = WatcherClaim(site: site, expirySeconds: max(30, options.pollInterval * 10))
        try claim.acquire()
        defer { claim.release() }
        logger.info("watching \(site.root) as pid \(claim.me.pid) on \(claim.me.host)")

        // What a watcher killed before it left running (an rsync, a hook's children) ends before anything starts
        // again: it would go on copying into a tree nobody reads, beside the new transfer of the same files.
        for orphan in Posix.endOrphans() {
            logger.warning("recovery: ended \(orphan), left running by a balsam process that has ended")
        }
        let recovery = try Fsck(site: site).run(repair: true, full: false)
        for problem in recovery.problems { logger.warning("recovery: \(problem)") }
        logger.info("recovery: \(recovery.jobs) active jobs checked, \(recovery.problems.count) repaired")

        // jobs/ itself: a launcher's lease is renamed into it.
        // The active directories' names too: on a node-local filesystem the engine keeps their entries from them
        // instead of listing them at every step.
        let changes = try ChangeMonitor(
            directories: [site.dropBoxPath, site.acceptedPath, site.controlPath, site.jobsPath]
                + JobState.active.map { site.activePath($0) },
            named: Set(JobState.active.map { site.activePath($0) }), inotify: options.inotify)
        monitor.withLock { $0 = changes }
        defer { monitor.withLock { $0 = nil } }
        // The settings in force, not the file read again: a settings.yml broken since the start (a user editing it
        // now) is said and kept out, as the services do, instead of ending the watcher after it said it runs.
        let engine = try Engine(site: site, settings: settings(), logger: logger)
        defer { engine.saveLeaseAges() }
        engine.shouldStop = { [weak self] in self?.stopping ?? true }
        engine.transfersWanted = { [weak self] in
            // The bell rings when the flag goes up, not once per job (each ring is a round).
            let raised = self?.flags.withLock { flags in
                defer { flags.transfersWanted = true }
                return !flags.transfersWanted
            }
            if raised == true { self?.bells.transfers.signal() }
        }

        let metricsFile = options.metricsFile
        if options.once {
            runBatchService(once: true)
            runSyncService(once: true)
            runTransferService(once: true)
            if let metricsFile { runMetricsService(once: true, path: metricsFile) }
        } else {
            Thread { [self] in runBatchService(once: false) }.start()
            Thread { [self] in runSyncService(once: false) }.start()
            Thread { [self] in runTransferService(once: false) }.start()
            if let metricsFile { Thread { [self] in runMetricsService(once: false, path: metricsFile) }.start() }
        }
        defer {
            if !options.once {
                flags.withLock { $0.stop = true }
                for _ in 0..<(metricsFile == nil ? 3 : 4) { servicesStopped.wait() }
            }
        }

        // inotify reports only the changes made on this node (inotify(7)). On a node-local filesystem every
        // writer (submit, a launcher, the sync) is here, so a pass comes only when something changed or the clock
        // calls (Report.pollAgain); on a shared one, launchers on other nodes move jobs unseen, so passes also
        // come every poll interval, as they do without inotify or after its queue overflowed.
        let shared = options.inotify ? Posix.sharedFilesystem(site.root) : "inotify off"
        if options.inotify, let shared {
            logger.info(
                "the site is on \(shared): changes made on other nodes raise no inotify events, so the site is also looked at every \(options.pollInterval) s"
            )
        }
        engine.keepsEntries = options.inotify && shared == nil
        let heartbeatSeconds = min(5, claim.expirySeconds / 6)
        var backoff = 0.0
        var nextBeat = 0.0
        var nextHousekeeping = Posix.monotonicSeconds() + 30
        var passDue = true
        var overflows = 0
        var namesLost = 0
        var unwritable: Double?
        while !stopping {
            if flags.withLock({ f in
                defer { f.reload = false }; return f.reload
            }) {
                do {
                    try engine.reload()
                    logger.info("reloaded settings.yml and apps")
                } catch {
                    logger.error("reload failed, keeping the old settings: \(error)")
                }
            }
            // What inotify said of the active directories since the last pass; after an overflow, nothing of it
            // can be trusted: they are listed again.
            let names = changes.takeNames()
            if changes.overflows > namesLost {
                engine.forgetEntries()
                namesLost = changes.overflows
            } else {
                engine.heard(names)
            }
            var report = Engine.Report()
            if passDue {
                report = engine.pass()
                if report.moves > 0 || report.ingested > 0 {
                    logger.debug("pass: \(report.ingested) ingested, \(report.moves) moves")
                }
            } else {
                engine.housekeeping(&report)
            }
            var now = Posix.monotonicSeconds()
            if now >= nextHousekeeping { nextHousekeeping = now + 30 }
            if now >= nextBeat {
                do throws(SpoolError) {
                    guard try claim.heartbeat() else {
                        throw SpoolError(
                            .unavailable,
                            "lost the claim on the site to \(claim.holder().map(\.description) ?? "nobody")")
                    }
                    if let since = unwritable {
                        logger.notice("the site is writable again, after \(Int(saturating: now - since)) s")
                        unwritable = nil
                    }
                } catch  where error.code == .io {
                    // A read-only or full filesystem: nothing can change on it, so nobody can take the site over
                    // meanwhile; the passes back off, and the watcher waits for it to come back.
                    if unwritable == nil {
                        logger.error("cannot write to the site (\(error)); waiting for it to be writable again")
                        unwritable = now
                    }
                }
                nextBeat = now + heartbeatSeconds
            }
            if options.once { break }
            // Errors (a full disk, say) back off: 1, 2, 4 ... 30 s, and retry; no job is lost meanwhile.
            backoff = report.errors.isEmpty ? 0 : min(30, max(1, backoff * 2))
            if backoff > 0 {
                logger.warning("\(report.errors.count) errors in the last pass; retrying in \(backoff) s")
                // Sit the backoff out whatever changes meanwhile (a launcher keeps writing): a pass now would meet
                // the same error and log it again. A stop or reload request still ends the wait.
                let until = now + backoff
                while !stopping && !flags.withLock({ $0.reload }) && Posix.monotonicSeconds() < until {
                    _ = changes.wait(seconds: until - Posix.monotonicSeconds())
                }
                passDue = true
                continue
            }
            // Under a steady stream of changes (a launcher finishing hundreds of jobs a second), a pass per event
            // spends more on looking at every queue than on moving jobs: after a pass that moved something, let
            // a millisecond of changes gather first. An idle watcher still wakes at once.
            if report.moves > 0 || report.ingested > 0 {
                wantSync()
                usleep(1000)
            }
            now = Posix.monotonicSeconds()
            let polling = shared != nil || report.pollAgain
            let nextPass = polling ? now + options.pollInterval : .infinity
            let until = min(nextPass, nextBeat, nextHousekeeping)
            let woken = changes.wait(seconds: max(0, until - now))
            passDue = woken || Posix.monotonicSeconds() >= nextPass || changes.overflows > overflows
            overflows = changes.overflows
        }
        logger.info("stopped")
    }
}

/// The watcher as a service of a swift-service-lifecycle group: SIGTERM and SIGINT stop it gracefully, SIGHUP
/// reloads settings and apps.
public struct WatchService: Service {
    let watcher: Watcher

    /// Wraps `watcher`.
    public init(_ watcher: Watcher) { self.watcher = watcher }

    public func run() async throws {
        let watcher = self.watcher
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sighup) {
                        watcher.options.reopenLog?()
                        watcher.requestReload()
                    }
                }
                // The loop blocks (poll, hooks), so it gets a thread of its own rather than one of the pool's two.
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    Thread {
                        do {
                            try watcher.run()
                            continuation.resume()
                        } catch {
                            continuation.resume(throwing: error)
                        }
                    }.start()
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            watcher.requestStop()
        }
    }
}
