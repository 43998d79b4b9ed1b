import ArgumentParser
import BalsamCLI
import Spool

/// The filters `balsam ls` and the control commands share; a job is selected when it passes all of them.
struct JobFilterOptions: ParsableArguments {
    @Option(name: [.short, .long], help: "Only jobs in this state (repeatable).")
    var state: [String] = []

    @Option(name: .long, help: "Leave out jobs in this state (repeatable).")
    var excludeState: [String] = []

    @Option(name: .long, help: ArgumentHelp("Only jobs with this tag, KEY=VALUE (repeatable).", valueName: "key=value"))
    var tag: [String] = []

    @Option(name: [.short, .long], help: "Only jobs of this app.")
    var app: String?

    @Option(
        name: [.short, .long],
        help: ArgumentHelp(
            "Only the job of this workdir, or with *, ? or [...] the jobs whose workdirs match the glob (* matches / too).",
            valueName: "workdir"))
    var workdir: String?

    /// Whether no filter is given.
    var isEmpty: Bool { state.isEmpty && excludeState.isEmpty && tag.isEmpty && app == nil && workdir == nil }

    /// The filter these options make.
    func filter() throws(SpoolError) -> JobFilter {
        var filter = JobFilter()
        if !state.isEmpty {
            var states = Set<JobState>()
            for s in state { states.insert(try JobState.parse(s)) }
            filter.states = states
        }
        for s in excludeState { filter.excludeStates.insert(try JobState.parse(s)) }
        for t in tag {
            let (k, v) = try keyValue(t, option: "--tag")
            filter.tags[k] = v
        }
        filter.app = app
        filter.workdir = workdir.map(WorkdirPattern.init)
        return filter
    }
}

/// Which jobs a control command acts on: IDs, and the filters of `balsam ls`. Something must be given; `--all`
/// selects every job. A command that would touch more than one job asks first on a terminal (`--yes` does not);
/// `--dry-run` lists the jobs and changes nothing.
struct JobSelection: ParsableArguments {
    @Argument(help: "Job IDs.")
    var ids: [String] = []

    @OptionGroup var filters: JobFilterOptions

    @Flag(name: .long, help: "Every job of the site (needed when no ID or filter is given).")
    var all = false

    @Flag(name: [.short, .long], help: "Do not ask before changing more than one job.")
    var yes = false

    @Flag(name: .long, help: "List the jobs that would change; change nothing.")
    var dryRun = false

    func validate() throws {
        if ids.isEmpty && filters.isEmpty && !all {
            throw ValidationError("Name jobs by ID or filter (--tag, --state, --app, --workdir), or give --all.")
        }
    }

    /// The filters and IDs; an id in digits is the server's (`ServerIDs`), as the original client shows it.
    func filter(site: Site) throws(SpoolError) -> JobFilter {
        var filter = try filters.filter()
        if !ids.isEmpty {
            var known: ServerIDs.Map?
            filter.ids = Set(
                try ids.map { (id) throws(SpoolError) -> String in
                    if JobID.isValid(id) { return id }
                    guard ServerIDs.isServerID(id) else {
                        throw SpoolError(.usage, "'\(id)' is not a job ID (nor a server id: digits)")
                    }
                    if known == nil { known = ServerIDs.load(site) }
                    guard let mapped = known?.jobID(id) else {
                        throw SpoolError(
                            .notFound, "no job of this site has server id \(id) (yet: the sync records it)")
                    }
                    return mapped
                })
        }
        return filter
    }
}

/// Runs a control action over the selected jobs, prints one line per job, and exits 75 if some could not be done
/// now (66 if nothing matched). `verb` says what it does to a job, for the question and `--dry-run`.
func control(
    _ name: String, verb: String, _ siteOption: SiteOption, _ selection: JobSelection,
    _ action: (Control, [JobListing]) throws(SpoolError) -> [Control.Outcome]
) throws {
    try reportingErrors("balsam \(name)") {
        let site = try siteOption.open()
        let control = Control(site: site, actor: "balsam \(name)")
        let jobs = try control.select(selection.filter(site: site))
        if jobs.isEmpty { throw SpoolError(.notFound, "no job matches") }
        if selection.dryRun {
            print(
                table(["ID", "STATE", "APP", "WORKDIR"], jobs.map { [$0.id, $0.state.rawValue, $0.app, $0.workdir] }))
            printError(
                "balsam \(name): would \(verb) \(jobs.count) job\(jobs.count == 1 ? "" : "s") (--dry-run: nothing changed)"
            )
            return
        }
        if jobs.count > 1 && !selection.yes && onATerminal {
            let sample = jobs.prefix(5).map(\.workdir).joined(separator: ", ") + (jobs.count > 5 ? ", ..." : "")
            guard confirm("balsam \(name): \(verb) \(jobs.count) jobs (\(sample))? [y/N] ") else {
                printError("balsam \(name): nothing changed")
                throw ExitCode(1)
            }
        }
        let outcomes = try action(control, jobs)
        print(outcomes.map(\.description).joined(separator: "\n"))
        // Exit status by the gravest outcome: a failure for good (bad values 65, I/O 74) before "try again" (75).
        let failed = outcomes.filter { $0.kind == .failed }
        if let first = failed.first {
            throw SpoolError(first.code ?? .io, "\(failed.count) of \(outcomes.count) jobs could not be changed")
        }
        let notNow = outcomes.filter { $0.kind == .notNow }.count
        if notNow > 0 { throw SpoolError(.conflict, "\(notNow) of \(outcomes.count) jobs could not be changed now") }
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fail jobs now; jobs held by a launcher are stopped and failed by it.",
        discussion: "Their waiting children then fail too (balsam-watch does that).")

    @OptionGroup var siteOption: SiteOption
    @OptionGroup var selection: JobSelection

    @Option(name: .long, help: "The reason recorded in the jobs' state.")
    var reason = "killed by the user"

    func run() throws {
        try control("kill", verb: "kill", siteOption, selection) { c, jobs in c.kill(jobs, reason: reason) }
    }
}

