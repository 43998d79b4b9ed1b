#if canImport(Glibc)
    import Glibc
#endif

/// Reports from a site's event logs and batch-job records, never from its job directories: recent failures,
/// throughput (completions over time) and node utilization against the nodes batch jobs held.
///
/// The event logs are read with a scanner that takes each line's last four keys from its end (`from`, `job`, `t`,
/// `to`: the writer sorts keys, and `data` comes before them, so nothing in it can be mistaken for them), without
/// parsing the line as JSON; only the lines a report keeps are parsed whole.
public struct Reports {
    public let site: Site

    public init(site: Site) { self.site = site }

    /// One event as the scanner sees it.
    public struct Event: Sendable {
        public var job: String
        public var from: String
        public var to: String
        /// Seconds since the epoch.
        public var time: Double
        /// The whole line, for the few a report shows.
        public var line: ArraySlice<UInt8>
    }

    /// Calls `visit` with every event of every log (oldest file first, lines in order).
    public func scan(_ visit: (Event) -> Void) throws(SpoolError) {
        try scanLines { line in
            if let event = Reports.parse(line) { visit(event) }
        }
    }

    /// Calls `visit` with every line of every log, unparsed.
    func scanLines(_ visit: (ArraySlice<UInt8>) -> Void) throws(SpoolError) {
        for name in try Posix.listDirectory(site.eventsPath).filter({ $0.hasSuffix(".jsonl") }).sorted() {
            let bytes = try Posix.readFile(site.eventsPath + "/" + name, limit: Int.max)
            var start = 0
            while start < bytes.count {
                let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.count
                visit(bytes[start..<end])
                start = end + 1
            }
        }
    }

    /// Where the value of `"key":"..."` is, searched backwards from `end`, and where its key starts.
    static func valueRange(_ key: [UInt8], in line: ArraySlice<UInt8>, before end: Int) -> (Range<Int>, Int)? {
        var i = end - key.count
        let first = key[0]
        while i >= line.startIndex {
            if line[i] == first && line[i..<(i + key.count)].elementsEqual(key) {
                let from = i + key.count
                var j = from
                while j < line.endIndex && line[j] != 0x22 { j += 1 }
                return (from..<j, i)
            }
            i -= 1
        }
        return nil
    }

    /// The value of `"key":"..."` searched backwards from `end`; the value and where its key starts.
    static func field(_ key: [UInt8], in line: ArraySlice<UInt8>, before end: Int) -> (String, Int)? {
        guard let (range, at) = valueRange(key, in: line, before: end) else { return nil }
        return (String(decoding: line[range], as: UTF8.self), at)
    }

