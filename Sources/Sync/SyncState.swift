import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// What the site's sync remembers between rounds, in `SITE/sync/state.json` (written whole, fsynced, renamed
/// into place): the site's id on the server, how far into each event log the server has everything, and when
/// the last round succeeded or failed.
public struct SyncState: Sendable, Equatable {
    /// The site's id on the server, once registered.
    public var siteID: Int?
    /// Bytes of each `events/*.jsonl` the server holds.
    public var cursor: [String: Int] = [:]
    /// The apps as last pushed (pushed again when they change).
    public var appsDigest = ""
    /// When the last round succeeded, and what it pushed.
    public var lastSuccess: String?
    public var lastPushed = 0
    /// The last failure (cleared by a success), and when it happened.
    public var lastError: String?
    public var lastErrorTime: String?
    /// Jobs made through the server's API that this site has taken, by server id, until the server knows.
    public var adopted: [String: String] = [:]
    /// Jobs made through the API that this site refused, with the reason, until the server knows.
    public var rejected: [String: String] = [:]
    /// Apps defined through the API (in Python, with a command template) as last written here, by digest.
    public var remoteApps: [String: String] = [:]
    /// Batch jobs asked for through the API and made here, server id to site id, until the server knows.
    public var batchAdopted: [String: Int] = [:]
    /// Batch job requests refused here, with the reason, until the server knows.
    public var batchRejected: [String: String] = [:]
    /// Each batch job's record as last pushed, by site id (pushed again when it changes).
    public var batchDigests: [String: String] = [:]
    /// Users' requests carried out or refused here, by request id, until the server knows.
    public var requestsDone: [String: JSONValue] = [:]
    /// What one end refused of the other, kept until it is taken: `job ID` or `event ID` (the server refused the
    /// site's job or its events), `app NAME` (an app from the server the site cannot install); each with its
    /// code and reason. A refusal never stops the sync: the cursor moves on, and this says what was left out.
    public var refused: [String: String] = [:]
    /// Ended launcher sessions the server has (by lease name); running ones are sent every push.
    public var sessionsPushed: Set<String> = []
    /// Why the site refused a user's request, by job, still to be written into the job's data (a job under a
    /// launcher cannot be changed until it leaves it).
    public var refusalNotes: [String: String] = [:]

    /// What this site refused of its users' requests through the server (a job or batch job made through the
    /// API, a change of a job), newest last, at most `refusedHereLimit`, with when: `balsam sync status` shows
    /// them. Every such refusal goes through `refuseHere`, which also hands it to the round's log.
    public var refusedHere: [Refusal] = []
    /// A refusal of a user's request: when, of what, and why.
    public struct Refusal: Sendable, Equatable {
        public var time: String
        public var what: String
        public var reason: String
        /// As status and the state file write it.
        public var json: JSONValue {
            .object(["time": .string(time), "what": .string(what), "reason": .string(reason)])
        }
    }
    /// How many of `refusedHere` are kept.
    public static let refusedHereLimit = 100
    /// Refusals made since the round began, for the watcher's log (not saved).
    var freshRefusals: [String] = []

    /// Records a refusal of a user's request: for `balsam sync status` and, once, for the log.
    mutating func refuseHere(_ what: String, _ reason: String) {
        refusedHere.append(Refusal(time: Timestamp.now(), what: what, reason: reason))
        if refusedHere.count > SyncState.refusedHereLimit {
            refusedHere.removeFirst(refusedHere.count - SyncState.refusedHereLimit)
        }
        freshRefusals.append("\(what): \(reason)")
    }

    /// Keeps (or, with nil, forgets) the refusal under `key`; whether it is new or changed, so that the log says
    /// each once.
    @discardableResult
    mutating func refuse(_ key: String, _ text: String?) -> Bool {
        defer { refused[key] = text }
        return text != nil && refused[key] != text
    }

    /// The state file of `site`.
    public static func path(_ site: Site) -> String { site.root + "/sync/state.json" }

