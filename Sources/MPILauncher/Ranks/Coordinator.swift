import Logging
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Rank 0 of a launcher: claims runnable jobs into its lease, places them on the allocation's nodes, tells each
/// node's rank what to start, records how jobs end, carries out kill requests, and ends cleanly at its wall time,
/// on request, or when idle.
///
/// Claiming is placement-driven: a job is claimed only when it fits on free resources now, and is marked
/// `RUNNING` in the same step, so a launcher never hoards jobs other launchers could run. Everything is done on
/// one thread, synchronously (MPI handles are not Sendable); waits are short `poll(2)`s on inotify of the ready
/// queue, so a job made runnable while the launcher is idle starts within milliseconds.
public final class Coordinator {
    /// How this launcher was asked to run.
    public struct Options: Sendable {
        /// Minutes the launcher may run (its allocation's wall time, less any margin the batch script keeps).
        public var wallTimeMinutes: Double
        /// Seconds with nothing running and nothing to claim before it exits (nil: `launcher.idle_ttl_sec`).
        public var idleTimeout: Double?
        /// Only jobs whose tags include all of these.
        public var tags: [String: String] = [:]
        /// Benchmark only: jobs "end" with status 0 as soon as they are placed, without being started.
        public var noSpawn = false
        /// Extra facts for the lease's `.lease` file (batch job ID, scheduler's node list).
        public var leaseInfo: [String: JSONValue] = [:]
        /// The site's batch job this launcher runs in (its job script says), written into RUNNING events so
        /// utilization is counted per batch job.
        public var batchJob: Int?

        public init(wallTimeMinutes: Double) { self.wallTimeMinutes = wallTimeMinutes }
    }

    /// What a launcher did.
    public struct Summary: Sendable, Equatable {
        public var started = 0
        public var done = 0
        public var errors = 0
        public var timedOut = 0
        public var killed = 0
        public var failedToStart = 0
        /// Why it stopped: "wall time", "signal", "idle".
        public var reason = ""
    }

    struct Running {
        var loaded: JobStore.Loaded
        var assignment: Assignment
    }

    public let site: Site
    public let settings: SiteSettings
    public let options: Options
    /// Where messages go; a job's id is in its message and under `job.id`.
    public let logger: Logger
    /// Asked every loop: true ends the launcher as at its wall time (SIGTERM, SIGINT).
    public var stopRequested: () -> Bool = { false }

    let transport: any Transport
    let nodes: [Node]
    var allocation: Allocation
    let runner: TaskRunner
    let command: TaskCommand
    let index: SiteIndex
    var store: JobStore
    private(set) var lease: Lease?
    var running: [String: Running] = [:]
    var killRequests: [String: String] = [:]
    /// Jobs this launcher leaves for others (tags, wall time, resources), with the spec's inode they were judged
    /// by and why: a job changed since (`balsam modify` replaces its `job.json`) is looked at again. Said in the
    /// lease (`Lease.setAside`) for `balsam show` and `ls`.
    var skipped: [String: (inode: UInt64, why: String)] = [:]
    /// Whether `skipped` changed since the lease last said it.
    var skippedChanged = false
    /// Runnable jobs listed, oldest first; those before `candidateStart` are done with (a cursor, so that taking
    /// a few from a long list never copies the rest).
    var candidates: [(id: String, state: JobState)] = []
    var candidateStart = 0
    var hasCandidates: Bool { candidateStart < candidates.count }
    var candidatesStale = true
    var apps: [String: App] = [:]
    var summary = Summary()
    var stopping: String?
    let started: Double
    var lastHeartbeat = 0.0

    /// Whether the lease is surely alive (its heartbeat well within the timeout), so that moves of its jobs
    /// need no claim: no one else may move them.
    var leaseFresh: Bool { Posix.monotonicSeconds() - lastHeartbeat < settings.leaseTimeoutSeconds / 2 }
    let deadline: Double
    /// The launcher's PATH, where a Python named without a slash is looked for.
    let searchPath: String?