struct Retry: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run FAILED jobs again, from READY (or RESTART_READY with --restart); retry counts start over.",
        discussion:
            "Jobs that failed because a retried job did are named; with --with-children they go back to AWAITING_PARENTS."
    )

    @OptionGroup var siteOption: SiteOption
    @OptionGroup var selection: JobSelection

    @Flag(name: .long, help: "Go straight to RESTART_READY: run again without preprocessing.")
    var restart = false

    @Flag(
        name: .long,
        help:
            "Also retry the jobs that failed because these did (their children, and theirs): they wait for them again."
    )
    var withChildren = false

    func run() throws {
        try control("retry", verb: "retry", siteOption, selection) { c, jobs in
            c.retry(jobs, restart: restart, withChildren: withChildren)
        }
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Remove jobs and delete their directories (jobs held by a launcher are reported, not removed).")

    @OptionGroup var siteOption: SiteOption
    @OptionGroup var selection: JobSelection

    @Flag(name: .long, help: "Keep the job directories; rename job.json and state to *.removed.")
    var keepFiles = false

    func run() throws {
        try control("rm", verb: "remove", siteOption, selection) { c, jobs in c.remove(jobs, keepFiles: keepFiles) }
    }
}

struct Modify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change tags, data, parameters or resources of jobs not held by a launcher.")

    @OptionGroup var siteOption: SiteOption
    @OptionGroup var selection: JobSelection

    @Option(name: .customLong("set-tag"), help: ArgumentHelp("Set a tag, KEY=VALUE.", valueName: "key=value"))
    var setTag: [String] = []

    @Option(name: .long, help: ArgumentHelp("Remove a tag.", valueName: "key"))
    var removeTag: [String] = []

    @Option(
        name: .customLong("set-data"),
        help: ArgumentHelp("Set a data entry, KEY=VALUE (JSON if it parses).", valueName: "key=value"))
    var setData: [String] = []

    @Option(
        name: .customLong("set-param"),
        help: ArgumentHelp("Set a parameter, KEY=VALUE (JSON if it parses).", valueName: "key=value"))
    var setParam: [String] = []

    @Option(name: .long, help: "Nodes the job spans.")
    var numNodes: Int?

    @Option(name: .long, help: "MPI ranks per node.")
    var ranksPerNode: Int?

    @Option(name: .long, help: "Threads per rank.")
    var threadsPerRank: Int?

    @Option(name: .long, help: "GPUs per rank.")
    var gpusPerRank: Double?

    @Option(name: .long, help: "Jobs that may share one node.")
    var nodePackingCount: Int?

    @Option(name: .long, help: "Expected run time in minutes.")
    var wallTimeMin: Int?

    func run() throws {
        try control("modify", verb: "modify", siteOption, selection) { (c, jobs) throws(SpoolError) in
            var tags: [(String, String)] = []
            for t in setTag { tags.append(try keyValue(t, option: "--set-tag")) }
            var data: [(String, String)] = []
            for d in setData { data.append(try keyValue(d, option: "--set-data")) }
            var params: [(String, String)] = []
            for p in setParam { params.append(try keyValue(p, option: "--set-param")) }
            return c.modify(jobs) { job in
                for (k, v) in tags { job.tags[k] = v }
                for k in removeTag { job.tags[k] = nil }
                for (k, v) in data { job.data[k] = parameterValue(v) }
                for (k, v) in params { job.parameters[k] = parameterValue(v) }
                if let numNodes { job.numNodes = numNodes }
                if let ranksPerNode { job.ranksPerNode = ranksPerNode }
                if let threadsPerRank { job.threadsPerRank = threadsPerRank }
                if let gpusPerRank { job.gpusPerRank = gpusPerRank }
                if let nodePackingCount { job.nodePackingCount = nodePackingCount }
                if let wallTimeMin { job.wallTimeMin = wallTimeMin }
            }
        }
    }
}
