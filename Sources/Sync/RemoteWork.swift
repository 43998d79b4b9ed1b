import Spool
import Wire

/// What the reply to a push asks of the site, carried out with the site's own operations: apps defined through
/// the API installed, users' requests (kill, retry, change, delete) done, batch jobs asked for submitted, and
/// jobs made through the API taken in through the same checks as `balsam-submit`. What cannot be done is refused
/// with the reason, which the next push carries back.
extension Pusher {
    /// Makes the apps defined in Python through the API (`class Hello(ApplicationDefinition)`) at the site, or
    /// replaces them when their definition changed: `app.yml` (a shell app with its `command_template`, or a
    /// Python app whose `run()` the site's Python runs), the pickled class in `class.b64`, and a hook file for
    /// each lifecycle method the class defines (see `PythonApps`). An app that does not make a valid app here is
    /// refused (in `SyncState.refused`, shown by `balsam sync status` and logged once) and taken as seen, so
    /// that the server does not send it every round; a new definition of it is tried again.
    func takeApps(_ remote: [RemoteApp], state: inout SyncState, round: inout Round) throws {
        guard !remote.isEmpty else { return }
        let python = try SiteSettings.load(site).python.executable
        for item in remote {
            let (name, digest, template) = (item.name, item.digest, item.commandTemplate)
            var parameters: [String: App.Parameter] = [:]
            for (key, spec) in item.parameters {
                let s = spec.objectValue ?? [:]
                let required = s["required"] != .bool(false)
                let fallback = s["default"].flatMap { $0 == .null ? nil : $0 }
                parameters[key] = App.Parameter(
                    required: required, defaultValue: required ? nil : fallback, help: s["help"]?.stringValue ?? "")
            }
            var refusal: String?
            do {
                var app = try App(name: name, commandTemplate: template ?? "", python: template == nil)
                app.parameters = parameters
                app.description = item.description
                app.transfers = item.transfers
                app.cleanupFiles = item.cleanupFiles
                try app.validate()
                if !item.serializedClass.isEmpty {
                    let classText = item.serializedClass
                    try PythonApps.install(
                        app, classText: classText, overridden: PythonApps.overriddenMethods(classText: classText),
                        site: site, python: python)
                } else if Posix.exists(site.appsPath + "/" + name + "/app.yml") {
                    try Posix.replaceFile(
                        site.appsPath + "/" + name + "/app.yml", Array(app.yamlText().utf8), sync: true)
                } else {
                    try site.createApp(app)
                }
            } catch {
                // The reason goes back to the server with every push: no NUL (a string the server refuses; the
                // error may quote the app's own text) and a bounded length.
                let text = "cannot install: \(error)".replacingAll("\u{0}", with: "\\0")
                refusal = text.utf8.count > 4096 ? String(decoding: text.utf8.prefix(4096), as: UTF8.self) : text
            }
            if state.refuse("app " + name, refusal), let refusal { round.newRefusals.append("app \(name): \(refusal)") }
            state.remoteApps[name] = digest
            try state.save(site)
        }
    }

    /// Carries out users' requests about this site's jobs with the site's own control operations: a kill
    /// (`FAILED`), a retry (`READY`, `RESTART_READY`, or `AWAITING_PARENTS` to wait for retried parents, from
    /// `FAILED`), a deletion. What cannot be done now (a job
    /// under a launcher, for a deletion) waits for a later round; what cannot be done at all (a kill of an ended
    /// job, any other state) is refused with the reason. Returns how many were answered.
    /// The member of a job's data that says why the site refused a user's request about it.
    static let refusalKey = "balsam_request_refused"

