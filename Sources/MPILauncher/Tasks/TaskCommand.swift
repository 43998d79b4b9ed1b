import Spool

/// Turns a placed job into what its node runs: the app's shell preamble, then its rendered command, started
/// directly (one rank on one node) or through the platform's MPI launch command (several ranks or nodes).
public struct TaskCommand: Sendable {
    /// The site.
    public let site: Site
    /// Launch settings (`launcher.*`).
    public let settings: SiteSettings.Launcher
    /// How Python apps run (`python.*`).
    public let python: SiteSettings.Python
    /// The per-rank step of multi-rank jobs (`balsam-bind`, beside the launcher).
    public let binderPath: String
    public init(
        site: Site, settings: SiteSettings.Launcher, python: SiteSettings.Python = .init(),
        binderPath: String = TaskCommand.defaultBinderPath
    ) {
        self.site = site
        self.settings = settings
        self.python = python
        self.binderPath = binderPath
    }

    /// `balsam-bind` beside the running executable.
    public static var defaultBinderPath: String {
        Posix.parentPath(Posix.executablePath() ?? "./balsam-launcher") + "/balsam-bind"
    }

    /// Whether a job of `app` runs in a warm Python worker: a Python app's single-rank job on one node, with no
    /// shell preamble (which needs a shell), when `python.warm_workers` is on.
    public func runsWarm(_ job: Job, app: App) -> Bool {
        app.isPython && python.warmWorkers && job.numNodes == 1 && job.ranksPerNode == 1
            && !app.hooks.contains(.shellPreamble)
    }

    /// The environment jobs start from on a node: its rank's own (so node-local variables such as
    /// `SLURMD_NODENAME` are right), without the MPI runtime's variables (a job's own `mpirun` would otherwise take
    /// itself for one of the launcher's ranks). A spec's environment is laid over it.
    /// In a Slurm allocation jobs get `SLURM_OVERLAP=1`: the `srun` a job runs (its own, or the one MPICH's Hydra
    /// starts its proxies with) shares the nodes with the launcher's step instead of waiting for it to end.
    public static func baseEnvironment(_ rankEnvironment: [String: String]) -> [String: String] {
        var base = rankEnvironment.filter { !isMPIRuntimeVariable($0.key) && !deviceVariables.contains($0.key) }
        if rankEnvironment["SLURM_JOB_ID"] != nil { base["SLURM_OVERLAP"] = "1" }
        return base
    }

    /// What selects a process's GPUs (NVIDIA, AMD, Intel): a job sees only the variable the launcher sets for
    /// it, never the launcher rank's own (a process manager may have given the launcher's step every device).
    public static let deviceVariables: Set<String> = [
        "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
        "ZE_AFFINITY_MASK",
    ]

    /// Prefixes of what an MPI runtime or process manager sets in a rank's environment about that rank: Open MPI
    /// and PRRTE, PMIx, PMI (MPICH's Hydra, Cray MPICH), Hydra itself, and Cray PALS (`PALS_RANKID`,
    /// `PALS_NODEID`, ...: a single-rank job that links Cray MPICH would otherwise take itself for the launcher's
    /// rank).
    public static let mpiRuntimePrefixes = [
        "OMPI_", "PMIX_", "PMI_", "PRTE_", "OPAL_", "HYDRA_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PALS_",
    ]

    /// Variables the MPI runtime sets in a rank's environment; Open MPI's run-as-root switches stay.
    static func isMPIRuntimeVariable(_ name: String) -> Bool {
        if name.hasPrefix("OMPI_ALLOW_RUN_AS_ROOT") { return false }
        return mpiRuntimePrefixes.contains { name.hasPrefix($0) }
    }

    /// The built-in launch templates, by `launcher.mpi_launcher` name.
    public static let templates: [String: String] = [
        "mpirun":
            "mpirun -n {{ ranks }} --map-by ppr:{{ ranks_per_node }}:node --bind-to none --host {{ host_slots }} {{ env_flags }} {{ launch_params }} {{ command }}",
        "mpiexec":
            "mpiexec -n {{ ranks }} --ppn {{ ranks_per_node }} --hosts {{ hosts }} {{ env_flags }} {{ launch_params }} {{ command }}",
        "srun":
            "srun -n {{ ranks }} --ntasks-per-node {{ ranks_per_node }} --nodelist {{ hosts }} --nodes {{ num_nodes }} --cpus-per-task {{ threads_per_rank }} --cpu-bind none --overlap {{ launch_params }} {{ command }}",
    ]

    /// The launch template in force: a built-in one by name, or the setting itself.
    public var launchTemplate: String { TaskCommand.templates[settings.mpiLauncher] ?? settings.mpiLauncher }

