/// The contents of a job's `state` file: the current state first, when it was entered, by whom and why,
/// then the job's history of transitions (newest last, at most ``historyLimit`` entries; the event log
/// keeps them all).
public struct StateRecord: Sendable, Equatable {
    /// One past transition.
    public struct Entry: Sendable, Equatable {
        /// The state entered.
        public var state: JobState
        /// When.
        public var time: String
        /// The program that made the change (`balsam-submit`, `balsam-watch`, ...).
        public var actor: String
        /// Why, when there is more to say than the state name.
        public var reason: String?
    }

    /// Entries kept in the file; older ones are only in `SITE/events/`.
    public static let historyLimit = 100

    /// The current state.
    public var state: JobState
    /// When the job entered it.
    public var since: String
    /// Who moved the job into it.
    public var actor: String
    /// Why, if known.
    public var reason: String?
    /// Every transition so far, the current one last.
    public var history: [Entry]
    /// Runs started (transitions to `RUNNING`).
    public var attempts = 0
    /// Retries spent after `RUN_ERROR`, counted against the app's `on_error` policy.
    public var errorRetries = 0
    /// Retries spent after `RUN_TIMEOUT`, counted against the app's `on_timeout` policy.
    public var timeoutRetries = 0

    /// A first record, for a newly submitted job.
    public init(initial state: JobState, actor: String, reason: String? = nil, time: String = Timestamp.now()) {
        self.state = state
        self.since = time
        self.actor = actor
        self.reason = reason
        self.history = [Entry(state: state, time: time, actor: actor, reason: reason)]
    }

    /// The record after a legal transition; throws (naming both states) if it is not legal.
    public func moved(to next: JobState, actor: String, reason: String?, time: String = Timestamp.now())
        throws(SpoolError) -> StateRecord
    {
        try state.validateTransition(to: next)
        var record = self
        record.state = next
        record.since = time
        record.actor = actor
        record.reason = reason
        record.history.append(Entry(state: next, time: time, actor: actor, reason: reason))
        if next == .running { record.attempts += 1 }
        if record.history.count > StateRecord.historyLimit {
            record.history.removeFirst(record.history.count - StateRecord.historyLimit)
        }
        return record
    }

    /// File bytes: one JSON object, `state` first so `head -c 40 state` shows it.
    public func fileBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(160)
        out.append(contentsOf: "{\"state\":".utf8)
        JSONValue.writeString(state.rawValue, to: &out)
        out.append(contentsOf: ",\"since\":".utf8)
        JSONValue.writeString(since, to: &out)
        out.append(contentsOf: ",\"actor\":".utf8)
        JSONValue.writeString(actor, to: &out)
        if let reason {
            out.append(contentsOf: ",\"reason\":".utf8)
            JSONValue.writeString(reason, to: &out)
        }
        if attempts > 0 || errorRetries > 0 || timeoutRetries > 0 {
            out.append(contentsOf: ",\"attempts\":\(attempts),\"error_retries\":\(errorRetries)".utf8)
            out.append(contentsOf: ",\"timeout_retries\":\(timeoutRetries)".utf8)
        }
        out.append(contentsOf: ",\"history\":[".utf8)
        for (i, entry) in history.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            var o: [String: JSONValue] = [
                "state": .string(entry.state.rawValue), "time": .string(entry.time), "actor": .string(entry.actor),
            ]
            if let reason = entry.reason { o["reason"] = .string(reason) }
            JSONValue.object(o).write(to: &out)
        }
        out.append(contentsOf: "]}\n".utf8)
        return out
    }

    /// Parses a `state` file.
    public init(bytes: [UInt8], path: String) throws(SpoolError) {
        let value: JSONValue
        do { value = try JSONValue.parse(bytes) } catch {
            throw SpoolError(.invalidInput, "malformed state file: \(error)", path: path)
        }
        func parseState(_ v: JSONValue?) throws(SpoolError) -> JobState {
            guard let name = v?.stringValue, let state = JobState(rawValue: name) else {
                throw SpoolError(.invalidInput, "state file has no valid 'state'", path: path)
            }
            return state
        }
        guard case .object(let o) = value else {
            throw SpoolError(.invalidInput, "state file is not a JSON object", path: path)
        }
        state = try parseState(o["state"])
        since = o["since"]?.stringValue ?? ""
        actor = o["actor"]?.stringValue ?? ""
        reason = o["reason"]?.stringValue
        var entries: [Entry] = []
        if case .array(let items)? = o["history"] {
            for item in items {
                guard case .object(let e) = item else { continue }
                entries.append(
                    Entry(
                        state: try parseState(e["state"]), time: e["time"]?.stringValue ?? "",
                        actor: e["actor"]?.stringValue ?? "", reason: e["reason"]?.stringValue))
            }
        }
        history = entries
        attempts = o["attempts"]?.intValue ?? 0
        errorRetries = o["error_retries"]?.intValue ?? 0
        timeoutRetries = o["timeout_retries"]?.intValue ?? 0
    }
}

/// One line of an event log: a job changed state.
public struct Event: Sendable, Equatable {
    /// When.
    public var time: String
    /// Which job.
    public var jobID: String
    /// The state it left (`CREATED` for a new job).
    public var from: JobState
    /// The state it entered.
    public var to: JobState
    /// Which program did it.
    public var actor: String
    /// Anything more (a reason, a return code).
    public var data: [String: JSONValue]

    /// Makes an event.
    public init(
        time: String = Timestamp.now(), jobID: String, from: JobState, to: JobState, actor: String,
        data: [String: JSONValue] = [:]
    ) {
        self.time = time
        self.jobID = jobID
        self.from = from
        self.to = to
        self.actor = actor
        self.data = data
    }

    /// Appends the event as one JSON line.
    public func write(to out: inout [UInt8]) {
        JSONValue.object([
            "t": .string(time), "job": .string(jobID), "from": .string(from.rawValue), "to": .string(to.rawValue),
            "actor": .string(actor), "data": .object(data),
        ]).write(to: &out)
        out.append(0x0A)
    }
}
