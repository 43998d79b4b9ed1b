import Spool

/// `POST /sync/push`: everything a site tells the server in one round, with one reading (the server's, every
/// field checked and named when wrong) and one writing (the site's).
///
/// A job or an event that cannot be read is not a reason to refuse the rest: those two lists are read item by
/// item (`PushItem`), and the server refuses only the items that are wrong. Anything else wrong refuses the push.
public struct PushRequest: Sendable, Equatable {
    public var site: PushedSite
    /// The site's apps, when they changed since the last push (empty: unchanged).
    public var apps: [PushedApp] = []
    /// Jobs made at the site since the last push, and jobs it took from the server (their adoption).
    public var jobs: [PushItem<PushedJob>] = []
    public var events: [PushItem<PushedEvent>] = []
    /// Jobs removed at the site (`balsam rm`), by the site's ids.
    public var removed: [String] = []
    /// Jobs made through the API that the site refused, with the reason.
    public var rejected: [Rejection] = []
    /// The digests of the apps the site took from the server (which need not be sent again).
    public var appDigests: [String: String] = [:]
    /// The site's answers to users' requests.
    public var requestsDone: [RequestAnswer] = []
    /// The site's batch jobs whose record changed.
    public var batchJobs: [BatchJobReport] = []
    /// Batch jobs asked for through the API that the site refused, with the reason.
    public var rejectedBatchJobs: [Rejection] = []
    /// Its launchers' time on their nodes: the running ones, and ended ones the server lacks (at most 1000).
    public var launcherSessions: [LauncherSession] = []
    /// Apps from the server the site could not install, with its reason (nil: a site that does not say).
    public var refusedApps: [String: String]?
    /// How old, in seconds, the oldest line of the site's event logs that the server had not taken was when the
    /// site sent this push (0: none); nil from a site that does not say. A later field (`laterFields`).
    public var unpushedLagSeconds: Double?

    /// Fields added to the push after the handshake: a server names those it reads in its reply (`PushReply
    /// .pushFields`), and a site sends one only to a server that named it (`json(serverReads:)`). So a site newer
    /// than its server keeps pushing: a server refuses a push whole for a field it does not know. A field added
    /// to the push from now on goes here, never into what every server reads (`PushFieldTests` holds that set).
    public static let laterFields: Set<String> = ["unpushed_lag_seconds"]

    /// A push from `site` with nothing else in it (but the digests of the apps it took, which it need not be sent
    /// again).
    public init(site: PushedSite, appDigests: [String: String] = [:]) {
        self.site = site
        self.appDigests = appDigests
    }

    /// Whether the push tells nothing new of the site (what it is, its digests and refusals are said every
    /// time): only such a push may wait on the server for news (`POST /sync/push?wait=N`). Both ends decide
    /// with this one rule.
    public var carriesNothing: Bool {
        apps.isEmpty && jobs.isEmpty && events.isEmpty && removed.isEmpty && rejected.isEmpty
            && requestsDone.isEmpty && batchJobs.isEmpty && rejectedBatchJobs.isEmpty && launcherSessions.isEmpty
    }

    /// The most seconds a push may wait for news: under nginx's 60 s default proxy timeout with a margin.
    public static let longestWait = 50

    /// The lists a push may hold, whose items are read one at a time.
    static let lists = [
        "apps", "jobs", "events", "removed", "rejected", "requests_done", "batch_jobs", "rejected_batch_jobs",
        "launcher_sessions",
    ]

    /// Reads a push already parsed (tests, and pushes made in memory), as a server reading `reads` of the later
    /// fields does.
    public init(_ json: JSONValue, reads: Set<String> = laterFields) throws(WireError) {
        var r = try FieldReader(json)
        var lists: [String: [JSONValue]] = [:]
        for key in Self.lists { lists[key] = try r.list(key) }
        try Self.checkSessions(lists["launcher_sessions"]?.count ?? 0)
        try self.init(
            r, reads: reads,
            items: { key, make throws(WireError) in
                for (i, item) in (lists[key] ?? []).enumerated() { try make(i, item) }
            })
    }

