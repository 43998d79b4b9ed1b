import Spool

/// The server's reply to a push: what it took (the site's id, its apps' and jobs' server ids, how many events
/// it recorded, what it refused), and what it asks of the site (jobs, apps and batch jobs made through the API,
/// users' requests, batch-job deletions). One round trip a period carries both directions.
///
/// The site reads it leniently: members it does not know are left (a newer server may send more), and an item
/// it cannot read is passed over (a remote job that cannot be read is refused, with the reason).
public struct PushReply: Sendable, Equatable {
    public var siteID: Int
    /// The site's apps by name, with their server ids.
    public var apps: [String: Int] = [:]
    /// The pushed jobs by the site's id, with their server ids.
    public var jobs: [String: Int] = [:]
    /// Events recorded (a repeated push records none).
    public var events = 0
    public var refused: [SyncRefusal] = []
    public var remoteJobs: [PushItem<RemoteJob>] = []
    public var remoteApps: [RemoteApp] = []
    public var remoteBatchJobs: [RemoteBatchJob] = []
    /// The site's batch jobs (its ids) a user asked to delete.
    public var batchDeletions: [Int] = []
    public var requests: [JobRequest] = []
    /// The later push fields the server reads (`PushRequest.laterFields`): empty from a server before the
    /// handshake, which reads none of them.
    public var pushFields: Set<String> = []

    /// A reply to site `siteID`.
    public init(siteID: Int) { self.siteID = siteID }

    /// Whether the reply asks nothing of the site and refuses nothing: a push answered so may be held for news.
    public var bringsNothing: Bool {
        refused.isEmpty && remoteJobs.isEmpty && remoteApps.isEmpty && remoteBatchJobs.isEmpty
            && batchDeletions.isEmpty && requests.isEmpty
    }

    /// Reads a reply.
    public init(_ json: JSONValue) {
        let o = json.objectValue ?? [:]
        siteID = o["site_id"]?.intValue ?? 0
        apps = (o["apps"]?.objectValue ?? [:]).compactMapValues(\.intValue)
        jobs = (o["jobs"]?.objectValue ?? [:]).compactMapValues(\.intValue)
        events = o["events"]?.intValue ?? 0
        refused = (o["refused"]?.arrayValue ?? []).compactMap(SyncRefusal.init(json:))
        remoteJobs = (o["remote_jobs"]?.arrayValue ?? []).enumerated().map { i, item in
            PushItem(item, idKey: "id") { () throws(WireError) in try RemoteJob(item, at: "remote_jobs[\(i)]") }
        }
        remoteApps = (o["remote_apps"]?.arrayValue ?? []).compactMap(RemoteApp.init(json:))
        remoteBatchJobs = (o["remote_batch_jobs"]?.arrayValue ?? []).compactMap(RemoteBatchJob.init(json:))
        batchDeletions = (o["batch_deletions"]?.arrayValue ?? []).compactMap(\.intValue)
        requests = (o["requests"]?.arrayValue ?? []).compactMap(JobRequest.init(json:))
        pushFields = Set((o["push_fields"]?.arrayValue ?? []).compactMap(\.stringValue))
    }

    /// As the server sends it.
    public var json: JSONValue {
        .object([
            "site_id": .int(siteID), "apps": .object(apps.mapValues { .int($0) }),
            "jobs": .object(jobs.mapValues { .int($0) }), "events": .int(events),
            "refused": .array(refused.map(\.json)), "remote_jobs": .array(remoteJobs.compactMap { $0.value?.json }),
            "remote_apps": .array(remoteApps.map(\.json)), "remote_batch_jobs": .array(remoteBatchJobs.map(\.json)),
            "batch_deletions": .array(batchDeletions.map { .int($0) }), "requests": .array(requests.map(\.json)),
            "push_fields": .array(pushFields.sorted().map { .string($0) }),
        ])
    }
}

/// An app defined in Python through the API (a pickled class) that the site has not taken in this version:
/// `commandTemplate` is read out of the pickle without running it (nil: a Python app, whose `run()` the site's
/// Python runs); `digest` tells the site's copy apart.
public struct RemoteApp: Sendable, Equatable {
    public var name: String
    public var serializedClass: String
    public var commandTemplate: String?
    public var parameters: [String: JSONValue]
    public var description: String
    public var digest: String
    /// Its transfer slots, as the client defined them (`{slot: {direction, local_path, required, ...}}`).
    public var transfers: [String: JSONValue] = [:]
    /// The class's `cleanup_files` globs.
    public var cleanupFiles: [String] = []

    /// An app as the server holds it.
    public init(
        name: String, serializedClass: String, commandTemplate: String?, parameters: [String: JSONValue],
        description: String, digest: String
    ) {
        self.name = name
        self.serializedClass = serializedClass
        self.commandTemplate = commandTemplate
        self.parameters = parameters
        self.description = description
        self.digest = digest
    }