    /// A coordinator over `nodes` (index = rank), reaching other ranks through `transport`.
    public init(
        site: Site, settings: SiteSettings, nodes: [Node], transport: any Transport, options: Options,
        environment: [String: String], logger: Logger
    ) {
        self.logger = logger
        self.site = site
        self.settings = settings
        self.searchPath = environment["PATH"]
        self.nodes = nodes
        self.transport = transport
        self.options = options
        self.allocation = Allocation(nodes: nodes)
        self.runner = TaskRunner(
            grace: settings.launcher.killGraceSeconds, guardPath: TaskRunner.defaultGuardPath,
            baseEnvironment: TaskCommand.baseEnvironment(environment), maxOutputBytes: settings.launcher.maxOutputBytes)
        self.command = TaskCommand(site: site, settings: settings.launcher, python: settings.python)
        self.index = SiteIndex(site: site)
        self.store = JobStore(site: site, actor: "balsam-launcher")
        started = Posix.monotonicSeconds()
        // Stop early enough to end every job and release the lease inside the allocation: a tenth of the wall
        // time (at most 2 minutes) plus the kill grace period.
        let wall = options.wallTimeMinutes * 60
        deadline = started + wall - min(120, wall / 10) - settings.launcher.killGraceSeconds
    }

    /// The stop reason of a launcher whose lease the watcher reaped.
    static let lostLease = "lost its lease"

    /// Minutes left before the launcher starts ending.
    var minutesLeft: Double { (deadline - Posix.monotonicSeconds()) / 60 }

    /// Runs until the wall time, a stop request or the idle timeout; returns what it did.
    // Over 100 lines: the coordinator's event loop, each step a call; its order is the protocol.
    public func run() throws(SpoolError) -> Summary {
        var info = options.leaseInfo
        info["nodes"] = .array(nodes.map { .string($0.host) })
        info["wall_time_min"] = .double(options.wallTimeMinutes)
        if let batchJob = options.batchJob { info[LauncherSession.batchJobKey] = .int(batchJob) }
        let lease = try Lease.create(site, info: info)
        self.lease = lease
        store.actor = "balsam-launcher " + lease.name
        let cpus = nodes.map(\.cpus).reduce(0, +)
        let gpus = nodes.map(\.gpus.count).reduce(0, +)
        logger.info(
            "lease \(lease.name): \(nodes.count) node(s), \(cpus) CPUs, \(gpus) GPUs, wall time \(options.wallTimeMinutes) min"
        )
        let python = settings.python.executable
        if Posix.findExecutable(python, path: searchPath) == nil {
            let missing = python.contains("/") ? "an executable file" : "on PATH"
            logger.warning(
                "python.executable '\(python)' (settings.yml) is not \(missing): jobs of Python apps will fail to start until it is (apps with their own python_executable aside)"
            )
        }
        let monitor = try ChangeMonitor(
            directories: [site.activePath(.preprocessed), site.activePath(.restartReady), site.controlPath],
            inotify: true)
        let idleTimeout = options.idleTimeout ?? settings.launcher.idleSeconds
        let heartbeatEvery = max(0.25, settings.leaseTimeoutSeconds / 4)
        lastHeartbeat = Posix.monotonicSeconds()
        var lastHeartbeatTry = lastHeartbeat
        var lastControl = 0.0
        var lastRescan = 0.0
        var idleSince: Double? = nil
        var readyChanged = false
        var pause = IdlePause(longest: 0.002)

        while stopping == nil {
            let now = Posix.monotonicSeconds()
            if stopRequested() {
                stopping = "signal"
                break
            }
            if now >= deadline {
                stopping = "wall time"
                break
            }
            var active = false
            if try collectEndings() { active = true }
            giveUpSilentRanks()
            if now - lastHeartbeat >= heartbeatEvery && now - lastHeartbeatTry >= heartbeatEvery {
                lastHeartbeatTry = now
                do {
                    try lease.heartbeat()
                    lastHeartbeat = now
                    if heartbeatBackoff.succeeded() { logger.info("the lease is refreshed again") }
                } catch  where error.cause == ENOENT {
                    // The watcher reaped the lease (this launcher was stopped or cut off past the lease timeout)
                    // and its jobs went back to be run elsewhere: stop them at once and leave.
                    logger.error(
                        "lost the lease \(lease.name) (reaped after \(Int(saturating: now - lastHeartbeat)) s without a heartbeat); stopping every job"
                    )
                    stopping = Coordinator.lostLease
                    break
                } catch {
                    // Said once per kind of failure (a read-only site fails every try the same way).
                    if heartbeatBackoff.failed(error, now: now) { logger.error("cannot refresh the lease: \(error)") }
                }
            }
            if now - lastControl >= 0.1 {
                checkKillRequests()
                lastControl = now
            }
            // The ready queue is listed again when inotify reports new entries (at most every 50 ms while
            // listed candidates remain: a burst of submissions must not make every loop read a big directory),
            // when the candidates run out, and every launcher.delay_sec for changes made on other nodes.
            if now - lastRescan >= settings.launcher.pollSeconds { candidatesStale = true }
            if readyChanged && (!hasCandidates || now - lastRescan >= 0.05) {
                candidatesStale = true
                readyChanged = false
            }
            if allocation.hasRoom && running.count < settings.launcher.maxConcurrent
                && (candidatesStale || hasCandidates)
            {
                if candidatesStale { lastRescan = now }
                if fill() { active = true }
            }
            recordEndings()
            // Waiting for a full disk to have room is not idleness; waiting on a read-only filesystem is.
            if running.isEmpty && !startBackoff.waitsForRoom {
                if idleSince == nil { idleSince = now }
                if let since = idleSince, now - since >= idleTimeout {
                    stopping = "idle"
                    break
                }
            } else {
                idleSince = nil
            }
            // A wait ends when a job here ends or the ready queue changes. With other ranks it is short: their
            // endings arrive as MPI messages, which cannot wake a poll(2); just after activity (jobs are ending and
            // starting) shorter still (`IdlePause`). Alone, it lasts until the next periodic duty (kill requests
            // every 0.1 s).
            let wait = transport.size == 1 ? (active ? 0 : 0.1) : pause.next(active: active)
            if monitor.wait(seconds: min(wait, max(0, deadline - now)), alsoReadable: runner.replyFDs) {
                readyChanged = true
            }
        }
        try shutdown(reason: stopping ?? "signal")
        if summary.reason == Coordinator.lostLease {
            throw SpoolError(
                .unavailable, "lost its lease \(lease.name): its jobs were taken back and may run elsewhere")
        }
        return summary
    }