    /// Reads the state (empty when the site never synced).
    /// What of the site's event logs lies past `state`'s cursor (what its server does not have yet), in one
    /// listing and one `stat` per log: its bytes, and when (Unix seconds) the oldest of those lines was written
    /// (the first line past the cursor of each log, the oldest of them; nil when every log is pushed or its next
    /// line is not yet whole).
    public static func unpushed(_ site: Site, _ state: SyncState) throws(SpoolError) -> (bytes: Int, oldest: Double?) {
        var pending = 0
        var oldest: Double?
        for name in try Posix.listDirectory(site.eventsPath) where name.hasSuffix(".jsonl") {
            let path = site.eventsPath + "/" + name
            let offset = state.cursor[name] ?? 0
            let size = Int(try Posix.statIfExists(path)?.st_size ?? 0)
            guard size > offset else { continue }
            pending += size - offset
            let fd = try Posix.open(path, O_RDONLY)
            defer { Posix.close(fd) }
            var bytes = [UInt8](repeating: 0, count: min(64 << 10, size - offset))
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
            guard n > 0, let end = bytes.prefix(n).firstIndex(of: 0x0A),
                let t = (try? JSONValue.parse(bytes[..<end]))?.objectValue?["t"]?.stringValue,
                let seconds = Timestamp.seconds(t)
            else { continue }
            oldest = min(oldest ?? seconds, seconds)
        }
        return (pending, oldest)
    }

    public static func load(_ site: Site) throws(SpoolError) -> SyncState {
        let path = path(site)
        guard Posix.exists(path) else { return SyncState() }
        let value: JSONValue
        do { value = try JSONValue.parse(try Posix.readFile(path, limit: 16 << 20)) } catch let error as SpoolError {
            throw error
        } catch {
            throw SpoolError(.invalidInput, "malformed sync state: \(error)", path: path)
        }
        let o = value.objectValue ?? [:]
        var state = SyncState()
        state.siteID = o["site_id"]?.intValue
        state.cursor = (o["cursor"]?.objectValue ?? [:]).compactMapValues(\.intValue)
        state.appsDigest = o["apps_digest"]?.stringValue ?? ""
        state.lastSuccess = o["last_success"]?.stringValue
        state.lastPushed = o["last_pushed"]?.intValue ?? 0
        state.lastError = o["last_error"]?.stringValue
        state.lastErrorTime = o["last_error_time"]?.stringValue
        state.adopted = (o["adopted"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.rejected = (o["rejected"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.remoteApps = (o["remote_apps"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.batchAdopted = (o["batch_adopted"]?.objectValue ?? [:]).compactMapValues(\.intValue)
        state.batchRejected = (o["batch_rejected"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.batchDigests = (o["batch_digests"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.requestsDone = o["requests_done"]?.objectValue ?? [:]
        state.refused = (o["refused"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.sessionsPushed = Set((o["sessions_pushed"]?.arrayValue ?? []).compactMap(\.stringValue))
        state.refusalNotes = (o["refusal_notes"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        state.refusedHere = (o["refused_here"]?.arrayValue ?? []).compactMap {
            guard let e = $0.objectValue, let time = e["time"]?.stringValue, let what = e["what"]?.stringValue,
                let reason = e["reason"]?.stringValue
            else { return nil }
            return Refusal(time: time, what: what, reason: reason)
        }
        return state
    }

    /// Writes the state durably: a cursor that went back would push events twice (the server drops them), one
    /// that went forward without the server having them would lose them.
    public func save(_ site: Site) throws(SpoolError) {
        var o: [String: JSONValue] = [
            "cursor": .object(cursor.mapValues { .int($0) }), "apps_digest": .string(appsDigest),
            "last_pushed": .int(lastPushed), "adopted": .object(adopted.mapValues { .string($0) }),
            "rejected": .object(rejected.mapValues { .string($0) }),
            "remote_apps": .object(remoteApps.mapValues { .string($0) }),
            "batch_adopted": .object(batchAdopted.mapValues { .int($0) }),
            "batch_rejected": .object(batchRejected.mapValues { .string($0) }),
            "batch_digests": .object(batchDigests.mapValues { .string($0) }),
            "requests_done": .object(requestsDone), "refused": .object(refused.mapValues { .string($0) }),
            "sessions_pushed": .array(sessionsPushed.sorted().map { .string($0) }),
        ]
        if !refusalNotes.isEmpty { o["refusal_notes"] = .object(refusalNotes.mapValues { .string($0) }) }
        if !refusedHere.isEmpty { o["refused_here"] = .array(refusedHere.map(\.json)) }
        if let siteID { o["site_id"] = .int(siteID) }
        if let lastSuccess { o["last_success"] = .string(lastSuccess) }
        if let lastError { o["last_error"] = .string(lastError) }
        if let lastErrorTime { o["last_error_time"] = .string(lastErrorTime) }
        let path = SyncState.path(site)
        try Posix.makeDirectories(Posix.parentPath(path))
        try Posix.replaceFile(path, Array((JSONValue.object(o).serialized() + "\n").utf8), sync: true)
    }
}