    /// Reads a push from its text, as the server does: every list's length is checked (at most `maxItems` items
    /// in all) before any item is built, and each item is built from its own bytes, so a push costs its body plus
    /// the items it may hold, never a tree of the whole body.
    public init(body: [UInt8], maxItems: Int, reads: Set<String> = laterFields) throws(WireError) {
        let reading: JSONMembers.Reading
        do { reading = try JSONMembers.object(body, maxListItems: maxItems) } catch {
            throw WireError("malformed JSON body: \(error)")
        }
        let document: JSONMembers
        switch reading {
        case .members(let members): document = members
        case .tooMany(let key): throw WireError("a push holds at most \(maxItems) items in all its lists", field: key)
        case .wrongKind, .items: throw WireError("a push is a JSON object")
        }
        var ranges: [String: [Range<Int>]] = [:]
        var rest: [String: JSONValue] = [:]
        func value(_ key: String, _ range: Range<Int>) throws(WireError) -> JSONValue {
            do { return try document.value(at: range) } catch {
                throw WireError("malformed JSON: \(error)", field: key)
            }
        }
        // The lists in the order the parsed reading takes them, so that both refuse the same field first.
        for key in Self.lists {
            guard let range = document.ranges[key] else { continue }
            if let items = document.lists[key] {
                ranges[key] = items
            } else if case let other = try value(key, range), other != .null {
                throw WireError("must be a list, not \(other.kindName)", field: key)
            }
        }
        for (key, range) in document.ranges where !Self.lists.contains(key) { rest[key] = try value(key, range) }
        try Self.checkSessions(ranges["launcher_sessions"]?.count ?? 0)
        try self.init(
            try FieldReader(.object(rest)), reads: reads,
            items: { key, make throws(WireError) in
                for (i, range) in (ranges[key] ?? []).enumerated() {
                    let item: JSONValue
                    do { item = try document.value(at: range) } catch {
                        throw WireError("malformed JSON: \(error)", field: "\(key)[\(i)]")
                    }
                    try make(i, item)
                }
            })
    }

    /// A push's launcher sessions are counted before any is read.
    private static func checkSessions(_ count: Int) throws(WireError) {
        if count > 1000 { throw WireError("a push holds at most 1000 launcher sessions", field: "launcher_sessions") }
    }

    /// Reads a push: its lists' items come from `items` (each item with its place, one at a time), the rest from `r`.
    private init(
        _ reader: FieldReader, reads: Set<String>,
        items: (String, (Int, JSONValue) throws(WireError) -> Void) throws(WireError) -> Void
    ) throws(WireError) {
        var r = reader
        guard let site = r.value("site"), site.objectValue != nil else {
            throw WireError("the push needs the site: {name, path}", field: "site")
        }
        self.site = try PushedSite(site)
        try items("apps") { i, item throws(WireError) in apps.append(try PushedApp(item, at: "apps[\(i)]")) }
        try items("jobs") { i, item in
            jobs.append(PushItem(item) { () throws(WireError) in try PushedJob(item, at: "jobs[\(i)]") })
        }
        try items("events") { i, item in
            events.append(PushItem(item) { () throws(WireError) in try PushedEvent(item, at: "events[\(i)]") })
        }
        try items("removed") { _, item in if let id = item.stringValue { removed.append(id) } }
        try items("rejected") { i, item throws(WireError) in
            rejected.append(try Rejection(item, at: "rejected[\(i)]"))
        }
        appDigests = (try r.object("app_digests") ?? [:]).compactMapValues(\.stringValue)
        try items("requests_done") { i, item throws(WireError) in
            requestsDone.append(try RequestAnswer(item, at: "requests_done[\(i)]"))
        }
        try items("batch_jobs") { i, item throws(WireError) in
            batchJobs.append(try BatchJobReport(item, at: "batch_jobs[\(i)]"))
        }
        try items("rejected_batch_jobs") { i, item throws(WireError) in
            rejectedBatchJobs.append(try Rejection(item, at: "rejected_batch_jobs[\(i)]"))
        }
        try items("launcher_sessions") { i, item throws(WireError) in
            launcherSessions.append(try LauncherSession(wire: item, at: "launcher_sessions[\(i)]"))
        }
        refusedApps = try r.stringMap("refused_apps", maxBytes: 65_536)
        // A later field not read is left unknown, so `finish` refuses it, as a server without it does.
        if reads.contains("unpushed_lag_seconds") {
            unpushedLagSeconds = try r.double("unpushed_lag_seconds", in: 0...1e10)
        }
        try r.finish()
    }

