import ArgumentParser
import BalsamCLI
import Batch
import Spool

#if canImport(Glibc)
    import Glibc
#endif

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a new site directory.",
        discussion: """
            The directory must not exist; missing parent directories are made. Prints the site's path. \
            --platform NAME takes a platform preset's scheduler, node shape, launch command, queues and job \
            template (balsam platforms lists them); --scheduler NAME only a scheduler's defaults; neither: the \
            local machine. 'balsam site init' (the original's spelling) asks for the platform on a terminal.
            """)

    @Argument(help: "Where to create the site.")
    var path: String

    @Option(name: [.short, .long], help: "The site's name (default: the directory's name).")
    var name: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The batch scheduler: local, slurm, pbs, lsf or cobalt. Its defaults go into settings.yml and "
                + "job-template.sh.", valueName: "name"))
    var scheduler: String?

    @Option(name: .long, help: ArgumentHelp("A platform preset (see 'balsam platforms').", valueName: "name"))
    var platform: String?

    @Option(name: .long, help: ArgumentHelp("A directory of your own presets, DIR/NAME/NAME.yml.", valueName: "dir"))
    var platformDir: String?

    @Option(name: .long, help: ArgumentHelp("The project (allocation) batch jobs are charged to.", valueName: "name"))
    var project: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A group that shares the site: its members submit, watch and launch there (directories set-group-ID, "
                + "group-writable).", valueName: "group"))
    var group: String?

    @Flag(name: .customLong("choose-platform"), help: .hidden)
    var choosePlatform = false

    func validate() throws {
        if let scheduler, !SiteSettings.schedulerKinds.contains(scheduler) {
            throw ValidationError(
                "--scheduler must be one of \(SiteSettings.schedulerKinds.joined(separator: ", ")), not '\(scheduler)'."
            )
        }
        if scheduler != nil && platform != nil {
            throw ValidationError("--scheduler and --platform: give one (a preset names its scheduler).")
        }
    }

    func run() throws {
        // Messages name the command as the user typed it: the original's `balsam site init` arrives with
        // --choose-platform, which only that spelling gives.
        try reportingErrors(choosePlatform ? "balsam site init" : "balsam init") {
            let interactive = onATerminal
            var chosen: Platform
            var asked = false
            if let scheduler {
                chosen = .generic(scheduler: scheduler)
            } else if platform != nil || choosePlatform {
                let presets = try Platform.all(userDirectory: platformDir.map(Posix.expandTilde))
                if let platform {
                    guard let found = presets.first(where: { $0.name == platform }) else {
                        throw SpoolError(
                            .usage,
                            "--platform \(platform): no such preset; known: "
                                + presets.map(\.name).joined(separator: ", "))
                    }
                    chosen = found
                } else if interactive {
                    chosen = try PlatformMenu(presets: presets).choose()
                    asked = true
                } else {
                    throw SpoolError(
                        .usage,
                        "which platform? give --platform NAME, one of: " + presets.map(\.name).joined(separator: ", ")
                            + " ('balsam platforms' describes them)")
                }
            } else {
                chosen = .generic(scheduler: "local")
            }
            var project = self.project
            if project == nil && chosen.defaultProject == nil {
                guard asked || interactive else {
                    throw SpoolError(
                        .usage,
                        "the \(chosen.name) preset needs a project: give --project NAME (\(chosen.projectPrompt))")
                }
                project = try PlatformMenu.ask(chosen.projectPrompt + ": ")
            }
            let shared = try group.map { (name) throws(SpoolError) in try SharedSite.group(named: name) }
            let site = try JobScript.createSite(
                at: path, name: name, platform: chosen, project: project, group: shared)
            print(site.root)
        }
    }
}

/// The short menu `balsam site init` shows on a terminal: the detected guesses first, then the rest.
struct PlatformMenu {
    var presets: [Platform]

