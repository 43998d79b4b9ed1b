#if canImport(Glibc)
    import Glibc
#endif

/// Reports from a site's event logs and batch-job records, never from its job directories: recent failures,
/// throughput (completions over time) and node utilization against the nodes batch jobs held.
///
/// The logs are mapped and scanned in pieces on every core (`EventScan`); each line's state is compared as bytes
/// at its end before anything else is read, and only the lines a report keeps are parsed whole.
public struct Reports {
    public let site: Site

    public init(site: Site) { self.site = site }

    // MARK: - Throughput

    /// Events into `state` since `since`, counted in bins of `bin` seconds (automatic when nil).
    public func throughput(state: String = "JOB_FINISHED", since: Double? = nil, bin: Double? = nil)
        throws(SpoolError) -> ReportSeries.Throughput
    {
        let wanted = Array(state.utf8)
        let floor = since ?? -Double.infinity
        let parts = try EventScan.pieces(site.eventsPath) { piece -> [Double] in
            var times: [Double] = []
            piece.lines { line in
                guard let (to, at) = line.value(EventLine.to, before: line.end), line.equals(to, wanted),
                    let (t, _) = line.value(EventLine.time, before: at), let time = line.seconds(t), time >= floor
                else { return }
                times.append(time)
            }
            return times
        }
        return try ReportSeries.throughput(times: Array(parts.joined()), bin: bin)
    }

    // MARK: - Failures

    public struct Failure: Sendable {
        public var job: String
        /// The job's latest failure state.
        public var state: String
        public var time: Double
        public var timestamp: String
        /// The latest event's data, with the run's reason, exit status and output tail when a later FAILED
        /// ("no retries left") has none of its own: `reason` is then "exit status 3; no retries left".
        public var data: [String: JSONValue]
        public var workdir: String?
        public var app: String?
        public var tags: [String: String]
        /// Runs that ended RUN_ERROR or RUN_TIMEOUT (in the events scanned).
        public var attempts: Int
    }

