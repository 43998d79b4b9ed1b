/// A launcher's time on its nodes, for the utilization reports: the nodes a launcher started by hand (no batch
/// job of the site named it) held while it ran, which no batch job record shows. One line of
/// `log/launchers.jsonl` per ended lease, written by its launcher as it leaves or by the watcher that reaped it:
/// `{"lease", "nodes", "start", "end", "batch_job"}`; a running launcher's session is read from its lease.
public struct LauncherSession: Sendable, Equatable {
    /// The lease's name.
    public var lease: String
    /// Nodes (launcher ranks).
    public var nodes: Int
    /// When its lease was made.
    public var start: String
    /// When it ended (nil: it still runs).
    public var end: String?
    /// The site's batch job it ran in (`balsam-launcher --batch-job`), nil for one started by hand.
    public var batchJob: Int?

    /// The lease info key for the batch job.
    public static let batchJobKey = "batch_job_id"

    public init(lease: String, nodes: Int, start: String, end: String?, batchJob: Int?) {
        self.lease = lease
        self.nodes = nodes
        self.start = start
        self.end = end
        self.batchJob = batchJob
    }

    /// Where the site keeps ended sessions.
    public static func logPath(_ site: Site) -> String { site.logPath + "/launchers.jsonl" }

    /// Appends this (ended) session to the site's log: one line, one write(2).
    public func record(_ site: Site) throws(SpoolError) {
        var o: [String: JSONValue] = [
            "lease": .string(lease), "nodes": .int(nodes), "start": .string(start),
            "end": end.map(JSONValue.string) ?? .null,
        ]
        if let batchJob { o["batch_job"] = .int(batchJob) }
        let path = LauncherSession.logPath(site)
        if !Posix.exists(path) {
            try Posix.makeDirectories(site.logPath)
            try? Posix.createFile(path, [], sync: false)  // EEXIST: another launcher made it first
        }
        try Posix.appendLines(path, Array((JSONValue.object(o).serialized() + "\n").utf8), sync: false)
    }

    /// Every session of the site: the ended ones from its log (a line that does not parse is skipped), then
    /// those of the leases there now (a lease already logged by its reaper is not counted twice).
    public static func all(_ site: Site) throws(SpoolError) -> [LauncherSession] {
        var sessions: [LauncherSession] = []
        var logged = Set<String>()
        let bytes = (try? Posix.readFile(logPath(site), limit: 1 << 28)) ?? []
        for line in bytes.split(separator: 0x0A) {
            guard let o = (try? JSONValue.parse(Array(line)))?.objectValue, let lease = o["lease"]?.stringValue,
                let start = o["start"]?.stringValue
            else { continue }
            guard logged.insert(lease).inserted else { continue }  // a reaper that logged it twice
            sessions.append(
                LauncherSession(
                    lease: lease, nodes: o["nodes"]?.intValue ?? 1, start: start, end: o["end"]?.stringValue,
                    batchJob: o["batch_job"]?.intValue))
        }
        for lease in try Lease.all(site) where !logged.contains(lease.name) {
            if let session = lease.session(end: nil) { sessions.append(session) }
        }
        return sessions
    }
}
