/// A job: one run of an app with parameters, resources, tags and dependencies. Stored as `job.json` in the
/// job's directory, with the original Balsam Job's field names.
public struct Job: Sendable, Equatable {
    /// Unique, time-ordered identifier (see ``JobID``); empty until the job is submitted.
    public var id: String = ""
    /// When the job was submitted (UTC, ISO 8601); empty until then.
    public var created: String = ""
    /// The job's directory relative to `SITE/data`.
    public var workdir: String
    /// The app's name (a directory under `SITE/apps`).
    public var app: String
    /// Free-form string labels, used to filter.
    public var tags: [String: String] = [:]

    /// Whether the job's tags include all of `wanted` (a site's or a launcher's filter tags).
    public func hasTags(_ wanted: [String: String]) -> Bool { wanted.allSatisfy { tags[$0.key] == $0.value } }

    /// The nodes the job holds: `num_nodes` for a multi-node job; `1 / node_packing_count` of one for a
    /// single-node job when nodes are shared (`packing`), else the whole node.
    public func nodeFootprint(packing: Bool) -> Double {
        numNodes > 1 ? Double(numNodes) : packing ? 1 / Double(max(1, nodePackingCount)) : 1
    }
    /// Values for the app's command template; any JSON value.
    public var parameters: [String: JSONValue] = [:]
    /// For an app defined as a Python class: its parameters as the original client sends them, base64 of
    /// `dill.dumps(dict)`, which only the site's Python reads (a numpy array, say). Empty otherwise.
    public var serializedParameters: String = ""
    /// Free-form data the job and its hooks may keep.
    public var data: [String: JSONValue] = [:]
    /// Jobs that must reach `JOB_FINISHED` before this one runs.
    public var parentIDs: [String] = []
    /// Nodes the job spans.
    public var numNodes: Int = 1
    /// MPI ranks per node.
    public var ranksPerNode: Int = 1
    /// Threads per rank (also `OMP_NUM_THREADS`).
    public var threadsPerRank: Int = 1
    /// Hardware threads used per core.
    public var threadsPerCore: Int = 1
    /// Options passed through to the MPI launch command.
    public var launchParams: [String: String] = [:]
    /// GPUs per rank.
    public var gpusPerRank: Double = 0
    /// How many such jobs may share one node.
    public var nodePackingCount: Int = 1
    /// Expected run time in minutes (0: unknown).
    public var wallTimeMin: Int = 0
    /// Transfer slots: slot name → `{location_alias, path}`; stored now, used by stage-in/out later.
    public var transfers: [String: JSONValue] = [:]

    /// A job with the required fields and defaults for the rest.
    public init(workdir: String, app: String) {
        self.workdir = workdir
        self.app = app
    }

