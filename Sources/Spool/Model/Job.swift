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
    /// The server's id of a job made through the API and taken by this site (nil for the site's own).
    public var serverID: Int?

    /// Whether the job's tags include all of `wanted` (a site's or a launcher's filter tags).
    public func hasTags(_ wanted: [String: String]) -> Bool { wanted.allSatisfy { tags[$0.key] == $0.value } }

    /// The nodes the job holds: `num_nodes` for a multi-node job; `1 / nodePackingCount` of one for a
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

    /// The names `job.json` may hold: the job file's fields, and `return_code`, which earlier versions wrote (a
    /// run's exit status is in the job's state file now: accepted and ignored).
    static let fieldNames = Set(JobField.allCases.filter(\.inJobFile).map(\.name) + [JobField.returnCode.name])

    /// Builds a job from a parsed JSON object, checking every field's type and range (the spec's by
    /// `JobField.read`, the one check the server makes too). `id` and `created` are read when present; callers
    /// decide whether they may be.
    public init(json: JSONValue) throws(SpoolError) {
        guard case .object(let o) = json else {
            throw SpoolError(.invalidInput, "a job must be a JSON object, not \(json.kindName)")
        }
        for key in o.keys where !Job.fieldNames.contains(key) {
            let known = Job.fieldNames.sorted().joined(separator: ", ")
            throw SpoolError(.invalidInput, "unknown field '\(key)' (job fields: \(known))")
        }
        func string(_ field: JobField) throws(SpoolError) -> String? {
            guard let v = o[field.name], v != .null else { return nil }
            guard case .string(let s) = v else { throw fieldError(field.name, "must be a string, not \(v.kindName)") }
            return s
        }
        guard let workdir = try string(.workdir) else { throw fieldError(JobField.workdir.name, "is required") }
        guard let app = try string(.app) else { throw fieldError(JobField.app.name, "is required") }
        try Job.validateWorkdir(workdir)
        self.init(workdir: workdir, app: app)
        id = try string(.id) ?? ""
        created = try string(.created) ?? ""
        if let v = o[JobField.serverID.name], v != .null {
            guard let n = v.intValue, n >= 1 else {
                throw fieldError(JobField.serverID.name, "must be a positive integer, not \(v.kindName)")
            }
            serverID = n
        }
        for field in JobField.spec {
            do { try field.read(o[field.name], into: &self) } catch { throw fieldError(error.field, error.problem) }
        }
        if let v = o[JobField.parameters.name], v != .null {
            guard case .object(let m) = v else {
                throw fieldError(JobField.parameters.name, "must be an object, not \(v.kindName)")
            }
            parameters = m
        }
        serializedParameters = try string(.serializedParameters) ?? ""
        if let v = o[JobField.parentIDs.name], v != .null {
            let field = JobField.parentIDs.name
            guard case .array(let items) = v else { throw fieldError(field, "must be an array of job IDs") }
            var parents: [String] = []
            for item in items {
                guard case .string(let s) = item else {
                    throw fieldError(field, "must hold job ID strings, not \(item.kindName)")
                }
                if !parents.contains(s) { parents.append(s) }
            }
            parentIDs = parents
        }
        try validateRecord()
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
        // The spec's fields, by their one check (a value set in code, or by `modify`, is judged as if read).
        var checked = self
        for field in JobField.spec {
            do { try field.read(field.value(in: self), into: &checked) } catch {
                throw fieldError(error.field, error.problem)
            }
        }
        try validateRecord()
    }

    /// Checks what is neither the workdir nor the spec (each checked first, by its own check).
    func validateRecord() throws(SpoolError) {
        if app.isEmpty { throw fieldError(JobField.app.name, "must not be empty") }
        // A NUL cannot reach a command line or an environment variable: refused here, not when the job runs.
        let texts: [(String, JSONValue)] = [
            (JobField.app.name, .string(app)), (JobField.parameters.name, .object(parameters)),
        ]
        for (field, value) in texts {
            if let path = Job.nulPath(value, at: field) {
                throw fieldError(path, "contains a NUL character, which no command line or environment can carry")
            }
        }
        if JSONValue.object(parameters).depth > Limits.parameterDepth {
            throw fieldError(JobField.parameters.name, "nests deeper than \(Limits.parameterDepth) levels")
        }
        let parametersSize = JSONValue.object(parameters).serialized().utf8.count + serializedParameters.utf8.count
        if !serializedParameters.isEmpty && Base64.decode(serializedParameters) == nil {
            throw fieldError(JobField.serializedParameters.name, "must be base64 (of a pickled dict)")
        }
        if parametersSize > Limits.parametersBytes {
            throw fieldError(
                JobField.parameters.name, "is \(parametersSize) bytes; the limit is \(Limits.parametersBytes)")
        }
        if parentIDs.count > Limits.parents {
            throw fieldError(JobField.parentIDs.name, "has \(parentIDs.count) entries; the limit is \(Limits.parents)")
        }
        for parent in parentIDs where !JobID.isValid(parent) {
            throw fieldError(JobField.parentIDs.name, "'\(parent)' is not a job ID")
        }
        if !id.isEmpty && !JobID.isValid(id) { throw fieldError(JobField.id.name, "'\(id)' is not a job ID") }
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
        if let wrong = transferProblem(slot: slot, item) { throw fieldError(wrong.field, wrong.problem) }
    }

    /// What is wrong with a transfer slot's target (`ALIAS:/absolute/path` or `{location_alias, path}`), if
    /// anything, and where.
    static func transferProblem(slot: String, _ item: JSONValue) -> JobField.Problem? {
        let field = JobField.transfers.name + "." + slot
        let path: String?
        switch item {
        case .string(let s):
            guard let colon = s.firstIndex(of: ":"), colon != s.startIndex else {
                return JobField.Problem(
                    field: field, problem: "must be \"ALIAS:/absolute/path\" or {location_alias, path}")
            }
            path = String(s[s.index(after: colon)...])
        case .object(let m):
            guard m["location_alias"]?.stringValue?.isEmpty == false else {
                return JobField.Problem(field: field + ".location_alias", problem: "is required")
            }
            path = m["path"]?.stringValue
        default:
            return JobField.Problem(field: field, problem: "must be \"ALIAS:/absolute/path\" or {location_alias, path}")
        }
        guard let path, path.hasPrefix("/") else {
            return JobField.Problem(field: field + ".path", problem: "must be an absolute path")
        }
        return nil
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
        if workdir.isEmpty { throw fieldError(JobField.workdir.name, "must not be empty") }
        if workdir.hasPrefix("/") {
            throw fieldError(JobField.workdir.name, "'\(workdir)' must be relative to the site's data/")
        }
        if workdir.utf8.count > Limits.workdirBytes {
            throw fieldError(
                JobField.workdir.name, "is \(workdir.utf8.count) bytes; the limit is \(Limits.workdirBytes)")
        }
        if let hidden = workdir.unicodeScalars.first(where: Job.isUnprintable) {
            let code = String(hidden.value, radix: 16, uppercase: true)
            throw fieldError(
                JobField.workdir.name,
                "contains a control character or an invisible one (U+\(String(repeating: "0", count: max(0, 4 - code.count)) + code): "
                    + "a line break, a direction mark): a directory name must read as it is")
        }
        for component in workdir.split(separator: "/", omittingEmptySubsequences: false) {
            switch component {
            case "":
                throw fieldError(
                    JobField.workdir.name, "'\(workdir)' has an empty component (a doubled or trailing '/')")
            case ".", "..": throw fieldError(JobField.workdir.name, "'\(workdir)' must not contain '\(component)'")
            default: break
            }
        }
        if workdir.hasPrefix(".balsam") {
            throw fieldError(JobField.workdir.name, "'\(workdir)': names starting .balsam are reserved")
        }
    }

    /// The job as a JSON object with the original's snake_case field names.
    public var json: JSONValue {
        var o: [String: JSONValue] = [
            JobField.workdir.name: .string(workdir), JobField.app.name: .string(app),
            JobField.parameters.name: .object(parameters),
            JobField.parentIDs.name: .array(parentIDs.map(JSONValue.string)),
        ]
        for field in JobField.spec { o[field.name] = field.value(in: self) }
        if !id.isEmpty { o[JobField.id.name] = .string(id) }
        if !created.isEmpty { o[JobField.created.name] = .string(created) }
        if let serverID { o[JobField.serverID.name] = .int(serverID) }
        if !serializedParameters.isEmpty { o[JobField.serializedParameters.name] = .string(serializedParameters) }
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