    /// What runs job `job` of `app`, placed by `assignment` on `nodes`. Its environment holds what the job adds
    /// to its node's base environment (see `baseEnvironment`).
    public func spec(_ job: Job, app: App, assignment: Assignment, nodes: [Node]) throws(SpoolError) -> TaskSpec {
        let directory = site.jobDirectory(job.workdir)
        var environment: [String: String] = [:]
        for (key, value) in app.environmentVariables { environment[key] = value }
        environment["BALSAM_JOB_ID"] = job.id
        environment["BALSAM_JOB_DIR"] = directory
        environment["BALSAM_SITE"] = site.root
        environment["OMP_NUM_THREADS"] = String(job.threadsPerRank)
        if !assignment.gpus.isEmpty {
            environment[settings.gpuVariable] = assignment.gpus.joined(separator: ",")
            if settings.gpuVariable == "CUDA_VISIBLE_DEVICES" { environment["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID" }
        }
        var command: String
        var worker: [String] = []
        if app.isPython {
            // The site's runner calls the class's run() (see balsam_runner.py); rank 0 leaves the result.
            let interpreter = [app.pythonExecutable ?? python.executable, PythonApps.runnerPath(site)]
            environment["BALSAM_APP"] = app.name
            command = interpreter.map(CommandTemplate.shellQuote).joined(separator: " ") + " run"
            if runsWarm(job, app: app) { worker = interpreter }
        } else {
            command = try app.render(job.parameters)
        }
        if assignment.nodes.count > 1 || job.ranksPerNode > 1 {
            let exported = Set(app.environmentVariables.keys).union([
                "BALSAM_JOB_ID", "BALSAM_JOB_DIR", "OMP_NUM_THREADS",
            ]).union(app.isPython ? ["BALSAM_APP", "BALSAM_SITE"] : [])
                .union(assignment.gpus.isEmpty ? [] : [settings.gpuVariable]).sorted()
            let hosts = assignment.nodes.map { nodes[$0].host }
            let binding = cpuBinding(job, assignment)
            command = bound(command, job: job, assignment: assignment, cpus: binding.ranks)
            let values: [String: String] = [
                "cpus_per_rank": String(binding.cpusPerRank),
                // Slurm counts CPUs in hardware threads: a core and its sibling are 2.
                // (cpus_per_node comes from settings.yml: never a trapping multiplication on it.)
                "hardware_threads_per_rank": String(
                    settings.cpuSiblingsOffset == nil ? binding.cpusPerRank : min(binding.cpusPerRank, Int.max / 2) * 2),
                "depth": String(job.threadsPerRank),
                JobField.gpusPerRank.name: JobField.gpusPerRank.value(in: job).serialized(),
                "cpu_bind_list": binding.list,
                "ranks": String(assignment.nodes.count * job.ranksPerNode),
                JobField.ranksPerNode.name: String(job.ranksPerNode),
                "num_nodes": String(assignment.nodes.count),
                JobField.threadsPerRank.name: String(job.threadsPerRank),
                "hosts": hosts.joined(separator: ","),
                "host_slots": hosts.map { "\($0):\(job.ranksPerNode)" }.joined(separator: ","),
                "env_flags": envFlags(exported),
                "launch_params": try job.launchParams.sorted { $0.key < $1.key }.map {
                    (key, value) throws(SpoolError) in
                    // Read already by the job's reader; checked again where it becomes part of a command line.
                    if let why = Job.launchParamKeyProblem(key) { throw SpoolError(.invalidInput, why) }
                    let flag = key.hasPrefix("-") ? key : (key.count == 1 ? "-" : "--") + key
                    return value.isEmpty ? flag : flag + " " + CommandTemplate.shellQuote(value)
                }.joined(separator: " "),
                "command": command,
            ]
            command = try TaskCommand.render(launchTemplate, values)
        }
        let preamble = site.appsPath + "/" + app.name + "/" + App.Hook.shellPreamble.rawValue
        // The app as loaded says which hook files it has (the launcher caches apps: no stat per job).
        let script =
            app.hooks.contains(.shellPreamble)
            ? ". " + CommandTemplate.shellQuote(preamble) + " && " + command : command
        return TaskSpec(
            id: job.id, directory: directory, script: script, environment: environment, warmWorker: worker)
    }

    /// `command` behind the per-rank step (`balsam-bind`) that gives each local rank its own devices (the job's
    /// GPUs on the node, `rankDevices`) and CPUs (`cpus`, one list per local rank), when it has either.
    func bound(_ command: String, job: Job, assignment: Assignment, cpus: [String]) -> String {
        var arguments: [String] = []
        if job.gpusPerRank > 0, !assignment.gpus.isEmpty {
            let devices = TaskCommand.rankDevices(assignment.gpus, ranks: job.ranksPerNode, perRank: job.gpusPerRank)
            arguments += [
                "--variable", settings.gpuVariable, "--devices",
                devices.map { $0.joined(separator: ",") }.joined(separator: ";"),
            ]
            let tiles = settings.gpuIDs.compactMap { id in id.split(separator: ".").last.flatMap { Int($0) } }
            if settings.gpuIDs.allSatisfy({ $0.contains(".") }), let most = tiles.max(), most >= 1 {
                arguments += ["--tiles", String(most + 1)]
            }
        }
        if !cpus.isEmpty { arguments += ["--cpus", cpus.joined(separator: ";")] }
        guard !arguments.isEmpty else { return command }
        return ([binderPath] + arguments).map(CommandTemplate.shellQuote).joined(separator: " ") + " -- " + command
    }

    /// Each local rank's devices, from the job's GPUs on a node in the order the node lists them (which a preset
    /// orders so that the k-th GPU is the one nearest the k-th CPUs): rank k takes
    /// `⌊k × gpus_per_rank⌋ ..< ⌊(k+1) × gpus_per_rank⌋` (at least one), so ranks share a device only when
    /// `gpus_per_rank` is below 1, and the ranks of a packed job never reach another job's.
    public static func rankDevices(_ gpus: [String], ranks: Int, perRank: Double) -> [[String]] {
        guard !gpus.isEmpty, perRank > 0 else { return Array(repeating: [], count: max(1, ranks)) }
        return (0..<max(1, ranks)).map { k in
            let low = min(gpus.count - 1, Int(saturating: (Double(k) * perRank).rounded(.down)))
            let high = min(gpus.count, max(low + 1, Int(saturating: (Double(k + 1) * perRank).rounded(.down))))
            return Array(gpus[low..<high])
        }
    }

    /// CPUs per rank (the job's CPUs on a node over its ranks per node: all of a node's for a multi-node job), the
    /// ranks' CPU lists for `--cpu-bind`: `list:0,1:2,3` (each rank's CPUs, ranks apart by colons), and the same
    /// lists one per rank, with each core's second hardware thread (`launcher.cpu_siblings_offset` on) when the job
    /// asks for 2 threads per core. With `launcher.sockets_per_node` above 1 the ranks are spread evenly over the
    /// sockets (each socket's CPUs an equal share of the node's IDs) and a rank's CPUs are all on its socket.
    func cpuBinding(_ job: Job, _ assignment: Assignment) -> (cpusPerRank: Int, list: String, ranks: [String]) {
        let ids = assignment.cpuIDs
        guard !ids.isEmpty else { return (max(1, job.threadsPerRank / max(1, job.threadsPerCore)), "none", []) }
        let ranksPerNode = max(1, job.ranksPerNode)
        var groups = [ids]
        let sockets = settings.socketsPerNode
        if sockets > 1, ranksPerNode % sockets == 0, let declared = settings.cpusPerNode {
            let bySocket = Node.bySocket(ids, declared: declared, sockets: sockets)
            if bySocket.count == sockets, bySocket.allSatisfy({ $0.count >= ranksPerNode / sockets }) {
                groups = bySocket
            }
        }
        let ranksPerGroup = ranksPerNode / groups.count
        let per = max(1, groups.map { $0.count / ranksPerGroup }.min() ?? 1)
        var ranks: [String] = []
        for group in groups {
            for k in 0..<ranksPerGroup {
                let mine = group.dropFirst(k * per).prefix(per)
                guard !mine.isEmpty else { break }
                var cpus = Array(mine)
                if job.threadsPerCore >= 2, let offset = settings.cpuSiblingsOffset {
                    cpus += mine.map { $0 + offset }
                }
                ranks.append(cpus.map(String.init).joined(separator: ","))
            }
        }
        return (per, "list:" + ranks.joined(separator: ":"), ranks)
    }

    private func envFlags(_ names: [String]) -> String {
        switch settings.mpiLauncher {
        case "mpirun": return names.map { "-x " + $0 }.joined(separator: " ")
        case "mpiexec": return "-genvlist " + names.joined(separator: ",")
        default: return ""
        }
    }

    /// Substitutes `{{ name }}` in a launch template; an unknown name is an error naming it and the choices.
    static func render(_ template: String, _ values: [String: String]) throws(SpoolError) -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstRange(of: "{{") {
            out += rest[..<open.lowerBound]
            guard let close = rest[open.upperBound...].firstRange(of: "}}") else {
                throw SpoolError(.invalidInput, "launcher.mpi_launcher: '{{' without '}}' in \"\(template)\"")
            }
            let name = String(rest[open.upperBound..<close.lowerBound].filter { $0 != " " })
            guard let value = values[name] else {
                throw SpoolError(
                    .invalidInput,
                    "launcher.mpi_launcher: unknown placeholder '\(name)'; known: "
                        + values.keys.sorted().joined(separator: ", "))
            }
            out += value
            rest = rest[close.upperBound...]
        }
        out += rest
        // Empty placeholders leave double spaces; they do not matter to a shell but read badly in logs.
        while out.contains("  ") { out = out.replacing("  ", with: " ") }
        return String(out.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
