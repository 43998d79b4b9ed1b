#if canImport(Glibc)
    import Glibc
#endif

/// A platform preset: what a new site on one machine needs (its scheduler, node shape, GPU variable and order,
/// launch-command template, queues and their limits, job template, the project prompt), as data. Built-in presets
/// live in `Sources/Spool/Platforms/NAME/NAME.yml` (built into the binaries); a user's own in `DIR/NAME/NAME.yml`
/// (`--platform-dir DIR`), with an optional `job-template.sh` beside. `balsam site init --platform NAME` copies
/// the values into the site's files; nothing refers back to the preset afterwards.
public struct Platform: Sendable {
    /// A queue and its limits (the same record a site's `scheduler.allowed_queues` holds).
    public struct Queue: Sendable, Equatable {
        public var name: String
        public var limits: SiteSettings.QueuePolicy
    }

    public var name: String
    public var title: String
    /// The preset's own account of itself: which facts come from the facility's documentation and which were
    /// exercised here.
    public var about: String
    public var scheduler: String
    /// Host-name patterns (fnmatch) and commands (all on PATH) that suggest this platform.
    public var hostnames: [String] = []
    public var commands: [String] = []
    public var projectPrompt = "Project (allocation) to charge batch jobs to"
    public var defaultProject: String?
    public var cpusPerNode: Int?
    public var cpuSiblingsOffset: Int?
    /// CPU IDs the facility keeps for itself (`reserved_cpus`).
    public var reservedCPUs: [Int] = []
    /// Sockets of each node (`sockets_per_node`).
    public var socketsPerNode = 1
    public var gpuIDs: [String] = []
    public var gpuVariable = "CUDA_VISIBLE_DEVICES"
    public var mpiLauncher = "mpirun"
    public var queues: [Queue]
    /// Slurm: the sbatch option that takes the queue (`--qos` where queues are qualities of service).
    public var queueOption: String?
    /// PBS: resources each node chunk asks for besides its count (`node_select`, `system=polaris`).
    public var nodeSelect: String?
    public var optionalBatchJobParams: [(String, String)] = []
    /// The job template (nil: the scheduler's default).
    public var jobTemplate: String?
    /// Where it came from: "built in" or its file.
    public var source: String

    /// A preset with a scheduler's defaults only (what `balsam init --scheduler` makes).
    public static func generic(scheduler: String) -> Platform {
        let local = scheduler == "local"
        return Platform(
            name: scheduler, title: scheduler, about: "", scheduler: scheduler,
            defaultProject: local ? "local" : "default",
            queues: [
                Queue(
                    name: Settings.defaultQueue(scheduler),
                    limits: .init(
                        maxNodes: local ? 1 : 4, maxWallTimeMinutes: local ? 1440 : 60, maxQueuedJobs: local ? 1 : 4))
            ], source: "built in")
    }

    // MARK: - Finding presets

    /// The built-in presets, in menu order.
    public static func builtIn() throws(SpoolError) -> [Platform] {
        var out: [Platform] = []
        for (name, bytes) in builtInFiles {
            out.append(try parse(String(decoding: bytes, as: UTF8.self), name: name, path: "built in"))
        }
        return out
    }

    static let builtInFiles: [(String, [UInt8])] = [
        ("local", PackageResources.local_yml),
        ("generic-slurm", PackageResources.generic_slurm_yml),
        ("generic-pbs", PackageResources.generic_pbs_yml),
        ("polaris", PackageResources.polaris_yml),
        ("aurora", PackageResources.aurora_yml),
        ("perlmutter-cpu", PackageResources.perlmutter_cpu_yml),
        ("perlmutter-gpu", PackageResources.perlmutter_gpu_yml),
        ("frontier", PackageResources.frontier_yml),
    ]

    /// The presets in a user's directory: each `DIR/NAME/NAME.yml`.
    public static func inDirectory(_ dir: String) throws(SpoolError) -> [Platform] {
        guard Posix.isDirectory(dir) else { throw SpoolError(.notFound, "no such directory", path: dir) }
        var out: [Platform] = []
        for name in try Posix.listDirectory(dir).sorted() where Posix.isDirectory(dir + "/" + name) {
            let file = dir + "/" + name + "/" + name + ".yml"
            guard Posix.exists(file) else { continue }
            var p = try parse(
                String(decoding: try Posix.readInput(file, limit: 1 << 20), as: UTF8.self), name: name, path: file)
            let template = dir + "/" + name + "/job-template.sh"
            if Posix.exists(template) {
                p.jobTemplate = String(decoding: try Posix.readInput(template, limit: 1 << 20), as: UTF8.self)
            }
            out.append(p)
        }
        return out
    }

    /// Every preset: a user's directory's first (they may replace a built-in one of the same name), then ours.
    public static func all(userDirectory: String?) throws(SpoolError) -> [Platform] {
        let own = try userDirectory.map(inDirectory) ?? []
        let names = Set(own.map(\.name))
        return own + (try builtIn()).filter { !names.contains($0.name) }
    }

    /// The presets that look like this machine, best first: host-name matches, then all of a preset's commands on
    /// PATH; empty when nothing suggests one.
    public static func detected(_ platforms: [Platform], hostName: String, path: String) -> [Platform] {
        let byHost = platforms.filter { p in p.hostnames.contains { fnmatch($0, hostName, 0) == 0 } }
        let byCommand = platforms.filter { p in
            !p.commands.isEmpty && p.commands.allSatisfy { Posix.findExecutable($0, path: path) != nil }
                && !byHost.contains { $0.name == p.name }
        }
        return byHost + byCommand
    }

    // MARK: - Parsing