    /// One row per job among the latest RUN_ERROR, RUN_TIMEOUT and FAILED events, newest first, at most `limit`
    /// jobs of `app` with `tags` (looked up only for the events kept): its latest failure, its failed runs, and
    /// the last run's reason and output.
    public func failures(since: Double? = nil, app: String? = nil, tags: [String: String] = [:], limit: Int = 20)
        throws(SpoolError) -> [Failure]
    {
        let wanted = ["RUN_ERROR", "RUN_TIMEOUT", "FAILED"].map { Array($0.utf8) }
        let floor = since ?? -Double.infinity
        let failed = Array("FAILED".utf8)
        let parts = try EventScan.pieces(site.eventsPath) { piece -> [(Double, Bool, String, [UInt8])] in
            var found: [(Double, Bool, String, [UInt8])] = []
            piece.lines { line in
                // The state compared as bytes first: only the failures' lines are read further.
                guard let (to, at) = line.value(EventLine.to, before: line.end),
                    wanted.contains(where: { line.equals(to, $0) }),
                    let (t, tAt) = line.value(EventLine.time, before: at), let time = line.seconds(t), time >= floor,
                    let (job, _) = line.value(EventLine.job, before: tAt)
                else { return }
                found.append((time, line.equals(to, failed), line.string(job), line.bytes))
            }
            return found
        }
        var found = Array(parts.joined())
        // Newest first; in the same millisecond a FAILED is after the run's end that led to it.
        found.sort { $0.0 != $1.0 ? $0.0 > $1.0 : $0.1 && !$1.1 }
        var result: [Failure] = []
        var position: [String: Int] = [:]
        var skipped = Set<String>()
        var index = 0
        while index < found.count {
            let chunk = found[index..<min(found.count, index + limit * 4)]
            index += chunk.count
            let new = Set(chunk.map(\.2)).subtracting(position.keys).subtracting(skipped)
            let jobs =
                result.count < limit && !new.isEmpty
                ? Dictionary((try Query(site: site).lookup(new)).map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
                : [:]
            for (time, _, job, line) in chunk {
                if let i = position[job] {
                    // An older event of a job already listed: its runs, and what the latest one lacks.
                    let o = (try? JSONValue.parse(line))?.objectValue ?? [:]
                    var (data, attempts) = (result[i].data, result[i].attempts)
                    foldOlderFailure(
                        into: &data, attempts: &attempts, state: o["to"]?.stringValue ?? "",
                        from: o["from"]?.stringValue ?? "", older: o["data"]?.objectValue ?? [:])
                    (result[i].data, result[i].attempts) = (data, attempts)
                    continue
                }
                guard result.count < limit, !skipped.contains(job) else { continue }
                let listing = jobs[job]
                // One rule with the server's (`ReportRoutes.failures`): a job removed since, or finished since
                // (retried), is no failure to report.
                if listing == nil || listing?.state == .jobFinished || (app != nil && listing?.app != app)
                    || (!tags.isEmpty && listing?.job?.hasTags(tags) != true)
                {
                    skipped.insert(job)
                    continue
                }
                let o = (try? JSONValue.parse(line))?.objectValue ?? [:]
                let state = o["to"]?.stringValue ?? ""
                position[job] = result.count
                result.append(
                    Failure(
                        job: job, state: state, time: time, timestamp: o["t"]?.stringValue ?? "",
                        data: o["data"]?.objectValue ?? [:], workdir: listing?.workdir, app: listing?.app,
                        tags: listing?.job?.tags ?? [:],
                        attempts: endsARun(state: state, from: o["from"]?.stringValue ?? "") ? 1 : 0))
            }
        }
        return result
    }

    // MARK: - Utilization

    /// Nodes busy over time from the runs in the event logs (RUNNING events with their `num_nodes` share, 1
    /// where an older launcher wrote none, and `batch_job`; the events that took the jobs out of RUNNING) against
    /// the nodes the site's batch jobs held from their start to their end.
    public func utilization(batchJob: Int? = nil, bin: Double? = nil, steps: Bool = false) throws(SpoolError)
        -> ReportSeries.Utilization
    {
        var held: [ReportSeries.Held] = []
        for job in try BatchJobStore(site: site).all().jobs {
            guard let start = job.startTime.flatMap(Timestamp.seconds) else { continue }
            held.append(
                ReportSeries.Held(
                    id: job.id, nodes: job.numNodes, start: start, end: job.endTime.flatMap(Timestamp.seconds)))
        }
        // Launchers started by hand hold their nodes too, from their lease's start to its end.
        let launchers = try LauncherSession.all(site).enumerated().compactMap { k, s -> ReportSeries.Held? in
            guard s.batchJob == nil, let start = Timestamp.seconds(s.start) else { return nil }
            return ReportSeries.Held(id: -1 - k, nodes: s.nodes, start: start, end: s.end.flatMap(Timestamp.seconds))
        }
        return try ReportSeries.utilization(
            runs: try runs(), held: held, launchers: launchers, batchJob: batchJob, bin: bin,
            now: Timestamp.nowSeconds(), steps: steps)
    }

    /// Every run in the event logs. Each piece pairs the starts and ends it holds; what is left (a run cut by a
    /// piece's edge, or started and ended in different hosts' logs) is paired after, in file and line order.
    public func runs() throws(SpoolError) -> [ReportSeries.Run] {
        let parts = try EventScan.pieces(site.eventsPath) { piece -> RunPiece in
            var part = RunPiece()
            let running = Array("RUNNING".utf8)
            // The facts' own names (`EventFacts.Key`), found in the line's bytes without parsing it.
            let numNodes = Array("\"\(EventFacts.Key.share.rawValue)\":".utf8)
            let batchJob = Array("\"\(EventFacts.Key.batchJob.rawValue)\":".utf8)
            piece.lines { line in
                // Only runs' starts and ends matter: `to`, then `from`, compared as bytes before anything is made.
                guard let (to, toAt) = line.value(EventLine.to, before: line.end),
                    let (t, tAt) = line.value(EventLine.time, before: toAt),
                    let (job, jobAt) = line.value(EventLine.job, before: tAt)
                else { return }
                if line.equals(to, running) {
                    guard let time = line.seconds(t) else { return }
                    let start = ReportSeries.Run(
                        start: time, end: nil, share: line.number(numNodes) ?? 1,
                        batchJob: line.number(batchJob).map { Int(saturating: $0) })
                    if var earlier = part.open.updateValue(start, forKey: JobKey(line, job)) {
                        // Started again with no end seen (another host's log has it): it ended by then.
                        earlier.end = time
                        part.runs.append(earlier)
                    }
                } else if let (from, _) = line.value(EventLine.from, before: jobAt), line.equals(from, running),
                    let time = line.seconds(t)
                {
                    let key = JobKey(line, job)
                    if var run = part.open.removeValue(forKey: key) {
                        run.end = time
                        part.runs.append(run)
                    } else {
                        part.ends.append((key, time))
                    }
                }
            }
            return part
        }
        var runs: [ReportSeries.Run] = []
        var open: [JobKey: ReportSeries.Run] = [:]
        var unmatched: [JobKey: [Double]] = [:]
        for part in parts {
            runs.append(contentsOf: part.runs)
            for (key, time) in part.ends {
                if var run = open.removeValue(forKey: key), run.start <= time {
                    run.end = time
                    runs.append(run)
                } else {
                    unmatched[key, default: []].append(time)
                }
            }
            for (key, run) in part.open {
                if var earlier = open.updateValue(run, forKey: key) {
                    earlier.end = run.start
                    runs.append(earlier)
                }
            }
        }
        // Starts whose end came earlier in the scan (another host's log): the first end after the start.
        for (key, var run) in open {
            if let end = unmatched[key]?.filter({ $0 >= run.start }).min() { run.end = end }
            runs.append(run)
        }
        return runs
    }

    struct RunPiece {
        var runs: [ReportSeries.Run] = []
        var open: [JobKey: ReportSeries.Run] = [:]
        var ends: [(JobKey, Double)] = []
    }

    /// A job id as a small value to hash: its first 32 bytes as four words and its length (job ids are 26-byte
    /// ULIDs; a longer one has its remaining bytes folded into the last word).
    struct JobKey: Hashable {
        var a: UInt64 = 0
        var b: UInt64 = 0
        var c: UInt64 = 0
        var d: UInt64 = 0
        var count: Int

        init(_ line: EventLine, _ range: Range<Int>) {
            count = range.count
            var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            withUnsafeMutableBytes(of: &words) { raw in
                let n = min(32, range.count)
                raw.copyMemory(from: UnsafeRawBufferPointer(start: line.base + range.lowerBound, count: n))
                for k in 32..<max(32, range.count) {
                    raw[24 + k % 8] = raw[24 + k % 8] &* 31 &+ line.base[range.lowerBound + k]
                }
            }
            (a, b, c, d) = words
        }
    }
}
