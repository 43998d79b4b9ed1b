/// The parts of `settings.yml` the programs act on; an unknown key is refused (`SiteSettingsFile.swift`).
public struct SiteSettings: Sendable, Equatable {
    /// Seconds a hook may run before it is killed (`processing.hook_timeout_sec`).
    public var hookTimeoutSeconds: Double = 600
    /// Seconds after its last heartbeat that a launcher's lease expires (`launcher.lease_timeout_sec`).
    public var leaseTimeoutSeconds: Double = 120
    /// Lines of output kept in a failure reason (`launcher.error_tail_num_lines`).
    public var errorTailLines = 10
    /// Only jobs whose tags contain all of these are processed here (`filter_tags`).
    public var filterTags: [String: String] = [:]
    /// How launchers run jobs (`launcher.*`).
    public var launcher = Launcher()
    /// The batch scheduler and what may be asked of it (`scheduler.*`).
    public var scheduler = Scheduler()
    /// Automatic batch jobs sized to the backlog (`elastic_queue`; nil: off).
    public var elasticQueue: ElasticQueue?
    /// The server this site mirrors itself to (`sync`; nil: none).
    public var sync: Sync?
    /// The Python that runs apps defined as Python classes (`python`).
    public var python = Python()
    /// Where jobs' transfers go, by alias (`transfer_locations: {ALIAS: URL}`).
    public var transferLocations: [String: TransferLocation] = [:]
    /// How the watcher's transfer service works (`transfers`).
    public var transfers = Transfers()

    /// The `transfers:` section.
    public struct Transfers: Sendable, Equatable {
        /// Items per task: one rsync, one Globus task, one local copy batch (`transfer_batch_size`).
        public var batchSize = 100
        /// Tasks in flight at once (`max_concurrent_transfers`).
        public var maxConcurrent = 5
        /// Seconds between rounds of the service (`service_period`).
        public var periodSeconds: Double = 1
        /// Failed attempts retried before the job is FAILED (`on_transfer_error: {retries: N}`).
        public var retries = 2
        /// Seconds a location may stay unreachable (a refused or timed-out connection) before its items fail, tried
        /// meanwhile every 1 to 30 s without spending their retries (`on_transfer_error: {unreachable_timeout_sec}`).
        public var unreachableTimeoutSeconds: Double = 600
        /// Options for ssh, as rsync's `-e` gets them (`ssh_options`: a list, like ["-i", "~/.ssh/dtn"]).
        public var sshOptions: [String] = []
        /// Globus: `globus_sync_level` (default `size`, the original's) and `globus_verify_checksum` (true).
        public var globusSyncLevel = "size"
        public var globusVerifyChecksum = true
        /// The Globus CLI (`globus_cli`, default `globus` on PATH).
        public var globusCLI = "globus"
        /// This site's own Globus endpoint, the other end of every Globus transfer (`globus_endpoint_id`).
        public var globusEndpointID: String?

        public init() {}
    }

    /// The `python:` section.
    public struct Python: Sendable, Equatable {
        /// The site's Python for class hooks and `run()` apps (`executable`); it needs `dill` and the original
        /// client package `balsam`. An app's `python_executable` overrides it.
        public var executable = "python3"
        /// Whether single-rank Python apps run in warm workers kept by each launcher rank (`warm_workers`).
        public var warmWorkers = true

        public init() {}
    }

    /// The `sync:` section: where the site's REST server is and how to reach it.
    public struct Sync: Sendable, Equatable {
        /// The server's URL (`url`).
        public var url: String
        /// The site's name on the server (`site_name`; default: the site's own name).
        public var siteName: String?
        /// A file holding the bearer token (`token_file`; default: the token of `~/.balsam/client.yml`).
        public var tokenFile: String?
        /// A CA bundle for HTTPS (`ca_file`).
        public var caFile: String?
        /// Seconds between rounds (`period`).
        public var periodSeconds: Double = 1
        /// Seconds a push with nothing to tell waits on the server for news for the site (`wait_for_news`; 0:
        /// poll every period instead). Under a proxy's idle timeout (nginx: 60 s).
        public var waitForNewsSeconds = 45

        public init(url: String) { self.url = url }
    }

