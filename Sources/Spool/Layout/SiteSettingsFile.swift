#if canImport(Glibc)
    import Glibc
#endif

/// Reading `settings.yml`: every key checked (an unknown one is refused with the known ones), every value typed,
/// each error naming the file, the key and, for YAML errors, the line and column.
extension SiteSettings {
    /// The identity of `SITE/settings.yml` (inode, size, modification time; empty when missing): a reader that
    /// keeps what it read reads the file again only when this changes.
    public static func stamp(_ site: Site) throws(SpoolError) -> [Int] {
        let st = try Posix.statIfExists(site.settingsPath)
        return st.map { [Int($0.st_ino), Int($0.st_size), Int($0.st_mtim.tv_sec), Int($0.st_mtim.tv_nsec)] } ?? []
    }

    /// Reads `SITE/settings.yml`; a missing file means defaults, a malformed one is an error naming it.
    // Over 100 lines: every settings.yml key read in one place, in the file's order, each check beside its key.
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
        try checkKeys(o, path: path)
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
            try number("launcher", "error_tail_num_lines").map { Int(saturating: $0) } ?? settings.errorTailLines
        let launcher = o["launcher"]?.objectValue ?? [:]
        func launcherValue(_ key: String) -> JSONValue? {
            guard let v = launcher[key], v != .null else { return nil }
            return v
        }
        settings.launcher.idleSeconds = try number("launcher", "idle_ttl_sec") ?? settings.launcher.idleSeconds
        settings.launcher.pollSeconds = try number("launcher", "delay_sec") ?? settings.launcher.pollSeconds
        settings.launcher.maxConcurrent =
            try number("launcher", "max_concurrent_mpiruns").map { Int(saturating: $0) }
            ?? settings.launcher.maxConcurrent
        settings.launcher.cpusPerNode = try number("launcher", "cpus_per_node").map { Int(saturating: $0) }
        settings.launcher.killGraceSeconds =
            try number("launcher", "kill_grace_sec") ?? settings.launcher.killGraceSeconds
        if let megabytes = try number("launcher", "max_output_mb") {
            guard megabytes <= 1e9 else {
                throw SpoolError(.invalidInput, "launcher.max_output_mb must be at most 1e9", path: path)
            }
            settings.launcher.maxOutputBytes = max(1, Int(saturating: megabytes * 1_048_576))
        }
        let launcherFields = try Fields(o["launcher"] ?? .object([:]), "launcher", path: path)
        settings.launcher.nodePacking =
            try launcherFields.bool("mpirun_allows_node_packing") ?? settings.launcher.nodePacking
        settings.launcher.oversubscribe = try launcherFields.bool("oversubscribe") ?? false
        settings.launcher.cpuSiblingsOffset = try launcherFields.integer("cpu_siblings_offset")
        settings.launcher.reservedCPUs = try launcherFields.integers("reserved_cpus") ?? []
        if let sockets = try launcherFields.integer("sockets_per_node") {
            guard (1...64).contains(sockets) else {
                throw SpoolError(.invalidInput, "launcher.sockets_per_node must be 1 to 64", path: path)
            }
            settings.launcher.socketsPerNode = sockets
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
        settings.scheduler = try parseScheduler(o["scheduler"], path: path)
        settings.elasticQueue = try parseElasticQueue(o["elastic_queue"], path: path)
        settings.sync = try parseSync(o["sync"], path: path)
        if let value = o["transfer_locations"], value != .null {
            guard case .object(let locations) = value else {
                throw SpoolError(.invalidInput, "transfer_locations must be a mapping of ALIAS: URL", path: path)
            }
            for (alias, url) in locations {
                guard let text = url.stringValue else {
                    throw SpoolError(.invalidInput, "transfer_locations.\(alias) must be a URL", path: path)
                }
                do { settings.transferLocations[alias] = try TransferLocation(alias: alias, url: text) } catch {
                    throw SpoolError(error.code, error.message, path: path)
                }
            }
        }
        if let value = o["transfers"], value != .null {
            let t = try Fields(value, "transfers", path: path)
            settings.transfers.batchSize = try t.integer("transfer_batch_size") ?? settings.transfers.batchSize
            settings.transfers.maxConcurrent =
                try t.integer("max_concurrent_transfers") ?? settings.transfers.maxConcurrent
            settings.transfers.periodSeconds = try t.number("service_period") ?? settings.transfers.periodSeconds
            if let policy = try t.object("on_transfer_error") {
                if let unknown = policy.keys.sorted().first(where: {
                    !["retries", "unreachable_timeout_sec"].contains($0)
                }) {
                    throw SpoolError(
                        .invalidInput,
                        "unknown key 'transfers.on_transfer_error.\(unknown)' (on_transfer_error keys: retries, unreachable_timeout_sec)",
                        path: path)
                }
                if let value = policy["retries"] {
                    guard let r = value.intValue, r >= 0 else {
                        throw SpoolError(
                            .invalidInput, "transfers.on_transfer_error.retries must be a whole number", path: path)
                    }
                    settings.transfers.retries = r
                }
                if let value = policy["unreachable_timeout_sec"] {
                    guard let seconds = value.doubleValue, seconds.isFinite, seconds >= 0, seconds <= 1e9 else {
                        throw SpoolError(
                            .invalidInput,
                            "transfers.on_transfer_error.unreachable_timeout_sec must be a number of seconds",
                            path: path)
                    }
                    settings.transfers.unreachableTimeoutSeconds = seconds
                }
            }
            if let v = t.o["ssh_options"], v != .null {
                guard case .array(let items) = v, items.allSatisfy({ $0.stringValue != nil }) else {
                    throw SpoolError(
                        .invalidInput, "transfers.ssh_options must be a list of strings, like [-i, ~/.ssh/key]",
                        path: path)
                }
                settings.transfers.sshOptions = items.compactMap(\.stringValue)
            }
            settings.transfers.globusSyncLevel = try t.string("globus_sync_level") ?? "size"
            settings.transfers.globusVerifyChecksum = try t.bool("globus_verify_checksum") ?? true
            settings.transfers.globusCLI = try t.string("globus_cli") ?? "globus"
            settings.transfers.globusEndpointID = try t.string("globus_endpoint_id")
        }
        if let value = o["python"], value != .null {
            let python = try Fields(value, "python", path: path)
            settings.python.executable = try python.string("executable") ?? settings.python.executable
            settings.python.warmWorkers = try python.bool("warm_workers") ?? settings.python.warmWorkers
        }
        if case .object(let tags)? = o["filter_tags"] {
            settings.filterTags = tags.compactMapValues { $0.stringValue ?? ($0 == .null ? nil : $0.serialized()) }
        }
        return settings
    }

