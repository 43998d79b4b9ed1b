/// One allocation asked of the site's batch scheduler: what was asked, what the scheduler said, and how it ended.
/// Stored as `batchjobs/ID.json` (see balsam-spool(5)); made by `balsam queue submit` or the elastic queue, then
/// written only by the watcher's scheduler service.
public struct BatchJob: Sendable, Equatable {
    /// The original's six states.
    public enum State: String, Sendable, CaseIterable {
        case pendingSubmission = "pending_submission"
        case queued
        case running
        case finished
        case submitFailed = "submit_failed"
        case pendingDeletion = "pending_deletion"

        /// Whether the record is done with (nothing more is asked of the scheduler).
        public var isFinal: Bool { self == .finished || self == .submitFailed }
    }

    /// Why a finished batch job ended (the original had no such distinction).
    public enum Outcome: String, Sendable, CaseIterable {
        /// Its script exited 0.
        case completed
        /// Cancelled: by `balsam queue rm`, the elastic queue, or someone else through the scheduler.
        case cancelled
        /// Its script or the scheduler failed (exit code in `exitCode` when known).
        case failed
        /// It reached its wall time.
        case timedOut = "timed_out"
        /// It left the scheduler without any record of how it ended.
        case lost
    }

    /// Small sequential number, unique in the site.
    public var id: Int
    public var project: String
    public var queue: String
    public var numNodes: Int
    public var wallTimeMinutes: Int
    /// Its launcher runs only jobs with these tags.
    public var filterTags: [String: String] = [:]
    /// The site's optional scheduler parameters (`-x KEY=VALUE`), defaults filled in.
    public var optionalParams: [String: String] = [:]
    public var state: State = .pendingSubmission
    /// The scheduler's ID once submitted.
    public var schedulerID: String?
    public var outcome: Outcome?
    /// The script's exit code, when the scheduler reports it.
    public var exitCode: Int?
    /// The last thing said about it: an error, the scheduler's reason, why it ended.
    public var message: String?
    /// Who asked for it: `balsam queue submit`, `elastic queue`, or the server's API (`serverOrigin`).
    public var origin: String = "balsam queue submit"

    /// The origin of a batch job asked for through the server's API as batch job `serverID`.
    public static func serverOrigin(_ serverID: Int) -> String { serverOriginPrefix + "\(serverID))" }
    private static let serverOriginPrefix = "balsam-server (batch job "

    /// The server's id of the batch job this one was made for, read from its origin (nil: asked for here).
    public var serverID: Int? {
        guard origin.hasPrefix(Self.serverOriginPrefix), origin.hasSuffix(")") else { return nil }
        return Int(origin.dropFirst(Self.serverOriginPrefix.count).dropLast())
    }
    public var createdTime: String = Timestamp.now()
    public var submitTime: String?
    /// The scheduler may or may not have taken the submission (its answer timed out or could not be read): the
    /// next round looks for the job by name, and ends the record `submit_failed` if it is not there.
    public var submitUncertain = false
    public var startTime: String?
    public var endTime: String?
    /// State changes, oldest first: time, state, message.
    public var history: [HistoryEntry] = []

    /// One state change.
    public struct HistoryEntry: Sendable, Equatable {
        public var time: String
        public var state: State
        public var message: String?
    }

    /// A new record in `pending_submission`.
    public init(project: String, queue: String, numNodes: Int, wallTimeMinutes: Int) {
        self.id = 0
        self.project = project
        self.queue = queue
        self.numNodes = numNodes
        self.wallTimeMinutes = wallTimeMinutes
    }

    /// The name given to the scheduler: unique per site and record, so that a submission whose answer was lost
    /// (the watcher died in between) is found again instead of being made twice.
    public func schedulerName(site: Site) -> String {
        // The hash of the site's path: two sites never share names.
        let hex = String(FNV1a.hash32(site.root), radix: 16)
        return "balsam-" + String(repeating: "0", count: 8 - hex.count) + hex + "-\(id)"
    }

