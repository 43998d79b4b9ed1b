import ArgumentParser
import BalsamCLI
import Logging
import MPILauncher
import Spool

@main
struct LauncherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam-launcher",
        abstract: "Run a Balsam site's jobs across the nodes of an allocation, one MPI rank per node.",
        discussion: """
            Start it under MPI with one rank per node, e.g. \
            mpirun -n NODES --map-by ppr:1:node --bind-to none balsam-launcher --site SITE --wall-time-min T; \
            without mpirun it runs the local machine as one node. See balsam-launcher(1).
            """,
        version: BalsamVersion.string)

    @OptionGroup var siteOption: SiteOption

    @Option(name: .customLong("wall-time-min"), help: ArgumentHelp("Minutes the launcher may run.", valueName: "T"))
    var wallTimeMinutes: Double

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Exit after this many seconds with nothing to run (default: launcher.idle_ttl_sec).", valueName: "seconds"))
    var idleTimeout: Double?

    @Option(name: .long, help: ArgumentHelp("Only run jobs with this tag (repeatable).", valueName: "K=V"))
    var tag: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp("Append rank 0's log to this file instead of standard error.", valueName: "file"))
    var log: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The site's batch job this launcher runs in (its job script passes it), for utilization reports.",
            valueName: "ID"))
    var batchJob: Int?

    @Flag(name: .customLong("benchmark-no-spawn"), help: .hidden)
    var noSpawn = false

    func validate() throws {
        if !(wallTimeMinutes > 0) { throw ValidationError("--wall-time-min must be a positive number of minutes.") }
        if let idleTimeout, !(idleTimeout >= 0) { throw ValidationError("--idle-timeout must be 0 or more seconds.") }
        for item in tag where !item.dropFirst().contains("=") {
            throw ValidationError("--tag needs KEY=VALUE, not '\(item)'.")
        }
    }

    func run() throws {
        var options = Coordinator.Options(wallTimeMinutes: wallTimeMinutes)
        options.idleTimeout = idleTimeout
        options.noSpawn = noSpawn
        options.batchJob = batchJob
        for item in tag {
            let (key, value) = try keyValue(item, option: "--tag")
            options.tags[key] = value
        }
        LineLogHandler.bootstrap(program: "balsam-launcher")
        let siteOption = self.siteOption
        let log = self.log
        var stoppedBy: Int32?
        do {
            stoppedBy = try Launch(options: options) { () throws(SpoolError) in try siteOption.open() }.run(
                prepareRankZero: { () throws(SpoolError) in if let log { try redirectStandardError(to: log) } },
                makeLogger: { rank, size in
                    var logger = Logger(label: "balsam-launcher")
                    if size > 1 { logger[metadataKey: "rank"] = "\(rank)" }
                    return logger
                })
        } catch {
            printError("balsam-launcher" + (error.rank.map { " (rank \($0))" } ?? "") + ": \(error.error)")
            throw ExitCode(ExitStatus.status(for: error.error.code))
        }
        // Stopped by a signal (Ctrl-C, the batch system): 128 + its number, as a shell reports it.
        if let signal = stoppedBy { throw ExitCode(128 + signal) }
    }
}
