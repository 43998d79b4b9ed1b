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
    private var running: [String: Running] = [:]
    private var killRequests: [String: String] = [:]
    private var skipped = Set<String>()
    /// Runnable jobs listed, oldest first; those before `candidateStart` are done with (a cursor, so that taking
    /// a few from a long list never copies the rest).
    private var candidates: [(id: String, state: JobState)] = []
    private var candidateStart = 0
    private var hasCandidates: Bool { candidateStart < candidates.count }
    private var candidatesStale = true
    private var apps: [String: App] = [:]
    private var summary = Summary()
    private var stopping: String?
    private let started: Double
    private var lastHeartbeat = 0.0

    /// Whether the lease is surely alive (its heartbeat well within the timeout), so that moves of its jobs
    /// need no claim: no one else may move them.
    private var leaseFresh: Bool { Posix.monotonicSeconds() - lastHeartbeat < settings.leaseTimeoutSeconds / 2 }
    private let deadline: Double
    /// The launcher's PATH, where a Python named without a slash is looked for.
    private let searchPath: String?

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
            baseEnvironment: TaskCommand.baseEnvironment(environment))
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
        var lastActivity = 0.0

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
            if now - lastHeartbeat >= heartbeatEvery && now - lastHeartbeatTry >= heartbeatEvery {
                lastHeartbeatTry = now
                do {
                    try lease.heartbeat()
                    lastHeartbeat = now
                } catch  where error.cause == ENOENT {
                    // The watcher reaped the lease (this launcher was stopped or cut off past the lease timeout)
                    // and its jobs went back to be run elsewhere: stop them at once and leave.
                    logger.error(
                        "lost the lease \(lease.name) (reaped after \(Int(now - lastHeartbeat)) s without a heartbeat); stopping every job"
                    )
                    stopping = Coordinator.lostLease
                    break
                } catch {
                    logger.error("cannot refresh the lease: \(error)")
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
            if running.isEmpty && !startBackoff.isFailing {  // waiting for a full disk to have room is not idleness
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
            // starting) shorter still. Alone, it lasts until the next periodic duty (kill requests every 0.1 s).
            if active { lastActivity = now }
            let pause =
                active ? 0 : transport.size == 1 ? 0.1 : (now - lastActivity < 0.05 ? 0.00005 : 0.002)
            if monitor.wait(seconds: min(pause, max(0, deadline - now)), alsoReadable: runner.replyFDs) {
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
    private func fill() -> Bool {
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
            if skipped.contains(id) { continue }
            guard let (job, inode) = index.readEntryAndInode(at: index.entryPath(state, id)) else {
                continue  // gone: claimed elsewhere
            }
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
                skipped.insert(id)
                logger.info("job \(id) left for other launchers: \(why)", metadata: ["job.id": "\(id)"])
                continue
            }
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
        return startedAny
    }

    /// Runnable jobs, oldest first (IDs sort by creation time).
    private func listCandidates() -> [(id: String, state: JobState)] {
        var all: [(id: String, state: JobState)] = []
        for state in [JobState.preprocessed, .restartReady] {
            for id in (try? index.activeIDs(state)) ?? [] where !skipped.contains(id) { all.append((id, state)) }
        }
        return all.sorted { $0.id < $1.id }
    }

    /// Why this launcher will never run `job`, or nil.
    private func unsuitable(_ job: Job, _ need: Need) -> String? {
        for (key, value) in options.tags where job.tags[key] != value {
            return "its tags lack \(key)=\(value)"
        }
        if job.wallTimeMin > 0 && Double(job.wallTimeMin) > minutesLeft {
            return "it needs \(job.wallTimeMin) min and \(Int(minutesLeft)) min are left"
        }
        if !allocation.canEverFit(need) {
            return "it needs more than this allocation has (\(need.nodes) node(s), "
                + "\(need.cpus) CPUs, \(need.gpus) GPUs per node)"
        }
        return nil
    }

    /// The most CPUs any node of the allocation has.
    private var widestNode: Int { nodes.map(\.cpus).max() ?? 1 }

    /// Claims a job that can never run on these nodes and fails it with `reason`.
    private func refuse(_ id: String, from state: JobState, job: Job, inode: UInt64, reason: String) {
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
    private func claimed(_ id: String, from state: JobState, job: Job, inode: UInt64, entry: String)
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
    private func start(_ id: String, from state: JobState, job: Job, inode: UInt64, assignment: Assignment) -> Bool {
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
            var data: [String: JSONValue] = [
                "host": .string(host), "nodes": .array(assignment.nodes.map { .int($0) }),
                "num_nodes": .double(loaded.job.nodeFootprint(packing: settings.launcher.nodePacking)),
            ]
            if !assignment.gpus.isEmpty { data["gpus"] = .string(assignment.gpus.joined(separator: ",")) }
            if let batchJob = options.batchJob { data["batch_job"] = .int(batchJob) }
            let moved = try store.move(loaded, to: .running, eventData: data, entryAt: entry, leaseHeld: leaseFresh)
            running[id] = Running(loaded: moved, assignment: assignment)
            summary.started += 1
            deliver(.start(spec), to: assignment.nodes[0])
        } catch {
            if failIfDirectoryGone(id, workdir: job.workdir, entry: entry, from: state) { return false }
            giveBack(entry, id: id)
            if error.code == .io {
                // A full or failing disk: every other job would fail the same way now. Pause claiming.
                if startBackoff.failed("\(error)", now: Posix.monotonicSeconds()) {
                    logger.error(
                        "cannot start jobs: \(error); claiming paused, retried every 1 to 30 s",
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
    private var startBackoff = IOBackoff()

    /// A job whose directory was deleted or renamed by hand can never be started or recorded: it is failed with
    /// that reason (its entry kept in `rejected/`), instead of being given back to fail again for ever.
    private func failIfDirectoryGone(_ id: String, workdir: String, entry: String, from state: JobState) -> Bool {
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
    private func giveBack(_ entry: String, id: String) {
        guard let job = index.readEntry(at: entry), let record = try? Query(site: site).readRecord(workdir: job.workdir)
        else { return }
        if record.state.isFinal {
            Posix.unlink(entry)
        } else if (try? Posix.renameNoReplace(entry, index.entryPath(record.state, id))) == nil {
            Posix.unlink(entry)  // the state's entry exists already
        }
    }

    private func app(_ name: String) throws(SpoolError) -> App {
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

    private var runnerInstalled = false

    private func deliver(_ message: Message, to rank: Int) {
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

    // MARK: - Endings

    /// Records jobs that ended here or on other ranks. True if any did.
    private func collectEndings() throws(SpoolError) -> Bool {
        var any = false
        for ended in runner.poll() {
            record(ended)
            any = true
        }
        while let (source, message) = try transport.receive() {
            any = true
            switch message {
            case .ended(let ended): record(ended)
            case .stopped: stoppedRanks.insert(source)
            default:
                logger.warning("unexpected message from rank \(source): \(message)", metadata: ["rank": "\(source)"])
            }
        }
        return any
    }

    private var stoppedRanks = Set<Int>()

    /// Moves an ended job on: RUN_DONE, RUN_ERROR (status and output tail), RUN_TIMEOUT (the launcher is
    /// ending) or FAILED (killed on request).
    ///
    /// The job's resources are free at once; the move itself waits in `ended` until `recordEndings()`, so that
    /// the next job can be started first (a free slot should not wait for bookkeeping).
    private func record(_ ended: TaskRunner.Ended) {
        guard let job = running.removeValue(forKey: ended.id) else { return }
        allocation.release(job.assignment)
        // After a lost lease the job is no longer this launcher's: whoever took it back records it.
        if stopping == Coordinator.lostLease { return }
        endings.append((job, ended, stopping))
    }

    /// A job that ended, and why the launcher was stopping then (nil: it was not), to be recorded.
    private typealias Ending = (job: Running, ended: TaskRunner.Ended, stopping: String?)
    private var endings: [Ending] = []
    /// Endings that could not be written (a full disk): tried again when `recordBackoff` says.
    private var unrecorded: [Ending] = []
    private var recordBackoff = IOBackoff()

    /// Records the endings collected so far (and, when their pause is over, those that failed before).
    private func recordEndings() {
        var batch = endings
        endings = []
        let now = Posix.monotonicSeconds()
        if !unrecorded.isEmpty && recordBackoff.isOver(now) {
            batch = unrecorded + batch
            unrecorded = []
        }
        var failure: SpoolError?
        for ending in batch {
            if let error = recordEnding(ending.job, ending.ended, stopping: ending.stopping) {
                unrecorded.append(ending)
                failure = failure ?? error
            }
        }
        if let failure {
            if recordBackoff.failed("\(failure)", now: now, progressed: batch.count > unrecorded.count) {
                logger.error(
                    "cannot record the end of \(unrecorded.count) job(s): \(failure); trying again while the disk has no room"
                )
            }
        } else if !batch.isEmpty && unrecorded.isEmpty && recordBackoff.succeeded() {
            logger.info("recording job endings again")
        }
    }

    /// Records one ending; returns the I/O error it met if it should be tried again (other errors are logged:
    /// the job was moved by someone else, or its directory is gone).
    private func recordEnding(_ job: Running, _ ended: TaskRunner.Ended, stopping: String?) -> SpoolError? {
        let status = Int(ended.status)
        do {
            if let reason = killRequests[ended.id] {
                try store.move(
                    job.loaded, to: .failed, reason: reason, eventData: ["return_code": .int(status)],
                    leaseHeld: leaseFresh
                ) {
                    _, record in record.returnCode = status
                }
                killRequests[ended.id] = nil
                Posix.unlink(site.controlPath + "/kill." + ended.id)
                summary.killed += 1
                logger.info("job \(ended.id) killed: \(reason)", metadata: ["job.id": "\(ended.id)"])
            } else if let why = stopping {
                // A signal is its operator's (Ctrl-C) or its batch system's (a cancel): the run was interrupted,
                // not too long, and runs again without spending a retry (balsam-launcher(1), SIGNALS).
                let interrupted = why == "signal"
                try store.move(
                    job.loaded, to: .runTimeout,
                    reason: interrupted
                        ? "interrupted: its launcher was stopped by a signal" : "stopped by the launcher (\(why))",
                    eventData: ["return_code": .int(status)].merging(interrupted ? ["interrupted": .bool(true)] : [:]) {
                        a, _ in a
                    }, leaseHeld: leaseFresh
                ) { _, record in
                    record.returnCode = status
                    record.interrupted = interrupted
                }
                summary.timedOut += 1
            } else if status == 0 && ended.error == nil {
                try store.move(
                    job.loaded, to: .runDone, eventData: pythonResult(job.loaded).data, leaseHeld: leaseFresh
                ) { _, record in record.returnCode = 0 }
                summary.done += 1
            } else {
                let tail = ended.error ?? Posix.tail(job.loaded.directory + "/job.out", lines: settings.errorTailLines)
                var result = pythonResult(job.loaded)
                let reason =
                    "exit status \(status)"
                    + ((result.exception.map { ": run() raised \($0)" } ?? ended.error.map { ": \($0)" }) ?? "")
                if result.data["serialized_exception"] == nil {
                    // No exception of its own (a shell app): the client's job.result() raises one saying why.
                    let output = ended.error == nil && !tail.isEmpty ? "\nlast lines of job.out:\n" + tail : ""
                    result.data["serialized_exception"] = .string(
                        Pickle.exceptionBase64("job \(job.loaded.job.workdir): " + reason + output))
                }
                try store.move(
                    job.loaded, to: .runError, reason: reason,
                    eventData: result.data.merging(["return_code": .int(status), "tail": .string(tail)]) { a, _ in a },
                    leaseHeld: leaseFresh
                ) { _, record in record.returnCode = status }
                summary.errors += 1
            }
        } catch {
            if let entry = job.loaded.entry,
                failIfDirectoryGone(ended.id, workdir: job.loaded.job.workdir, entry: entry, from: .running)
            {
                return nil
            }
            if error.code == .io { return error }
            logger.error(
                "job \(ended.id): cannot record its end (status \(status)): \(error)",
                metadata: ["job.id": "\(ended.id)"])
        }
        return nil
    }

    /// What a Python app's run left in its directory (rank 0 writes it; see balsam_runner.py): its pickled
    /// return value or exception, for the event (the sync takes it to the server, where `job.result()` reads
    /// it), and the exception's one-line text.
    private func pythonResult(_ loaded: JobStore.Loaded) -> (data: [String: JSONValue], exception: String?) {
        guard apps[loaded.job.app]?.isPython == true,
            let bytes = try? Posix.readFile(
                loaded.directory + "/" + Coordinator.resultName, limit: Coordinator.resultLimit),
            case .object(let o)? = try? JSONValue.parse(bytes)
        else { return ([:], nil) }
        var data: [String: JSONValue] = [:]
        for key in ["serialized_return_value", "serialized_exception"] { data[key] = o[key] }
        return (data, o["exception"]?.stringValue)
    }

    /// The file a Python app's run leaves its result in, and the largest read.
    static let resultName = ".balsam-result.json"
    static let resultLimit = 8 << 20

    // MARK: - Kill requests

    /// Carries out `queue/control/kill.ID` requests for jobs this launcher runs.
    private func checkKillRequests() {
        guard !running.isEmpty, let names = try? Posix.listDirectory(site.controlPath) else { return }
        for name in names where name.hasPrefix("kill.") {
            let id = String(name.dropFirst(5))
            guard let job = running[id], killRequests[id] == nil else { continue }
            var reason = "killed by the user"
            if let bytes = try? Posix.readFile(site.controlPath + "/" + name, limit: 64 * 1024),
                let text = (try? JSONValue.parse(bytes))?.objectValue?["reason"]?.stringValue
            {
                reason = text
            }
            killRequests[id] = reason
            logger.info("job \(id): stopping it (\(reason))", metadata: ["job.id": "\(id)"])
            deliver(.kill(id: id), to: job.assignment.nodes[0])
        }
    }

    // MARK: - Ending

    /// Stops every job (RUN_TIMEOUT), lets the other ranks go, gives back anything unstarted, releases the lease.
    private func shutdown(reason: String) throws(SpoolError) {
        stopping = reason
        summary.reason = reason
        logger.info("stopping (\(reason)): \(running.count) job(s) running")
        runner.killAll()
        let others = (0..<transport.size).filter { $0 != transport.rank }
        for rank in others { deliver(.stop, to: rank) }
        // Every rank stops its jobs within the grace period; a rank that does not answer is given a while more.
        let limit = Posix.monotonicSeconds() + settings.launcher.killGraceSeconds + 30
        while (runner.count > 0 || stoppedRanks.count < others.count) && Posix.monotonicSeconds() < limit {
            if try !collectEndings() { usleep(1000) }
            recordEndings()
        }
        for id in Array(running.keys) {
            logger.warning("job \(id): no word from its rank; recorded as timed out", metadata: ["job.id": "\(id)"])
            record(TaskRunner.Ended(id: id, status: 137, error: "no answer from its launcher rank"))
        }
        recordEndings()
        // Endings the disk had no room for: tried for another minute (the lease kept alive meanwhile), then
        // given back RUNNING, which the watcher treats as a run cut short.
        let recordLimit = Posix.monotonicSeconds() + 60
        while !unrecorded.isEmpty && Posix.monotonicSeconds() < recordLimit {
            try? lease?.heartbeat()
            Posix.sleep(seconds: 0.5)
            recordBackoff.retryNow()
            recordEndings()
        }
        if !unrecorded.isEmpty {
            logger.error(
                "\(unrecorded.count) job ending(s) could not be recorded; given back RUNNING for the watcher to retry")
        }
        if let lease {
            for id in (try? lease.jobIDs()) ?? [] { giveBack(lease.entryPath(id), id: id) }
            // Its time on the nodes, for the utilization reports (nodes a launcher started by hand held).
            do { try lease.session(end: Timestamp.now())?.record(site) } catch {
                logger.warning("cannot record this launcher's session in \(LauncherSession.logPath(site)): \(error)")
            }
            lease.remove()
        }
        logger.info(
            """
            done: \(summary.started) started, \(summary.done) RUN_DONE, \(summary.errors) RUN_ERROR, \
            \(summary.timedOut) RUN_TIMEOUT, \(summary.killed) killed
            """)
    }
}

/// A pause after I/O failures (a full disk) that doubles from 1 to 30 s while they last, and says each distinct
/// failure once: the launcher's claiming and its recording of job endings both wait this way.
struct IOBackoff {
    private var until = 0.0
    private var pause = 0.0
    private var lastMessage = ""

    /// Whether failures are under way (the last attempt failed).
    var isFailing: Bool { pause > 0 }

    /// Whether the pause is over at `now` (always, when nothing failed).
    func isOver(_ now: Double) -> Bool { now >= until }

    /// Records a failure and starts the next pause (back at 1 s if some work still got done); true when `message`
    /// is new, so the caller logs it.
    mutating func failed(_ message: String, now: Double, progressed: Bool = false) -> Bool {
        pause = pause == 0 || progressed ? 1 : min(30, pause * 2)
        until = now + pause
        defer { lastMessage = message }
        return message != lastMessage
    }

    /// Ends the pause early: one more try now.
    mutating func retryNow() { until = 0 }

    /// Records a success; true when it ends a run of failures, so the caller says so.
    mutating func succeeded() -> Bool {
        defer { self = IOBackoff() }
        return pause > 0
    }
}