    // MARK: - Claiming and placing

    /// Claims and starts every candidate that fits now, oldest first. True if it started any.
    func fill() -> Bool {
        if !startBackoff.isOver(Posix.monotonicSeconds()) { return false }
        if candidatesStale {
            candidates = listCandidates()
            candidateStart = 0
            candidatesStale = false
        }
        var startedAny = false
        var kept: [(id: String, state: JobState)] = []
        var i = candidateStart
        while i < candidates.count {
            guard allocation.hasRoom, running.count < settings.launcher.maxConcurrent else { break }
            let (id, state) = candidates[i]
            i += 1
            guard let (job, inode) = index.readEntryAndInode(at: index.entryPath(state, id)) else {
                continue  // gone: claimed elsewhere
            }
            if skipped[id]?.inode == inode { continue }
            var need = Need(job, packing: settings.launcher.nodePacking)
            if need.cpus > widestNode {
                // More ranks × threads than a node has cores: the whole node when allowed, else a clear end
                // instead of a job that waits for ever.
                if settings.launcher.oversubscribe {
                    need.cpus = widestNode
                } else {
                    refuse(
                        id, from: state, job: job, inode: inode,
                        reason: "it asks for \(need.cpus) CPUs per node (ranks_per_node \(job.ranksPerNode) × "
                            + "threads_per_rank \(job.threadsPerRank) / threads_per_core \(job.threadsPerCore)) and "
                            + "this allocation's nodes have \(widestNode); set launcher.oversubscribe: true in "
                            + "settings.yml to run more ranks than cores")
                    continue
                }
            }
            if let why = unsuitable(job, need) {
                skipped[id] = (inode, why)
                skippedChanged = true
                logger.info("job \(id) left for other launchers: \(why)", metadata: ["job.id": "\(id)"])
                continue
            }
            if skipped.removeValue(forKey: id) != nil { skippedChanged = true }
            guard let assignment = allocation.place(need) else {
                kept.append((id, state))
                continue
            }
            if start(id, from: state, job: job, inode: inode, assignment: assignment) {
                startedAny = true
            } else {
                allocation.release(assignment)
            }
        }
        // The ones that did not fit go back just before the first one not looked at, in order.
        candidateStart = i - kept.count
        for (k, item) in kept.enumerated() { candidates[candidateStart + k] = item }
        if skippedChanged, let lease {
            skippedChanged = false
            do { try lease.setAside(skipped.mapValues(\.why)) } catch {
                logger.warning("cannot say in the lease which jobs it leaves for others: \(error)")
            }
        }
        return startedAny
    }

