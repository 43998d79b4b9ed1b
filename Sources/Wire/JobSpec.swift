import Spool

/// What a job is to run, as a site and the server exchange it: the part of `Spool.Job` that both ends keep. A job
/// made at a site goes up in a push (`PushedJob`); one made through the API comes down in a push's reply
/// (`RemoteJob`). Both carry this one spec, with this one reading and this one writing; the names are the
/// original API's.
public struct JobSpec: Sendable, Equatable {
    /// The job's directory under the site's `data/`.
    public var workdir: String
    /// Its app's name.
    public var app: String
    public var tags: [String: String] = [:]
    public var data: [String: JSONValue] = [:]
    public var numNodes = 1
    public var ranksPerNode = 1
    public var threadsPerRank = 1
    public var threadsPerCore = 1
    public var launchParams: [String: String] = [:]
    public var gpusPerRank = 0.0
    public var nodePackingCount = 1
    public var wallTimeMin = 0
    /// Its transfer slots' targets, `{slot: "ALIAS:/absolute/path"}`.
    public var transfers: [String: JSONValue] = [:]

    /// A spec for `app` in `workdir`, with the defaults of a new job.
    public init(workdir: String, app: String) {
        self.workdir = workdir
        self.app = app
    }

    /// The spec of a site's job.
    public init(_ job: Job) {
        self.init(workdir: job.workdir, app: job.app)
        tags = job.tags
        data = job.data
        numNodes = job.numNodes
        ranksPerNode = job.ranksPerNode
        threadsPerRank = job.threadsPerRank
        threadsPerCore = job.threadsPerCore
        launchParams = job.launchParams
        gpusPerRank = job.gpusPerRank
        nodePackingCount = job.nodePackingCount
        wallTimeMin = job.wallTimeMin
        transfers = job.transfers
    }

    /// A site job with this spec (its parameters, parents and id are the caller's).
    public var job: Job {
        var job = Job(workdir: workdir, app: app)
        job.tags = tags
        job.data = data
        job.numNodes = numNodes
        job.ranksPerNode = ranksPerNode
        job.threadsPerRank = threadsPerRank
        job.threadsPerCore = threadsPerCore
        job.launchParams = launchParams
        job.gpusPerRank = gpusPerRank
        job.nodePackingCount = nodePackingCount
        job.wallTimeMin = wallTimeMin
        job.transfers = transfers
        return job
    }

    /// Reads the spec's members from `r`, each checked (lengths, ranges, NUL characters) and named when wrong.
    public init(_ r: inout FieldReader) throws(WireError) {
        let limit = Job.Limits.count
        self.init(
            workdir: try r.requiredString("workdir", maxBytes: Job.Limits.workdirBytes),
            app: try r.requiredString("app", maxBytes: 128))
        tags = try r.stringMap("tags", maxEntries: Job.Limits.tags, maxBytes: Job.Limits.tagBytes) ?? [:]
        data = try r.object("data", maxBytes: Job.Limits.dataBytes) ?? [:]
        numNodes = try r.int("num_nodes", in: 1...limit) ?? 1
        ranksPerNode = try r.int("ranks_per_node", in: 1...limit) ?? 1
        threadsPerRank = try r.int("threads_per_rank", in: 1...limit) ?? 1
        threadsPerCore = try r.int("threads_per_core", in: 1...limit) ?? 1
        launchParams = try r.launchParams() ?? [:]
        gpusPerRank = try r.double("gpus_per_rank", in: 0...1024) ?? 0
        nodePackingCount = try r.int("node_packing_count", in: 1...limit) ?? 1
        wallTimeMin = try r.int("wall_time_min", in: 0...limit) ?? 0
        transfers = try r.object("transfers") ?? [:]
        for (slot, value) in transfers {
            do { _ = try Job.transferTarget(slot: slot, value) } catch {
                throw r.bad("transfers", "slot '\(slot)' must be \"ALIAS:/absolute/path\"")
            }
        }
    }

    /// Its members, added to `o`.
    public func write(into o: inout [String: JSONValue]) {
        o["workdir"] = .string(workdir)
        o["app"] = .string(app)
        o["tags"] = .object(tags.mapValues { .string($0) })
        o["data"] = .object(data)
        o["num_nodes"] = .int(numNodes)
        o["ranks_per_node"] = .int(ranksPerNode)
        o["threads_per_rank"] = .int(threadsPerRank)
        o["threads_per_core"] = .int(threadsPerCore)
        o["launch_params"] = .object(launchParams.mapValues { .string($0) })
        o["gpus_per_rank"] = .double(gpusPerRank)
        o["node_packing_count"] = .int(nodePackingCount)
        o["wall_time_min"] = .int(wallTimeMin)
        if !transfers.isEmpty { o["transfers"] = .object(transfers) }
    }
}

