/// The parts of `settings.yml` the programs act on. Unknown keys are kept for later versions and ignored.
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
        /// The variable that tells a job its GPUs (`gpu_variable`).
        public var gpuVariable = "CUDA_VISIBLE_DEVICES"
        /// Seconds between SIGTERM and SIGKILL when a job is stopped (`kill_grace_sec`).
        public var killGraceSeconds: Double = 0.5

        /// The defaults.
        public init() {}
    }

    /// The defaults of a new site.
    public init() {}

    /// Reads `SITE/settings.yml`; a missing file means defaults, a malformed one is an error naming it.
    public static func load(_ site: Site) throws(SpoolError) -> SiteSettings {
        let path = site.settingsPath
        guard Posix.exists(path) else { return SiteSettings() }
        let bytes = try Posix.readFile(path, limit: 1 << 20)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw SpoolError(.invalidInput, "settings.yml is not valid UTF-8", path: path)
        }
        let root: JSONValue
        do { root = try YAML.parse(text) } catch {
            throw SpoolError(.invalidInput, "malformed YAML: \(error)", path: path)
        }
        var settings = SiteSettings()
        guard case .object(let o) = root else { return settings }
        func number(_ section: String, _ key: String) throws(SpoolError) -> Double? {
            guard let v = o[section]?.objectValue?[key], v != .null else { return nil }
            guard let d = v.doubleValue, d > 0 else {
                throw SpoolError(.invalidInput, "\(section).\(key) must be a positive number", path: path)
            }
            return d
        }
        settings.hookTimeoutSeconds = try number("processing", "hook_timeout_sec") ?? settings.hookTimeoutSeconds
        settings.leaseTimeoutSeconds = try number("launcher", "lease_timeout_sec") ?? settings.leaseTimeoutSeconds
        settings.errorTailLines =
            try number("launcher", "error_tail_num_lines").map { Int($0) } ?? settings.errorTailLines
        let launcher = o["launcher"]?.objectValue ?? [:]
        func launcherValue(_ key: String) -> JSONValue? {
            guard let v = launcher[key], v != .null else { return nil }
            return v
        }
        settings.launcher.idleSeconds = try number("launcher", "idle_ttl_sec") ?? settings.launcher.idleSeconds
        settings.launcher.pollSeconds = try number("launcher", "delay_sec") ?? settings.launcher.pollSeconds
        settings.launcher.maxConcurrent =
            try number("launcher", "max_concurrent_mpiruns").map { Int($0) } ?? settings.launcher.maxConcurrent
        settings.launcher.cpusPerNode = try number("launcher", "cpus_per_node").map { Int($0) }
        settings.launcher.killGraceSeconds =
            try number("launcher", "kill_grace_sec") ?? settings.launcher.killGraceSeconds
        if let v = launcherValue("mpirun_allows_node_packing") {
            guard case .bool(let b) = v else {
                throw SpoolError(.invalidInput, "launcher.mpirun_allows_node_packing must be true or false", path: path)
            }
            settings.launcher.nodePacking = b
        }
        for (key, keyPath) in [("mpi_launcher", \Launcher.mpiLauncher), ("gpu_variable", \Launcher.gpuVariable)] {
            guard let v = launcherValue(key) else { continue }
            guard let text = v.stringValue, !text.isEmpty else {
                throw SpoolError(.invalidInput, "launcher.\(key) must be a non-empty string", path: path)
            }
            settings.launcher[keyPath: keyPath] = text
        }
        if let v = launcherValue("gpu_ids") {
            guard case .array(let ids) = v else {
                throw SpoolError(.invalidInput, "launcher.gpu_ids must be a list, like [0, 1, 2, 3]", path: path)
            }
            settings.launcher.gpuIDs = ids.map { $0.stringValue ?? $0.serialized() }
        }
        if case .object(let tags)? = o["filter_tags"] {
            settings.filterTags = tags.compactMapValues { $0.stringValue ?? ($0 == .null ? nil : $0.serialized()) }
        }
        return settings
    }
}
