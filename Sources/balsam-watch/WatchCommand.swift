import ArgumentParser
import BalsamCLI
import Foundation
import Lifecycle
import Logging
import ServiceLifecycle
import Spool
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

@main
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam-watch",
        abstract: "Drive every job of a Balsam site through its lifecycle, and its batch jobs through the scheduler.",
        discussion: """
            Runs in the foreground, logging to standard error, until SIGTERM or SIGINT; SIGHUP rereads \
            settings.yml and the apps. Submits and follows the site's batch jobs (balsam queue) and runs the \
            elastic queue. One watcher per site. See balsam-watch(1) and balsam-queue(1).
            """)

    @OptionGroup var siteOption: SiteOption

    @Option(name: .long, help: "Seconds between rescans of the queue directories when inotify reports nothing.")
    var pollInterval: Double = 1

    @Flag(name: .long, help: "Do not use inotify; rely on the rescans alone.")
    var noInotify = false

    @Option(
        name: .long, help: ArgumentHelp("Append the log to this file instead of standard error.", valueName: "file"))
    var log: String?

    @Flag(name: .long, help: "Detach and run in the background (log to --log, default SITE/log/balsam-watch.log).")
    var daemon = false

    @Flag(name: .long, help: "Stop the site's running watcher (on this host) and wait for it to exit.")
    var stop = false

    @Flag(name: .long, help: "Run one pass over the site and exit.")
    var once = false

    @Flag(name: [.short, .long], help: "Log every transition.")
    var verbose = false

    func validate() throws {
        if pollInterval <= 0 || pollInterval > 3600 {
            throw ValidationError("--poll-interval must be between 0 and 3600 seconds.")
        }
        if stop && (daemon || once) { throw ValidationError("--stop cannot be combined with --daemon or --once.") }
    }

    func run() async throws {
        try await reportingErrors("balsam-watch") {
            let site = try siteOption.open()
            if stop {
                try stopWatcher(site)
                return
            }
            if daemon { try detach(site) }
            if let path = log ?? (daemon ? site.logPath + "/balsam-watch.log" : nil) {
                try redirectStandardError(to: path)
            }
            let level: Logger.Level = verbose ? .debug : .info
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            var options = Watcher.Options()
            options.pollInterval = pollInterval
            options.inotify = !noInotify
            options.once = once
            let logger = Logger(label: "balsam-watch")
            let watcher = Watcher(site: site, options: options, logger: logger)
            let group = ServiceGroup(
                configuration: .init(
                    services: [
                        .init(service: WatchService(watcher), successTerminationBehavior: .gracefullyShutdownGroup)
                    ],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            do { try await group.run() } catch let error as SpoolError { throw error } catch {
                throw SpoolError(.io, "\(error)")
            }
        }
    }

    /// Sends SIGTERM to the watcher named in the site's claim and waits until it has let go.
    func stopWatcher(_ site: Site) throws(SpoolError) {
        let claim = WatcherClaim(site: site)
        guard let holder = claim.holder(), claim.isAlive(holder) else {
            print("no watcher is running for \(site.root)")
            return
        }
        guard holder.host == claim.me.host else {
            throw SpoolError(.unavailable, "the watcher runs on \(holder.host) (pid \(holder.pid)); stop it there")
        }
        kill(holder.pid, SIGTERM)
        let deadline = time(nil) + 60
        while claim.holder() == holder && kill(holder.pid, 0) == 0 {
            if time(nil) > deadline {
                throw SpoolError(.conflict, "watcher pid \(holder.pid) did not stop within 60 s")
            }
            usleep(20_000)
        }
        print("stopped \(holder)")
    }

    /// Starts a copy of this command without `--daemon` in its own process group, logging to the log file, and
    /// waits until it holds the site's claim. (A re-exec, not fork(): this process already runs threads.)
    func detach(_ site: Site) throws(SpoolError) -> Never {
        let claim = WatcherClaim(site: site)
        if let holder = claim.holder(), claim.isAlive(holder) {
            throw SpoolError(.unavailable, "the site is already watched by \(holder)")
        }
        let logPath = Posix.absolute(log ?? site.logPath + "/balsam-watch.log")
        var arguments = Array(CommandLine.arguments.dropFirst().filter { $0 != "--daemon" })
        arguments += ["--site", site.root, "--log", logPath]
        let executable = Posix.executablePath() ?? CommandLine.arguments[0]
        let devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(devnull) }
        let pid = try Posix.spawn(
            executable, arguments: arguments, environment: ProcessInfo.processInfo.environment,
            directory: Posix.currentDirectory(), outputFD: devnull)
        let deadline = time(nil) + 30
        while time(nil) <= deadline {
            if let holder = claim.holder(), holder.pid == pid {
                print("balsam-watch running as pid \(pid); log: \(logPath)")
                Glibc.exit(0)
            }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                throw SpoolError(.unavailable, "the watcher exited at start; see \(logPath)")
            }
            usleep(20_000)
        }
        throw SpoolError(.unavailable, "the watcher (pid \(pid)) did not claim the site within 30 s; see \(logPath)")
    }
}
