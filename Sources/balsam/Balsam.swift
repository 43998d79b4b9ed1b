import ArgumentParser
import BalsamCLI
import Batch
import Spool

#if canImport(Glibc)
    import Glibc
#endif

@main
struct Balsam: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam",
        abstract: "Manage a Balsam site: its jobs and apps.",
        discussion: """
            Subcommands not listed here run the program balsam-NAME (as git does): 'balsam submit ...' runs \
            balsam-submit. The original Balsam's spellings work too: balsam site init|start|stop, balsam job \
            create|ls|rm|modify, balsam app ls, balsam queue submit|ls. See balsam(1) and balsam-spool(5).
            """,
        version: BalsamVersion.string,
        subcommands: [
            Init.self, List.self, Show.self, Kill.self, Retry.self, Remove.self, Modify.self, AppCommand.self,
            IngestCommand.self, FsckCommand.self, QueueCommand.self, LoginCommand.self, SyncCommand.self,
            TransferCommand.self, ReportCommand.self, PlatformsCommand.self,
        ])

    static func main() {
        var arguments = Array(CommandLine.arguments.dropFirst())
        do {
            switch try OriginalSpellings.translate(arguments) {
            case .builtin(let translated)?: arguments = translated
            case .program(let name, let translated)?: execute(name, translated)
            case .help(let text)?:
                print(text, terminator: "")
                Glibc.exit(0)
            case nil: break
            }
        } catch {
            printError("balsam: \(error)")
            Glibc.exit(ExitStatus.usage)
        }
        dispatchExternal(arguments)
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            exit(withError: error)
        }
    }

    /// `balsam NAME ARGS...` for a NAME that is not built in: exec `balsam-NAME`.
    static func dispatchExternal(_ arguments: [String]) {
        guard let first = arguments.first, !first.hasPrefix("-") else { return }
        let builtIn = configuration.subcommands.map { $0._commandName } + ["help"]
        if builtIn.contains(first) { return }
        execute("balsam-" + first, Array(arguments.dropFirst()))
    }

    /// Replaces this process with `name` (from this program's directory, else from PATH); exits 64 if there is
    /// no such program.
    static func execute(_ name: String, _ arguments: [String]) -> Never {
        var candidates: [String] = []
        if let exe = Posix.executablePath() { candidates.append(Posix.parentPath(exe) + "/" + name) }
        candidates.append(name)
        var cArgs = ([name] + arguments).map { strdup($0) }
        cArgs.append(nil)
        // execv(2) returns only on failure; the next candidate, then the message below, is the answer to it.
        for candidate in candidates {
            if candidate.contains("/") {
                if access(candidate, X_OK) == 0 { execv(candidate, &cArgs) }
            } else {
                execvp(candidate, &cArgs)
            }
        }
        let command = name.hasPrefix("balsam-") ? String(name.dropFirst(7)) : name
        printError(
            "balsam: '\(command)' is not a balsam command and no \(name) program was found (see 'balsam --help')")
        Glibc.exit(ExitStatus.usage)
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List jobs, or count them by state.",
        discussion: "Filters combine: a job is listed when it passes all of them.")

    @OptionGroup var siteOption: SiteOption

    @OptionGroup var filters: JobFilterOptions

    @Option(name: [.short, .long], help: "Only this job ID (repeatable).")
    var id: [String] = []

    @Flag(name: .long, help: "Print the number of jobs in each state instead of the jobs.")
    var byState = false

    @Flag(name: .long, help: "Print JSON: one object per job per line (with --by-state, one object of counts).")
    var json = false

    func run() throws {
        try reportingErrors("balsam ls") {
            let query = Query(site: try siteOption.open())
            var filter = try filters.filter()
            // Read only when needed: a listing's table does not show server ids.
            let serverIDs = json || !id.isEmpty ? ServerIDs.load(query.site) : ServerIDs.Map()
            if !id.isEmpty {
                filter.ids = Set(
                    id.map { key in
                        serverIDs.jobID(key) ?? key
                    })
            }
            if byState {
                let counts = try query.countByState(filter)
                if json {
                    let all = JobState.stored.reduce(into: [String: JSONValue]()) {
                        $0[$1.rawValue] = .int(counts[$1] ?? 0)
                    }
                    print(JSONValue.object(all).serialized())
                } else {
                    let rows = JobState.stored.compactMap { s in
                        counts[s].flatMap { $0 > 0 ? [s.rawValue, String($0)] : nil }
                    }
                    print(table(["STATE", "COUNT"], rows + [["total", String(counts.values.reduce(0, +))]]))
                }
                return
            }
            let jobs = try query.list(filter, load: json)
            let waits = WaitReasons(site: query.site)
            var out = ""
            if json {
                for listing in jobs {
                    guard let job = listing.job else { continue }
                    var line = jobJSON(job, state: listing.state, serverID: serverIDs.bySite[job.id])
                    let reasons = waits.of(job, state: listing.state)
                    if !reasons.isEmpty, case .object(var o) = line {
                        o["waiting"] = .array(reasons.map(JSONValue.string))
                        line = .object(o)
                    }
                    out += line.serialized() + "\n"
                }
                print(out, terminator: "")
            } else {
                let held = jobs.filter { l in l.job.map { !waits.of($0, state: l.state).isEmpty } ?? false }
                if let first = held.first {
                    printError(
                        "balsam ls: \(held.count) job(s) cannot run as things are (marked *); "
                            + "balsam show \(first.workdir) says why")
                }
                let marked = Set(held.map(\.id))
                let rows = jobs.map { l in
                    [
                        l.id, l.state.rawValue + (marked.contains(l.id) ? "*" : ""), l.app, l.workdir,
                        (l.job?.tags ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
                            separator: ","),
                    ]
                }
                print(table(["ID", "STATE", "APP", "WORKDIR", "TAGS"], rows))
            }
        }
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show one job: its spec, state and history.")

    @OptionGroup var siteOption: SiteOption

    @Argument(help: "The job's ID or workdir.")
    var job: String

    @Flag(name: .long, help: "Print one JSON object: the job's fields, state and history.")
    var json = false

    func run() throws {
        try reportingErrors("balsam show") {
            let listing = try Query(site: try siteOption.open()).find(job)
            guard let spec = listing.job else {
                let dir = try siteOption.open().jobDirectory(listing.workdir)
                if !Posix.exists(dir) {
                    throw SpoolError(
                        .notFound,
                        "job \(listing.id) is \(listing.state.rawValue); its directory is gone (deleted or renamed by hand): "
                            + "balsam rm \(listing.id) removes the job, balsam fsck --repair every such job",
                        path: dir)
                }
                throw SpoolError(.io, "cannot read job.json of job \(listing.id)", path: listing.workdir)
            }
            let history: [JSONValue] = (listing.record?.history ?? []).map { e in
                var o: [String: JSONValue] = [
                    "state": .string(e.state.rawValue), "time": .string(e.time), "actor": .string(e.actor),
                ]
                if let reason = e.reason { o["reason"] = .string(reason) }
                return .object(o)
            }
            // A run that failed: the last lines of its output, where the reason is.
            var tail: String?
            if [.runError, .runTimeout, .failed].contains(listing.state) {
                let site = try siteOption.open()
                let lines = (try? SiteSettings.load(site))?.errorTailLines ?? 10
                let text = Posix.tail(site.jobDirectory(listing.workdir) + "/job.out", lines: lines)
                tail = text.isEmpty ? nil : text
            }
            let site = try siteOption.open()
            let waiting = WaitReasons(site: site).of(spec, state: listing.state)
            let serverID = spec.serverID ?? ServerIDs.load(site).bySite[spec.id]
            if json {
                guard case .object(var o) = jobJSON(spec, state: listing.state, serverID: serverID) else { return }
                o["history"] = .array(history)
                if !waiting.isEmpty { o["waiting"] = .array(waiting.map(JSONValue.string)) }
                if let tail { o["output_tail"] = .string(tail) }
                if let reason = listing.record?.reason { o["state_reason"] = .string(reason) }
                if let record = listing.record {
                    o["attempts"] = .int(record.attempts)
                    o["return_code"] = record.returnCode.map { .int($0) } ?? .null
                }
                print(JSONValue.object(o).serialized())
                return
            }
            var text = "id:        \(spec.id)" + (serverID.map { " (server id \($0))" } ?? "")
            text += "\nstate:     \(listing.state.rawValue)"
            if let record = listing.record {
                text += " since \(record.since) by \(record.actor)"
                if let reason = record.reason { text += "\nreason:    \(reason)" }
                if record.attempts > 0 {
                    text += "\nruns:      \(record.attempts)"
                    if let rc = record.returnCode { text += ", last exit status \(rc)" }
                }
            } else if listing.source == .accepted {
                text += " (accepted; directory not made yet)"
            }
            for why in waiting { text += "\nwaiting:   \(why)" }
            text += "\napp:       \(spec.app)\nworkdir:   \(spec.workdir)\ncreated:   \(spec.created)\n"
            text += "\nspec:\n" + spec.json.pretty(indent: 0) + "\n"
            if let record = listing.record {
                text += "\nhistory:\n"
                text +=
                    table(
                        ["TIME", "STATE", "ACTOR", "REASON"],
                        record.history.map { [$0.time, $0.state.rawValue, $0.actor, $0.reason ?? ""] }) + "\n"
            }
            if let tail {
                text += "\noutput (the last lines of job.out):\n"
                text +=
                    tail.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(
                        separator: "\n") + "\n"
            }
            print(text, terminator: "")
        }
    }
}

