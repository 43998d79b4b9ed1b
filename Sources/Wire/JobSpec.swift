import Spool

/// What a job is to run, as a site and the server exchange it: the spec of `Spool.Job` (`JobField.spec`, with
/// its workdir and its app's name), read and written here by the job's one declaration, so that a site and the
/// server read it with the same checks. A job made at a site goes up in a push (`PushedJob`); one made through
/// the API comes down in a push's reply (`RemoteJob`).
extension Job {
    /// Reads the spec's members from `r`, each by its field's check (`JobField.read`), named when wrong.
    public init(spec r: inout FieldReader) throws(WireError) {
        self.init(
            workdir: try r.requiredString(JobField.workdir.name, maxBytes: Job.Limits.workdirBytes),
            app: try r.requiredString(JobField.app.name, maxBytes: 128))
        do { try Job.validateWorkdir(workdir) } catch { throw r.bad(JobField.workdir.name, error.message) }
        try readSpec(&r)
    }

    /// Reads the spec's fields but the workdir and the app from `r`, each by its field's check.
    public mutating func readSpec(_ r: inout FieldReader) throws(WireError) {
        for field in JobField.spec {
            do { try field.read(r.value(field.name), into: &self) } catch { throw r.bad(error.field, error.problem) }
        }
    }

    /// The job with only its spec: its id, parameters and parents, which messages carry apart, cleared.
    public var spec: Job {
        var job = self
        (job.id, job.created, job.parameters, job.serializedParameters, job.parentIDs) = ("", "", [:], "", [])
        job.serverID = nil
        return job
    }

    /// Its spec's members, added to `o`.
    public func writeSpec(into o: inout [String: JSONValue]) {
        o[JobField.workdir.name] = .string(workdir)
        o[JobField.app.name] = .string(app)
        for field in JobField.spec { o[field.name] = field.value(in: self) }
        if transfers.isEmpty { o[JobField.transfers.name] = nil }
    }

    /// Applies a user's change of a site's job, as the server forwards it (a `modify` request: the forwarded
    /// fields by name, and the parameters read out of their pickle), each by its field's check.
    public mutating func apply(change: [String: JSONValue]) throws(SpoolError) {
        for (key, value) in change {
            if key == JobField.parameters.name {
                parameters = value.objectValue ?? [:]
            } else if let field = JobField(rawValue: key), field.forwarded {
                do { try field.read(value, into: &self) } catch {
                    throw SpoolError(.invalidInput, "field '\(error.field)' \(error.problem)")
                }
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
    public var spec: Job

    /// The site's job `id` in `state`, made from the server's job `serverID` when it was taken from there.
    public init(id: String, _ job: Job, state: JobState, serverID: Int? = nil) {
        siteJobID = id
        self.serverID = serverID
        self.state = state
        parentSiteIDs = job.parentIDs
        parameters = job.parameters
        spec = job.spec
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
            spec = Job(workdir: "", app: "")
            return
        }
        spec = try Job(spec: &r)
        parameters = try r.object("parameters") ?? [:]
        state = try r.jobState("state")
        parentSiteIDs = try r.stringList("parent_site_ids", maxCount: Job.Limits.parents, maxBytes: 64) ?? []
        try r.finish()
    }

    /// As a push carries it.
    public var json: JSONValue {
        var o: [String: JSONValue] = ["site_job_id": .string(siteJobID)]
        spec.writeSpec(into: &o)
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
    public var spec: Job
    /// Base64 of the pickled parameters (the original client's `serialized_parameters`).
    public var serializedParameters = ""
    /// Parents, by the server's ids.
    public var parentIDs: [Int] = []
    /// The site's ids of those parents the site has, by the server's id.
    public var parentSiteIDs: [Int: String] = [:]
    /// Parents the site will never have: deleted since the job was made, or failed on the server before a site
    /// took them (refused, or killed through the API). The site refuses the job, naming them.
    public var lostParentIDs: [Int] = []

    /// A job `id` with `spec`.
    public init(id: Int, spec: Job) {
        self.id = id
        self.spec = spec
    }

    /// Reads one from a push's reply. Members it does not know are left: a newer server may send more.
    public init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        id = try r.requiredInt("id", in: 1...Int.max)
        spec = try Job(spec: &r)
        serializedParameters = try r.string("serialized_parameters", maxBytes: Job.Limits.parametersBytes) ?? ""
        parentIDs = try r.intList("parent_ids", maxCount: Job.Limits.parents) ?? []
        for (key, value) in try r.object("parent_site_ids") ?? [:] {
            guard let parent = Int(key), let site = value.stringValue else {
                throw r.bad("parent_site_ids", "must map server ids to the site's ids")
            }
            parentSiteIDs[parent] = site
        }
        lostParentIDs = try r.intList("lost_parent_ids", maxCount: Job.Limits.parents) ?? []
    }

    /// As a push's reply carries it.
    public var json: JSONValue {
        var o: [String: JSONValue] = ["id": .int(id), "serialized_parameters": .string(serializedParameters)]
        spec.writeSpec(into: &o)
        o["parent_ids"] = .array(parentIDs.map { .int($0) })
        o["parent_site_ids"] = .object(
            Dictionary(uniqueKeysWithValues: parentSiteIDs.map { (String($0.key), JSONValue.string($0.value)) }))
        if !lostParentIDs.isEmpty { o["lost_parent_ids"] = .array(lostParentIDs.map { .int($0) }) }
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