    /// As the site sends it to a server that reads every later field (tests, and pushes made in memory).
    public var json: JSONValue { json(serverReads: Self.laterFields) }

    /// As the site sends it to a server that named `serverReads` of the later fields: the others are left out.
    public func json(serverReads: Set<String>) -> JSONValue {
        var o: [String: JSONValue] = [
            "site": site.json, "jobs": .array(jobs.compactMap { $0.value?.json }),
            "events": .array(events.compactMap { $0.value?.json }), "removed": .array(removed.map { .string($0) }),
            "rejected": .array(rejected.map(\.json)), "app_digests": .object(appDigests.mapValues { .string($0) }),
            "requests_done": .array(requestsDone.map(\.json)), "batch_jobs": .array(batchJobs.map(\.json)),
            "rejected_batch_jobs": .array(rejectedBatchJobs.map(\.json)),
            "launcher_sessions": .array(launcherSessions.map(\.wire)),
        ]
        if !apps.isEmpty { o["apps"] = .array(apps.map(\.json)) }
        if let refusedApps { o["refused_apps"] = .object(refusedApps.mapValues { .string($0) }) }
        if let unpushedLagSeconds { o["unpushed_lag_seconds"] = .double(unpushedLagSeconds) }
        return .object(o.filter { !Self.laterFields.contains($0.key) || serverReads.contains($0.key) })
    }
}

/// One item of a list read item by item (a push's jobs and events, a reply's remote jobs): what it says, or why
/// it could not be read (that item is refused, the rest taken).
public enum PushItem<Value: Sendable & Equatable>: Sendable, Equatable {
    case read(Value)
    /// The item's id where it has one (`site_job_id`, or a remote job's `id`), and what is wrong with it.
    case unreadable(id: String, WireError)

    /// Reads an item with `read`; a failure is kept, not thrown.
    init(_ item: JSONValue, idKey: String = "site_job_id", _ read: () throws(WireError) -> Value) {
        do { self = .read(try read()) } catch {
            let id = item.objectValue?[idKey]
            self = .unreadable(id: id?.stringValue ?? id?.intValue.map(String.init) ?? "", error)
        }
    }

    /// The value, when it was read.
    public var value: Value? {
        if case .read(let value) = self { return value }
        return nil
    }
}

/// The site as its push describes it: its name and path, its transfer locations, and its batch-job policy (which
/// the original client's `balsam queue submit` checks against).
public struct PushedSite: Sendable, Equatable {
    public var name: String
    public var path: String
    /// The server's id of this site, once a push's reply gave it: the site is its record by id, so that a user's
    /// rename of it through the API is not a new site.
    public var id: Int?
    /// `{alias: URL}`; nil from a site that does not say.
    public var transferLocations: [String: String]?
    public var policy: Policy?

    /// A site's batch-job policy.
    public struct Policy: Sendable, Equatable {
        /// Each queue's limits.
        public var allowedQueues: [String: SiteSettings.QueuePolicy] = [:]
        public var allowedProjects: [String] = []
        public var optionalParams: [String: String] = [:]