    /// The `scheduler:` section.
    public struct Scheduler: Sendable, Equatable {
        /// `local`, `slurm`, `pbs`, `lsf` or `cobalt` (`scheduler_class`).
        public var kind = "local"
        /// Seconds between polls of the scheduler (`sync_period`).
        public var syncSeconds: Double = 10
        /// Queues batch jobs may go to, with their limits (`allowed_queues`).
        public var allowedQueues: [String: QueuePolicy] = [
            "local": QueuePolicy(maxNodes: 1, maxWallTimeMinutes: 1440, maxQueuedJobs: 1)
        ]
        /// Projects (accounts) batch jobs may be charged to (`allowed_projects`).
        public var allowedProjects: [String] = ["local"]
        /// Extra parameters `-x KEY=VALUE` may set, with their defaults (`optional_batch_job_params`).
        public var optionalParams: [String: String] = [:]
        /// The script template, relative to the site (`job_template_path`).
        public var jobTemplate = "job-template.sh"
        /// Seconds a scheduler command may take before it is killed and counted as failed.
        public var commandTimeoutSeconds: Double = 60
        /// Slurm: the sbatch option that takes the queue (`queue_option`: `--partition` or `--qos`); nil: the
        /// scheduler's own.
        public var queueOption: String?
        /// PBS: resources each node chunk asks for besides its count (`node_select`: `system=polaris` makes
        /// `-l select=N:system=polaris`); nil: none.
        public var nodeSelect: String?

        public init() {}
    }

    /// The limits of one queue, as a platform preset's `queues:` and a site's `scheduler.allowed_queues` both
    /// write them (read by `read`, written by `yaml`: one record for both).
    public struct QueuePolicy: Sendable, Equatable {
        public var maxNodes: Int
        /// The longest wall time, in minutes, at the smallest size (`max_walltime`).
        public var maxWallTimeMinutes: Int
        /// Batch jobs of this site queued or running in it at once.
        public var maxQueuedJobs: Int
        /// The fewest nodes a batch job may ask for (`min_nodes`, default 1).
        public var minNodes = 1
        /// Longer wall times from a size on (`max_walltime_from_nodes: {NODES: MINUTES}`): a facility's bins
        /// (Frontier: 6 h from 92 nodes, 12 h from 184).
        public var wallTimeFromNodes: [Int: Int] = [:]

        public init(
            maxNodes: Int, maxWallTimeMinutes: Int, maxQueuedJobs: Int, minNodes: Int = 1,
            wallTimeFromNodes: [Int: Int] = [:]
        ) {
            self.maxNodes = maxNodes
            self.maxWallTimeMinutes = maxWallTimeMinutes
            self.maxQueuedJobs = maxQueuedJobs
            self.minNodes = minNodes
            self.wallTimeFromNodes = wallTimeFromNodes
        }

        /// The longest wall time a batch job of `nodes` nodes may ask for.
        public func maxWallTime(nodes: Int) -> Int {
            wallTimeFromNodes.filter { $0.key <= nodes }.max { $0.key < $1.key }?.value ?? maxWallTimeMinutes
        }

        /// The longest at any size (what the server shows the original client, whose model has one number).
        public var longestWallTimeMinutes: Int { max(maxWallTimeMinutes, wallTimeFromNodes.values.max() ?? 0) }

        /// The keys of a queue's mapping.
        static let keys = ["max_nodes", "max_walltime", "max_queued_jobs", "min_nodes", "max_walltime_from_nodes"]