    /// Runnable jobs, oldest first (IDs sort by creation time).
    func listCandidates() -> [(id: String, state: JobState)] {
        var all: [(id: String, state: JobState)] = []
        for state in [JobState.preprocessed, .restartReady] {
            for id in (try? index.activeIDs(state)) ?? [] {
                // One left for others is looked at again only if its spec changed (a stat, not a read).
                if let aside = skipped[id],
                    let st = (try? Posix.statIfExists(index.entryPath(state, id))) ?? nil,
                    UInt64(st.st_ino) == aside.inode
                {
                    continue
                }
                all.append((id, state))
            }
        }
        return all.sorted { $0.id < $1.id }
    }

    /// Why this launcher will never run `job`, or nil.
    func unsuitable(_ job: Job, _ need: Need) -> String? {
        for (key, value) in options.tags where job.tags[key] != value {
            return "its tags lack \(key)=\(value)"
        }
        if job.wallTimeMin > 0 && Double(job.wallTimeMin) > minutesLeft {
            return "it needs \(job.wallTimeMin) min and \(Int(saturating: minutesLeft)) min are left"
        }
        if !allocation.canEverFit(need) {
            return "it needs more than this allocation has (\(need.nodes) node(s), "
                + "\(need.cpus) CPUs, \(need.gpus) GPUs per node)"
        }
        return nil
    }

    /// The most CPUs any node of the allocation has.
    var widestNode: Int { nodes.map(\.cpus).max() ?? 1 }

    /// Claims a job that can never run on these nodes and fails it with `reason`.
    func refuse(_ id: String, from state: JobState, job: Job, inode: UInt64, reason: String) {
        guard let lease, lease.claim(id, from: state, site: site) else { return }
        let entry = lease.path + "/" + id
        do {
            guard let loaded = try claimed(id, from: state, job: job, inode: inode, entry: entry) else { return }
            try store.move(loaded, to: .failed, reason: reason)
            logger.error("job \(id) FAILED: \(reason)", metadata: ["job.id": "\(id)"])
            summary.failedToStart += 1
        } catch {
            giveBack(entry, id: id)
            logger.error("job \(id): cannot fail it (\(reason)): \(error)", metadata: ["job.id": "\(id)"])
        }
    }

    /// The job just claimed into `entry`, if it is still the one looked at: the spec read before the claim is
    /// used if the entry is still the same file (else it was modified meanwhile, and may need other resources: it
    /// goes back, to be looked at again).
    func claimed(_ id: String, from state: JobState, job: Job, inode: UInt64, entry: String)
        throws(SpoolError) -> JobStore.Loaded?
    {
        guard let loaded = try store.load(job, inode: inode, entryAt: entry), loaded.record.state == state else {
            // Moved on between our look and our claim (a kill, say): its entry goes where its state says.
            giveBack(entry, id: id)
            candidatesStale = true
            return nil
        }
        return loaded
    }

    /// Claims one job into the lease, marks it RUNNING and tells its first node's rank to start it.
    func start(_ id: String, from state: JobState, job: Job, inode: UInt64, assignment: Assignment) -> Bool {
        guard let lease, lease.claim(id, from: state, site: site) else { return false }
        let entry = lease.path + "/" + id
        do {
            guard let loaded = try claimed(id, from: state, job: job, inode: inode, entry: entry) else {
                return false
            }
            let spec: TaskSpec
            do {
                let app = try self.app(loaded.job.app)
                spec = try command.spec(loaded.job, app: app, assignment: assignment, nodes: nodes)
            } catch {
                try store.move(loaded, to: .failed, reason: "cannot launch: \(error)")
                logger.error("job \(id) FAILED: cannot launch: \(error)", metadata: ["job.id": "\(id)"])
                summary.failedToStart += 1
                return false
            }
            let host = nodes[assignment.nodes[0]].host
            // `num_nodes`: the job's share of nodes (the original's RUNNING event field), for utilization reports.
            var facts = EventFacts()
            facts.share = loaded.job.nodeFootprint(packing: settings.launcher.nodePacking)
            facts.batchJob = options.batchJob
            facts.other = ["host": .string(host), "nodes": .array(assignment.nodes.map { .int($0) })]
            if !assignment.gpus.isEmpty { facts.other["gpus"] = .string(assignment.gpus.joined(separator: ",")) }
            let moved = try store.move(
                loaded, to: .running, eventData: facts.data, entryAt: entry, leaseHeld: leaseFresh)
            running[id] = Running(loaded: moved, assignment: assignment)
            summary.started += 1
            deliver(.start(spec), to: assignment.nodes[0])
        } catch {
            if failIfDirectoryGone(id, workdir: job.workdir, entry: entry, from: state) { return false }
            giveBack(entry, id: id)
            if error.code == .io {
                // A full or failing disk: every other job would fail the same way now. Pause claiming.
                if startBackoff.failed(error, now: Posix.monotonicSeconds()) {
                    logger.error(
                        "cannot start jobs: \(error); claiming paused while \(error.writeTrouble ?? "writes fail"), retried every 1 to 30 s",
                        metadata: ["job.id": "\(id)"])
                }
                return false
            }
            logger.error("job \(id): cannot start: \(error)", metadata: ["job.id": "\(id)"])
            return false
        }
        if startBackoff.succeeded() { logger.info("starting jobs again") }
        return true
    }

