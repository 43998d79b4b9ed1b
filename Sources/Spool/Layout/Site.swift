#if canImport(Glibc)
    import Glibc
#endif

/// A site: a spool directory holding settings, apps, job directories, queues and event logs.
/// See `balsam-spool(5)` for the whole layout and the rules every writer follows.
public struct Site: Sendable {
    /// The on-disk format this code writes and reads. A site with a higher number is refused.
    public static let formatVersion = 1
    /// The marker file that makes a directory a site (and that commands look for walking up).
    public static let markerName = ".balsam-site"

    /// Absolute path of the site directory.
    public let root: String
    /// The site's name (from the marker).
    public let name: String

    public var markerPath: String { root + "/" + Site.markerName }
    public var settingsPath: String { root + "/settings.yml" }
    public var appsPath: String { root + "/apps" }
    public var dataPath: String { root + "/data" }
    public var jobsPath: String { root + "/jobs" }
    public var finalIndexPath: String { root + "/jobs/final" }
    public var dropBoxPath: String { root + "/queue/new" }
    public var acceptedPath: String { root + "/queue/accepted" }
    public var controlPath: String { root + "/queue/control" }
    public var eventsPath: String { root + "/events" }
    public var rejectedPath: String { root + "/rejected" }
    public var tmpPath: String { root + "/tmp" }
    /// Where new job directories are assembled: inside `data/`, so the final rename never crosses filesystems
    /// even when `data/` is a link to another one.
    public var stagingPath: String { root + "/data/.balsam-staging" }
    public var logPath: String { root + "/log" }

    /// `.HOST.PID-START`: appended to the names of temporary files and claims, so recovery can tell whether their
    /// writer is still alive (on this host) before treating them as leftovers.
    public static let ownerSuffix = "." + Posix.parentStamp

    /// Where a job's entry waits while a move is under way (`tmp/ID.HOST.PID.moving`).
    public func claimPath(_ id: String) -> String { tmpPath + "/" + id + Site.ownerSuffix + ".moving" }

    /// The directory of entries for jobs in an active (non-final) state.
    public func activePath(_ state: JobState) -> String { jobsPath + "/" + state.rawValue }
    /// A job's directory.
    public func jobDirectory(_ workdir: String) -> String { dataPath + "/" + workdir }

    /// Every directory a site has, relative to its root, in creation order.
    static let directories: [String] =
        ["apps", "data", "data/.balsam-staging", "jobs"] + JobState.active.map { "jobs/" + $0.rawValue }
        + ["jobs/final", "queue", "queue/new", "queue/accepted", "queue/control", "events", "rejected", "tmp", "log"]
        + ["batchjobs", "batchjobs/scripts"]

    init(root: String, name: String) {
        self.root = root
        self.name = name
    }

    // MARK: - Creating and finding sites

    /// Creates a new site at `path` (which must not exist), making missing parent directories as `mkdir -p`
    /// does. The site is built under a temporary name, with `files` (name relative to the site: contents) beside
    /// its own, and renamed into place, so a failure leaves nothing behind: not even the parents it made.
    public static func create(
        at path: String, name: String? = nil, scheduler: String = "local", files: [String: [UInt8]] = [:]
    ) throws(SpoolError) -> Site {
        try create(at: path, name: name, platform: .generic(scheduler: scheduler), project: nil, files: files)
    }

