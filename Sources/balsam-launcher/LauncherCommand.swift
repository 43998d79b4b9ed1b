import ArgumentParser
import BalsamCLI
import Foundation
import Launcher
import MessagePassing
import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Set by SIGTERM and SIGINT; rank 0 then ends as at its wall time.
let stopSignal = Atomic<Int32>(0)

@main
struct LauncherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam-launcher",
        abstract: "Run a Balsam site's jobs across the nodes of an allocation, one MPI rank per node.",
        discussion: """
            Start it under MPI with one rank per node, e.g. \
            mpirun -n NODES --map-by ppr:1:node --bind-to none balsam-launcher --site SITE --wall-time-min T; \
            without mpirun it runs the local machine as one node. See balsam-launcher(1).
            """)

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

    @Flag(name: .customLong("benchmark-no-spawn"), help: .hidden)
    var noSpawn = false

    func validate() throws {
        if !(wallTimeMinutes > 0) { throw ValidationError("--wall-time-min must be a positive number of minutes.") }
        if let idleTimeout, !(idleTimeout >= 0) { throw ValidationError("--idle-timeout must be 0 or more seconds.") }
    }

    func run() throws {
        let world: MPIWorld
        do { world = try MPIWorld() } catch {
            printError("balsam-launcher: cannot start MPI: \(error)")
            throw ExitCode(ExitStatus.unavailable)
        }
        let transport = MPITransport(world: world)
        // A parent may have left these blocked (a test harness, a batch system's wrapper): unblock them, or a
        // SIGTERM at the end of the allocation would never reach the handler.
        var handled = sigset_t()
        sigemptyset(&handled)
        for sig in [SIGTERM, SIGINT] {
            signal(sig) { _ in stopSignal.store(1, ordering: .relaxed) }
            sigaddset(&handled, sig)
        }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        do {
            try reportingErrors("balsam-launcher" + (world.size > 1 ? " (rank \(world.rank))" : "")) {
                try runRank(world: world, transport: transport)
            }
        } catch {
            // One rank cannot go on: end them all, or the others wait for it forever.
            if world.size > 1 { world.abort((error as? ExitCode)?.rawValue ?? 1) }
            throw error
        }
        try? world.finalize()
    }

    private func runRank(world: MPIWorld, transport: MPITransport) throws {
        let site = try siteOption.open()
        let settings = try SiteSettings.load(site)
        let environment = ProcessInfo.processInfo.environment
        // Every rank says where it is and how many CPUs its node has.
        let cpus = settings.launcher.cpusPerNode ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        // Slurm's name for this node where there is one (what its node list says; emulated nodes share a host).
        let me = Array("\(environment["SLURMD_NODENAME"] ?? Posix.hostName())\t\(cpus)".utf8)
        let gathered: [[UInt8]]
        do { gathered = try world.allGather(me) } catch { throw SpoolError(.unavailable, "\(error)") }
        let nodes = gathered.enumerated().map { rank, bytes in
            let fields = String(decoding: bytes, as: UTF8.self).split(separator: "\t")
            return Node(
                index: rank, host: fields.first.map(String.init) ?? "localhost",
                cpus: fields.count > 1 ? Int(fields[1]) ?? 1 : 1, gpus: settings.launcher.gpuIDs)
        }
        guard world.rank == 0 else {
            try WorkerLoop(transport: transport, grace: settings.launcher.killGraceSeconds, environment: environment)
                .run()
            return
        }
        if let log { try redirectStandardError(to: log) }
        var options = Coordinator.Options(wallTimeMinutes: wallTimeMinutes)
        options.idleTimeout = idleTimeout
        options.noSpawn = noSpawn
        for item in tag {
            let (key, value) = try keyValue(item, option: "--tag")
            options.tags[key] = value
        }
        if let (source, hosts) = SchedulerNodes.hosts(environment: environment) {
            options.leaseInfo["scheduler_nodes"] = .array(hosts.map { .string($0) })
            let covered = Set(nodes.map(\.host))
            let missing = hosts.filter { !covered.contains($0) && !covered.contains(String($0.prefix { $0 != "." })) }
            if !missing.isEmpty {
                logLine(
                    "\(source) lists \(hosts.count) node(s) but no rank runs on \(missing.prefix(5).joined(separator: ", "))"
                        + "; start one rank per node: mpirun -n \(hosts.count) --map-by ppr:1:node ...")
            }
        }
        for key in ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "COBALT_JOBID"] {
            if let id = environment[key] { options.leaseInfo["batch_job"] = .string(id) }
        }
        let coordinator = Coordinator(
            site: site, settings: settings, nodes: nodes, transport: transport, options: options,
            environment: environment)
        coordinator.log = logLine
        coordinator.stopRequested = { stopSignal.load(ordering: .relaxed) != 0 }
        _ = try coordinator.run()
    }
}

/// A log line on standard error, with the time.
func logLine(_ text: String) {
    printError("\(Timestamp.now()) balsam-launcher: \(text)")
}

/// MPI as the launcher's transport.
final class MPITransport: Transport {
    let world: MPIWorld
    init(world: MPIWorld) { self.world = world }
    var rank: Int { world.rank }
    var size: Int { world.size }

    func send(_ message: Message, to rank: Int) throws(SpoolError) {
        do { try world.send(message.encoded(), to: rank) } catch {
            throw SpoolError(.unavailable, "cannot send to rank \(rank): \(error)")
        }
    }

    func receive() throws(SpoolError) -> (source: Int, message: Message)? {
        let received: (source: Int, tag: Int32, bytes: [UInt8])?
        do {
            try world.progress()
            received = try world.receive()
        } catch {
            throw SpoolError(.unavailable, "cannot receive: \(error)")
        }
        guard let received else { return nil }
        return (received.source, try Message(bytes: received.bytes))
    }
}