        public init() {}
    }

    /// A site named `name` at `path`.
    public init(name: String, path: String) {
        self.name = name
        self.path = path
    }

    init(_ json: JSONValue) throws(WireError) {
        var r = try FieldReader(json, prefix: "site")
        name = try r.requiredString("name", maxBytes: 128)
        path = try r.requiredString("path")
        id = try r.int("id", in: 1...Int.max)
        if let given = try r.stringMap("transfer_locations") {
            // As the site's settings read it, shown as the original client reads it (`file:///p` from a site
            // that pushes it as written becomes `file://localhost/p`).
            var locations: [String: String] = [:]
            for (alias, url) in given {
                do { locations[alias] = try TransferLocation(alias: alias, url: url).clientURL } catch {
                    throw r.bad("transfer_locations.\(alias)", error.message)
                }
            }
            transferLocations = locations
        }
        // No policy at all: a site that does not say (an older one).
        let says = r.has("allowed_queues") || r.has("allowed_projects") || r.has("optional_batch_job_params")
        var policy = Policy()
        let given = try r.object("allowed_queues", maxBytes: 262_144) ?? [:]
        if given.count > 1000 { throw r.bad("allowed_queues", "has \(given.count) queues; the limit is 1000") }
        for (name, value) in given {
            if name.isEmpty || name.utf8.count > 256 || name.utf8.contains(0) {
                throw r.bad("allowed_queues", "has a queue name that is empty, longer than 256 bytes or holds NUL")
            }
            var q = try FieldReader(value, prefix: "site.allowed_queues.\(name)")
            policy.allowedQueues[name] = SiteSettings.QueuePolicy(
                maxNodes: try q.requiredInt("max_nodes", in: 1...10_000_000),
                maxWallTimeMinutes: try q.requiredInt("max_walltime", in: 1...10_000_000),
                maxQueuedJobs: try q.requiredInt("max_queued_jobs", in: 0...10_000_000))
            try q.finish()
        }
        policy.allowedProjects = try r.stringList("allowed_projects", maxCount: 1000, maxBytes: 256) ?? []
        policy.optionalParams = try r.stringMap("optional_batch_job_params") ?? [:]
        self.policy = says ? policy : nil
        try r.finish()
    }

    var json: JSONValue {
        var o: [String: JSONValue] = ["name": .string(name), "path": .string(path)]
        if let id { o["id"] = .int(id) }
        if let transferLocations { o["transfer_locations"] = .object(transferLocations.mapValues { .string($0) }) }
        if let policy {
            o["allowed_queues"] = .object(
                policy.allowedQueues.mapValues { q in
                    .object([
                        "max_nodes": .int(q.maxNodes), "max_walltime": .int(q.longestWallTimeMinutes),
                        "max_queued_jobs": .int(q.maxQueuedJobs),
                    ])
                })
            o["allowed_projects"] = .array(policy.allowedProjects.map { .string($0) })
            o["optional_batch_job_params"] = .object(policy.optionalParams.mapValues { .string($0) })
        }
        return .object(o)
    }
}

/// One of the site's apps, as the server lists it: `parameters` as `{name: {required, default, help}}`, its
/// `app.yml` as `source_code`, and its transfer slots.
public struct PushedApp: Sendable, Equatable {
    public var name: String
    public var description = ""
    public var parameters: [String: JSONValue] = [:]
    /// The app's `app.yml` (what the server shows as its source, and reads its kind from: `isPython`).
    public var sourceCode = ""
    public var transfers: [String: JSONValue] = [:]

    /// An app named `name`.
    public init(name: String) { self.name = name }