        /// A queue's limits from its mapping; `defaults` fill what is missing (a preset has none: both maxima are
        /// required there).
        static func read(_ q: Fields, defaults: Bool) throws(SpoolError) -> QueuePolicy {
            let nodes = try q.integer("max_nodes")
            let minutes = try q.integer("max_walltime")
            guard defaults || (nodes != nil && minutes != nil) else {
                throw SpoolError(.invalidInput, "\(q.section): max_nodes and max_walltime are required", path: q.path)
            }
            var policy = QueuePolicy(
                maxNodes: nodes ?? 1, maxWallTimeMinutes: minutes ?? 60,
                maxQueuedJobs: try q.integer("max_queued_jobs") ?? 1, minNodes: try q.integer("min_nodes") ?? 1)
            guard policy.minNodes <= policy.maxNodes else {
                throw SpoolError(.invalidInput, "\(q.section).min_nodes is above max_nodes", path: q.path)
            }
            for (key, value) in try q.object("max_walltime_from_nodes") ?? [:] {
                guard let from = Int(key), from > 1, from <= policy.maxNodes, let limit = value.intValue,
                    limit > policy.maxWallTimeMinutes, limit <= 10_000_000
                else {
                    throw SpoolError(
                        .invalidInput,
                        "\(q.section).max_walltime_from_nodes.\(key): a node count above 1 (at most max_nodes) to "
                            + "a longer wall time in minutes than max_walltime", path: q.path)
                }
                policy.wallTimeFromNodes[from] = limit
            }
            return policy
        }

        /// The mapping's lines, indented by `indent`.
        func yaml(indent: String) -> String {
            var lines = [
                "max_nodes: \(maxNodes)", "max_walltime: \(maxWallTimeMinutes)", "max_queued_jobs: \(maxQueuedJobs)",
            ]
            if minNodes != 1 { lines.append("min_nodes: \(minNodes)") }
            if !wallTimeFromNodes.isEmpty {
                let bins = wallTimeFromNodes.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
                lines.append("max_walltime_from_nodes: {\(bins.joined(separator: ", "))}")
            }
            return lines.map { indent + $0 }.joined(separator: "\n")
        }
    }

    /// The `elastic_queue:` section (the original's keys).
    public struct ElasticQueue: Sendable, Equatable {
        public var periodSeconds: Double = 60
        public var project = "local"
        public var queue = "local"
        /// Size batch jobs to the scheduler's backfill windows where it reports them.
        public var useBackfill = false
        public var minWallTimeMinutes = 10
        public var maxWallTimeMinutes = 60
        /// Minutes taken off a backfill window's length.
        public var wallTimePadMinutes = 5
        public var minNodes = 1
        public var maxNodes = 1
        /// A batch job queued longer than this is deleted (the backlog is asked for again).
        public var maxQueueWaitMinutes = 10
        /// Most elastic batch jobs queued or running at once.
        public var maxQueuedJobs = 1

        public init() {}
    }

    /// The `launcher:` section.
    public struct Launcher: Sendable, Equatable {
        /// Seconds a launcher stays with nothing to run before it exits (`idle_ttl_sec`).
        public var idleSeconds: Double = 60
        /// Seconds between rescans of the ready queue, for changes made on other nodes (`delay_sec`).
        public var pollSeconds: Double = 1
        /// Most jobs one launcher runs at once (`max_concurrent_mpiruns`).
        public var maxConcurrent = 1000
        /// Whether several single-node jobs may share a node (`mpirun_allows_node_packing`).
        public var nodePacking = true
        /// The command that starts a multi-node job (`mpi_launcher`): `mpirun` (Open MPI), `mpiexec` (MPICH),
        /// `srun` (Slurm), or a template of its own with `{{ ranks }}`, `{{ hosts }}`, ... (see balsam-launcher(1)).
        public var mpiLauncher = "mpirun"
        /// CPUs of each node (`cpus_per_node`); nil: each rank counts its own node's.
        public var cpusPerNode: Int?
        /// GPU IDs of each node (`gpu_ids`); none by default.
        public var gpuIDs: [String] = []
        /// The CPU ID of core 0's second hardware thread (`cpu_siblings_offset`; Polaris: 32), for binding lists
        /// of jobs with 2 threads per core; nil: none.
        public var cpuSiblingsOffset: Int?
        /// CPU IDs the launcher never hands out (`reserved_cpus`): cores a facility keeps for its own services
        /// (Aurora: 0 and 52). A node's CPUs are its `cpus_per_node` IDs less these.
        public var reservedCPUs: [Int] = []
        /// Sockets of each node (`sockets_per_node`, default 1): a multi-rank job's ranks are spread evenly over
        /// them, each rank's CPUs on one socket (Aurora: 2).
        public var socketsPerNode = 1
        /// The variable that tells a job its GPUs (`gpu_variable`).
        public var gpuVariable = "CUDA_VISIBLE_DEVICES"
        /// Seconds between SIGTERM and SIGKILL when a job is stopped (`kill_grace_sec`).
        public var killGraceSeconds: Double = 0.5
        /// Bytes of output a job may leave in its `job.out` (`max_output_mb`); nil: no limit.
        public var maxOutputBytes: Int?
        /// Whether a job may ask for more CPUs on a node (`ranks_per_node × threads_per_rank / threads_per_core`)
        /// than the node has (`oversubscribe`): it then takes the whole node. Off: such a job is FAILED with the
        /// reason when a launcher places it, instead of waiting for ever.
        public var oversubscribe = false