    /// The keys settings.yml may hold, by section ("" is the top level): this Balsam's, and the original's that
    /// mean nothing here (`logging`, `compute_node`, ...), so that its settings are not refused. A section not
    /// listed holds keys of the user's own (`filter_tags`, `transfer_locations`, a queue's name, ...) or,
    /// for the original's `logging` and `queue_maintainer`, anything. Any other key is refused, named with the
    /// section's keys: a typo (`idel_ttl_sec`) must not pass for a setting.
    static let knownKeys: [String: Set<String>] = [
        "": [
            "name", "filter_tags", "launcher", "python", "transfer_locations", "transfers", "scheduler",
            "processing", "elastic_queue", "file_cleaner", "sync", "logging", "queue_maintainer", "title", "site_id",
        ],
        "launcher": [
            "idle_ttl_sec", "delay_sec", "error_tail_num_lines", "lease_timeout_sec", "max_concurrent_mpiruns",
            "mpi_launcher", "mpirun_allows_node_packing", "cpus_per_node", "gpu_ids", "gpu_variable",
            "cpu_siblings_offset", "reserved_cpus", "sockets_per_node", "kill_grace_sec", "oversubscribe",
            "max_output_mb",
            // The original's.
            "compute_node", "mpi_app_launcher", "local_app_launcher", "serial_mode_prefetch_per_rank", "sort_by",
            "serial_mode_startup_params",
        ],
        "python": ["executable", "warm_workers"],
        "transfers": [
            "transfer_batch_size", "max_concurrent_transfers", "service_period", "on_transfer_error", "ssh_options",
            "globus_sync_level", "globus_verify_checksum", "globus_cli", "globus_endpoint_id",
            // The original's.
            "globus_endpoint_site_path", "num_items_query_limit",
        ],
        "scheduler": [
            "scheduler_class", "sync_period", "command_timeout_sec", "job_template_path", "allowed_queues",
            "allowed_projects", "optional_batch_job_params", "queue_option", "node_select",
        ],
        "processing": ["hook_timeout_sec", "num_workers", "prefetch_depth"],
        "elastic_queue": [
            "service_period", "submit_project", "submit_queue", "use_backfill", "min_wall_time_min",
            "max_wall_time_min", "wall_time_pad_min", "min_num_nodes", "max_num_nodes", "max_queue_wait_time_min",
            "max_queued_jobs", "enabled", "job_mode",
        ],
        "file_cleaner": ["cleanup_batch_size", "service_period"],
        "sync": ["url", "site_name", "token_file", "ca_file", "period", "wait_for_news"],
        "scheduler.allowed_queues.*": Set(QueuePolicy.keys),
    ]

