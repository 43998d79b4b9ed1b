import Logging
import Spool

/// The watcher's transfer service: brings jobs' stage-ins in while they wait in `READY` and sends their
/// stage-outs while they wait in `POSTPROCESSED`, a round every `transfers.service_period` seconds.
///
/// A round looks only at the jobs in those two states. Their items live in `transfers.json` in each job's
/// directory (made from the job's `transfers` and its app's slots the first time). Items in flight are polled;
/// pending ones are grouped by direction and location, the largest group first, in batches of
/// `transfer_batch_size`, with at most `max_concurrent_transfers` tasks in flight. A job all of whose items of
/// the direction are `done` moves on (`STAGED_IN`, `STAGED_OUT`); a failed item is tried again
/// (`on_transfer_error: {retries: N}`), then the job is FAILED with the transfer's error. An item is marked
/// `done` only after its data is in place, so a watcher killed in the middle does the unfinished ones again.
public final class TransferService {
    public let site: Site
    public let settings: SiteSettings
    let logger: Logger
    let store: JobStore
    let index: SiteIndex
    let backends: [TransferLocation.Kind: any TransferBackend]

    /// A job being served: its directory, items, and the state it waits in.
    struct Served {
        var directory: String
        var state: JobState
        var items: [TransferItem]
        /// Whether the job's app has a preprocess hook (else a staged-in job goes on to PREPROCESSED at once).
        var preprocesses: Bool
    }

    private var served: [String: Served] = [:]
    /// Jobs whose items changed since they were last looked at for a move (new ones, ended tasks' ones).
    private var changed: Set<String> = []
    /// Jobs with items waiting to be submitted.
    private var pending: Set<String> = []
    /// When failed items (`JOB/SLOT`) may be tried again.
    private var notBefore: [String: Double] = [:]
    /// Items whose location could not be reached: since when (monotonic), and how many tries so far.
    private var unreachableSince: [String: Double] = [:]
    private var unreachableTries: [String: Int] = [:]
    /// Jobs looked at that have nothing to move in their state.
    private var idle: Set<String> = []
    /// Tasks in flight: their items as (job, slot).
    private var tasks: [String: (backend: TransferLocation.Kind, items: [(job: String, slot: String)])] = [:]

    public init(site: Site, settings: SiteSettings, logger: Logger) {
        self.site = site
        self.settings = settings
        self.logger = logger
        store = JobStore(site: site, actor: "balsam-watch transfers")
        index = SiteIndex(site: site)
        backends = [
            .local: LocalBackend(), .rsync: RsyncBackend(site: site, sshOptions: settings.transfers.sshOptions),
            .globus: GlobusBackend(settings: settings.transfers),
        ]
    }

    /// Whether the service serves jobs or follows tasks: then it looks at the queues every period. Otherwise
    /// it looks only when told (the engine leaves a job waiting for it) and at its first round.
    public var busy: Bool { !served.isEmpty || !tasks.isEmpty }

    /// What a round did.
    public struct Round: Sendable, Equatable {
        public var submitted = 0
        public var done = 0
        public var failed = 0
        public var moved = 0
        /// Tasks still in flight.
        public var inFlight = 0
        /// Items held back for a fuller batch: the next round should come soon.
        public var holding = false
    }

    /// One round. Returns what it did.
    /// One round; `look`: list the waiting jobs again (when the engine left new ones, and every period), else
    /// only follow the tasks in flight.
    public func round(look full: Bool = true) throws(SpoolError) -> Round {
        var round = Round()
        if full { try look() }
        poll(&round)
        moveFinished(&round)
        submit(&round)
        round.inFlight = tasks.count
        return round
    }

    // MARK: - Finding the jobs

    private func look() throws(SpoolError) {
        var present: [String: JobState] = [:]
        for state in [JobState.ready, .postprocessed] {
            for id in try index.activeIDs(state) { present[id] = state }
        }
        // Items changed through the server (the sync leaves each change here): applied here, the one writer of
        // the jobs' items, and saved.
        for name in try Posix.listDirectory(site.controlPath) where name.hasPrefix("transfers.") {
            let id = String(name.dropFirst("transfers.".count))
            let path = site.controlPath + "/" + name
            defer { Posix.unlink(path) }
            guard let state = present[id],
                let change = (try? JSONValue.parse(try Posix.readFile(path, limit: 65536)))?.objectValue
            else { continue }
            if served[id] == nil { served[id] = try? serve(id, state) }
            guard var entry = served[id] else { continue }
            if TransferChange.apply(change, to: &entry.items) {
                notBefore = notBefore.filter { !$0.key.hasPrefix(id + "/") }
                unreachableSince = unreachableSince.filter { !$0.key.hasPrefix(id + "/") }
                unreachableTries = unreachableTries.filter { !$0.key.hasPrefix(id + "/") }
                served[id] = entry
                idle.remove(id)
                changed.insert(id)
                pending.insert(id)
                save(id)
                logger.info(
                    "job \(id): a transfer item changed through the server: \(JSONValue.object(change).serialized())",
                    metadata: ["job.id": "\(id)"])
            }
        }
        for id in served.keys where present[id] != served[id]?.state { served[id] = nil }
        idle = idle.filter { present[$0] != nil }
        for (id, state) in present where served[id] == nil && !idle.contains(id) {
            do {
                if let job = try serve(id, state) {
                    served[id] = job
                    changed.insert(id)
                    pending.insert(id)
                } else {
                    idle.insert(id)
                }
            } catch {
                fail(id, state, reason: "its transfers cannot be read: \(error)")
            }
        }
    }