    static let keys: Set<String> = [
        "title", "about", "scheduler", "detect", "project", "launcher", "queues", "queue_option", "node_select",
        "optional_batch_job_params", "job_template",
    ]

    /// A preset from its YAML; every error names the file and the key.
    public static func parse(_ text: String, name: String, path: String) throws(SpoolError) -> Platform {
        let root: JSONValue
        do { root = try YAML.parse(text) } catch {
            throw SpoolError(.invalidInput, "malformed YAML: \(error)", path: path)
        }
        guard case .object(let o) = root else {
            throw SpoolError(.invalidInput, "a preset must be a mapping of keys to values", path: path)
        }
        for key in o.keys.sorted() where !keys.contains(key) {
            throw SpoolError(
                .invalidInput, "unknown key '\(key)' (preset keys: \(keys.sorted().joined(separator: ", ")))",
                path: path)
        }
        let top = try SiteSettings.Fields(root, "preset", path: path)
        func required(_ key: String) throws(SpoolError) -> String {
            guard let v = try top.string(key), !v.isEmpty else {
                throw SpoolError(.invalidInput, "\(key) is required", path: path)
            }
            return v
        }
        let scheduler = try required("scheduler")
        guard SiteSettings.schedulerKinds.contains(scheduler) else {
            throw SpoolError(
                .invalidInput,
                "scheduler: '\(scheduler)' is not one of \(SiteSettings.schedulerKinds.joined(separator: ", "))",
                path: path)
        }
        var p = Platform(
            name: name, title: try required("title"), about: try top.string("about") ?? "", scheduler: scheduler,
            queues: [], source: path)
        if let d = o["detect"] {
            let detect = try SiteSettings.Fields(d, "detect", path: path)
            p.hostnames = try detect.strings("hostnames") ?? []
            p.commands = try detect.strings("commands") ?? []
        }
        if let v = o["project"] {
            let project = try SiteSettings.Fields(v, "project", path: path)
            p.projectPrompt = try project.string("prompt") ?? p.projectPrompt
            p.defaultProject = try project.string("default")
        }
        if let v = o["launcher"] {
            let launcher = try SiteSettings.Fields(v, "launcher", path: path)
            for key in launcher.o.keys.sorted()
            where ![
                "cpus_per_node", "cpu_siblings_offset", "reserved_cpus", "sockets_per_node", "gpu_ids", "gpu_variable",
                "mpi_launcher",
            ].contains(key) {
                throw SpoolError(.invalidInput, "launcher.\(key): not a preset key", path: path)
            }
            p.cpusPerNode = try launcher.integer("cpus_per_node")
            p.cpuSiblingsOffset = try launcher.integer("cpu_siblings_offset")
            p.reservedCPUs = try launcher.integers("reserved_cpus") ?? []
            p.socketsPerNode = try launcher.integer("sockets_per_node") ?? 1
            p.gpuIDs = try launcher.strings("gpu_ids") ?? []
            p.gpuVariable = try launcher.string("gpu_variable") ?? p.gpuVariable
            p.mpiLauncher = try launcher.string("mpi_launcher") ?? p.mpiLauncher
        }
        guard case .object(let queues)? = o["queues"], !queues.isEmpty else {
            throw SpoolError(
                .invalidInput, "queues: at least one queue, as NAME: {max_nodes, max_walltime, ...}", path: path)
        }
        for (queueName, value) in queues.sorted(by: { $0.key < $1.key }) {
            let q = try SiteSettings.Fields(value, "queues.\(queueName)", path: path)
            for key in q.o.keys.sorted() where !SiteSettings.QueuePolicy.keys.contains(key) {
                throw SpoolError(
                    .invalidInput,
                    "queues.\(queueName).\(key): not a queue key; known: "
                        + SiteSettings.QueuePolicy.keys.joined(separator: ", "), path: path)
            }
            p.queues.append(Queue(name: queueName, limits: try SiteSettings.QueuePolicy.read(q, defaults: false)))
        }
        if let v = o["optional_batch_job_params"] {
            guard case .object(let params) = v else {
                throw SpoolError(.invalidInput, "optional_batch_job_params must be a mapping", path: path)
            }
            let fields = try SiteSettings.Fields(v, "optional_batch_job_params", path: path)
            for key in params.keys.sorted() { p.optionalBatchJobParams.append((key, try fields.string(key) ?? "")) }
        }
        p.jobTemplate = try top.string("job_template")
        if let option = try top.string("queue_option") {
            guard scheduler == "slurm", ["--partition", "--qos"].contains(option) else {
                throw SpoolError(.invalidInput, "queue_option: --partition or --qos, for slurm only", path: path)
            }
            p.queueOption = option
        }
        if let select = try top.string("node_select") {
            guard scheduler == "pbs", SiteSettings.isNodeSelect(select) else {
                throw SpoolError(.invalidInput, "node_select: KEY=VALUE[:KEY=VALUE...], for pbs only", path: path)
            }
            p.nodeSelect = select
        }
        return p
    }
}

extension SiteSettings.Fields {
    /// A list of strings (numbers are taken as their text).
    func strings(_ key: String) throws(SpoolError) -> [String]? {
        guard let v = o[key], v != .null else { return nil }
        guard case .array(let items) = v else {
            throw SpoolError(.invalidInput, "\(section).\(key) must be a list", path: path)
        }
        var out: [String] = []
        for item in items {
            guard let s = item.stringValue ?? item.intValue.map(String.init) else {
                throw SpoolError(.invalidInput, "\(section).\(key) must be a list of strings", path: path)
            }
            out.append(s)
        }
        return out
    }
}