    /// Refuses a key `knownKeys` does not list, naming it, its section and the keys the section takes.
    static func checkKeys(_ root: [String: JSONValue], path: String) throws(SpoolError) {
        func check(_ o: [String: JSONValue], _ section: String, known: Set<String>) throws(SpoolError) {
            for key in o.keys.sorted() where !known.contains(key) {
                let name = section.isEmpty ? key : section + "." + key
                throw SpoolError(
                    .invalidInput,
                    "unknown key '\(name)' (\(section.isEmpty ? "top-level keys" : section + " keys"): "
                        + known.sorted().joined(separator: ", ") + ")", path: path)
            }
        }
        try check(root, "", known: knownKeys[""] ?? [])
        for (section, value) in root {
            guard let known = knownKeys[section], case .object(let o) = value else { continue }
            try check(o, section, known: known)
        }
        if case .object(let queues)? = root["scheduler"]?.objectValue?["allowed_queues"] {
            for (name, value) in queues {
                guard case .object(let o) = value else { continue }
                try check(o, "scheduler.allowed_queues.\(name)", known: knownKeys["scheduler.allowed_queues.*"] ?? [])
            }
        }
    }

    /// The schedulers `scheduler_class` may name.
    public static let schedulerKinds = ["local", "slurm", "pbs", "lsf", "cobalt"]

    static func parseScheduler(_ value: JSONValue?, path: String) throws(SpoolError) -> Scheduler {
        var scheduler = Scheduler()
        guard let value, value != .null else { return scheduler }
        let section = try Fields(value, "scheduler", path: path)
        if let kind = try section.string("scheduler_class") {
            // The original named Python classes (balsam.platform.scheduler.SlurmScheduler): accept those too.
            let short = kind.lowercased().split(separator: ".").last.map(String.init) ?? kind
            guard
                let name = schedulerKinds.first(where: { short == $0 || short == $0 + "scheduler" })
                    ?? (short == "localprocessscheduler" ? "local" : nil)
            else {
                throw SpoolError(
                    .invalidInput,
                    "scheduler.scheduler_class '\(kind)' is not one of \(schedulerKinds.joined(separator: ", "))",
                    path: path)
            }
            scheduler.kind = name
        }
        scheduler.syncSeconds = try section.number("sync_period") ?? scheduler.syncSeconds
        scheduler.commandTimeoutSeconds = try section.number("command_timeout_sec") ?? scheduler.commandTimeoutSeconds
        if let option = try section.string("queue_option") {
            guard ["--partition", "--qos"].contains(option) else {
                throw SpoolError(
                    .invalidInput, "scheduler.queue_option must be --partition or --qos, not '\(option)'", path: path)
            }
            scheduler.queueOption = option
        }
        if let select = try section.string("node_select") {
            guard SiteSettings.isNodeSelect(select) else {
                throw SpoolError(
                    .invalidInput,
                    "scheduler.node_select must be KEY=VALUE resources joined by ':' (system=polaris), not '\(select)'",
                    path: path)
            }
            scheduler.nodeSelect = select
        }
        scheduler.jobTemplate = try section.string("job_template_path") ?? scheduler.jobTemplate
        if let queues = try section.object("allowed_queues") {
            scheduler.allowedQueues = [:]
            for (name, limits) in queues {
                let q = try Fields(limits, "scheduler.allowed_queues.\(name)", path: path)
                scheduler.allowedQueues[name] = try QueuePolicy.read(q, defaults: true)
            }
        }
        if let v = section.o["allowed_projects"], v != .null {
            guard case .array(let items) = v, let names = Optional(items.compactMap(\.stringValue)),
                names.count == items.count
            else {
                throw SpoolError(.invalidInput, "scheduler.allowed_projects must be a list of names", path: path)
            }
            scheduler.allowedProjects = names
        }
        if let params = try section.object("optional_batch_job_params") {
            scheduler.optionalParams = params.mapValues { $0.stringValue ?? ($0 == .null ? "" : $0.serialized()) }
        }
        return scheduler
    }