    func choose() throws(SpoolError) -> Platform {
        let guesses = Platform.detected(
            presets, hostName: Posix.hostName(), path: Posix.environment()["PATH"] ?? "/usr/bin:/bin")
        let ordered = guesses + presets.filter { p in !guesses.contains { $0.name == p.name } }
        var menu = "Platforms (a preset of your own: --platform-dir DIR; see 'balsam platforms'):\n"
        for (k, p) in ordered.enumerated() {
            let mark = guesses.contains { $0.name == p.name } ? "  (detected)" : ""
            menu += "  \(k + 1)) \(p.title) [\(p.name)]\(mark)\n"
        }
        printError(menu, terminator: "")
        for _ in 0..<3 {
            let answer = try PlatformMenu.ask("Platform [1]: ", allowEmpty: true)
            if answer.isEmpty { return ordered[0] }
            if let n = Int(answer), (1...ordered.count).contains(n) { return ordered[n - 1] }
            if let p = ordered.first(where: { $0.name == answer }) { return p }
            printError("'\(answer)': give a number from 1 to \(ordered.count) or a preset's name")
        }
        throw SpoolError(.usage, "no platform chosen")
    }

    /// Asks on standard error and reads a line from standard input; end of input is an error.
    static func ask(_ prompt: String, allowEmpty: Bool = false) throws(SpoolError) -> String {
        for _ in 0..<3 {
            printError(prompt, terminator: "")
            guard let line = readLine() else { throw SpoolError(.usage, "no answer (end of input)") }
            let answer = String(line.trimmingSpaces())
            if !answer.isEmpty || allowEmpty { return answer }
        }
        throw SpoolError(.usage, "no answer")
    }
}

struct PlatformsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "platforms",
        abstract: "List the platform presets 'balsam site init --platform' takes, or describe one.")

    @Argument(help: "A preset to describe.") var preset: String?
    @Option(name: .long, help: ArgumentHelp("A directory of your own presets, DIR/NAME/NAME.yml.", valueName: "dir"))
    var platformDir: String?

    func run() throws {
        try reportingErrors("balsam platforms") {
            let presets = try Platform.all(userDirectory: platformDir.map(Posix.expandTilde))
            guard let preset else {
                let guesses = Set(
                    Platform.detected(
                        presets, hostName: Posix.hostName(), path: Posix.environment()["PATH"] ?? "/usr/bin:/bin"
                    ).map(\.name))
                print(
                    table(
                        ["NAME", "SCHEDULER", "TITLE", "SOURCE"],
                        presets.map {
                            [$0.name + (guesses.contains($0.name) ? " *" : ""), $0.scheduler, $0.title, $0.source]
                        }))
                if !guesses.isEmpty { print("* looks like this machine") }
                return
            }
            guard let p = presets.first(where: { $0.name == preset }) else {
                throw SpoolError(
                    .notFound, "no preset '\(preset)'; known: " + presets.map(\.name).joined(separator: ", "))
            }
            var out = "\(p.title) [\(p.name)], \(p.source)\n\n\(p.about)\n"
            out += "scheduler: \(p.scheduler)\(p.queueOption.map { " (queues by \($0))" } ?? "")\n"
            out += "CPUs per node: \(p.cpusPerNode.map(String.init) ?? "counted by each launcher rank")"
            out += p.cpuSiblingsOffset.map { ", second hardware threads at +\($0)" } ?? ""
            out += "\nGPUs: " + (p.gpuIDs.isEmpty ? "none" : p.gpuIDs.joined(separator: ",") + " in \(p.gpuVariable)")
            out += "\nlaunch command: \(p.mpiLauncher)\nqueues:\n"
            for q in p.queues {
                let l = q.limits
                let bins = l.wallTimeFromNodes.sorted { $0.key < $1.key }.map { "\($0.value) min from \($0.key)" }
                out +=
                    "  \(q.name): \(l.minNodes)-\(l.maxNodes) nodes, \(l.maxWallTimeMinutes) min"
                    + (bins.isEmpty ? "" : " (" + bins.joined(separator: ", ") + ")") + ", \(l.maxQueuedJobs) queued\n"
            }
            if !p.optionalBatchJobParams.isEmpty {
                out +=
                    "batch job parameters: "
                    + p.optionalBatchJobParams.map { "\($0.0)=\($0.1)" }.joined(separator: " ") + "\n"
            }
            print(out, terminator: "")
        }
    }
}
