import ArgumentParser
import BalsamCLI
import Spool

@main
struct SubmitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam-submit",
        abstract: "Submit jobs to a Balsam site.",
        discussion: """
            One job from options (-a APP -w WORKDIR ...), many jobs from JSON lines (--from FILE, - for \
            standard input), or a hand-made job directory (DIR with a job.json). Prints one job ID per line. \
            See balsam-submit(1) and balsam-spool(5).
            """,
        version: BalsamVersion.string)

    @OptionGroup var siteOption: SiteOption

    @Argument(help: "A job directory holding a job.json, adopted into the site (moved to data/WORKDIR).")
    var directory: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Submit every JSON line of this file (- for standard input).", valueName: "file"))
    var from: String?

    @Option(name: [.short, .long], help: "The app the job runs.")
    var app: String?

    @Option(name: [.short, .long], help: "The job's directory, relative to the site's data/.")
    var workdir: String?

    @Option(
        name: [.short, .customLong("param")],
        help: ArgumentHelp(
            "A parameter, KEY=VALUE; VALUE is JSON if it parses as JSON, else text.", valueName: "key=value"))
    var param: [String] = []

    @Option(name: .long, help: ArgumentHelp("A tag, KEY=VALUE.", valueName: "key=value"))
    var tag: [String] = []

    @Option(
        name: .customLong("data"),
        help: ArgumentHelp("A data entry, KEY=VALUE (JSON if it parses).", valueName: "key=value"))
    var dataEntries: [String] = []

    @Option(
        name: [.short, .long], parsing: .unconditional, help: "Nodes the job spans.")
    var numNodes: String?

    @Option(
        name: [.customLong("ranks-per-node"), .customLong("rpn", withSingleDash: true)], parsing: .unconditional,
        help: "MPI ranks per node.")
    var ranksPerNode: String?

    @Option(
        name: [.customLong("threads-per-rank"), .customLong("tpr", withSingleDash: true)], parsing: .unconditional,
        help: "Threads per rank.")
    var threadsPerRank: String?

    @Option(
        name: [.customLong("threads-per-core"), .customLong("tpc", withSingleDash: true)], parsing: .unconditional,
        help: "Hardware threads per core.")
    var threadsPerCore: String?

    @Option(
        name: [.customShort("g"), .customLong("gpus-per-rank")], parsing: .unconditional, help: "GPUs per rank.")
    var gpusPerRank: String?

    @Option(
        name: [.customLong("node-packing-count"), .customLong("npc", withSingleDash: true)], parsing: .unconditional,
        help: "Jobs that may share one node.")
    var nodePackingCount: String?

    @Option(
        name: [.customShort("t"), .customLong("wall-time-min")], parsing: .unconditional,
        help: "Expected run time in minutes.")
    var wallTimeMin: String?

    @Option(name: .long, help: ArgumentHelp("An option for the MPI launch command, KEY=VALUE.", valueName: "key=value"))
    var launchParam: [String] = []

    @Option(
        name: [.customLong("parent"), .customLong("parent-id")],
        help: ArgumentHelp("A job that must finish first (repeatable).", valueName: "id"))
    var parent: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A transfer slot filled, SLOT=ALIAS:/absolute/path (repeatable; see balsam-transfer(1)).",
            valueName: "slot=alias:/path"))
    var transfer: [String] = []

    @Flag(name: .long, help: "Print the created jobs as JSON lines instead of IDs.")
    var json = false

    var hasJobOptions: Bool {
        app != nil || workdir != nil || !param.isEmpty || !tag.isEmpty || !dataEntries.isEmpty || numNodes != nil
            || ranksPerNode != nil || threadsPerRank != nil || threadsPerCore != nil || gpusPerRank != nil
            || nodePackingCount != nil || wallTimeMin != nil || !launchParam.isEmpty || !parent.isEmpty
            || !transfer.isEmpty
    }

    func validate() throws {
        let modes = [directory != nil, from != nil, hasJobOptions].filter { $0 }.count
        if modes == 0 {
            throw ValidationError("Give -a APP -w WORKDIR, --from FILE, or a job directory.")
        }
        if modes > 1 {
            throw ValidationError("Give only one of: job options (-a, -w, ...), --from FILE, or a job directory.")
        }
        if hasJobOptions && (app == nil || workdir == nil) {
            throw ValidationError("A job from options needs both -a/--app and -w/--workdir.")
        }
    }

    func run() throws {
        try refuseInvalidUTF8Arguments("balsam-submit")
        try reportingErrors("balsam-submit") {
            let site = try siteOption.open()
            var submission = Submission(site: site)
            var made: [Job] = []
            if let from {
                made = try submitMany(from: from, submission: &submission)
            } else if let directory {
                let (job, state) = try submission.adopt(directory: directory)
                report(job, state)
                made = [job]
            } else {
                let (job, state) = try submission.submit(try jobFromOptions())
                report(job, state)
                made = [job]
            }
            warnIfTheyCannotFit(made, site: site)
            warnIfBalsamIsShadowed("balsam-submit")
            warnIfNoWatcher(site, "balsam-submit", because: "jobs wait in READY until one runs")
        }
    }

    func jobFromOptions() throws(SpoolError) -> Job {
        var o: [JobField: JSONValue] = [.app: .string(app ?? ""), .workdir: .string(workdir ?? "")]
        o[.parameters] = try keyValueObject(param, option: "-p/--param", value: parameterValue)
        o[.tags] = try keyValueObject(tag, option: "--tag", value: JSONValue.string)
        o[.data] = try keyValueObject(dataEntries, option: "--data", value: parameterValue)
        o[.launchParams] = try keyValueObject(launchParam, option: "--launch-param", value: JSONValue.string)
        o[.parentIDs] = .array(parent.map { .string($0) })
        o[.transfers] = try keyValueObject(transfer, option: "--transfer", value: JSONValue.string)
        // Numbers as typed (-1, 2000000, 99999999999999999999, nan): the job's own checks judge them, naming
        // the field, with the status of bad data (65), as for the same values in a --from line.
        func number(_ text: String?) -> JSONValue? {
            guard let text else { return nil }
            if let i = Int(text) { return .int(i) }
            if text.contains(where: { ".eE".contains($0) }), let d = Double(text), d.isFinite { return .double(d) }
            return .string(text)
        }
        o[.numNodes] = number(numNodes)
        o[.ranksPerNode] = number(ranksPerNode)
        o[.threadsPerRank] = number(threadsPerRank)
        o[.threadsPerCore] = number(threadsPerCore)
        o[.gpusPerRank] = number(gpusPerRank)
        o[.nodePackingCount] = number(nodePackingCount)
        o[.wallTimeMin] = number(wallTimeMin)
        return try Job(json: .object(Dictionary(uniqueKeysWithValues: o.map { ($0.key.name, $0.value) })))
    }

    /// Says (on stderr; the jobs are made) which jobs can never run on the site's nodes as settings.yml describes
    /// them, by the rule `balsam show` and a launcher use (`Need.whyNeverFits`): such a job would wait for ever.
    func warnIfTheyCannotFit(_ jobs: [Job], site: Site) {
        guard let launcher = (try? SiteSettings.load(site))?.launcher else { return }
        var unfit: [(Job, String)] = []
        for job in jobs {
            if let why = Need(job, packing: launcher.nodePacking).whyNeverFits(job, launcher) {
                unfit.append((job, why))
            }
        }
        guard let (first, why) = unfit.first else { return }
        let which =
            unfit.count == 1 ? "job \(first.id) (\(first.workdir))" : "\(unfit.count) jobs, such as \(first.workdir),"
        printError(
            "balsam-submit: warning: \(which) cannot run on this site's nodes as configured: \(why); "
                + "change the job (balsam modify) or launcher: in settings.yml")
    }

    func submitMany(from path: String, submission: inout Submission) throws(SpoolError) -> [Job] {
        let input: [UInt8]
        let name = path == "-" ? "<stdin>" : path
        if path == "-" {
            input = try Posix.readStandardInput(limit: Submission.bulkInputLimit)
        } else {
            // Not a spool file: symlinks are followed (/dev/stdin, a process substitution, a link to the data).
            input = try Posix.readInput(path, limit: Submission.bulkInputLimit)
        }
        let result = try submission.accept(input)
        if result.accepted.isEmpty && result.failures.isEmpty {
            printError("balsam-submit: \(name) holds no job lines; nothing was submitted")
        }
        if !result.failures.isEmpty {
            for failure in result.failures.prefix(100) {
                printError("balsam-submit: \(name):\(failure.line): \(failure.error)")
            }
            if result.failures.count > 100 { printError("balsam-submit: ... and \(result.failures.count - 100) more") }
            throw SpoolError(
                result.failures[0].error.code,
                "\(result.failures.count) line(s) failed; nothing from \(name) was submitted", path: nil)
        }
        var out = ""
        out.reserveCapacity(result.accepted.count * (json ? 400 : 27))
        for (job, state) in result.accepted {
            out += json ? jobJSON(job, state: state).serialized() : job.id
            out += "\n"
        }
        print(out, terminator: "")
        return result.accepted.map(\.job)
    }

    func report(_ job: Job, _ state: JobState) {
        print(json ? jobJSON(job, state: state).serialized() : job.id)
    }
}