struct IngestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Make directories for accepted bulk submissions and adopt the drop box (plumbing).",
        discussion: "balsam-watch does this continuously; run it by hand on a site without a watcher.")

    @OptionGroup var siteOption: SiteOption

    func run() throws {
        try reportingErrors("balsam ingest") {
            let report = try Ingest(site: try siteOption.open()).run()
            for (name, reason) in report.rejected { printError("balsam ingest: rejected queue/new/\(name): \(reason)") }
            for id in report.conflicts { printError("balsam ingest: job \(id) FAILED: its workdir was taken") }
            print(
                "materialized \(report.materialized) jobs from \(report.batches) batches; adopted \(report.adopted.count); rejected \(report.rejected.count)"
            )
        }
    }
}

struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Check that the site's indexes agree with its job directories; repair with --repair.",
        discussion: """
            Walks every job directory under data/, so it takes time on a large site. Without --repair it \
            changes nothing. Exits 0 when the site is consistent (or was repaired), 65 when problems remain.
            """)

    @OptionGroup var siteOption: SiteOption

    @Flag(name: .long, help: "Fix what is found: recreate missing entries and final-index lines, remove stale ones.")
    var repair = false

    func run() throws {
        try reportingErrors("balsam fsck") {
            let report = try Fsck(site: try siteOption.open()).run(repair: repair, full: true)
            for problem in report.problems { print(problem.description) }
            let open = report.problems.filter { !$0.repaired }.count
            printError("balsam fsck: \(report.jobs) jobs, \(report.problems.count) problems, \(open) not repaired")
            if open > 0 {
                throw SpoolError(
                    .invalidInput, "the site's indexes disagree with its job directories; run with --repair")
            }
        }
    }
}