    init?(json: JSONValue) {
        guard let o = json.objectValue, let name = o["name"]?.stringValue, let digest = o["digest"]?.stringValue
        else { return nil }
        self.init(
            name: name, serializedClass: o["serialized_class"]?.stringValue ?? "",
            commandTemplate: o["command_template"]?.stringValue, parameters: o["parameters"]?.objectValue ?? [:],
            description: o["description"]?.stringValue ?? "", digest: digest)
        transfers = o["transfers"]?.objectValue ?? [:]
        cleanupFiles = (o["cleanup_files"]?.arrayValue ?? []).compactMap(\.stringValue)
    }

    var json: JSONValue {
        .object([
            "name": .string(name), "serialized_class": .string(serializedClass),
            "command_template": commandTemplate.map(JSONValue.string) ?? .null, "parameters": .object(parameters),
            "description": .string(description), "digest": .string(digest), "transfers": .object(transfers),
            "cleanup_files": .array(cleanupFiles.map(JSONValue.string)),
        ])
    }
}

/// A batch job asked for through the API that the site has not taken.
public struct RemoteBatchJob: Sendable, Equatable {
    public var id: Int
    public var project: String
    public var queue: String
    public var numNodes: Int
    public var wallTimeMinutes: Int
    public var jobMode: String
    public var filterTags: [String: String]
    public var optionalParams: [String: String]

    /// A batch job request as the server holds it.
    public init(
        id: Int, project: String, queue: String, numNodes: Int, wallTimeMinutes: Int, jobMode: String,
        filterTags: [String: String], optionalParams: [String: String]
    ) {
        self.id = id
        self.project = project
        self.queue = queue
        self.numNodes = numNodes
        self.wallTimeMinutes = wallTimeMinutes
        self.jobMode = jobMode
        self.filterTags = filterTags
        self.optionalParams = optionalParams
    }

    init?(json: JSONValue) {
        guard let o = json.objectValue, let id = o["id"]?.intValue else { return nil }
        self.init(
            id: id, project: o["project"]?.stringValue ?? "", queue: o["queue"]?.stringValue ?? "",
            numNodes: o["num_nodes"]?.intValue ?? 1, wallTimeMinutes: o["wall_time_min"]?.intValue ?? 1,
            jobMode: o["job_mode"]?.stringValue ?? "mpi",
            filterTags: (o["filter_tags"]?.objectValue ?? [:]).compactMapValues(\.stringValue),
            optionalParams: (o["optional_params"]?.objectValue ?? [:]).compactMapValues(\.stringValue))
    }

    var json: JSONValue {
        .object([
            "id": .int(id), "project": .string(project), "queue": .string(queue), "num_nodes": .int(numNodes),
            "wall_time_min": .int(wallTimeMinutes), "job_mode": .string(jobMode),
            "filter_tags": .object(filterTags.mapValues { .string($0) }),
            "optional_params": .object(optionalParams.mapValues { .string($0) }),
        ])
    }
}

/// A user's request about one of the site's jobs, made through the API, for the site to carry out: a change of
/// state (`kind` `state`, `target` the state), of the spec (`modify`, `target` the change as JSON), of a transfer
/// item (`transfer`), or a deletion (`delete`).
public struct JobRequest: Sendable, Equatable {
    public var id: Int
    public var siteJobID: String
    public var kind: Kind
    public var target: String?

    /// What a user asks of a site's job through the API.
    public enum Kind: Sendable, Equatable {
        /// A move (`target` the state: FAILED for a kill, READY, RESTART_READY or AWAITING_PARENTS for a retry).
        case state
        /// A deletion.
        case delete
        /// A change of the spec (`target` the forwarded fields as JSON).
        case modify
        /// A change of a transfer item (`target` the item and its new state as JSON).
        case transfer
        /// One this site does not know (a newer server's): refused with its name.
        case other(String)

        public init(_ name: String) {
            switch name {
            case "state": self = .state
            case "delete": self = .delete
            case "modify": self = .modify
            case "transfer": self = .transfer
            default: self = .other(name)
            }
        }

        /// As the server stores it and the wire carries it.
        public var name: String {
            switch self {
            case .state: "state"
            case .delete: "delete"
            case .modify: "modify"
            case .transfer: "transfer"
            case .other(let name): name
            }
        }
    }

    /// A request as the server holds it.
    public init(id: Int, siteJobID: String, kind: Kind, target: String?) {
        self.id = id
        self.siteJobID = siteJobID
        self.kind = kind
        self.target = target
    }

    init?(json: JSONValue) {
        guard let o = json.objectValue, let id = o["id"]?.intValue, let job = o["site_job_id"]?.stringValue,
            let kind = o["kind"]?.stringValue
        else { return nil }
        self.init(id: id, siteJobID: job, kind: Kind(kind), target: o["target"]?.stringValue)
    }

    var json: JSONValue {
        .object([
            "id": .int(id), "site_job_id": .string(siteJobID), "kind": .string(kind.name),
            "target": target.map(JSONValue.string) ?? .null,
        ])
    }
}
