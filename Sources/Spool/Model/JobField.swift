/// A job's fields, declared once, for the site and the server alike: each field's name (in `job.json`, on the
/// wire, as the server's column: the original Balsam's names), where it is kept, how the server stores it, and,
/// for the spec (what a site and the server both keep of a job), its one check and its place in `Job`. Every
/// reader and writer of a job goes through this table: `Job`'s `job.json`, the push and its reply, the server's
/// create, update, columns, rows and OpenAPI schemas. Adding a field to the job is a case here (and, for a
/// column, its migration): see docs/design-notes.md.
public enum JobField: String, CaseIterable, Sendable {
    case id
    case created
    case appID = "app_id"
    case app
    case workdir
    case tags
    case parameters
    case serializedParameters = "serialized_parameters"
    case data
    case returnCode = "return_code"
    case numNodes = "num_nodes"
    case ranksPerNode = "ranks_per_node"
    case threadsPerRank = "threads_per_rank"
    case threadsPerCore = "threads_per_core"
    case launchParams = "launch_params"
    case gpusPerRank = "gpus_per_rank"
    case nodePackingCount = "node_packing_count"
    case wallTimeMin = "wall_time_min"
    case transfers
    case parentIDs = "parent_ids"
    case batchJobID = "batch_job_id"
    case state
    case lastUpdate = "last_update"
    case pendingFileCleanup = "pending_file_cleanup"
    case serializedReturnValue = "serialized_return_value"
    case serializedException = "serialized_exception"
    case siteJobID = "site_job_id"
    /// The server's id of a job the site took from it (made through the API): the site's record of it.
    case serverID = "server_id"

    /// The field's name: in `job.json`, on the wire and as the server's column.
    public var name: String { rawValue }

    /// How the server stores a column and the API shows it.
    public enum Column: Sendable, Equatable {
        /// A number (`BIGINT`), or NULL when optional.
        case integer(optional: Bool)
        /// A floating-point number.
        case number
        /// Text, or NULL when optional.
        case text(optional: Bool)
        /// JSON stored as its text and shown as it is: an object, or (`parent_ids`) a list.
        case json
        /// 0 or 1, shown as false or true.
        case boolean
        /// Microseconds since the epoch, shown in ISO 8601 with its zone.
        case time
        /// A job state's name.
        case state
    }

    /// How the server keeps the field in its `jobs` table, or nil where it is not a column there (a site's
    /// own: `created`, the app's name; the plain parameters, kept pickled; the transfer slots, kept as items).
    public var column: Column? {
        switch self {
        case .id, .appID, .numNodes, .ranksPerNode, .threadsPerRank, .threadsPerCore, .nodePackingCount, .wallTimeMin:
            .integer(optional: false)
        case .returnCode, .batchJobID: .integer(optional: true)
        case .workdir, .serializedParameters, .serializedReturnValue, .serializedException: .text(optional: false)
        case .siteJobID: .text(optional: true)
        case .tags, .data, .launchParams, .parentIDs: .json
        case .gpusPerRank: .number
        case .pendingFileCleanup: .boolean
        case .lastUpdate: .time
        case .state: .state
        case .created, .app, .parameters, .transfers, .serverID: nil
        }
    }

    /// Whether `job.json` holds it (the site's record; the state and the run's results are in the state file).
    public var inJobFile: Bool {
        switch self {
        case .id, .created, .app, .workdir, .tags, .parameters, .serializedParameters, .data, .numNodes,
            .ranksPerNode, .threadsPerRank, .threadsPerCore, .launchParams, .gpusPerRank, .nodePackingCount,
            .wallTimeMin, .transfers, .parentIDs, .serverID:
            true
        default: false
        }
    }

    /// The one check of a spec field's value, the same at the site and at the server.
    public enum Check: Sendable {
        /// An integer from `minimum` to `Job.Limits.count` (a number's text is taken, as the original's server did).
        case count(minimum: Int)
        /// A number of GPUs, 0 to 1024.
        case gpus
        /// Tags: strings by name, bounded in count and length.
        case labels
        /// Launcher flags (`Job.launchParamKeyProblem`) with their values.
        case flags
        /// Any JSON object of at most `maxBytes` serialized.
        case object(maxBytes: Int)
        /// Transfer slots: slot → `ALIAS:/absolute/path` or `{location_alias, path}`.
        case slots
    }

    /// For the spec (what a site and the server both keep of a job, carried up in a push and down in its
    /// reply): the field's check. Nil for the rest.
    public var check: Check? {
        switch self {
        case .numNodes, .ranksPerNode, .threadsPerRank, .threadsPerCore, .nodePackingCount: .count(minimum: 1)
        case .wallTimeMin: .count(minimum: 0)
        case .gpusPerRank: .gpus
        case .tags: .labels
        case .launchParams: .flags
        case .data: .object(maxBytes: Job.Limits.dataBytes)
        case .transfers: .slots
        default: nil
        }
    }

    /// The spec's fields, in the declared order.
    public static let spec = allCases.filter { $0.check != nil }

    /// Whether a user's change of it to a site's job goes to the site, which carries it out with its own
    /// `modify`: the spec but its transfer slots (changed as items), and the parameters (sent pickled).
    public var forwarded: Bool {
        (check != nil && self != .transfers) || self == .serializedParameters
    }

    /// The fields forwarded to a site, by name.
    public static let forwardedNames = Set(allCases.filter(\.forwarded).map(\.name))

    /// The server's columns, in the declared order.
    public static let columns = allCases.filter { $0.column != nil }

    /// What is wrong with a field's value: where (`tags.x`, relative to the job) and why.
    public struct Problem: Error, Sendable {
        public var field: String
        public var problem: String
    }

