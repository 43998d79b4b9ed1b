/// A job's `state` file: its history of transitions, one JSON line each, oldest first; the last complete line is
/// the current state.
///
/// The file is only ever appended to. Replacing a small file by `rename(2)` costs a new inode, a freed block and,
/// on ext4, a flush of the new data (measured here: 157 µs a replacement against 6 µs an append), and a job's
/// state changes many times. An append is also its own commit point: a reader (or recovery after a crash) that
/// finds a last line cut short ignores it (a proper prefix of a JSON object never parses), and the writer ends any
/// such fragment with a newline before appending, so it stays a line of its own.
///
/// Each line: `{"state":..., "time":..., "actor":..., "reason":..., "attempts":..., "error_retries":...,
/// "timeout_retries":..., "return_code":..., "interrupted":true}`; counters appear once non-zero, `return_code`
/// after a run ended, `interrupted` on a `RUN_TIMEOUT` that was the launcher's interruption.
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
    /// The exit status of the job's last run (128 + a signal that ended it), once a run has ended.
    public var returnCode: Int?
    /// Whether the current `RUN_TIMEOUT` is an interruption: the launcher was stopped by its operator or its
    /// batch system (a signal), not the job's time. balsam-watch then runs the job again without counting a retry.
    /// Written `"interrupted":true` on the current state's line; gone with the next transition.
    public var interrupted = false
    /// Whether the file this was read from ends with a newline (no line cut short at its end): the next append
    /// then needs no look at the file first. Not part of the record's value.
    public var fileEndsWithNewline = false

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
        record.interrupted = false
        if next == .running { record.attempts += 1 }
        return record
    }

    /// The record after several legal transitions, with the event of each (`eventData` plus the step's
    /// reason) and the state-file lines of all but the last step (the caller may still change the last).
    public func moved(
        through steps: [(state: JobState, reason: String?)], jobID: String, actor: String,
        eventData: [String: JSONValue] = [:], time: String? = nil
    ) throws(SpoolError) -> (record: StateRecord, events: [Event], lines: [UInt8]) {
        var record = self
        var events: [Event] = []
        var lines: [UInt8] = []
        for (i, (state, reason)) in steps.enumerated() {
            let before = record.state
            record = try record.moved(to: state, actor: actor, reason: reason, time: time ?? Timestamp.now())
            var data = eventData
            if let reason { data["reason"] = .string(reason) }
            events.append(Event(time: record.since, jobID: jobID, from: before, to: state, actor: actor, data: data))
            if i < steps.count - 1 { lines += record.line() }
        }
        return (record, events, lines)
    }

    /// The current state as one line (with its newline).
    public func line() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(160)
        write(Entry(state: state, time: since, actor: actor, reason: reason), counters: true, to: &out)
        return out
    }

    private func write(_ entry: Entry, counters: Bool, to out: inout [UInt8]) {
        out.append(contentsOf: "{\"state\":".utf8)
        JSONValue.writeString(entry.state.rawValue, to: &out)
        out.append(contentsOf: ",\"time\":".utf8)
        JSONValue.writeString(entry.time, to: &out)
        out.append(contentsOf: ",\"actor\":".utf8)
        JSONValue.writeString(entry.actor, to: &out)
        if let reason = entry.reason {
            out.append(contentsOf: ",\"reason\":".utf8)
            JSONValue.writeString(reason, to: &out)
        }
        if counters {
            if attempts > 0 || errorRetries > 0 || timeoutRetries > 0 {
                out.append(contentsOf: ",\"attempts\":\(attempts),\"error_retries\":\(errorRetries)".utf8)
                out.append(contentsOf: ",\"timeout_retries\":\(timeoutRetries)".utf8)
            }
            if let returnCode { out.append(contentsOf: ",\"return_code\":\(returnCode)".utf8) }
            if interrupted { out.append(contentsOf: ",\"interrupted\":true".utf8) }
        }
        out.append(contentsOf: "}\n".utf8)
    }

    /// A whole new file: every history entry a line, the last with the counters (for a record made here:
    /// a new job, a job's record started over).
    public func fileBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(160 * history.count)
        for entry in history.dropLast() { write(entry, counters: false, to: &out) }
        out += line()
        return out
    }

    /// Parses a `state` file: every line that is a JSON object with a valid state is a transition; anything else
    /// (a line cut short by a crash, an empty line) is skipped. A file without one valid line is an error.
    public init(bytes: [UInt8], path: String) throws(SpoolError) {
        var entries: [Entry] = []
        var last: [String: JSONValue]?
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.endIndex
            defer { start = end + 1 }
            guard end > start, let value = try? JSONValue.parse(bytes[start..<end]), case .object(let o) = value,
                let name = o["state"]?.stringValue, let state = JobState(rawValue: name)
            else { continue }
            if case .array(let items)? = o["history"] {
                // The first format: one object holding the history.
                for case .object(let e) in items {
                    guard let s = e["state"]?.stringValue.flatMap(JobState.init(rawValue:)) else { continue }
                    entries.append(
                        Entry(
                            state: s, time: e["time"]?.stringValue ?? "", actor: e["actor"]?.stringValue ?? "",
                            reason: e["reason"]?.stringValue))
                }
                var current = o
                current["time"] = o["since"]
                last = current
                continue
            }
            entries.append(
                Entry(
                    state: state, time: o["time"]?.stringValue ?? "", actor: o["actor"]?.stringValue ?? "",
                    reason: o["reason"]?.stringValue))
            last = o
        }
        guard let o = last, let state = o["state"]?.stringValue.flatMap(JobState.init(rawValue:)) else {
            throw SpoolError(.invalidInput, "state file has no valid line", path: path)
        }
        self.state = state
        since = o["time"]?.stringValue ?? ""
        actor = o["actor"]?.stringValue ?? ""
        reason = o["reason"]?.stringValue
        history = entries
        attempts = o["attempts"]?.intValue ?? 0
        errorRetries = o["error_retries"]?.intValue ?? 0
        timeoutRetries = o["timeout_retries"]?.intValue ?? 0
        returnCode = o["return_code"]?.intValue
        interrupted = o["interrupted"] == .bool(true)
        fileEndsWithNewline = bytes.last == 0x0A
    }

    public static func == (a: StateRecord, b: StateRecord) -> Bool {
        a.state == b.state && a.since == b.since && a.actor == b.actor && a.reason == b.reason
            && a.history == b.history && a.attempts == b.attempts && a.errorRetries == b.errorRetries
            && a.timeoutRetries == b.timeoutRetries && a.returnCode == b.returnCode
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