    static let toKey = Array(#""to":""#.utf8)
    static let timeKey = Array(#""t":""#.utf8)
    static let jobKey = Array(#""job":""#.utf8)
    static let fromKey = Array(#""from":""#.utf8)

    static func parse(_ line: ArraySlice<UInt8>) -> Event? {
        guard let (to, toAt) = field(toKey, in: line, before: line.endIndex),
            let (t, tAt) = field(timeKey, in: line, before: toAt),
            let (job, jobAt) = field(jobKey, in: line, before: tAt),
            let (from, _) = field(fromKey, in: line, before: jobAt),
            let time = seconds(t)
        else { return nil }
        return Event(job: job, from: from, to: to, time: time, line: line)
    }

    /// `2026-11-29T12:55:50.350Z` as seconds since the epoch (UTC), without a calendar library.
    public static func seconds(_ text: String) -> Double? { seconds(bytes: ArraySlice(text.utf8)) }

    static func seconds(bytes: ArraySlice<UInt8>) -> Double? {
        let b = Array(bytes)
        guard b.count >= 20 else { return nil }
        func n(_ from: Int, _ count: Int) -> Int? {
            var v = 0
            for k in from..<(from + count) {
                guard b[k] >= 0x30 && b[k] <= 0x39 else { return nil }
                v = v * 10 + Int(b[k] - 0x30)
            }
            return v
        }
        guard let y = n(0, 4), let mo = n(5, 2), let d = n(8, 2), let h = n(11, 2), let mi = n(14, 2), let s = n(17, 2)
        else { return nil }
        var fraction = 0.0
        if b.count > 20 && b[19] == 0x2E {
            var scale = 0.1
            var k = 20
            while k < b.count, b[k] >= 0x30 && b[k] <= 0x39 {
                fraction += Double(b[k] - 0x30) * scale
                scale /= 10
                k += 1
            }
        }
        // Days from the civil date (Howard Hinnant's algorithm).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Double(days * 86_400 + h * 3600 + mi * 60 + s) + fraction
    }

    // MARK: - Throughput

    public struct Throughput: Sendable {
        /// Start of each bin (seconds since the epoch) and the events in it.
        public var bins: [(start: Double, count: Int)]
        public var total: Int
        /// Events per second from the first to the last.
        public var rate: Double
    }

    /// Events into `state` since `since`, counted in bins of `bin` seconds.
    public func throughput(state: String = "JOB_FINISHED", since: Double? = nil, bin: Double = 10) throws(SpoolError)
        -> Throughput
    {
        var times: [Double] = []
        let wanted = Array(state.utf8)
        // Only the `to` value is compared for every line; the time is read for the lines that match.
        try scanLines { line in
            guard let (to, at) = Reports.valueRange(Reports.toKey, in: line, before: line.endIndex),
                line[to].elementsEqual(wanted),
                let (t, _) = Reports.valueRange(Reports.timeKey, in: line, before: at),
                let time = Reports.seconds(bytes: line[t]), time >= (since ?? 0)
            else { return }
            times.append(time)
        }
        times.sort()
        guard let first = times.first, let last = times.last else { return Throughput(bins: [], total: 0, rate: 0) }
        let origin = (first / bin).rounded(.down) * bin
        var counts = [Int](repeating: 0, count: Int((last - origin) / bin) + 1)
        for t in times { counts[Int((t - origin) / bin)] += 1 }
        let span = last - first
        return Throughput(
            bins: counts.enumerated().map { (origin + Double($0.offset) * bin, $0.element) }, total: times.count,
            rate: span > 0 ? Double(times.count) / span : Double(times.count))
    }

    // MARK: - Failures

    public struct Failure: Sendable {
        public var job: String
        public var state: String
        public var time: Double
        public var timestamp: String
        public var data: [String: JSONValue]
        public var workdir: String?
        public var app: String?
        public var tags: [String: String]
    }

    /// The latest RUN_ERROR, RUN_TIMEOUT and FAILED events, newest first, at most `limit`, of jobs of `app` with
    /// `tags` (looked up only for the events kept).
    public func failures(since: Double? = nil, app: String? = nil, tags: [String: String] = [:], limit: Int = 20)
        throws(SpoolError) -> [Failure]
    {
        var found: [Event] = []
        let wanted = ["RUN_ERROR", "RUN_TIMEOUT", "FAILED"].map { Array($0.utf8) }
        try scanLines { line in
            // The state compared as bytes first: only the failures' lines are read whole.
            guard let (to, _) = Reports.valueRange(Reports.toKey, in: line, before: line.endIndex),
                wanted.contains(where: { line[to].elementsEqual($0) }), let e = Reports.parse(line),
                e.time >= (since ?? 0)
            else { return }
            found.append(e)
        }
        found.sort { $0.time > $1.time }
        var result: [Failure] = []
        var index = 0
        while result.count < limit && index < found.count {
            let chunk = Array(found[index..<min(found.count, index + limit * 4)])
            index += chunk.count
            let jobs = Dictionary(
                (try Query(site: site).lookup(Set(chunk.map(\.job)))).map { ($0.id, $0) },
                uniquingKeysWith: { a, _ in a })
            for e in chunk where result.count < limit {
                let listing = jobs[e.job]
                if let app, listing?.app != app { continue }
                if !tags.isEmpty, listing?.job?.hasTags(tags) != true { continue }
                let o = (try? JSONValue.parse(Array(e.line)))?.objectValue ?? [:]
                result.append(
                    Failure(
                        job: e.job, state: e.to, time: e.time, timestamp: o["t"]?.stringValue ?? "",
                        data: o["data"]?.objectValue ?? [:], workdir: listing?.workdir, app: listing?.app,
                        tags: listing?.job?.tags ?? [:]))
            }
        }
        return result
    }

    // MARK: - Utilization

    public struct Utilization: Sendable {
        /// Step series: at each time, nodes busy (weighted by each job's share of its node) and nodes held by
        /// batch jobs.
        public var points: [(time: Double, busy: Double, available: Double)]
        /// Per batch job: its id, its nodes and the mean of busy / its nodes over its run.
        public var batchJobs: [(id: Int, nodes: Int, mean: Double)]
        /// The integral of busy nodes over time, node-seconds.
        public var busyNodeSeconds: Double
    }

    /// Nodes busy over time from RUNNING events (their `num_nodes` share; 1 where an older launcher wrote none)
    /// and the runs' ends, against the nodes batch jobs held from their start to their end.
    public func utilization(batchJob: Int? = nil) throws(SpoolError) -> Utilization {
        var changes: [(Double, Double, Double)] = []  // time, busy change, available change
        var share: [String: Double] = [:]
        var running: [String: Double] = [:]
        let runningState = Array("RUNNING".utf8)
        try scanLines { line in
            // Only runs' starts and ends matter: `to` or `from` compared as bytes before anything is made.
            guard let (to, toAt) = Reports.valueRange(Reports.toKey, in: line, before: line.endIndex),
                let (t, tAt) = Reports.valueRange(Reports.timeKey, in: line, before: toAt),
                let (job, jobAt) = Reports.valueRange(Reports.jobKey, in: line, before: tAt)
            else { return }
            if line[to].elementsEqual(runningState) {
                guard let time = Reports.seconds(bytes: line[t]) else { return }
                let id = String(decoding: line[job], as: UTF8.self)
                let s = Reports.number("num_nodes", in: line) ?? 1
                share[id] = s
                running[id] = time
                changes.append((time, s, 0))
            } else if let (from, _) = Reports.valueRange(Reports.fromKey, in: line, before: jobAt),
                line[from].elementsEqual(runningState), let time = Reports.seconds(bytes: line[t])
            {
                let id = String(decoding: line[job], as: UTF8.self)
                if running.removeValue(forKey: id) != nil { changes.append((time, -(share[id] ?? 1), 0)) }
            }
        }
        var perBatch: [(Int, Int, Double, Double)] = []
        for job in try BatchJobStore(site: site).all().jobs {
            guard let start = job.startTime.flatMap(Reports.seconds) else { continue }
            if let batchJob, job.id != batchJob { continue }
            let now = Posix.wallClock()
            let end = job.endTime.flatMap(Reports.seconds) ?? Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
            changes.append((start, 0, Double(job.numNodes)))
            changes.append((end, 0, -Double(job.numNodes)))
            perBatch.append((job.id, job.numNodes, start, end))
        }
        changes.sort { $0.0 < $1.0 }
        var points: [(time: Double, busy: Double, available: Double)] = []
        var busy = 0.0
        var available = 0.0
        var integral = 0.0
        var last: Double?
        for (t, db, da) in changes {
            if let last { integral += busy * (t - last) }
            busy += db
            available += da
            if let p = points.last, p.time == t {
                points[points.count - 1] = (t, busy, available)
            } else {
                points.append((t, busy, available))
            }
            last = t
        }
        // Mean utilization of each batch job: busy node-seconds within its run over its node-seconds.
        var means: [(id: Int, nodes: Int, mean: Double)] = []
        for (id, nodes, start, end) in perBatch where end > start {
            var area = 0.0
            for (k, p) in points.enumerated() {
                let next = k + 1 < points.count ? points[k + 1].time : end
                let a = max(p.time, start)
                let b = min(next, end)
                if b > a { area += min(p.busy, Double(nodes)) * (b - a) }
            }
            means.append((id, nodes, area / (Double(nodes) * (end - start))))
        }
        return Utilization(points: points, batchJobs: means, busyNodeSeconds: integral)
    }

    /// A number value `"key":N` in a line (after a string search), or nil.
    static func number(_ key: String, in line: ArraySlice<UInt8>) -> Double? {
        let pattern = Array("\"\(key)\":".utf8)
        var i = line.startIndex
        while i + pattern.count <= line.endIndex {
            if line[i..<(i + pattern.count)].elementsEqual(pattern) {
                var j = i + pattern.count
                while j < line.endIndex, "0123456789.eE-+".utf8.contains(line[j]) { j += 1 }
                return Double(String(decoding: line[(i + pattern.count)..<j], as: UTF8.self))
            }
            i += 1
        }
        return nil
    }
}