    /// Creates a new site from a platform preset: its values go into settings.yml (`project`, else the preset's
    /// default project, is the one allowed project). With `group`, a site that group shares (`SharedSite`).
    public static func create(
        at path: String, name: String? = nil, platform: Platform, project: String?, files: [String: [UInt8]] = [:],
        group: gid_t? = nil
    ) throws(SpoolError) -> Site {
        let root = Posix.absolute(path)
        let siteName = name ?? Posix.lastComponent(root)
        if siteName.isEmpty || siteName.utf8.contains(where: { $0 < 0x20 }) {
            throw SpoolError(.usage, "site name '\(siteName)' must be non-empty and printable")
        }
        if Posix.exists(root) {
            throw SpoolError(.cannotCreate, "already exists; a new site needs a new directory", path: root)
        }
        let parent = Posix.parentPath(root)
        var madeParents: [String] = []
        var ancestor = parent
        while !Posix.exists(ancestor) && ancestor != "/" {
            madeParents.insert(ancestor, at: 0)
            ancestor = Posix.parentPath(ancestor)
        }
        if !Posix.isDirectory(ancestor) { throw SpoolError(.cannotCreate, "is not a directory", path: ancestor) }
        let staging = parent + "/." + Posix.lastComponent(root) + ".creating.\(getpid())"
        do {
            for dir in madeParents { try Posix.mkdir(dir) }
            try Posix.mkdir(staging)
            for dir in directories { try Posix.mkdir(staging + "/" + dir) }
            try Posix.createFile(
                staging + "/settings.yml",
                Array(Settings.template(name: siteName, platform: platform, project: project).utf8),
                sync: true)
            for (name, bytes) in files.sorted(by: { $0.key < $1.key }) {
                try Posix.createFile(staging + "/" + name, bytes, sync: true)
            }
            var fields: [String: JSONValue] = [
                "format": .int(formatVersion), "name": .string(siteName), "created": .string(Timestamp.now()),
            ]
            // A shared site says so in its marker: every member's command then takes the shared umask.
            if let group { fields["group"] = .int(Int(group)) }
            let marker = JSONValue.object(fields)
            try Posix.createFile(staging + "/" + markerName, Array((marker.serialized() + "\n").utf8), sync: true)
            if let group { try SharedSite.share(staging, group: group) }
            try Posix.renameNoReplace(staging, root)
            try Posix.fsyncDirectory(parent)
        } catch {
            Posix.removeTree(staging)
            // Only the directories this call made, innermost first; rmdir leaves any another process filled.
            for dir in madeParents.reversed() { _ = rmdir(dir) }
            throw error
        }
        if group != nil { SharedSite.adoptUmask() }
        return Site(root: root, name: siteName)
    }

    /// Opens the site at `path`, checking its marker and format version (and, for a shared site, taking its
    /// umask: `SharedSite`).
    public static func open(_ path: String) throws(SpoolError) -> Site {
        let root = Posix.absolute(path)
        let marker = root + "/" + markerName
        let bytes: [UInt8]
        do { bytes = try Posix.readFile(marker, limit: 65536) } catch {
            if error.code == .notFound {
                throw SpoolError(
                    .notFound, "not a Balsam site (no \(markerName); create one with 'balsam init')", path: root)
            }
            throw error
        }
        guard case .object(let o)? = try? JSONValue.parse(bytes), let format = o["format"]?.intValue else {
            throw SpoolError(.invalidInput, "malformed site marker", path: marker)
        }
        if o["group"] != nil { SharedSite.adoptUmask() }
        if format > formatVersion {
            throw SpoolError(
                .unavailable,
                "site format \(format) is newer than this Balsam understands (\(formatVersion)); use a newer Balsam",
                path: root)
        }
        if !Posix.isDirectory(root + "/jobs/final") || !Posix.isDirectory(root + "/data") {
            throw SpoolError(
                .invalidInput, "site is incomplete (jobs/final or data missing); run 'balsam fsck'", path: root)
        }
        return Site(root: root, name: o["name"]?.stringValue ?? Posix.lastComponent(root))
    }

    /// Finds the site a command works on: `explicit` (`--site`), else `environment` (`$BALSAM_SITE`), else the
    /// nearest directory at or above `directory` holding a site marker.
    public static func locate(explicit: String?, environment: String?, from directory: String) throws(SpoolError)
        -> Site
    {
        if let explicit, !explicit.isEmpty { return try open(explicit) }
        if let environment, !environment.isEmpty { return try open(environment) }
        var dir = Posix.absolute(directory)
        while true {
            if Posix.exists(dir + "/" + markerName) { return try open(dir) }
            let parent = Posix.parentPath(dir)
            if parent == dir { break }
            dir = parent
        }
        throw SpoolError(
            .notFound, "no Balsam site here or above; give --site DIR or set BALSAM_SITE",
            path: Posix.absolute(directory))
    }

    // MARK: - Apps

    /// Loads one app by name.
    public func app(_ name: String) throws(SpoolError) -> App {
        try App.validateName(name)
        let dir = appsPath + "/" + name
        if !Posix.exists(dir + "/app.yml") {
            let known = (try? appNames())?.joined(separator: ", ") ?? ""
            throw SpoolError(.notFound, "no app '\(name)' (apps here: \(known.isEmpty ? "none" : known))", path: dir)
        }
        return try App.load(directory: dir, name: name)
    }

    /// Names of the apps in `SITE/apps`, sorted.
    public func appNames() throws(SpoolError) -> [String] {
        try Posix.listDirectory(appsPath).filter { Posix.exists(appsPath + "/" + $0 + "/app.yml") }.sorted()
    }