    private var apps: [String: App] = [:]
    private var slots: [String: [String: TransferSlot]] = [:]
    /// Whether each app has a `preprocess` file, looked at once per app, not per job.
    private var preprocessFiles: [String: Bool] = [:]

    /// The job's items of the direction its state waits for, made and saved the first time; nil if none.
    private func serve(_ id: String, _ state: JobState) throws(SpoolError) -> Served? {
        guard let job = index.readEntry(at: index.entryPath(state, id)), !job.transfers.isEmpty else { return nil }
        let directory = site.jobDirectory(job.workdir)
        let direction: TransferSlot.Direction = state == .ready ? .in : .out
        let app: App
        if let known = apps[job.app] {
            app = known
        } else {
            app = try site.app(job.app)
            apps[job.app] = app
            slots[job.app] = try TransferSlot.slots(of: app)
            preprocessFiles[job.app] = Posix.exists(site.appsPath + "/" + app.name + "/preprocess")
        }
        var items: [TransferItem]
        if let saved = try TransferItem.load(directory: directory) {
            items = saved
        } else {
            items = try TransferItem.items(for: job, app: app, slots: slots[job.app])
        }
        guard items.contains(where: { $0.direction == direction }) else { return nil }
        // Written when an item first changes (a job's items are made again from its spec until then).
        var changed = false
        for i in items.indices where items[i].direction == direction {
            // Stage-outs wait for the job; a task from before a restart is gone: its items go again.
            if items[i].state == .awaitingJob || items[i].state == .active || items[i].state == .inactive {
                if items[i].state != .awaitingJob {
                    items[i].info["restarted"] = .bool(true)
                    changed = true
                }
                items[i].state = .pending
                items[i].taskID = nil
            }
        }
        if changed { try TransferItem.save(items, directory: directory) }
        // `App.load` found the executable hook; a file that is not executable is the engine's to report.
        let preprocesses = app.hooks.contains(.preprocess) || preprocessFiles[app.name] == true
        return Served(directory: directory, state: state, items: items, preprocesses: preprocesses)
    }

    // MARK: - Tasks

    private func poll(_ round: inout Round) {
        for (taskID, task) in tasks {
            guard let backend = backends[task.backend] else { continue }
            let status = backend.poll(taskID) ?? .finished(failures: ["*": "the task was lost"])
            switch status {
            case .active: continue
            case .finished(let failures):
                tasks[taskID] = nil
                record(task.items, task: taskID, failures: failures, &round)
            case .unreachable(let why):
                tasks[taskID] = nil
                record(task.items, task: taskID, failures: ["*": why], unreachable: true, &round)
            }
        }
    }

