import ArgumentParser
import BalsamCLI
import Lifecycle
import Logging
import ServiceLifecycle
import Spool
import UnixSignals

@main
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam-watch",
        abstract: "Drive every job of a Balsam site through its lifecycle, and its batch jobs through the scheduler.",
        discussion: """
            Runs in the foreground, logging to standard error, until SIGTERM or SIGINT; SIGHUP rereads \
            settings.yml and the apps. Submits and follows the site's batch jobs (balsam queue) and runs the \
            elastic queue. One watcher per site. See balsam-watch(1) and balsam-queue(1).
            """,
        version: BalsamVersion.string)

    @OptionGroup var siteOption: SiteOption

    @Option(
        name: .long,
        help:
            "Seconds between rescans when inotify cannot see every change (a shared filesystem, --no-inotify, a lease held)."
    )
    var pollInterval: Double = 1

    @Flag(name: .long, help: "Do not use inotify; rely on the rescans alone.")
    var noInotify = false

    @Option(
        name: .long, help: ArgumentHelp("Append the log to this file instead of standard error.", valueName: "file"))
    var log: String?

    @Option(name: .long, help: "Log lines as text (the default) or as JSON objects, one per line.")
    var logFormat: LineLogHandler.Format = .text

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Write the site's metrics here in Prometheus's text format (node_exporter's textfile collector: a .prom file).",
            valueName: "file"))
    var metricsFile: String?

    @Option(name: .long, help: "Seconds between writes of --metrics-file.")
    var metricsInterval: Double = 15

    @Flag(name: .long, help: "Detach and run in the background (log to --log, default SITE/log/balsam-watch.log).")
    var daemon = false

    @Flag(
        name: .long,
        help: "Exit 0 at once, saying nothing, when a watcher of the site is alive (cron, scrontab); else start one.")
    var ifNotRunning = false

    @Flag(name: .long, help: "Stop the site's running watcher (on this host) and wait for it to exit.")
    var stop = false

    @Flag(name: .long, help: "Send SIGHUP to the site's watcher (on this host): reopen its log, reread settings.")
    var reload = false

    @Flag(name: .long, help: "Run one pass over the site and exit.")
    var once = false

    @Flag(name: [.short, .long], help: "Log every transition.")
    var verbose = false

    func validate() throws {
        if !(1...3600).contains(metricsInterval) {
            throw ValidationError("--metrics-interval must be between 1 and 3600 seconds.")
        }
        if pollInterval <= 0 || pollInterval > 3600 {
            throw ValidationError("--poll-interval must be between 0 and 3600 seconds.")
        }
        if stop && (daemon || once) { throw ValidationError("--stop cannot be combined with --daemon or --once.") }
        if reload && (stop || daemon || once) {
            throw ValidationError("--reload cannot be combined with --stop, --daemon or --once.")
        }
        if ifNotRunning && (stop || once || reload) {
            throw ValidationError("--if-not-running cannot be combined with --stop, --once or --reload.")
        }
    }

    func run() async throws {
        try await reportingErrors("balsam-watch") {
            let site = try siteOption.open()
            if stop {
                switch try WatcherDaemon.stop(site) {
                case .notRunning: print("no watcher is running for \(site.root)")
                case .stopped(let holder): print("stopped \(holder)")
                }
                return
            }
            // Started by cron every few minutes: a live watcher (on this host or another) is not news, and
            // neither is losing the race to start one against another start of the same line.
            let alreadyRunning = { ifNotRunning && WatcherDaemon.running(site) != nil }
            if alreadyRunning() { return }
            if reload {
                if let holder = try WatcherDaemon.reload(site) {
                    print("sent SIGHUP to \(holder)")
                } else {
                    print("no watcher is running for \(site.root)")
                }
                return
            }
            warnIfBalsamIsShadowed("balsam-watch")
            if daemon {
                let logPath = Posix.absolute(log ?? site.logPath + "/balsam-watch.log")
                let arguments =
                    CommandLine.arguments.dropFirst().filter { $0 != "--daemon" } + [
                        "--site", site.root, "--log", logPath,
                    ]
                let pid: Int32
                do {
                    pid = try WatcherDaemon.start(
                        site, executable: Posix.executablePath() ?? CommandLine.arguments[0],
                        arguments: arguments.filter { $0 != "--if-not-running" }, logPath: logPath)
                } catch  where alreadyRunning() {
                    return
                }
                print("balsam-watch running as pid \(pid); log: \(logPath)")
                return
            }
            if let log { try redirectStandardError(to: log) }
            LineLogHandler.bootstrap(program: "balsam-watch", level: verbose ? .debug : .info, format: logFormat)
            var options = Watcher.Options()
            options.pollInterval = pollInterval
            options.inotify = !noInotify
            options.once = once
            options.metricsFile = metricsFile.map(Posix.absolute)
            options.metricsInterval = metricsInterval
            // logrotate's postrotate sends SIGHUP: the log is opened again at its path, then settings are reread.
            if let log { options.reopenLog = { try? redirectStandardError(to: log) } }
            let logger = Logger(label: "balsam-watch")
            let watcher = Watcher(site: site, options: options, logger: logger)
            let group = ServiceGroup(
                configuration: .init(
                    services: [
                        .init(service: WatchService(watcher), successTerminationBehavior: .gracefullyShutdownGroup)
                    ],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            do { try await group.run() } catch let error as SpoolError {
                if error.code == .unavailable, alreadyRunning() { return }
                throw error
            } catch {
                throw SpoolError(.io, "\(error)")
            }
        }
    }
}
