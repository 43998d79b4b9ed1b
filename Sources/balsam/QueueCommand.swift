import ArgumentParser
import BalsamCLI
import Batch
import Spool

struct QueueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "Ask the batch scheduler for allocations that run this site's jobs, and follow them.",
        discussion: """
            Batch jobs are records in SITE/batchjobs/. balsam-watch submits them to the site's scheduler \
            (scheduler.scheduler_class in settings.yml), follows their states and cancels those removed. \
            See balsam-queue(1).
            """,
        subcommands: [QueueSubmit.self, QueueList.self, QueueRemove.self])
}

/// Batch jobs move only while the site's watcher runs: say so on standard error when its claim has no live holder.
func warnIfNoWatcher(_ site: Site, _ program: String) {
    warnIfNoWatcher(site, program, because: "batch jobs are submitted and followed by it")
}

struct QueueSubmit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Ask for a batch job: NODES nodes for MIN minutes in QUEUE, charged to PROJECT.",
        discussion: """
            Checked against the site's policy (scheduler.allowed_queues, allowed_projects, \
            optional_batch_job_params in settings.yml). balsam-watch submits it at its next scheduler round. \
            Prints the batch job's ID.
            """)

    @OptionGroup var siteOption: SiteOption

    @Option(name: [.customShort("n"), .customLong("num-nodes")], help: "Nodes.")
    var nodes: Int

    @Option(name: [.customShort("t"), .customLong("wall-time-min")], help: "Wall time in minutes.")
    var minutes: Int

    @Option(name: [.short, .long], help: "The scheduler's queue (partition). Default: the site's only one.")
    var queue: String?

    @Option(name: [.customShort("A"), .long], help: "The project (account). Default: the site's only one.")
    var project: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Its launcher runs only jobs with this tag (repeatable).", valueName: "key=value"))
    var tag: [String] = []

    @Option(
        name: [.customShort("x"), .customLong("extra-param")],
        help: ArgumentHelp("An optional parameter of the site's job template (repeatable).", valueName: "key=value"))
    var parameters: [String] = []

    @Flag(name: .long, help: "Print the new batch job as one JSON object.")
    var json = false

    func run() throws {
        try reportingErrors("balsam queue submit") {
            let site = try siteOption.open()
            let policy = try SiteSettings.load(site).scheduler
            func only(_ names: [String], _ what: String, _ option: String) throws(SpoolError) -> String {
                guard names.count == 1 else {
                    throw SpoolError(
                        .usage,
                        "give \(option): the site allows \(names.count) \(what)s (\(names.joined(separator: ", ")))")
                }
                return names[0]
            }
            var job = BatchJob(
                project: try project ?? only(policy.allowedProjects, "project", "-A PROJECT"),
                queue: try queue ?? only(policy.allowedQueues.keys.sorted(), "queue", "-q QUEUE"), numNodes: nodes,
                wallTimeMinutes: minutes)
            for t in tag {
                let (k, v) = try keyValue(t, option: "--tag")
                job.filterTags[k] = v
            }
            for p in parameters {
                let (k, v) = try keyValue(p, option: "-x")
                job.optionalParams[k] = v
            }
            let store = BatchJobStore(site: site)
            try job.validate(against: policy, active: try store.all().jobs.filter { !$0.state.isFinal })
            let made = try store.create(job)
            print(json ? made.json.serialized() : String(made.id))
            warnIfNoWatcher(site, "balsam queue submit")
        }
    }
}

struct QueueList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List batch jobs not yet ended (with --history, all of them).")

    @OptionGroup var siteOption: SiteOption

    @Flag(name: .long, help: "Include ended batch jobs (finished, submit_failed).")
    var history = false

    @Flag(name: .long, help: "Print JSON: one object per batch job per line.")
    var json = false

    func run() throws {
        try reportingErrors("balsam queue ls") {
            let site = try siteOption.open()
            let store = BatchJobStore(site: site)
            let (all, problems) = try store.all()
            for problem in problems { printError("balsam queue ls: \(problem)") }
            let jobs = all.filter { history || !$0.state.isFinal }
            if jobs.contains(where: { !$0.state.isFinal }) { warnIfNoWatcher(site, "balsam queue ls") }
            if json {
                print(jobs.map { $0.json.serialized() + "\n" }.joined(), terminator: "")
                return
            }
            let rows = jobs.map { j -> [String] in
                let state =
                    store.deletionRequested(j.id) && !j.state.isFinal
                    ? "pending_deletion" : j.state.rawValue + (j.outcome.map { "(\($0.rawValue))" } ?? "")
                return [
                    String(j.id), j.schedulerID ?? "-", state, j.queue, j.project, String(j.numNodes),
                    String(j.wallTimeMinutes), j.submitTime.map(shortTime) ?? "-", j.startTime.map(shortTime) ?? "-",
                    j.endTime.map(shortTime) ?? "-", j.message ?? "",
                ]
            }
            print(
                table(
                    [
                        "ID", "SCHED_ID", "STATE", "QUEUE", "PROJECT", "NODES", "MIN", "SUBMITTED", "STARTED", "ENDED",
                        "MESSAGE",
                    ], rows))
        }
    }

    /// `2026-11-25T14:39:38.000Z` → `11-25 14:39:38` (UTC).
    private func shortTime(_ t: String) -> String {
        guard t.count >= 19 else { return t }
        let chars = Array(t)
        return String(chars[5..<10]) + " " + String(chars[11..<19])
    }
}

struct QueueRemove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Delete batch jobs: cancel them with the scheduler, or drop them if not yet submitted.",
        discussion: "balsam-watch carries it out at its next scheduler round; the record ends 'finished (cancelled)'.")

    @OptionGroup var siteOption: SiteOption

    @Argument(help: "Batch job IDs (from 'balsam queue ls').")
    var ids: [Int]

    func run() throws {
        try reportingErrors("balsam queue rm") {
            let site = try siteOption.open()
            let store = BatchJobStore(site: site)
            for id in ids { try store.requestDeletion(id) }
            warnIfNoWatcher(site, "balsam queue rm")
        }
    }
}