    /// Records how a task ended for its items: done, or failed (`failures` by `JOB/SLOT`, or `*` for all),
    /// to be tried again or, with no retries left, in error.
    ///
    /// `unreachable`: the location was not reached, and nobody's item is to blame: the items are tried again
    /// (every 1 to 30 s) without spending their retries, until it has been so for `unreachable_timeout_sec`.
    private func record(
        _ items: [(job: String, slot: String)], task: String?, failures: [String: String], unreachable: Bool = false,
        _ round: inout Round
    ) {
        var touched = Set<String>()
        for (job, slot) in items {
            // The job moved on meanwhile (killed, say), or its item was changed through the server since.
            guard var entry = served[job], let i = entry.items.firstIndex(where: { $0.slot == slot }),
                entry.items[i].taskID == task
            else { continue }
            let key = job + "/" + slot
            if var why = failures[key] ?? failures["*"] {
                let now = Posix.monotonicSeconds()
                var tries: Int
                var spent: Bool
                if unreachable {
                    let since = unreachableSince[key] ?? now
                    unreachableSince[key] = since
                    unreachableTries[key, default: 0] += 1
                    tries = unreachableTries[key] ?? 1
                    spent = now - since >= settings.transfers.unreachableTimeoutSeconds
                    if spent {
                        entry.items[i].attempts += 1
                        why = "unreachable for \(Int(saturating: now - since)) s: " + why
                    }
                } else {
                    unreachableSince[key] = nil
                    unreachableTries[key] = nil
                    entry.items[i].attempts += 1
                    tries = entry.items[i].attempts
                    spent = entry.items[i].attempts > settings.transfers.retries
                }
                // Tried again after 1, 2, 4 ... 30 s: a file that is not there yet is not asked for in a loop.
                notBefore[key] = now + min(30, Double(1 << min(max(tries, 1) - 1, 5)))
                entry.items[i].info["error"] = .string(why)
                entry.items[i].state = spent ? .error : .pending
                round.failed += 1
                logger.warning(
                    "job \(job): \(entry.items[i].direction == .in ? "stage-in" : "stage-out") of slot \(slot) failed (attempt \(entry.items[i].attempts)): \(why)",
                    metadata: ["job.id": "\(job)"])
            } else {
                unreachableSince[key] = nil
                unreachableTries[key] = nil
                entry.items[i].state = .done
                entry.items[i].info["error"] = nil
                round.done += 1
            }
            entry.items[i].taskID = nil
            if entry.items[i].state == .pending { pending.insert(job) }
            served[job] = entry
            touched.insert(job)
        }
        // A job's items are written once something failed (attempts, errors); items done at the first try need
        // no file: the job's moving on says they are done (a file each cost more than the small files moved).
        for job in touched {
            guard let entry = served[job] else { continue }
            if entry.items.contains(where: { $0.attempts > 0 || $0.info["error"] != nil })
                || Posix.exists(entry.directory + "/" + TransferItem.fileName)
            {
                save(job)
            }
        }
        changed.formUnion(touched)
    }

    private func save(_ job: String) {
        guard let entry = served[job] else { return }
        do { try TransferItem.save(entry.items, directory: entry.directory) } catch {
            logger.error("job \(job): cannot save its transfer items: \(error)", metadata: ["job.id": "\(job)"])
        }
    }

    /// Jobs whose items of their direction are all done move on; one with an item in error fails.
    private func moveFinished(_ round: inout Round) {
        let candidates = changed
        changed = []
        // Jobs whose transfers are done move on together: one write of their events (JobStore.move(_:)).
        var batch: [(id: String, what: String, move: JobStore.Planned)] = []
        for id in candidates {
            guard let entry = served[id] else { continue }
            let direction: TransferSlot.Direction = entry.state == .ready ? .in : .out
            let mine = entry.items.filter { $0.direction == direction }
            let what = direction == .in ? "stage-in" : "stage-out"
            if let failed = mine.first(where: { $0.state == .error }) {
                let why = failed.info["error"]?.stringValue ?? "failed"
                fail(
                    id, entry.state,
                    reason:
                        "\(what) of slot \(failed.slot) (\(failed.alias):\(failed.remotePath)) failed after \(failed.attempts) attempt(s): \(why)",
                    items: mine)
                served[id] = nil
                round.moved += 1
            } else if mine.allSatisfy({ $0.state == .done }) {
                do {
                    guard let loaded = try store.load(id, in: entry.state) else {
                        served[id] = nil
                        continue
                    }
                    // As the engine would next: with no preprocess hook, on to the ready queue in the same move.
                    var steps: [(state: JobState, reason: String?)] = [
                        (entry.state == .ready ? .stagedIn : .stagedOut, "\(what) done (\(mine.count) item(s))")
                    ]
                    if entry.state == .ready && !entry.preprocesses { steps.append((.preprocessed, nil)) }
                    batch.append(
                        (
                            id, what,
                            JobStore.Planned(loaded: loaded, steps: steps, eventData: TransferService.eventData(mine))
                        ))
                } catch {
                    logger.error(
                        "job \(id): cannot move it on after its \(what): \(error)", metadata: ["job.id": "\(id)"])
                }
                served[id] = nil
            }
        }
        for ((id, what, _), result) in zip(batch, store.move(batch.map(\.move))) {
            switch result {
            case .success: round.moved += 1
            case .failure(let error):
                logger.error(
                    "job \(id): cannot move it on after its \(what): \(error)", metadata: ["job.id": "\(id)"])
            }
        }
    }

    /// The items' outcome in the event of the move they caused: the sync takes it to the server's items.
    static func eventData(_ items: [TransferItem]) -> [String: JSONValue] {
        [
            "transfers": .array(
                items.map { item in
                    var o: [String: JSONValue] = [
                        "direction": .string(item.direction.rawValue), "local_path": .string(item.localPath),
                        "remote_path": .string(item.remotePath), "location_alias": .string(item.alias),
                        "state": .string(item.state.rawValue),
                    ]
                    if let error = item.info["error"] { o["error"] = error }
                    return .object(o)
                })
        ]
    }

