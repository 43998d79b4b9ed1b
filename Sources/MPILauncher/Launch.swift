import Logging
import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Set by SIGTERM and SIGINT (to the signal's number); rank 0 then ends as at its wall time.
private let stopSignal = Atomic<Int32>(0)

/// One launcher process: MPI started, every rank's node discovered, then rank 0 coordinates and the other ranks
/// run what it places on their nodes. What `balsam-launcher` runs after parsing its arguments.
public struct Launch {
    /// Why a launcher could not start or went on: an MPI failure is `.unavailable`.
    public struct Failure: Error {
        /// What went wrong.
        public var error: SpoolError
        /// The rank it happened on, when MPI was up.
        public var rank: Int?
    }

    let options: Coordinator.Options
    let openSite: () throws(SpoolError) -> Site

    /// A launch of the site `openSite` finds (called after MPI is up, on every rank), run by rank 0 with `options`
    /// (the scheduler's facts are added to its `leaseInfo` here).
    public init(options: Coordinator.Options, openSite: @escaping () throws(SpoolError) -> Site) {
        self.options = options
        self.openSite = openSite
    }

    /// Starts MPI and runs this rank's role to its end. `prepareRankZero` is called on rank 0 only, before its
    /// first log line (where the executable points its log); `makeLogger` gives each rank its logger.
    /// A rank that fails ends every rank (`MPI_Abort`): the others would wait for it forever. Returns the signal
    /// that stopped this rank's launcher (SIGINT, SIGTERM), if one did: the command then exits 128 + it.
    @discardableResult
    public func run(prepareRankZero: () throws(SpoolError) -> Void, makeLogger: (_ rank: Int, _ size: Int) -> Logger)
        throws(Failure) -> Int32?
    {
        let world: MPIWorld
        do { world = try MPIWorld() } catch {
            throw Failure(error: SpoolError(.unavailable, "cannot start MPI: \(error)"), rank: nil)
        }
        if let mismatch = Launch.worldMismatch(size: world.size, library: world.library, Posix.environment()) {
            // Every rank of a mismatched start is alone in its own world and says so: none may run jobs.
            throw Failure(error: SpoolError(.unavailable, mismatch), rank: nil)
        }
        Launch.trapStopSignals()
        do {
            try runRank(world: world, prepareRankZero: prepareRankZero, makeLogger: makeLogger)
        } catch {
            if world.size > 1 {
                makeLogger(world.rank, world.size).critical("\(error); ending every rank")
                world.abort(1)
            }
            throw Failure(error: error, rank: world.rank)
        }
        try? world.finalize()
        let signal = stopSignal.load(ordering: .relaxed)
        return signal == 0 ? nil : signal
    }

    /// Why a world of `size` ranks is not the one the process was started in, if it is not. The first of these an
    /// MPI launcher set says how many ranks it started: Open MPI's `OMPI_COMM_WORLD_SIZE`, the PMI's `PMI_SIZE`
    /// (Hydra, PALS, `srun --mpi=pmi2`), Slurm's `SLURM_STEP_NUM_TASKS` (a task of `srun`; only when neither
    /// other is there: Open MPI's and Hydra's daemons are started by an `srun` of their own). A launcher that
    /// opened another MPI than the one that started it is alone in a world of one.
    public static func worldMismatch(size: Int, library: String, _ environment: [String: String]) -> String? {
        guard
            let name = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"].first(where: {
                environment[$0] != nil
            }), let said = environment[name].flatMap({ Int($0) }), said > 1, size != said
        else { return nil }
        let cure =
            name == "SLURM_STEP_NUM_TASKS"
            ? "srun's PMI is not the one it speaks (srun --mpi=pmi2 for the MPICH family, --mpi=pmix for Open MPI, "
                + "or SLURM_MPI_TYPE), or it is not the MPI you meant (BALSAM_MPI_LIBRARY names it)"
            : "that is not the MPI that started the launcher; name that MPI's library in BALSAM_MPI_LIBRARY"
        return """
            started as one of \(said) ranks (\(name)=\(said)) but \(library) sees a world of \(size): \(cure) \
            (balsam-launcher(1), MPI LIBRARY)
            """
    }

    /// A parent may have left SIGTERM and SIGINT blocked (a test harness, a batch system's wrapper): unblock them,
    /// or a SIGTERM at the end of the allocation would never reach the handler.
    private static func trapStopSignals() {
        var handled = sigset_t()
        sigemptyset(&handled)
        for sig in [SIGTERM, SIGINT] {
            signal(sig) { number in stopSignal.store(number, ordering: .relaxed) }
            sigaddset(&handled, sig)
        }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
    }

    private func runRank(
        world: MPIWorld, prepareRankZero: () throws(SpoolError) -> Void,
        makeLogger: (_ rank: Int, _ size: Int) -> Logger
    ) throws(SpoolError) {
        let transport = MPITransport(world: world)
        let site = try openSite()
        let settings = try SiteSettings.load(site)
        let environment = Posix.environment()
        let nodes = try discoverNodes(world: world, settings: settings, environment: environment)
        guard world.rank == 0 else {
            try WorkerLoop(
                transport: transport, grace: settings.launcher.killGraceSeconds, environment: environment,
                silenceSeconds: settings.leaseTimeoutSeconds, maxOutputBytes: settings.launcher.maxOutputBytes
            ).run()
            return
        }
        try prepareRankZero()
        let logger = makeLogger(0, world.size)
        logger.info("MPI: \(world.library), \(world.size) rank(s)")
        var coordinatorOptions = options
        coordinatorOptions.leaseInfo["mpi_library"] = .string(world.library)
        if let (source, hosts) = SchedulerNodes.hosts(environment: environment) {
            coordinatorOptions.leaseInfo["scheduler_nodes"] = .array(hosts.map { .string($0) })
            let missing = SchedulerNodes.uncovered(hosts, by: nodes)
            if !missing.isEmpty {
                let named = missing.prefix(5).joined(separator: ", ")
                logger.warning(
                    """
                    \(source) lists \(hosts.count) node(s) but no rank runs on \(named); \
                    start one rank per node: mpirun -n \(hosts.count) --map-by ppr:1:node ...
                    """)
            }
        }
        for key in ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "COBALT_JOBID"] {
            if let id = environment[key] { coordinatorOptions.leaseInfo["batch_job"] = .string(id) }
        }
        let coordinator = Coordinator(
            site: site, settings: settings, nodes: nodes, transport: transport, options: coordinatorOptions,
            environment: environment, logger: logger)
        coordinator.stopRequested = { stopSignal.load(ordering: .relaxed) != 0 }
        _ = try coordinator.run()
    }

    /// This rank's node: Slurm's name for it where there is one (what its node list says; emulated nodes share a
    /// host), else the host's name. Not Slurm's when the rank's Slurm variables are another process's: MPICH's
    /// Hydra gives every rank mpiexec's environment (the batch shell's `SLURMD_NODENAME`) unless `-genvnone`,
    /// which shows as a PMI rank that is not Slurm's task number.
    public static func nodeName(_ environment: [String: String]) -> String {
        if let slurm = environment["SLURMD_NODENAME"], !slurm.isEmpty {
            let pmi = environment["PMI_RANK"]
            let task = environment["SLURM_PROCID"]
            if pmi == nil || task == nil || pmi == task { return slurm }
        }
        return Posix.hostName()
    }

    /// Every rank says where it is and how many CPUs its node has; all learn the whole allocation.
    private func discoverNodes(world: MPIWorld, settings: SiteSettings, environment: [String: String])
        throws(SpoolError) -> [Node]
    {
        let cpus = settings.launcher.cpusPerNode ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let me = Array("\(Launch.nodeName(environment))\t\(cpus)".utf8)
        let gathered: [[UInt8]]
        do { gathered = try world.allGather(me) } catch { throw SpoolError(.unavailable, "\(error)") }
        return gathered.enumerated().map { rank, bytes in
            let fields = String(decoding: bytes, as: UTF8.self).split(separator: "\t")
            return Node(
                index: rank, host: fields.first.map(String.init) ?? "localhost",
                cpus: fields.count > 1 ? Int(fields[1]) ?? 1 : 1, gpus: settings.launcher.gpuIDs,
                reserved: settings.launcher.reservedCPUs, sockets: settings.launcher.socketsPerNode)
        }
    }
}