    /// Checks `value` for this spec field and sets it on `job`. Null or absent is the default.
    public func read(_ value: JSONValue?, into job: inout Job) throws(Problem) {
        guard let check else { return }
        let value = value == .null ? nil : value
        switch (self, check) {
        case (_, .count(let minimum)):
            let n = try count(value, minimum: minimum) ?? (minimum == 0 ? 0 : 1)
            switch self {
            case .numNodes: job.numNodes = n
            case .ranksPerNode: job.ranksPerNode = n
            case .threadsPerRank: job.threadsPerRank = n
            case .threadsPerCore: job.threadsPerCore = n
            case .nodePackingCount: job.nodePackingCount = n
            default: job.wallTimeMin = n
            }
        case (_, .gpus):
            guard let value else {
                job.gpusPerRank = 0
                return
            }
            guard let g = value.doubleValue ?? value.stringValue.flatMap(Double.init), g.isFinite, g >= 0, g <= 1024
            else { throw Problem(field: name, problem: "must be a number from 0 to 1024, not \(value.shown)") }
            job.gpusPerRank = g
        case (_, .labels): job.tags = try strings(value, maxEntries: Job.Limits.tags, flags: false)
        case (_, .flags): job.launchParams = try strings(value, maxEntries: Job.Limits.tags, flags: true)
        case (_, .object(let maxBytes)):
            let o = try object(value)
            // Counted as written (its serialized bytes), at the site and the server alike.
            let size = o.isEmpty ? 2 : JSONValue.object(o).serialized().utf8.count
            if size > maxBytes { throw Problem(field: name, problem: "is \(size) bytes; the limit is \(maxBytes)") }
            job.data = o
        case (_, .slots):
            let o = try object(value)
            if o.count > Job.Limits.tags {
                throw Problem(field: name, problem: "has \(o.count) slots; the limit is \(Job.Limits.tags)")
            }
            for (slot, item) in o {
                if let wrong = Job.transferProblem(slot: slot, item) { throw wrong }
            }
            job.transfers = o
        }
    }

    /// This spec field's value in `job`, as `job.json` and the wire write it.
    public func value(in job: Job) -> JSONValue {
        switch self {
        case .numNodes: .int(job.numNodes)
        case .ranksPerNode: .int(job.ranksPerNode)
        case .threadsPerRank: .int(job.threadsPerRank)
        case .threadsPerCore: .int(job.threadsPerCore)
        case .nodePackingCount: .int(job.nodePackingCount)
        case .wallTimeMin: .int(job.wallTimeMin)
        case .gpusPerRank:
            job.gpusPerRank.rounded() == job.gpusPerRank && abs(job.gpusPerRank) < 1e15
                ? .int(Int(saturating: job.gpusPerRank)) : .double(job.gpusPerRank)
        case .tags: .object(job.tags.mapValues(JSONValue.string))
        case .launchParams: .object(job.launchParams.mapValues(JSONValue.string))
        case .data: .object(job.data)
        case .transfers: .object(job.transfers)
        default: .null
        }
    }

    private func count(_ value: JSONValue?, minimum: Int) throws(Problem) -> Int? {
        guard let value else { return nil }
        guard let i = value.intValue ?? value.stringValue.flatMap({ Int($0) }) else {
            throw Problem(field: name, problem: "must be an integer, not \(value.shown)")
        }
        guard i >= minimum && i <= Job.Limits.count else {
            throw Problem(field: name, problem: "must be between \(minimum) and \(Job.Limits.count), not \(i)")
        }
        return i
    }

    private func object(_ value: JSONValue?) throws(Problem) -> [String: JSONValue] {
        guard let value else { return [:] }
        guard case .object(let o) = value else {
            throw Problem(field: name, problem: "must be an object, not \(value.kindName)")
        }
        return o
    }

    /// A map of strings (numbers and booleans taken as their text, as the original did): at most `maxEntries`,
    /// keys of 1 to `Job.Limits.tagBytes` bytes (or launcher flags), values at most that, no NUL anywhere.
    private func strings(_ value: JSONValue?, maxEntries: Int, flags: Bool) throws(Problem) -> [String: String] {
        let o = try object(value)
        if o.count > maxEntries {
            throw Problem(field: name, problem: "has \(o.count) entries; the limit is \(maxEntries)")
        }
        var out: [String: String] = [:]
        for (key, item) in o {
            let text: String
            switch item {
            case .string(let s): text = s
            case .int, .double, .bool: text = item.serialized()
            default: throw Problem(field: "\(name).\(key)", problem: "must be a string, not \(item.kindName)")
            }
            if flags, let why = Job.launchParamKeyProblem(key) { throw Problem(field: name, problem: why) }
            // A flag's value may be a long list (`--cpu-bind list:0-3:4-7:…`); a tag is a label.
            let valueBytes = flags ? 4096 : Job.Limits.tagBytes
            if key.isEmpty || key.utf8.count > Job.Limits.tagBytes || text.utf8.count > valueBytes {
                throw Problem(
                    field: "\(name).\(key)",
                    problem: "keys must be 1 to \(Job.Limits.tagBytes) bytes and values at most \(valueBytes)")
            }
            if key.utf8.contains(0) || text.utf8.contains(0) {
                throw Problem(
                    field: "\(name).\(key)",
                    problem: "contains a NUL character, which no command line or environment can carry")
            }
            out[key] = text
        }
        return out
    }
}

extension JSONValue {
    /// The value as an error shows it: short.
    var shown: String {
        let text = serialized()
        return text.utf8.count > 64 ? String(decoding: text.utf8.prefix(64), as: UTF8.self) + "…" : text
    }
}