    /// Fails a job for its transfers. A job that could not be failed is set aside (not tried every round); one
    /// that was is not: it left the state this service serves, and a retry may bring it back before the next
    /// look, to be served afresh (set aside, it sat in READY for ever).
    private func fail(_ id: String, _ state: JobState, reason: String, items: [TransferItem] = []) {
        do {
            guard let loaded = try store.load(id, in: state) else { return }
            try store.move(
                loaded, to: .failed, reason: reason, eventData: items.isEmpty ? [:] : TransferService.eventData(items))
            // Forgotten at once: a retry may bring it back before the next look, and must find it served afresh.
            served[id] = nil
            pending.remove(id)
            changed.remove(id)
            logger.error("job \(id) FAILED: \(reason)", metadata: ["job.id": "\(id)"])
        } catch {
            logger.error("job \(id): cannot fail it (\(reason)): \(error)", metadata: ["job.id": "\(id)"])
            idle.insert(id)
        }
    }

    /// Pending items go out in batches: by direction and location, the largest group first.
    /// Pending items seen at the last round, and since when their number has been growing: while jobs are still
    /// arriving (a bulk submission being made), batches wait a little to fill, up to half a second.
    private var lastPending = 0
    private var growingSince: Double?

    private func submit(_ round: inout Round) {
        guard tasks.count < settings.transfers.maxConcurrent else { return }
        let now = Posix.monotonicSeconds()
        if pending.count > lastPending && pending.count < settings.transfers.batchSize {
            lastPending = pending.count
            if now - (growingSince ?? now) < 0.5 {
                growingSince = growingSince ?? now
                round.holding = true
                return
            }
        }
        lastPending = 0
        growingSince = nil
        struct Group {
            var direction: TransferSlot.Direction
            var location: TransferLocation
            var entries: [(job: String, slot: String, request: TransferRequest)] = []
        }
        var groups: [String: Group] = [:]
        let candidates = pending.sorted()
        pending = []
        for id in candidates {
            guard let entry = served[id] else { continue }
            let direction: TransferSlot.Direction = entry.state == .ready ? .in : .out
            for item in entry.items where item.direction == direction && item.state == .pending {
                if let due = notBefore[id + "/" + item.slot] {
                    if due > now {
                        pending.insert(id)  // looked at again in a later round (every service_period)
                        continue
                    }
                    notBefore[id + "/" + item.slot] = nil
                }
                guard let location = settings.transferLocations[item.alias] else {
                    fail(id, entry.state, reason: "no transfer location '\(item.alias)' in settings.yml")
                    served[id] = nil
                    break
                }
                let key = direction.rawValue + " " + item.alias
                let request = TransferRequest(
                    key: id + "/" + item.slot, jobDirectory: entry.directory, localPath: item.localPath,
                    remotePath: location.remotePath(item.remotePath), recursive: item.recursive)
                groups[key, default: Group(direction: direction, location: location)].entries.append(
                    (id, item.slot, request))
            }
        }
        // The largest group first, then by name; each gives batches until the tasks allowed are in flight.
        var queue = groups.sorted { ($0.value.entries.count, $1.key) > ($1.value.entries.count, $0.key) }.map(\.value)
        while tasks.count < settings.transfers.maxConcurrent, !queue.isEmpty {
            let batch = Array(queue[0].entries.prefix(settings.transfers.batchSize))
            queue[0].entries.removeFirst(batch.count)
            let (direction, location) = (queue[0].direction, queue[0].location)
            if queue[0].entries.isEmpty { queue.removeFirst() }
            guard let backend = backends[location.kind] else { continue }
            do {
                let taskID = try backend.submit(batch.map(\.request), direction: direction, location: location)
                tasks[taskID] = (location.kind, batch.map { ($0.job, $0.slot) })
                // Active items are known here only: a file per job per task cost more than the small files
                // moved (a restart makes such items pending again, as their saved state says).
                for (job, slot, _) in batch {
                    guard let i = served[job]?.items.firstIndex(where: { $0.slot == slot }) else { continue }
                    served[job]?.items[i].state = .active
                    served[job]?.items[i].taskID = taskID
                }
                round.submitted += batch.count
            } catch {
                // The task could not start (a missing tool, a consent to give): each item's attempt counts.
                logger.error("cannot start a \(location.kind.rawValue) transfer to \(location.alias): \(error)")
                record(batch.map { ($0.job, $0.slot) }, task: nil, failures: ["*": error.description], &round)
            }
        }
        // What did not fit in the tasks allowed waits for a later round.
        for group in queue { pending.formUnion(group.entries.map(\.job)) }
    }
}