    /// Claiming paused after an I/O error at a start (see `start`).
    var startBackoff = IOBackoff()
    /// Failures to refresh the lease, to say each once.
    var heartbeatBackoff = IOBackoff()

    /// A job whose directory was deleted or renamed by hand can never be started or recorded: it is failed with
    /// that reason (its entry kept in `rejected/`), instead of being given back to fail again for ever.
    func failIfDirectoryGone(_ id: String, workdir: String, entry: String, from state: JobState) -> Bool {
        guard !Posix.isDirectory(site.jobDirectory(workdir)), Posix.exists(entry) else { return false }
        do {
            try store.forceFail(id, entryAt: entry, from: state, reason: "job directory gone")
            logger.error(
                "job \(id) FAILED: its directory data/\(workdir) is gone (deleted or renamed)",
                metadata: ["job.id": "\(id)"])
            return true
        } catch {
            logger.error(
                "job \(id): its directory is gone and it cannot be failed: \(error)", metadata: ["job.id": "\(id)"])
            return false
        }
    }

    /// Puts a claimed entry back where the job's state file says it belongs.
    func giveBack(_ entry: String, id: String) {
        guard let job = index.readEntry(at: entry), let record = try? Query(site: site).readRecord(workdir: job.workdir)
        else { return }
        if record.state.isFinal {
            Posix.unlink(entry)
        } else if (try? Posix.renameNoReplace(entry, index.entryPath(record.state, id))) == nil {
            Posix.unlink(entry)  // the state's entry exists already
        }
    }

    func app(_ name: String) throws(SpoolError) -> App {
        if let app = apps[name] { return app }
        let app = try App.load(directory: site.appsPath + "/" + name, name: name)
        // The runner this launcher's binaries carry is the one its Python apps run with.
        if app.isPython && !runnerInstalled {
            try PythonApps.installRunner(site)
            runnerInstalled = true
        }
        apps[name] = app
        return app
    }

    var runnerInstalled = false

    func deliver(_ message: Message, to rank: Int) {
        if options.noSpawn, case .start(let spec) = message {
            record(TaskRunner.Ended(id: spec.id, status: 0, error: nil))
            return
        }
        if rank == transport.rank {
            switch message {
            case .start(let spec): if let ended = runner.start(spec) { record(ended) }
            case .kill(let id): runner.kill(id)
            default: break
            }
            return
        }
        do { try transport.send(message, to: rank) } catch {
            logger.error("cannot reach rank \(rank): \(error)", metadata: ["rank": "\(rank)"])
        }
    }

    // MARK: - Endings (recorded in CoordinatorEndings.swift)

    var stoppedRanks = Set<Int>()
    /// When each rank was last heard from (monotonic seconds; rank 0's own entry unused).
    lazy var lastHeard = [Double](repeating: Posix.monotonicSeconds(), count: transport.size)
    /// Ranks given up for silent, and those of them told to stop when they spoke again.
    var silentRanks = Set<Int>()
    var toldToStop = Set<Int>()

    /// A job that ended, and why the launcher was stopping then (nil: it was not), to be recorded.
    typealias Ending = (job: Running, ended: TaskRunner.Ended, stopping: String?)
    var endings: [Ending] = []
    /// Endings that could not be written (a full disk): tried again when `recordBackoff` says.
    var unrecorded: [Ending] = []
    var recordBackoff = IOBackoff()

}