        /// The defaults.
        public init() {}
    }

    /// The defaults of a new site.
    public init() {}

    /// The keys of one settings section, read with errors that name the key.
    struct Fields {
        let o: [String: JSONValue]
        let section: String
        let path: String

        init(_ value: JSONValue, _ section: String, path: String) throws(SpoolError) {
            guard case .object(let o) = value else {
                throw SpoolError(.invalidInput, "\(section) must be a mapping of keys to values", path: path)
            }
            self.o = o
            self.section = section
            self.path = path
        }

        func number(_ key: String, allowZero: Bool = false) throws(SpoolError) -> Double? {
            guard let v = o[key], v != .null else { return nil }
            guard let d = v.doubleValue, d > 0 || (allowZero && d == 0) else {
                let what = allowZero ? "a number, 0 or more" : "a positive number"
                throw SpoolError(.invalidInput, "\(section).\(key) must be \(what)", path: path)
            }
            return d
        }

        func integer(_ key: String, allowZero: Bool = false) throws(SpoolError) -> Int? {
            guard let v = o[key], v != .null else { return nil }
            guard let i = v.intValue, i > 0 || (allowZero && i == 0) else {
                let what = allowZero ? "a whole number, 0 or more" : "a positive whole number"
                throw SpoolError(.invalidInput, "\(section).\(key) must be \(what)", path: path)
            }
            return i
        }

        /// A list of whole numbers, 0 or more (CPU IDs).
        func integers(_ key: String) throws(SpoolError) -> [Int]? {
            guard let v = o[key], v != .null else { return nil }
            guard case .array(let items) = v, let ids = Optional(items.compactMap(\.intValue)),
                ids.count == items.count,
                ids.allSatisfy({ $0 >= 0 })
            else {
                throw SpoolError(
                    .invalidInput, "\(section).\(key) must be a list of whole numbers, 0 or more", path: path)
            }
            return ids
        }

        func bool(_ key: String) throws(SpoolError) -> Bool? {
            guard let v = o[key], v != .null else { return nil }
            guard case .bool(let b) = v else {
                throw SpoolError(.invalidInput, "\(section).\(key) must be true or false", path: path)
            }
            return b
        }

        func string(_ key: String) throws(SpoolError) -> String? {
            guard let v = o[key], v != .null else { return nil }
            guard let s = v.stringValue ?? v.intValue.map(String.init) else {
                throw SpoolError(.invalidInput, "\(section).\(key) must be a string", path: path)
            }
            return s
        }

        func object(_ key: String) throws(SpoolError) -> [String: JSONValue]? {
            guard let v = o[key], v != .null else { return nil }
            guard case .object(let d) = v else {
                throw SpoolError(.invalidInput, "\(section).\(key) must be a mapping", path: path)
            }
            return d
        }
    }
}

extension SiteSettings {
    /// Whether `text` is PBS chunk resources as `node_select` takes them: `key=value` pairs joined by `:`, of
    /// letters, digits and `_.+-` (nothing a qsub argument could read as another option).
    static func isNodeSelect(_ text: String) -> Bool {
        let pairs = text.split(separator: ":", omittingEmptySubsequences: false)
        return !pairs.isEmpty
            && pairs.allSatisfy { pair in
                let sides = pair.split(separator: "=", omittingEmptySubsequences: false)
                return sides.count == 2
                    && sides.allSatisfy { side in
                        !side.isEmpty
                            && side.utf8.allSatisfy { c in
                                (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A)
                                    || "_.+-".utf8.contains(c)
                            }
                    }
            }
    }
}