extension JobSpec {
    /// Applies a user's change of a site's job's spec, as the server forwards it (a `modify` request: the
    /// original's field names, and the parameters read out of their pickle), to the site's job.
    public static func apply(_ change: [String: JSONValue], to job: inout Job) {
        for (key, value) in change {
            switch key {
            case "tags": job.tags = (value.objectValue ?? [:]).compactMapValues(\.stringValue)
            case "data": job.data = value.objectValue ?? [:]
            case "parameters": job.parameters = value.objectValue ?? [:]
            case "launch_params": job.launchParams = (value.objectValue ?? [:]).compactMapValues(\.stringValue)
            case "num_nodes": job.numNodes = value.intValue ?? job.numNodes
            case "ranks_per_node": job.ranksPerNode = value.intValue ?? job.ranksPerNode
            case "threads_per_rank": job.threadsPerRank = value.intValue ?? job.threadsPerRank
            case "threads_per_core": job.threadsPerCore = value.intValue ?? job.threadsPerCore
            case "gpus_per_rank": job.gpusPerRank = value.doubleValue ?? job.gpusPerRank
            case "node_packing_count": job.nodePackingCount = value.intValue ?? job.nodePackingCount
            case "wall_time_min": job.wallTimeMin = value.intValue ?? job.wallTimeMin
            default: break
            }
        }
    }
}

/// A job made at a site, as its push carries it: the site's id, its state there, its parents by the site's ids,
/// its parameters (plain values) and its spec. A job the site took from the server (`RemoteJob`) is pushed back
/// with the server's id (`serverID`): that is its adoption, and the server needs nothing else of it.
public struct PushedJob: Sendable, Equatable {
    /// The site's id of the job.
    public var siteJobID: String
    /// The server's id, for a job made through the API and taken by the site.
    public var serverID: Int?
    public var state: JobState
    public var parentSiteIDs: [String] = []
    public var parameters: [String: JSONValue] = [:]
    public var spec: JobSpec

    /// The site's job `id` in `state`, made from the server's job `serverID` when it was taken from there.
    public init(id: String, _ job: Job, state: JobState, serverID: Int? = nil) {
        siteJobID = id
        self.serverID = serverID
        self.state = state
        parentSiteIDs = job.parentIDs
        parameters = job.parameters
        spec = JobSpec(job)
    }

    /// Reads one job of a push; `prefix` is its place (`jobs[3]`), which every error names.
    public init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        siteJobID = try r.requiredString("site_job_id", maxBytes: 64)
        serverID = try r.int("server_id", in: 1...Int.max)
        if serverID != nil {
            // An adoption: the server has the spec already.
            r.readAll()
            state = .created
            spec = JobSpec(workdir: "", app: "")
            return
        }
        spec = try JobSpec(&r)
        parameters = try r.object("parameters") ?? [:]
        state = try r.jobState("state")
        parentSiteIDs = try r.stringList("parent_site_ids", maxCount: Job.Limits.parents, maxBytes: 64) ?? []
        try r.finish()
    }

    /// As a push carries it.
    public var json: JSONValue {
        var o: [String: JSONValue] = ["site_job_id": .string(siteJobID)]
        spec.write(into: &o)
        o["parameters"] = .object(parameters)
        o["state"] = .string(state.rawValue)
        o["parent_site_ids"] = .array(parentSiteIDs.map { .string($0) })
        if let serverID { o["server_id"] = .int(serverID) }
        return .object(o)
    }
}

/// A job made through the API for a site that has not taken it yet, as the reply to the site's push carries it:
/// the server's id, its spec, its parameters as the client pickled them, and its parents by the server's ids
/// with, for those the site made or took, the site's ids.
public struct RemoteJob: Sendable, Equatable {
    /// The server's id.
    public var id: Int
    public var spec: JobSpec
    /// Base64 of the pickled parameters (the original client's `serialized_parameters`).
    public var serializedParameters = ""
    /// Parents, by the server's ids.
    public var parentIDs: [Int] = []
    /// The site's ids of those parents the site has, by the server's id.
    public var parentSiteIDs: [Int: String] = [:]

    /// A job `id` with `spec`.
    public init(id: Int, spec: JobSpec) {
        self.id = id
        self.spec = spec
    }

    /// Reads one from a push's reply. Members it does not know are left: a newer server may send more.
    public init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        id = try r.requiredInt("id", in: 1...Int.max)
        spec = try JobSpec(&r)
        serializedParameters = try r.string("serialized_parameters", maxBytes: Job.Limits.parametersBytes) ?? ""
        parentIDs = try r.intList("parent_ids", maxCount: Job.Limits.parents) ?? []
        for (key, value) in try r.object("parent_site_ids") ?? [:] {
            guard let parent = Int(key), let site = value.stringValue else {
                throw r.bad("parent_site_ids", "must map server ids to the site's ids")
            }
            parentSiteIDs[parent] = site
        }
    }

    /// As a push's reply carries it.
    public var json: JSONValue {
        var o: [String: JSONValue] = ["id": .int(id), "serialized_parameters": .string(serializedParameters)]
        spec.write(into: &o)
        o["parent_ids"] = .array(parentIDs.map { .int($0) })
        o["parent_site_ids"] = .object(
            Dictionary(uniqueKeysWithValues: parentSiteIDs.map { (String($0.key), JSONValue.string($0.value)) }))
        return .object(o)
    }
}

extension FieldReader {
    /// A job state, spelled as the original spells it (upper case).
    public mutating func jobState(_ key: String) throws(WireError) -> JobState {
        try JobState.named(try requiredString(key, maxBytes: 32), field: name(key))
    }
}

extension JobState {
    /// The state named `text` exactly as the original spells it (upper case), or an error about `field` that
    /// lists the states.
    public static func named(_ text: String, field: String) throws(WireError) -> JobState {
        guard let state = JobState(rawValue: text) else {
            throw WireError(
                "'\(text)' is not a job state; states are " + JobState.allCases.map(\.rawValue).joined(separator: ", "),
                field: field)
        }
        return state
    }
}