    /// Writes a new app (refusing to replace an existing one).
    public func createApp(_ app: App) throws(SpoolError) {
        try app.validate()
        let dir = appsPath + "/" + app.name
        if Posix.exists(dir) { throw SpoolError(.cannotCreate, "app '\(app.name)' already exists", path: dir) }
        let staging = tmpPath + "/app-\(app.name).\(getpid())"
        Posix.removeTree(staging)
        do {
            try Posix.mkdir(staging)
            try Posix.createFile(staging + "/app.yml", Array(app.yamlText().utf8), sync: true)
            try Posix.renameNoReplace(staging, dir)
            try Posix.fsyncDirectory(appsPath)
        } catch {
            Posix.removeTree(staging)
            throw error
        }
    }
}

/// Site settings (`settings.yml`).
public enum Settings {
    /// The commented `settings.yml` a new site starts with. Key names follow the original Balsam's.
    // Over 100 lines: the text of settings.yml, commented, as a user reads it.
    public static func template(name: String, scheduler: String = "local") -> String {
        template(name: name, platform: .generic(scheduler: scheduler), project: nil)
    }

    /// A new site's settings from a platform preset.
    public static func template(name: String, platform p: Platform, project: String?) -> String {
        let scheduler = p.scheduler
        let madeFrom =
            p.about.isEmpty
            ? ""
            : "\n# Made from the platform preset '\(p.name)' (\(p.title)), \(p.source); nothing refers back to it.\n"
        let gpuList = "[" + p.gpuIDs.map(quoted).joined(separator: ", ") + "]"
        return """
            # Balsam site settings. Key names follow the original Balsam where it has them.
            # Changes take effect when balsam-watch starts or receives SIGHUP.
            # The on-disk format is described in balsam-spool(5).
            \(madeFrom)
            # The site's name, shown by 'balsam' commands and used when syncing.
            name: \(quoted(name))

            # Only jobs whose tags contain all of these are processed and launched here.
            filter_tags: {}

            launcher:
              # Seconds a launcher stays with nothing to run before it exits.
              idle_ttl_sec: 60
              # Seconds between a launcher's polls of the ready queue.
              delay_sec: 1
              # Lines of output kept in a failure reason (job.out after RUN_ERROR, balsam.log after a failed hook).
              error_tail_num_lines: 10
              # Seconds after a launcher's last heartbeat that its lease expires: its running jobs become
              # RUN_TIMEOUT and its unstarted ones go back to be claimed again.
              lease_timeout_sec: 120
              # Most jobs a launcher runs at once.
              max_concurrent_mpiruns: 1000
              # Command that starts a multi-node job: mpirun (Open MPI), mpiexec (MPICH) or srun, or a template
              # (see balsam-launcher(1)).
              mpi_launcher: \(p.mpiLauncher == "mpirun" ? "mpirun" : quoted(p.mpiLauncher))
              # Whether several single-node jobs may share a node (node_packing_count).
              mpirun_allows_node_packing: true
              # CPUs per node (null: each launcher rank counts its node's), GPU IDs per node, and the variable that
              # tells a job its GPUs.
              cpus_per_node: \(p.cpusPerNode.map(String.init) ?? "null")
              gpu_ids: \(gpuList)
              gpu_variable: \(p.gpuVariable)
              # The CPU ID of core 0's second hardware thread (null: none), for {{ cpu_bind_list }} with 2 threads
              # per core.
              cpu_siblings_offset: \(p.cpuSiblingsOffset.map(String.init) ?? "null")
              # CPU IDs never given to jobs: cores the facility keeps for its own services.
              reserved_cpus: [\(p.reservedCPUs.map(String.init).joined(separator: ", "))]
              # Sockets per node: a multi-rank job's ranks are spread evenly over them, each on one socket.
              sockets_per_node: \(p.socketsPerNode)
              # Seconds between SIGTERM and SIGKILL when a launcher stops a job (a kill, the end of its wall time).
              kill_grace_sec: 0.5
              # Megabytes of output a job may leave in its job.out; past it the output is cut, with a note there and
              # in the job's history (null: no limit).
              max_output_mb: null
              # Whether a job may ask for more CPUs per node (ranks_per_node x threads_per_rank / threads_per_core)
              # than a node has; it then takes the whole node. false: such a job is FAILED with the reason.
              oversubscribe: false

            # Apps defined as Python classes (the original client's ApplicationDefinition): the Python that runs their
            # hooks and run() methods (it needs dill and the client package balsam), and whether single-rank run()
            # jobs use warm workers kept by each launcher rank, and class hooks the watcher's warm hook server.
            # See balsam-launcher(1).
            python:
              executable: python3
              warm_workers: true

            # Where jobs' transfer slots point ("ALIAS:/path"): file:///path (or a plain path) for a filesystem this
            # site sees, rsync://[USER@]HOST[:PORT][/path] for rsync over ssh, globus://ENDPOINT_ID[/path] for Globus.
            # None yet: uncomment and fill in, or append a transfer_locations: mapping to this file.
            # transfer_locations:
            #   my_dtn: rsync://alice@dtn.example.org/project
            # The watcher's transfer service (see balsam-transfer(1)).
            transfers:
              transfer_batch_size: 100
              max_concurrent_transfers: 5
              service_period: 1
              # retries: failed attempts tried again; an unreachable location is tried for this long first.
              on_transfer_error: {retries: 2, unreachable_timeout_sec: 600}
              ssh_options: []
              globus_sync_level: size
              globus_verify_checksum: true

            scheduler:
            \(schedulerSection(p, project: project))

            processing:
              # Seconds a pre- or post-processing hook may run before it is killed.
              hook_timeout_sec: 600

            # Automatic batch jobs sized to the backlog (null: off). Every service_period seconds: if the runnable
            # backlog (jobs READY, STAGED_IN, PREPROCESSED or RESTART_READY; a single-node job counts
            # 1/node_packing_count nodes) exceeds what this site's queued and running batch jobs in submit_queue leave
            # idle, one batch job of min_num_nodes..max_num_nodes for max_wall_time_min is asked for, up to
            # max_queued_jobs; one queued longer than max_queue_wait_time_min is deleted. See balsam-queue(1).
            elastic_queue: null
            #  service_period: 60
            #  submit_project: \(project ?? p.defaultProject ?? "default")
            #  submit_queue: \(p.queues.first?.name ?? defaultQueue(scheduler))
            #  use_backfill: false
            #  min_wall_time_min: 10
            #  max_wall_time_min: 60
            #  wall_time_pad_min: 5
            #  min_num_nodes: 1
            #  max_num_nodes: \(scheduler == "local" ? 1 : 4)
            #  max_queue_wait_time_min: 10
            #  max_queued_jobs: 1

            # Deletion of each app's cleanup_files from finished jobs (null: off).
            file_cleaner:
              cleanup_batch_size: 180
              service_period: 30

            """
    }

