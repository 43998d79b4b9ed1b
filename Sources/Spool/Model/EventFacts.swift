/// What an event says beyond its move, typed: a run's results (its exit status, a Python app's pickled return
/// value or exception, the last lines of its output), the batch job and share of nodes of a run's start, the
/// outcomes of transfers, a hook's change of the job's data, and a reason. The launcher, the watcher and the
/// hooks write these; the sync carries them; the server and the reports read them, each by these fields, never
/// by a key of their own. In an event line they are members of its `data` object, under the names declared here
/// once (the original's where it has them); everything else in `data` stays in `other`.
public struct EventFacts: Sendable, Equatable {
    /// Why (a failure's reason, a retry's cause).
    public var reason: String?
    /// The run's exit status.
    public var returnCode: Int?
    /// A Python app's return value: base64 of its pickle (what the original client's `job.result()` loads).
    public var returnValue: String?
    /// A Python app's exception, or one saying why a shell app's run failed: base64 of its pickle.
    public var exception: String?
    /// The last lines of a failed run's output.
    public var tail: String?
    /// A run stopped by a signal to its launcher (not too long: runs again without spending a retry).
    public var interrupted = false
    /// The batch job (the site's id) whose launcher started the run.
    public var batchJob: Int?
    /// The job's share of nodes while it runs (the original's RUNNING event `num_nodes`).
    public var share: Double?
    /// The outcomes of the job's transfer items that this move followed.
    public var transfers: [JSONValue]?
    /// A hook's change of the job's data (null removes a key).
    public var dataChange: [String: JSONValue]?
    /// Everything else (the host and nodes of a run, its GPUs, an output cut, the actor on the wire).
    public var other: [String: JSONValue] = [:]

    /// The names in an event's `data`.
    public enum Key: String, CaseIterable, Sendable {
        case reason
        case returnCode = "return_code"
        case returnValue = "serialized_return_value"
        case exception = "serialized_exception"
        case tail
        case interrupted
        case batchJob = "batch_job"
        case share = "num_nodes"
        case transfers
        case dataChange = "data"
    }

    public init(
        reason: String? = nil, returnCode: Int? = nil, returnValue: String? = nil, exception: String? = nil,
        tail: String? = nil
    ) {
        self.reason = reason
        self.returnCode = returnCode
        self.returnValue = returnValue
        self.exception = exception
        self.tail = tail
    }

    /// The facts of an event's `data` object. A member of the wrong kind is left in `other`, as it came.
    public init(data: [String: JSONValue]) {
        var rest = data
        func take(_ key: Key) -> JSONValue? { rest.removeValue(forKey: key.rawValue) }
        func keep(_ key: Key, _ value: JSONValue?) { if let value { rest[key.rawValue] = value } }
        if let v = take(.reason) { if let s = v.stringValue { reason = s } else { keep(.reason, v) } }
        if let v = take(.returnCode) { if let n = v.intValue { returnCode = n } else { keep(.returnCode, v) } }
        if let v = take(.returnValue) { if let s = v.stringValue { returnValue = s } else { keep(.returnValue, v) } }
        if let v = take(.exception) { if let s = v.stringValue { exception = s } else { keep(.exception, v) } }
        if let v = take(.tail) { if let s = v.stringValue { tail = s } else { keep(.tail, v) } }
        if let v = take(.interrupted) { if v == .bool(true) { interrupted = true } else { keep(.interrupted, v) } }
        if let v = take(.batchJob) { if let n = v.intValue { batchJob = n } else { keep(.batchJob, v) } }
        if let v = take(.share) { if let d = v.doubleValue { share = d } else { keep(.share, v) } }
        if let v = take(.transfers) { if let a = v.arrayValue { transfers = a } else { keep(.transfers, v) } }
        if let v = take(.dataChange) { if let o = v.objectValue { dataChange = o } else { keep(.dataChange, v) } }
        other = rest
    }

    /// As an event's `data` object.
    public var data: [String: JSONValue] {
        var o = other
        func put(_ key: Key, _ value: JSONValue?) { if let value { o[key.rawValue] = value } }
        put(.reason, reason.map(JSONValue.string))
        put(.returnCode, returnCode.map(JSONValue.int))
        put(.returnValue, returnValue.map(JSONValue.string))
        put(.exception, exception.map(JSONValue.string))
        put(.tail, tail.map(JSONValue.string))
        put(.interrupted, interrupted ? .bool(true) : nil)
        put(.batchJob, batchJob.map(JSONValue.int))
        put(.share, share.map(JSONValue.double))
        put(.transfers, transfers.map(JSONValue.array))
        put(.dataChange, dataChange.map(JSONValue.object))
        return o
    }

    /// Whether the run left a result (a return value or an exception) for the job's record.
    public var hasResult: Bool { returnValue != nil || exception != nil }
}

extension Event {
    /// The event's facts, typed.
    public var facts: EventFacts {
        get { EventFacts(data: data) }
        set { data = newValue.data }
    }
}