    /// Moves to `next`, recording it.
    public mutating func move(to next: State, message: String? = nil, time: String = Timestamp.now()) {
        if let message { self.message = message }
        guard next != state else { return }
        state = next
        history.append(HistoryEntry(time: time, state: next, message: message))
    }

    /// Ends it: `finished` with an outcome.
    public mutating func finish(_ outcome: Outcome, message: String, time: String = Timestamp.now()) {
        self.outcome = outcome
        if endTime == nil { endTime = time }
        move(to: .finished, message: message, time: time)
    }

    // MARK: - JSON

    /// The record as stored.
    public var json: JSONValue {
        var o: [String: JSONValue] = [
            "id": .int(id), "project": .string(project), "queue": .string(queue), "num_nodes": .int(numNodes),
            "wall_time_min": .int(wallTimeMinutes), "filter_tags": .object(filterTags.mapValues { .string($0) }),
            "optional_params": .object(optionalParams.mapValues { .string($0) }), "state": .string(state.rawValue),
            "origin": .string(origin), "created_time": .string(createdTime),
            "history": .array(
                history.map {
                    .object([
                        "time": .string($0.time), "state": .string($0.state.rawValue),
                        "message": $0.message.map { .string($0) } ?? .null,
                    ])
                }),
        ]
        let optional: [(String, JSONValue?)] = [
            ("scheduler_id", schedulerID.map { .string($0) }), ("outcome", outcome.map { .string($0.rawValue) }),
            ("exit_code", exitCode.map { .int($0) }), ("message", message.map { .string($0) }),
            ("submit_time", submitTime.map { .string($0) }), ("start_time", startTime.map { .string($0) }),
            ("submit_uncertain", submitUncertain ? .bool(true) : nil),
            ("end_time", endTime.map { .string($0) }),
        ]
        for (key, value) in optional { o[key] = value ?? .null }
        return .object(o)
    }

    /// Reads a stored record; a missing or wrong field is an error naming it.
    public init(json: JSONValue, path: String) throws(SpoolError) {
        guard case .object(let o) = json else {
            throw SpoolError(.invalidInput, "a batch job must be a JSON object", path: path)
        }
        func bad(_ key: String, _ what: String) -> SpoolError {
            SpoolError(.invalidInput, "field '\(key)' must be \(what)", path: path)
        }
        func int(_ key: String) throws(SpoolError) -> Int {
            guard let v = o[key]?.intValue else { throw bad(key, "an integer") }
            return v
        }
        func string(_ key: String) throws(SpoolError) -> String {
            guard let v = o[key]?.stringValue else { throw bad(key, "a string") }
            return v
        }
        func optionalString(_ key: String) throws(SpoolError) -> String? {
            guard let v = o[key], v != .null else { return nil }
            guard let s = v.stringValue else { throw bad(key, "a string or null") }
            return s
        }
        func strings(_ key: String) throws(SpoolError) -> [String: String] {
            guard let v = o[key], v != .null else { return [:] }
            guard case .object(let d) = v else { throw bad(key, "an object of strings") }
            var out: [String: String] = [:]
            for (k, v) in d {
                guard let s = v.stringValue else { throw bad(key, "an object of strings") }
                out[k] = s
            }
            return out
        }
        id = try int("id")
        project = try string("project")
        queue = try string("queue")
        numNodes = try int("num_nodes")
        wallTimeMinutes = try int("wall_time_min")
        filterTags = try strings("filter_tags")
        optionalParams = try strings("optional_params")
        guard let s = State(rawValue: try string("state")) else {
            throw bad("state", "one of " + State.allCases.map(\.rawValue).joined(separator: ", "))
        }
        state = s
        schedulerID = try optionalString("scheduler_id")
        if let text = try optionalString("outcome") {
            guard let value = Outcome(rawValue: text) else {
                throw bad("outcome", "one of " + Outcome.allCases.map(\.rawValue).joined(separator: ", "))
            }
            outcome = value
        }
        if let v = o["exit_code"], v != .null {
            guard let code = v.intValue else { throw bad("exit_code", "an integer or null") }
            exitCode = code
        }
        message = try optionalString("message")
        origin = try optionalString("origin") ?? origin
        createdTime = try optionalString("created_time") ?? ""
        submitTime = try optionalString("submit_time")
        if case .bool(true)? = o["submit_uncertain"] { submitUncertain = true }
        startTime = try optionalString("start_time")
        endTime = try optionalString("end_time")
        if case .array(let entries)? = o["history"] {
            for case .object(let e) in entries {
                guard let time = e["time"]?.stringValue, let state = e["state"]?.stringValue.flatMap(State.init)
                else { throw bad("history", "a list of {time, state, message}") }
                history.append(HistoryEntry(time: time, state: state, message: e["message"]?.stringValue))
            }
        }
    }
}