    static func parseSync(_ value: JSONValue?, path: String) throws(SpoolError) -> Sync? {
        guard let value, value != .null else { return nil }
        let section = try Fields(value, "sync", path: path)
        guard let url = try section.string("url"), url.hasPrefix("http://") || url.hasPrefix("https://") else {
            throw SpoolError(.invalidInput, "sync.url must be the server's http:// or https:// URL", path: path)
        }
        var sync = Sync(url: url)
        sync.siteName = try section.string("site_name")
        sync.tokenFile = try section.string("token_file")
        sync.caFile = try section.string("ca_file")
        sync.periodSeconds = try section.number("period") ?? sync.periodSeconds
        if sync.periodSeconds <= 0 || sync.periodSeconds > 3600 {
            throw SpoolError(.invalidInput, "sync.period must be between 0 and 3600 seconds", path: path)
        }
        // 0 is meant: a site that polls every period instead of waiting.
        let wait = try section.number("wait_for_news", allowZero: true) ?? Double(sync.waitForNewsSeconds)
        guard wait >= 0 && wait <= 50 else {
            throw SpoolError(.invalidInput, "sync.wait_for_news must be between 0 and 50 seconds", path: path)
        }
        sync.waitForNewsSeconds = Int(saturating: wait)
        return sync
    }

    static func parseElasticQueue(_ value: JSONValue?, path: String) throws(SpoolError) -> ElasticQueue? {
        guard let value, value != .null else { return nil }
        let section = try Fields(value, "elastic_queue", path: path)
        if case .bool(false)? = section.o["enabled"] { return nil }
        var e = ElasticQueue()
        e.periodSeconds = try section.number("service_period") ?? e.periodSeconds
        e.project = try section.string("submit_project") ?? e.project
        e.queue = try section.string("submit_queue") ?? e.queue
        e.useBackfill = try section.bool("use_backfill") ?? e.useBackfill
        e.minWallTimeMinutes = try section.integer("min_wall_time_min") ?? e.minWallTimeMinutes
        e.maxWallTimeMinutes = try section.integer("max_wall_time_min") ?? e.maxWallTimeMinutes
        e.wallTimePadMinutes = try section.integer("wall_time_pad_min", allowZero: true) ?? e.wallTimePadMinutes
        e.minNodes = try section.integer("min_num_nodes") ?? e.minNodes
        e.maxNodes = try section.integer("max_num_nodes") ?? e.maxNodes
        e.maxQueueWaitMinutes = try section.integer("max_queue_wait_time_min") ?? e.maxQueueWaitMinutes
        e.maxQueuedJobs = try section.integer("max_queued_jobs") ?? e.maxQueuedJobs
        guard e.minNodes <= e.maxNodes, e.minWallTimeMinutes <= e.maxWallTimeMinutes else {
            throw SpoolError(
                .invalidInput, "elastic_queue: min_num_nodes and min_wall_time_min must not exceed their max_",
                path: path)
        }
        return e
    }
}