    func carryOut(_ requests: [JobRequest], state: inout SyncState) throws -> Int {
        let control = Control(site: site, actor: "balsam-sync")
        defer { writeRefusalNotes(&state, control: control) }
        guard !requests.isEmpty else { return 0 }
        var answered = 0
        for request in requests {
            let (id, job, kind) = (request.id, request.siteJobID, request.kind)
            let key = String(id)
            if state.requestsDone[key] != nil { continue }
            func answer(_ outcome: String, _ reason: String?, _ jobs: [JobListing] = []) throws {
                let refused = outcome == "refused" ? reason ?? "refused by the site" : nil
                // Where the user sees it: the job's data, at the site and (pushed with its spec) on the server.
                if let refused {
                    for j in jobs { state.refusalNotes[j.id] = refused }
                    state.refuseHere("request \(id) (\(kind.name) of job \(job))", refused)
                }
                let done = RequestAnswer(id: id, refused: refused)
                state.requestsDone[key] = done.json
                try state.save(site)
                answered += 1
            }
            var filter = JobFilter()
            filter.ids = [job]
            let selected = try control.select(filter)
            guard !selected.isEmpty else {
                try answer("refused", "job \(job) is no longer at site \(site.name)")
                continue
            }
            let target = request.target
            let outcomes: [Control.Outcome]
            switch (kind, target) {
            case (.state, JobState.failed.rawValue?):
                outcomes = control.kill(selected, reason: "killed through the API")
            case (.state, JobState.ready.rawValue?): outcomes = control.retry(selected, restart: false)
            case (.state, JobState.restartReady.rawValue?): outcomes = control.retry(selected, restart: true)
            case (.state, JobState.awaitingParents.rawValue?): outcomes = control.retry(selected, to: .awaitingParents)
            case (.delete, _): outcomes = control.remove(selected, keepFiles: false)
            case (.modify, let text?):
                let change = (try? JSONValue.parse(text))?.objectValue ?? [:]
                outcomes = control.modify(selected) { (job) throws(SpoolError) in try job.apply(change: change) }
            case (.transfer, let text?):
                let (outcome, reason) = try TransferChange(site: site).apply(text, to: selected[0])
                try answer(outcome, reason, selected)
                continue
            default:
                try answer(
                    "refused",
                    "site \(site.name) moves its jobs itself; through the API it takes kills (FAILED), retries "
                        + "(READY, RESTART_READY, AWAITING_PARENTS), changes of the spec and deletions, not \(target ?? kind.name)",
                    selected)
                continue
            }
            guard let outcome = outcomes.first else { continue }
            switch outcome.kind {
            case .done, .requested: try answer("done", nil)
            case .unchanged where kind == .modify: try answer("done", nil)
            case .notNow: continue
            case .unchanged, .failed: try answer("refused", outcome.message, selected)
            }
        }
        return answered
    }

    /// Writes each pending refusal into its job's `data` (`refusalKey`); one that cannot be written now (the job
    /// is under a launcher) waits for a later round, one whose job is gone is dropped.
    func writeRefusalNotes(_ state: inout SyncState, control: Control) {
        guard !state.refusalNotes.isEmpty else { return }
        var filter = JobFilter()
        filter.ids = Set(state.refusalNotes.keys)
        let jobs = (try? control.select(filter)) ?? []
        let present = Set(jobs.map(\.id))
        for id in state.refusalNotes.keys where !present.contains(id) { state.refusalNotes[id] = nil }
        for job in jobs {
            guard let note = state.refusalNotes[job.id] else { continue }
            let outcome = control.modify([job]) { $0.data[Pusher.refusalKey] = .string(note) }.first
            if outcome?.kind != .notNow { state.refusalNotes[job.id] = nil }
        }
        try? state.save(site)
    }

    /// Batch jobs asked for through the API go through `balsam queue submit`'s checks against the site's policy
    /// (queues, projects, sizes, optional parameters) and into `batchjobs/`, where the scheduler service submits
    /// them; refused ones are reported with the reason. Deletions asked through the API become the site's own
    /// deletion requests.
    func takeBatchJobs(_ reply: PushReply, state: inout SyncState) throws {
        let store = BatchJobStore(site: site)
        if !reply.remoteBatchJobs.isEmpty {
            let policy = try SiteSettings.load(site).scheduler
            for o in reply.remoteBatchJobs {
                let serverID = o.id
                let key = String(serverID)
                if state.batchAdopted[key] != nil || state.batchRejected[key] != nil { continue }
                let existing = try store.all().jobs
                // Made here already by a watcher killed before it saved its state: that one, not a second.
                if let made = existing.first(where: { $0.serverID == serverID }) {
                    state.batchAdopted[key] = made.id
                    try state.save(site)
                    continue
                }
                var job = BatchJob(
                    project: o.project, queue: o.queue, numNodes: o.numNodes, wallTimeMinutes: o.wallTimeMinutes)
                job.filterTags = o.filterTags
                job.optionalParams = o.optionalParams
                job.origin = BatchJob.serverOrigin(serverID)
                do {
                    try job.validate(against: policy, active: existing.filter { !$0.state.isFinal })
                    let made = try store.create(job)
                    state.batchAdopted[key] = made.id
                } catch {
                    state.batchRejected[key] = "\(error)"
                    state.refuseHere("batch job \(serverID) (\(o.numNodes) node(s), queue \(o.queue))", "\(error)")
                }
                try state.save(site)
            }
        }
        for id in reply.batchDeletions {
            guard let job = try store.load(id), !job.state.isFinal, !store.deletionRequested(id) else { continue }
            try store.requestDeletion(id)
        }
    }