    /// `text` as a YAML (JSON) string.
    static func quoted(_ text: String) -> String { JSONValue.string(text).serialized() }

    /// The queue a new site of `scheduler` allows.
    static func defaultQueue(_ scheduler: String) -> String {
        switch scheduler {
        case "local": "local"
        case "lsf": "batch"
        case "cobalt": "default"
        default: "debug"
        }
    }

    /// The `scheduler:` section of a new site's settings, after its first line.
    static func schedulerSection(_ p: Platform, project: String?) -> String {
        let local = p.scheduler == "local"
        let queues = p.queues.map { q in
            """
                \(quoted(q.name)):
            \(q.limits.yaml(indent: "      "))
            """
        }.joined(separator: "\n")
        let params =
            p.optionalBatchJobParams.isEmpty
            ? "{}"
            : "{" + p.optionalBatchJobParams.map { "\(quoted($0.0)): \(quoted($0.1))" }.joined(separator: ", ") + "}"
        return """
              # local, slurm, pbs, lsf or cobalt (balsam init --scheduler).
              scheduler_class: \(p.scheduler)
              # Seconds between polls of the batch scheduler.
              sync_period: \(local ? 2 : 10)
              # Seconds a scheduler command (sbatch, squeue, ...) may take before it is killed.
              command_timeout_sec: 60\(p.queueOption.map { "\n  # The sbatch option that takes the queue.\n  queue_option: \($0)" } ?? "")\(p.nodeSelect.map { "\n  # What each node chunk asks for besides its count: qsub -l select=N:\($0).\n  node_select: \($0)" } ?? "")
              # The script each batch job runs, relative to the site: {{ name }} placeholders (balsam-queue(1)).
              job_template_path: job-template.sh
              # Queues batch jobs may go to, and their limits (max_queued_jobs: of this site's batch jobs).
              allowed_queues:
            \(queues)
              # Projects (accounts) batch jobs may be charged to.
              allowed_projects: [\(quoted(project ?? p.defaultProject ?? "default"))]
              # Extra parameters 'balsam queue submit -x KEY=VALUE' may set, with their defaults; each is a
              # placeholder of the job template.
              optional_batch_job_params: \(params)
            """
    }
}