extension BatchJob {
    /// Checks a new batch job against the site's policy (`scheduler:` in settings.yml) and fills in the optional
    /// parameters' defaults. `active` are the site's batch jobs not yet ended. Errors say what is allowed.
    public mutating func validate(against policy: SiteSettings.Scheduler, active: [BatchJob]) throws(SpoolError) {
        let allowed = policy.allowedQueues.keys.sorted().joined(separator: ", ")
        guard let limits = policy.allowedQueues[queue] else {
            throw SpoolError(
                .usage,
                "queue '\(queue)' is not allowed on this site (allowed: \(allowed.isEmpty ? "none" : allowed);"
                    + " scheduler.allowed_queues in settings.yml)")
        }
        guard numNodes >= limits.minNodes, numNodes <= limits.maxNodes else {
            throw SpoolError(
                .usage, "\(numNodes) nodes: queue '\(queue)' allows \(limits.minNodes) to \(limits.maxNodes)")
        }
        let longest = limits.maxWallTime(nodes: numNodes)
        guard wallTimeMinutes >= 1, wallTimeMinutes <= longest else {
            let bins = limits.wallTimeFromNodes.sorted { $0.key < $1.key }.map { "\($0.value) from \($0.key) nodes" }
            throw SpoolError(
                .usage,
                "\(wallTimeMinutes) minutes: queue '\(queue)' allows 1 to \(longest) for \(numNodes) node(s)"
                    + (bins.isEmpty ? "" : " (\(limits.maxWallTimeMinutes) below \(bins.joined(separator: ", ")))"))
        }
        if !policy.allowedProjects.contains(project) {
            let projects = policy.allowedProjects.joined(separator: ", ")
            throw SpoolError(
                .usage,
                "project '\(project)' is not allowed on this site (allowed: \(projects.isEmpty ? "none" : projects);"
                    + " scheduler.allowed_projects in settings.yml)")
        }
        for key in optionalParams.keys.sorted() where policy.optionalParams[key] == nil {
            let known = policy.optionalParams.keys.sorted().joined(separator: ", ")
            throw SpoolError(
                .usage,
                "unknown parameter '\(key)' (known: \(known.isEmpty ? "none" : known);"
                    + " scheduler.optional_batch_job_params in settings.yml)")
        }
        for (key, value) in policy.optionalParams where optionalParams[key] == nil { optionalParams[key] = value }
        let words =
            [("project", project), ("queue", queue)] + optionalParams.map { ("parameter \($0.key)", $0.value) }
            + filterTags.flatMap { [("tag", $0.key), ("tag \($0.key)", $0.value)] }
        for (what, word) in words where !word.isEmpty && !CommandTemplate.isSafeWord(word) {
            throw SpoolError(
                .usage, "\(what) '\(word)' may hold only letters, digits and @%+=:,./-_ (it goes into a script)")
        }
        let queued = active.filter { $0.queue == queue && !$0.state.isFinal }.count
        if queued >= limits.maxQueuedJobs {
            throw SpoolError(
                .conflict,
                "queue '\(queue)' already has \(queued) batch jobs of this site (max_queued_jobs: "
                    + "\(limits.maxQueuedJobs)); remove one with 'balsam queue rm ID' or wait")
        }
    }
}