    /// Takes jobs made through the server's API into the site, through the same checks as `balsam-submit`. A
    /// job the site cannot take (no such app, parameters only Python can read, a bad workdir) is refused with
    /// the reason, which the next push carries to the server. Each taking is recorded durably before the
    /// next, so a crash never makes a job twice: its workdir would be taken, and the job there is recognized by
    /// the server id in its data.
    func take(_ remote: [PushItem<RemoteJob>], state: inout SyncState) throws -> (Int, Int) {
        guard !remote.isEmpty else { return (0, 0) }
        var submission = Submission(site: site, actor: "balsam-sync")
        let names = try site.appNames()
        // App names are the site's own, on both ends.
        let apps = Set(names)
        let pythonApps = Set(names.filter { (try? site.app($0))?.isPython == true })
        var adopted = 0
        var refused = 0
        for item in remote {
            let serverID: Int
            switch item {
            case .read(let job): serverID = job.id
            case .unreadable(let id, _):
                guard let id = Int(id) else { continue }
                serverID = id
            }
            let key = String(serverID)
            if state.adopted[key] != nil || state.rejected[key] != nil { continue }
            func refuse(_ reason: String) throws {
                state.rejected[key] = reason
                let workdir = { if case .read(let o) = item { " (workdir \(o.spec.workdir))" } else { "" } }()
                state.refuseHere("job \(serverID)\(workdir)", reason)
                try state.save(site)
                refused += 1
            }
            guard case .read(let o) = item else {
                if case .unreadable(_, let error) = item { try refuse("the server sent it wrong: \(error)") }
                continue
            }
            let app = o.spec.app
            guard apps.contains(app) else {
                try refuse(
                    "site \(site.name) has no app '\(app)' (its apps: \(names.isEmpty ? "none" : names.joined(separator: ", ")))"
                )
                continue
            }
            let pickled = o.serializedParameters
            let parameters: [String: JSONValue]
            let isPython = pythonApps.contains(app)
            // The server's verdict, given again here (one function): a server from before it gave it may have
            // stored what this app cannot take.
            do {
                switch try Pickle.jobParameters(base64: pickled, pythonApp: isPython) {
                case .plain(let plain): parameters = plain
                case .pythonOnly: parameters = [:]  // only the site's Python reads them (a numpy array, say)
                }
            } catch {
                try refuse("\(error)")
                continue
            }
            if !o.lostParentIDs.isEmpty {
                let named = o.lostParentIDs.map(String.init).joined(separator: ", ")
                try refuse("its parent job(s) \(named) were deleted, or failed before the site took them")
                continue
            }
            var parents: [String] = []
            var waiting = false
            for parent in o.parentIDs {
                if let id = o.parentSiteIDs[parent] ?? state.adopted[String(parent)] {
                    parents.append(id)
                } else {
                    waiting = true
                }
            }
            if waiting { continue }  // a parent not at the site yet: taken with a later round
            var job = o.spec
            job.parameters = parameters
            if isPython { job.serializedParameters = pickled }
            job.serverID = serverID
            job.parentIDs = parents
            do {
                let (made, _) = try submission.submit(job)
                state.adopted[key] = made.id
                try state.save(site)
                try? ServerIDs.append(site, [(made.id, serverID)])
                adopted += 1
            } catch {
                if let existing = try madeBefore(workdir: job.workdir, serverID: serverID) {
                    state.adopted[key] = existing
                    try state.save(site)
                    adopted += 1
                } else {
                    try refuse("\(error)")
                }
            }
        }
        return (adopted, refused)
    }

    /// The site's job at `workdir` made from server job `serverID` before a crash, if there is one.
    func madeBefore(workdir: String, serverID: Int) throws -> String? {
        var filter = JobFilter()
        filter.workdir = WorkdirPattern(workdir)
        return try Query(site: site).list(filter, load: false).first {
            // (`data.balsam_server_id`: where sites before issue #34 kept it.)
            $0.workdir == workdir
                && ($0.job?.serverID ?? $0.job?.data["balsam_server_id"]?.intValue) == serverID
        }?.id
    }
}