    init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        name = try r.requiredString("name", maxBytes: 128)
        description = try r.string("description", maxBytes: 65_536) ?? ""
        parameters = try r.object("parameters") ?? [:]
        sourceCode = try r.string("source_code", maxBytes: 1 << 20) ?? ""
        transfers = try r.object("transfers") ?? [:]
        try r.finish()
    }

    /// Whether it is a Python app (its jobs' parameters may hold objects only Python can load), as its
    /// `app.yml` says (`python_app`), read by the site's own parser; nil when it does not read. Read from the
    /// app.yml the push already carries, so that a site and a server of different versions still agree.
    public var isPython: Bool? { try? App.parse(yaml: sourceCode, name: name).isPython }

    /// As the push carries it.
    public var json: JSONValue {
        .object(
            [
                "name": .string(name), "description": .string(description), "parameters": .object(parameters),
                "source_code": .string(sourceCode), "transfers": .object(transfers),
            ])
    }
}

/// An event of one of the site's jobs, with the site's own time.
public struct PushedEvent: Sendable, Equatable {
    public var siteJobID: String
    /// ISO 8601, as the site logged it.
    public let time: String
    /// The same time in microseconds since the epoch (0 for a text that is not a time; a read event's is one).
    public let microseconds: Int64
    public var from: JobState
    public var to: JobState
    public var data: [String: JSONValue] = [:]

    /// An event of job `siteJobID`.
    public init(siteJobID: String, time: String, from: JobState, to: JobState, data: [String: JSONValue] = [:]) {
        self.siteJobID = siteJobID
        self.time = time
        microseconds = ServerClock.parse(time) ?? 0
        self.from = from
        self.to = to
        self.data = data
    }

    init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        siteJobID = try r.requiredString("site_job_id", maxBytes: 64)
        guard let t = try r.timeAsSent("t") else { throw r.bad("t", "is required") }
        (time, microseconds) = t
        from = try r.jobState("from")
        to = try r.jobState("to")
        data = try r.object("data") ?? [:]
        try r.finish()
    }

    /// What the event says beyond its move, typed.
    public var facts: EventFacts { EventFacts(data: data) }

    var json: JSONValue {
        .object([
            "site_job_id": .string(siteJobID), "t": .string(time), "from": .string(from.rawValue),
            "to": .string(to.rawValue), "data": .object(data),
        ])
    }
}

/// Something made through the API that the site refused (a job, a batch job), by the server's id, with why.
public struct Rejection: Sendable, Equatable {
    public var serverID: Int
    public var reason: String

    /// A refusal of `serverID`.
    public init(serverID: Int, reason: String) {
        self.serverID = serverID
        self.reason = reason
    }

    init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        serverID = try r.requiredInt("server_id", in: 1...Int.max)
        reason = try r.requiredString("reason", maxBytes: 4096)
        try r.finish()
    }

    var json: JSONValue { .object(["server_id": .int(serverID), "reason": .string(reason)]) }
}

/// The site's answer to a user's request (`JobRequest`): done, or refused with the reason.
public struct RequestAnswer: Sendable, Equatable {
    public var id: Int
    public var refused: String?

    /// The answer to request `id`: done, or refused with `refused` as the reason.
    public init(id: Int, refused: String? = nil) {
        self.id = id
        self.refused = refused
    }

    init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        id = try r.requiredInt("id", in: 1...Int.max)
        let outcome = try r.requiredString("outcome", maxBytes: 16)
        let reason = try r.string("reason", maxBytes: 4096)
        try r.finish()
        refused = outcome == "refused" ? reason ?? "refused by the site" : nil
    }

    /// Reads one the site kept in its state file; nil when it is not one.
    public init?(kept json: JSONValue) {
        guard let answer = try? RequestAnswer(json, at: "") else { return nil }
        self = answer
    }

    /// As the push carries it (and the site keeps it).
    public var json: JSONValue {
        var o: [String: JSONValue] = ["id": .int(id), "outcome": .string(refused == nil ? "done" : "refused")]
        if let refused { o["reason"] = .string(refused) }
        return .object(o)
    }
}