    /// Limits that keep one job's files small enough to list and sync quickly.
    /// Why `key` cannot be a `launch_params` key, or nil. A key becomes a flag of the MPI launch line, unquoted
    /// (`--cpu-bind`, `-d`, `--env=FOO`), so only a flag's spelling is taken: letters, digits, `-`, `_`, `=`
    /// after a letter or digit, at most 64 bytes. Checked by every reader of a job (the site's, the wire's, the
    /// server's) and again where the launch line is made.
    public static func launchParamKeyProblem(_ key: String) -> String? {
        let bytes = Array(key.utf8)
        let body = bytes.drop { $0 == UInt8(ascii: "-") }
        let allowed = body.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == 0x2D || c == 0x5F || c == 0x3D
        }
        guard !body.isEmpty, bytes.count - body.count <= 2, bytes.count <= 64, allowed,
            let first = body.first, first != 0x3D, first != 0x2D
        else {
            return "key '\(key.prefix(64))' is not a launcher flag: letters, digits, '-', '_' and '=' only, after "
                + "at most two leading '-', 64 bytes at most"
        }
        return nil
    }

    public enum Limits {
        /// Largest `job.json`, and largest line of a `--from` file.
        public static let fileBytes = 1 << 20
        /// Largest serialized `parameters` (the original's `MAX_SERIALIZED_PARAMS_SIZE`).
        public static let parametersBytes = 512_000
        /// Largest serialized `data`.
        public static let dataBytes = 512_000
        /// Longest workdir, in bytes (the original's column size).
        public static let workdirBytes = 256
        /// Most tags, and longest tag key or value.
        public static let tags = 100
        public static let tagBytes = 256
        /// Most parents.
        public static let parents = 10_000
        /// Largest count field (nodes, ranks, threads, packing).
        public static let count = 1_000_000
        /// Deepest `parameters` (the object itself is 1 deep): well inside the JSON reader's limit
        /// (`JSONParser.maxDepth`), so that a job's parameters can be carried in the sync's envelopes and read by
        /// every site, however they were sent (JSON, or a pickle).
        public static let parameterDepth = 128
    }

    static let fieldNames: Set<String> = [
        "id", "created", "workdir", "app", "tags", "parameters", "data", "parent_ids", "num_nodes",
        "ranks_per_node", "threads_per_rank", "threads_per_core", "launch_params", "gpus_per_rank",
        "node_packing_count", "wall_time_min", "transfers", "return_code", "serialized_parameters",
    ]

    /// Builds a job from a parsed JSON object, checking every field's type and range. `id` and `created` are
    /// read when present; callers decide whether they may be.
    public init(json: JSONValue) throws(SpoolError) {
        guard case .object(let o) = json else {
            throw SpoolError(.invalidInput, "a job must be a JSON object, not \(json.kindName)")
        }
        for key in o.keys where !Job.fieldNames.contains(key) {
            let known = Job.fieldNames.sorted().joined(separator: ", ")
            throw SpoolError(.invalidInput, "unknown field '\(key)' (job fields: \(known))")
        }
        func string(_ key: String) throws(SpoolError) -> String? {
            guard let v = o[key], v != .null else { return nil }
            guard case .string(let s) = v else { throw fieldError(key, "must be a string, not \(v.kindName)") }
            return s
        }
        func count(_ key: String, minimum: Int) throws(SpoolError) -> Int? {
            guard let v = o[key], v != .null else { return nil }
            guard let i = v.intValue else { throw fieldError(key, "must be an integer, not \(v.serialized())") }
            guard i >= minimum && i <= Limits.count else {
                throw fieldError(key, "must be between \(minimum) and \(Limits.count), not \(i)")
            }
            return i
        }
        func object(_ key: String) throws(SpoolError) -> [String: JSONValue] {
            guard let v = o[key], v != .null else { return [:] }
            guard case .object(let m) = v else { throw fieldError(key, "must be an object, not \(v.kindName)") }
            return m
        }
        func stringMap(_ key: String) throws(SpoolError) -> [String: String] {
            var result: [String: String] = [:]
            for (k, v) in try object(key) {
                switch v {
                case .string(let s): result[k] = s
                case .int, .double, .bool: result[k] = v.serialized()
                default: throw fieldError("\(key).\(k)", "must be a string, not \(v.kindName)")
                }
            }
            return result
        }

        guard let workdir = try string("workdir") else { throw fieldError("workdir", "is required") }
        guard let app = try string("app") else { throw fieldError("app", "is required") }
        self.init(workdir: workdir, app: app)
        id = try string("id") ?? ""
        created = try string("created") ?? ""
        tags = try stringMap("tags")
        parameters = try object("parameters")
        serializedParameters = try string("serialized_parameters") ?? ""
        data = try object("data")
        launchParams = try stringMap("launch_params")
        for key in launchParams.keys {
            if let why = Job.launchParamKeyProblem(key) { throw fieldError("launch_params", why) }
        }
        transfers = try object("transfers")
        if let v = o["parent_ids"], v != .null {
            guard case .array(let items) = v else { throw fieldError("parent_ids", "must be an array of job IDs") }
            var parents: [String] = []
            for item in items {
                guard case .string(let s) = item else {
                    throw fieldError("parent_ids", "must hold job ID strings, not \(item.kindName)")
                }
                if !parents.contains(s) { parents.append(s) }
            }
            parentIDs = parents
        }
        numNodes = try count("num_nodes", minimum: 1) ?? 1
        ranksPerNode = try count("ranks_per_node", minimum: 1) ?? 1
        threadsPerRank = try count("threads_per_rank", minimum: 1) ?? 1
        threadsPerCore = try count("threads_per_core", minimum: 1) ?? 1
        nodePackingCount = try count("node_packing_count", minimum: 1) ?? 1
        wallTimeMin = try count("wall_time_min", minimum: 0) ?? 0
        if let v = o["gpus_per_rank"], v != .null {
            guard let g = v.doubleValue, g >= 0, g <= 1024 else {
                throw fieldError("gpus_per_rank", "must be a number from 0 to 1024, not \(v.serialized())")
            }
            gpusPerRank = g
        }
        // "return_code" (written by earlier versions) is accepted and ignored: a run's exit status is in the
        // job's state file now.
        try validate()
    }

    /// Parses `job.json` bytes (or one `--from` line).
    public init(bytes: [UInt8]) throws(SpoolError) {
        let value: JSONValue
        do { value = try JSONValue.parse(bytes) } catch {
            throw SpoolError(.invalidInput, "malformed JSON: \(error)")
        }
        try self.init(json: value)
    }

    /// Checks what does not need the site: workdir shape, sizes, parent ID shape, transfer shape.
    public func validate() throws(SpoolError) {
        try Job.validateWorkdir(workdir)
        let counts = [
            ("num_nodes", numNodes, 1), ("ranks_per_node", ranksPerNode, 1), ("threads_per_rank", threadsPerRank, 1),
            ("threads_per_core", threadsPerCore, 1), ("node_packing_count", nodePackingCount, 1),
            ("wall_time_min", wallTimeMin, 0),
        ]
        for (name, value, minimum) in counts where value < minimum || value > Limits.count {
            throw fieldError(name, "must be between \(minimum) and \(Limits.count), not \(value)")
        }
        if gpusPerRank < 0 || gpusPerRank > 1024 || !gpusPerRank.isFinite {
            throw fieldError("gpus_per_rank", "must be a number from 0 to 1024, not \(gpusPerRank)")
        }
        if app.isEmpty { throw fieldError("app", "must not be empty") }
        if tags.count > Limits.tags {
            throw fieldError("tags", "has \(tags.count) entries; the limit is \(Limits.tags)")
        }
        for (k, v) in tags where k.utf8.count > Limits.tagBytes || v.utf8.count > Limits.tagBytes || k.isEmpty {
            throw fieldError(
                "tags.\(k)", "keys must be 1 to \(Limits.tagBytes) bytes and values at most \(Limits.tagBytes)")
        }
        // A NUL cannot reach a command line or an environment variable: refused here, not when the job runs.
        let texts: [(String, JSONValue)] = [
            ("app", .string(app)), ("parameters", .object(parameters)),
            ("launch_params", .object(launchParams.mapValues(JSONValue.string))),
            ("tags", .object(tags.mapValues(JSONValue.string))),
        ]
        for (field, value) in texts {
            if let path = Job.nulPath(value, at: field) {
                throw fieldError(path, "contains a NUL character, which no command line or environment can carry")
            }
        }
        if JSONValue.object(parameters).depth > Limits.parameterDepth {
            throw fieldError("parameters", "nests deeper than \(Limits.parameterDepth) levels")
        }
        let parametersSize = JSONValue.object(parameters).serialized().utf8.count + serializedParameters.utf8.count
        if !serializedParameters.isEmpty && Base64.decode(serializedParameters) == nil {
            throw fieldError("serialized_parameters", "must be base64 (of a pickled dict)")
        }
        if parametersSize > Limits.parametersBytes {
            throw fieldError("parameters", "is \(parametersSize) bytes; the limit is \(Limits.parametersBytes)")
        }
        let dataSize = JSONValue.object(data).serialized().utf8.count
        if dataSize > Limits.dataBytes {
            throw fieldError("data", "is \(dataSize) bytes; the limit is \(Limits.dataBytes)")
        }
        if parentIDs.count > Limits.parents {
            throw fieldError("parent_ids", "has \(parentIDs.count) entries; the limit is \(Limits.parents)")
        }
        for parent in parentIDs where !JobID.isValid(parent) {
            throw fieldError("parent_ids", "'\(parent)' is not a job ID")
        }
        if !id.isEmpty && !JobID.isValid(id) { throw fieldError("id", "'\(id)' is not a job ID") }
        for (slot, item) in transfers {
            try Job.validateTransfer(slot: slot, item)
        }
    }

    /// The workdirs whose directories would hold `workdir`'s, innermost first: `a/b/c` gives `a/b`, `a`.
    static func enclosingWorkdirs(of workdir: String) -> [String] {
        var result: [String] = []
        var ancestor = Substring(workdir)
        while let slash = ancestor.lastIndex(of: "/") {
            ancestor = ancestor[..<slash]
            result.append(String(ancestor))
        }
        return result
    }

    /// Where in `value` (a dotted path from `path`) a string or key holds a NUL, if anywhere.
    static func nulPath(_ value: JSONValue, at path: String) -> String? {
        switch value {
        case .string(let s): return s.utf8.contains(0) ? path : nil
        case .array(let a):
            for (i, item) in a.enumerated() { if let found = nulPath(item, at: "\(path)[\(i)]") { return found } }
            return nil
        case .object(let o):
            for (key, item) in o.sorted(by: { $0.key < $1.key }) {
                if key.utf8.contains(0) { return path + "." + key }
                if let found = nulPath(item, at: path + "." + key) { return found }
            }
            return nil
        default: return nil
        }
    }

    static func validateTransfer(slot: String, _ item: JSONValue) throws(SpoolError) {
        let path: String?
        switch item {
        case .string(let s):
            guard let colon = s.firstIndex(of: ":"), colon != s.startIndex else {
                throw fieldError("transfers.\(slot)", "must be \"ALIAS:/absolute/path\" or {location_alias, path}")
            }
            path = String(s[s.index(after: colon)...])
        case .object(let m):
            guard m["location_alias"]?.stringValue?.isEmpty == false else {
                throw fieldError("transfers.\(slot).location_alias", "is required")
            }
            path = m["path"]?.stringValue
        default:
            throw fieldError("transfers.\(slot)", "must be \"ALIAS:/absolute/path\" or {location_alias, path}")
        }
        guard let path, path.hasPrefix("/") else {
            throw fieldError("transfers.\(slot).path", "must be an absolute path")
        }
    }

    /// A workdir is relative, at most 256 bytes, with no empty, `.` or `..` components and no control
    /// characters, and must not start with `.balsam` (reserved for the spool's own use).
    /// Whether `scalar` is a control character (C0, DEL, C1 such as U+0085), a line or paragraph separator, or an
    /// invisible format character (bidirectional marks, zero-width spaces): what makes a name print as another.
    public static func isUnprintable(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator: true
        default: false
        }
    }

    public static func validateWorkdir(_ workdir: String) throws(SpoolError) {
        if workdir.isEmpty { throw fieldError("workdir", "must not be empty") }
        if workdir.hasPrefix("/") { throw fieldError("workdir", "'\(workdir)' must be relative to the site's data/") }
        if workdir.utf8.count > Limits.workdirBytes {
            throw fieldError("workdir", "is \(workdir.utf8.count) bytes; the limit is \(Limits.workdirBytes)")
        }
        if let hidden = workdir.unicodeScalars.first(where: Job.isUnprintable) {
            let code = String(hidden.value, radix: 16, uppercase: true)
            throw fieldError(
                "workdir",
                "contains a control character or an invisible one (U+\(String(repeating: "0", count: max(0, 4 - code.count)) + code): "
                    + "a line break, a direction mark): a directory name must read as it is")
        }
        for component in workdir.split(separator: "/", omittingEmptySubsequences: false) {
            switch component {
            case "": throw fieldError("workdir", "'\(workdir)' has an empty component (a doubled or trailing '/')")
            case ".", "..": throw fieldError("workdir", "'\(workdir)' must not contain '\(component)'")
            default: break
            }
        }
        if workdir.hasPrefix(".balsam") {
            throw fieldError("workdir", "'\(workdir)': names starting .balsam are reserved")
        }
    }

    /// The job as a JSON object with the original's snake_case field names.
    public var json: JSONValue {
        var o: [String: JSONValue] = [
            "id": .string(id), "created": .string(created), "workdir": .string(workdir), "app": .string(app),
            "tags": .object(tags.mapValues { .string($0) }), "parameters": .object(parameters),
            "data": .object(data), "parent_ids": .array(parentIDs.map { .string($0) }),
            "num_nodes": .int(numNodes), "ranks_per_node": .int(ranksPerNode),
            "threads_per_rank": .int(threadsPerRank), "threads_per_core": .int(threadsPerCore),
            "launch_params": .object(launchParams.mapValues { .string($0) }),
            "gpus_per_rank": gpusPerRank.rounded() == gpusPerRank
                ? .int(Int(saturating: gpusPerRank)) : .double(gpusPerRank),
            "node_packing_count": .int(nodePackingCount), "wall_time_min": .int(wallTimeMin),
            "transfers": .object(transfers),
        ]
        if id.isEmpty { o["id"] = nil }
        if created.isEmpty { o["created"] = nil }
        if !serializedParameters.isEmpty { o["serialized_parameters"] = .string(serializedParameters) }
        return .object(o)
    }

    /// `job.json` bytes: compact, sorted keys, one line, newline-terminated.
    public func fileBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(384)
        json.write(to: &out)
        out.append(0x0A)
        return out
    }
}

func fieldError(_ field: String, _ problem: String) -> SpoolError {
    SpoolError(.invalidInput, "field '\(field)' \(problem)")
}