/// One of the site's batch jobs as the site reports it, by the site's id (and the server's, for one asked for
/// through the API).
public struct BatchJobReport: Sendable, Equatable {
    public var siteBatchID: Int
    public var serverID: Int?
    public var project: String
    public var queue: String
    public var numNodes: Int
    public var wallTimeMinutes: Int
    public var filterTags: [String: String] = [:]
    public var optionalParams: [String: String] = [:]
    public var state: BatchJob.State
    public var schedulerID: String?
    /// ISO 8601.
    public var startTime: String?
    public var endTime: String?
    public var message: String?

    /// The report of a site's batch job.
    public init(_ job: BatchJob, serverID: Int? = nil) {
        siteBatchID = job.id
        self.serverID = serverID
        project = job.project
        queue = job.queue
        numNodes = job.numNodes
        wallTimeMinutes = job.wallTimeMinutes
        filterTags = job.filterTags
        optionalParams = job.optionalParams
        state = job.state
        schedulerID = job.schedulerID
        startTime = job.startTime
        endTime = job.endTime
        message = job.message
    }

    init(_ json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        siteBatchID = try r.requiredInt("site_batch_id", in: 1...Int.max)
        serverID = try r.int("server_id", in: 1...Int.max)
        let state = try r.requiredString("state", maxBytes: 32)
        guard let known = BatchJob.State(rawValue: state) else {
            throw r.bad("state", "'\(state)' is not a batch job state")
        }
        self.state = known
        schedulerID = try r.string("scheduler_id", maxBytes: 64)
        startTime = try r.timeAsSent("start_time")?.text
        endTime = try r.timeAsSent("end_time")?.text
        message = try r.string("message", maxBytes: 4096)
        project = try r.requiredString("project", maxBytes: 256)
        queue = try r.requiredString("queue", maxBytes: 256)
        numNodes = try r.requiredInt("num_nodes", in: 1...1_000_000)
        wallTimeMinutes = try r.requiredInt("wall_time_min", in: 1...1_000_000)
        filterTags = try r.stringMap("filter_tags") ?? [:]
        optionalParams = try r.stringMap("optional_params") ?? [:]
        try r.finish()
    }

    /// As the push carries it.
    public var json: JSONValue {
        var o: [String: JSONValue] = [
            "site_batch_id": .int(siteBatchID), "project": .string(project), "queue": .string(queue),
            "num_nodes": .int(numNodes), "wall_time_min": .int(wallTimeMinutes),
            "filter_tags": .object(filterTags.mapValues { .string($0) }),
            "optional_params": .object(optionalParams.mapValues { .string($0) }), "state": .string(state.rawValue),
        ]
        if let schedulerID { o["scheduler_id"] = .string(schedulerID) }
        if let startTime { o["start_time"] = .string(startTime) }
        if let endTime { o["end_time"] = .string(endTime) }
        if let message { o["message"] = .string(message) }
        if let serverID { o["server_id"] = .int(serverID) }
        return .object(o)
    }
}

extension LauncherSession {
    init(wire json: JSONValue, at prefix: String) throws(WireError) {
        var r = try FieldReader(json, prefix: prefix)
        let lease = try r.requiredString("lease", maxBytes: 256)
        let nodes = try r.requiredInt("nodes", in: 1...10_000_000)
        guard let start = try r.timeAsSent("start")?.text else { throw r.bad("start", "is required") }
        let end = try r.timeAsSent("end")?.text
        let batch = try r.int("site_batch_id", in: 1...Int.max)
        try r.finish()
        self.init(lease: lease, nodes: nodes, start: start, end: end, batchJob: batch)
    }

    /// As the push carries it.
    var wire: JSONValue {
        var o: [String: JSONValue] = [
            "lease": .string(lease), "nodes": .int(nodes), "start": .string(start),
            "end": end.map(JSONValue.string) ?? .null,
        ]
        if let batchJob { o["site_batch_id"] = .int(batchJob) }
        return .object(o)
    }
}
