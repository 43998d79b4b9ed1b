import Hummingbird
import Spool
import Wire

/// `/reports/throughput`, `/reports/utilization`, `/reports/failures`: the site's `balsam report`, for all of the
/// caller's sites (or one, `site_id`), in the same JSON shape, without downloading the events. Bins of whole
/// minutes are added up from the rollups (`Rollups`); finer bins, and utilization's `steps`, read the events.
enum ReportRoutes {
    /// The filters every report takes.
    struct Window {
        var site: Int?
        /// Microseconds since the epoch.
        var since: Int64?
        var until: Int64?
        var bin: Double?

        init(site: Int?, since: Int64?, until: Int64?, bin: Double?) {
            self.site = site
            self.since = since
            self.until = until
            self.bin = bin
        }

        init(_ query: inout QueryParameters) throws(ServerError) {
            site = try query.int("site_id")
            since = try query.time("since")
            until = try query.time("until")
            if let text = try query.string("bin") {
                do { bin = try ReportSeries.bin(text) } catch { throw .badRequest(error.message, field: "bin") }
            }
        }

        /// Whether the rollups answer: bins of whole minutes (or automatic ones, which are).
        var perMinute: Bool { bin.map { $0.truncatingRemainder(dividingBy: 60) == 0 } ?? true }

        /// Conditions on a rollup table's `site_id` and `minute`.
        func minuteConditions(_ c: inout Conditions) {
            if let site { c.add("site_id = \(.of(site))") }
            if let since { c.add("minute >= \(.int(since / Rollups.minute))") }
            if let until { c.add("minute <= \(.int(until / Rollups.minute))") }
        }

        /// Conditions on events `e` (joined to their jobs `j` when a site is named).
        func eventConditions(_ c: inout Conditions) {
            if let site { c.add("j.site_id = \(.of(site))") }
            if let since { c.add("e.timestamp >= \(.int(since))") }
            if let until { c.add("e.timestamp <= \(.int(until))") }
        }

        var eventTable: String { site == nil ? "events e" : "events e JOIN jobs j ON j.id = e.job_id" }
    }

    static func seconds(_ micros: Int64) -> Double { Double(micros) / 1e6 }

    static func throughput(_ call: inout Call) throws -> Reply {
        var window = try Window(&call.query)
        let state = try parseJobState(try call.query.string("state") ?? "JOB_FINISHED", field: "state").rawValue
        try call.query.finish()
        return .json(try throughput(call, window: &window, state: state).json(state: state))
    }

    static func throughput(_ call: Call, window: inout Window, state: String) throws -> ReportSeries.Throughput {
        let c = call.connection
        if window.perMinute {
            var where_ = Conditions(owner: call.user.id, column: "owner_id")
            where_.add("to_state = \(.text(state))")
            window.minuteConditions(&where_)
            let rows = try c.query(
                "SELECT minute, sum(n) FROM state_minutes WHERE \(where_.sql) GROUP BY minute")
            let counted = rows.map { (Double($0.int(0) * 60), $0.int(1)) }
            guard let firstMinute = counted.map(\.0).min(), let lastMinute = counted.map(\.0).max() else {
                return try ReportSeries.throughput(times: [], bin: window.bin ?? 60)
            }
            // The rate from the first and last events' own times (the index has them), unless per site.
            var first = firstMinute
            var last = lastMinute + 59.999
            if window.site == nil {
                var e = Conditions(owner: call.user.id, column: "owner_id")
                e.add("to_state = \(.text(state))")
                if let since = window.since { e.add("timestamp >= \(.int(since))") }
                if let until = window.until { e.add("timestamp <= \(.int(until))") }
                // One end per query: each is one step down the index (min and max together scan it).
                let ends = try ["ASC", "DESC"].map { order in
                    try c.query(
                        "SELECT timestamp FROM events WHERE \(e.sql) ORDER BY timestamp \(raw: order) LIMIT 1"
                    ).first.map { seconds(Int64($0.int(0))) }
                }
                if let a = ends[0], let b = ends[1] {
                    first = a
                    last = b
                }
            }
            return try ReportSeries.throughput(
                counted: counted, first: first, last: last, bin: window.bin, minimumBin: 60)
        }
        var where_ = Conditions(owner: call.user.id, column: "e.owner_id")
        where_.add("e.to_state = \(.text(state))")
        window.eventConditions(&where_)
        let times = try c.query("SELECT e.timestamp FROM \(raw: window.eventTable) WHERE \(where_.sql)")
            .map { seconds(Int64($0.int(0))) }
        return try ReportSeries.throughput(times: times, bin: window.bin)
    }

    static func utilization(_ call: inout Call) throws -> Reply {
        let window = try Window(&call.query)
        let steps = try call.query.bool("steps") ?? false
        let batchJob = try call.query.int("batch_job_id")
        try call.query.finish()
        return .json(try utilization(call, window: window, steps: steps, batchJob: batchJob).json())
    }

    static func utilization(_ call: Call, window: Window, steps: Bool, batchJob: Int?) throws
        -> ReportSeries.Utilization
    {
        let c = call.connection
        let now = seconds(ServerClock.microseconds())
        var b = Conditions(owner: call.user.id, column: "owner_id")
        b.add("start_time IS NOT NULL")
        if let site = window.site { b.add("site_id = \(.of(site))") }
        let batchRows = try c.query(
            """
            SELECT id, num_nodes, start_time, end_time, busy_node_seconds, site_id, site_batch_id FROM batch_jobs
            WHERE \(b.sql) ORDER BY id
            """)
        var held: [ReportSeries.Held] = []
        var busyOf: [Int: Double] = [:]
        var serverID: [String: Int] = [:]
        for r in batchRows {
            let start = seconds(Int64(r.int(2)))
            let end = r.isNull(3) ? nil : seconds(Int64(r.int(3)))
            if let until = window.until, start > seconds(until) { continue }
            if let since = window.since, let end, end < seconds(since) { continue }
            held.append(ReportSeries.Held(id: r.int(0), nodes: r.int(1), start: start, end: end, site: r.int(5)))
            busyOf[r.int(0)] = r.double(4)
            if let local = r.optionalInt(6) { serverID["\(r.int(5)) \(local)"] = r.int(0) }
        }
        // Launchers started by hand (no batch job named them) hold their nodes while they run.
        var l = Conditions(owner: call.user.id, column: "owner_id")
        l.add("site_batch_id IS NULL")
        if let site = window.site { l.add("site_id = \(.of(site))") }
        if let until = window.until { l.add("start_time <= \(.int(until))") }
        if let since = window.since { l.add("(end_time IS NULL OR end_time >= \(.int(since)))") }
        let launchers = try c.query(
            "SELECT id, nodes, start_time, end_time, site_id FROM launcher_sessions WHERE \(l.sql)"
        ).map { r in
            ReportSeries.Held(
                id: -r.int(0), nodes: r.int(1), start: seconds(Int64(r.int(2))),
                end: r.isNull(3) ? nil : seconds(Int64(r.int(3))), site: r.int(4))
        }
        if window.perMinute && !steps {
            // Ended runs from the per-minute sums (each minute one run of its mean busy nodes), runs going on from
            // the jobs in RUNNING; each batch job's busy node-seconds from its own sum plus its runs going on.
            var m = Conditions(owner: call.user.id, column: "owner_id")
            window.minuteConditions(&m)
            var runs = try c.query(
                "SELECT minute, sum(node_seconds) FROM busy_minutes WHERE \(m.sql) GROUP BY minute"
            ).map { r -> ReportSeries.Run in
                let start = Double(r.int(0) * 60)
                return ReportSeries.Run(start: start, end: start + 60, share: r.double(1) / 60, batchJob: nil)
            }
            var ongoing: [ReportSeries.Run] = []
            for (site, start) in try runningNow(call, site: window.site) {
                ongoing.append(
                    ReportSeries.Run(
                        start: seconds(start.time), end: nil, share: start.share,
                        batchJob: start.batchJob.flatMap { serverID["\(site) \($0)"] }, site: site))
            }
            runs += ongoing
            let from = window.since.map { seconds($0 / Rollups.minute * Rollups.minute) }
            let to = window.until.map(seconds)
            var u = try ReportSeries.utilization(
                runs: runs, held: held, launchers: launchers, batchJob: nil,
                bin: window.bin ?? minuteBin(runs, held + launchers, now: now, from: from, to: to), now: now,
                from: from,
                to: to)
            let live = try ReportSeries.utilization(runs: ongoing, held: held, bin: 86400, now: now).batchJobs
            for (k, use) in u.batchJobs.enumerated() {
                let liveUse = live.first { $0.id == use.id }?.busyNodeSeconds ?? 0
                let busy = (busyOf[use.id] ?? 0) + liveUse
                let capacity = Double(use.nodes) * ((use.end ?? now) - use.start)
                u.batchJobs[k].busyNodeSeconds = busy
                u.batchJobs[k].mean = capacity > 0 ? busy / capacity : 0
            }
            if let batchJob { u.batchJobs = u.batchJobs.filter { $0.id == batchJob } }
            return u
        }
        return try ReportSeries.utilization(
            runs: try runsFromEvents(call, window: window, serverID: serverID), held: held, launchers: launchers,
            batchJob: batchJob,
            bin: window.bin, now: now, steps: steps, from: window.since.map(seconds), to: window.until.map(seconds))
    }

    /// An automatic bin of whole minutes for the span of `runs` and `held`.
    static func minuteBin(
        _ runs: [ReportSeries.Run], _ held: [ReportSeries.Held], now: Double, from: Double?, to: Double?
    ) -> Double {
        let starts = runs.map(\.start) + held.map(\.start)
        let ends = runs.map { $0.end ?? now } + held.map { $0.end ?? now }
        guard let earliest = starts.min(), let latest = ends.max() else { return 60 }
        let first = max(earliest, from ?? earliest)
        let last = min(latest, to ?? latest)
        return ReportSeries.roundUp(max(60, ReportSeries.autoBin(span: last - first)), to: 60)
    }

    /// The jobs in RUNNING now, with their site and their latest RUNNING event.
    static func runningNow(_ call: Call, site: Int?) throws -> [(Int, Rollups.Start)] {
        var c = Conditions(owner: call.user.id, column: "j.owner_id")
        c.add("j.state = 'RUNNING'")
        if let site { c.add("j.site_id = \(.of(site))") }
        var latest: [Int: (Int, Rollups.Start)] = [:]
        for r in try call.connection.query(
            """
            SELECT j.id, j.site_id, e.timestamp, e.data FROM jobs j JOIN events e ON e.job_id = j.id
            AND e.to_state = 'RUNNING' WHERE \(c.sql)
            """)
        {
            let start = Rollups.start(time: Int64(r.int(2)), data: r.text(3))
            if latest[r.int(0)].map({ $0.1.time < start.time }) ?? true { latest[r.int(0)] = (r.int(1), start) }
        }
        return Array(latest.values)
    }

    /// Every run in the events (in the window), paired in time order.
    static func runsFromEvents(_ call: Call, window: Window, serverID: [String: Int]) throws -> [ReportSeries.Run] {
        var c = Conditions(owner: call.user.id, column: "e.owner_id")
        window.eventConditions(&c)
        let table = "events e JOIN jobs j ON j.id = e.job_id"
        let rows = try call.connection.query(
            """
            SELECT e.job_id, e.timestamp, e.to_state, e.data, j.site_id FROM \(raw: table)
            WHERE \(c.sql) AND (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING') ORDER BY e.timestamp, e.id
            """)
        var open: [Int: ReportSeries.Run] = [:]
        var runs: [ReportSeries.Run] = []
        for r in rows {
            let job = r.int(0)
            let time = seconds(Int64(r.int(1)))
            if r.text(2) == JobState.running.rawValue {
                let s = Rollups.start(time: Int64(r.int(1)), data: r.text(3))
                if var earlier = open[job] {
                    earlier.end = time
                    runs.append(earlier)
                }
                open[job] = ReportSeries.Run(
                    start: time, end: nil, share: s.share,
                    batchJob: s.batchJob.flatMap { serverID["\(r.int(4)) \($0)"] }, site: r.int(4))
            } else if var run = open.removeValue(forKey: job) {
                run.end = time
                runs.append(run)
            }
        }
        return runs + open.values
    }

    static func failures(_ call: inout Call) throws -> Reply {
        let window = try Window(&call.query)
        let limit = try call.query.int("limit") ?? 20
        guard (1...1000).contains(limit) else { throw ServerError.badRequest("must be 1 to 1000", field: "limit") }
        try call.query.finish()
        var out: [JSONValue] = []
        for f in try failures(call, window: window, limit: limit) {
            out.append(
                failureJSON(
                    job: .int(f.job), state: f.state, time: ServerClock.iso(f.time), workdir: f.workdir, app: f.app,
                    tags: f.tags, data: f.data, extra: ["site_id": .int(f.site), "attempts": .int(f.attempts)]))
        }
        return .json(.array(out))
    }

    struct Failure {
        var job: Int
        var site: Int
        var state: String
        var time: Int64
        var data: [String: JSONValue]
        var workdir: String
        var app: String
        var tags: [String: String]
        /// The state the event left.
        var from: String
        /// Runs that ended RUN_ERROR or RUN_TIMEOUT, or were killed (among the events read: `endsARun`).
        var attempts: Int
    }

    /// The latest failures, one row per job (as at the site: `foldOlderFailure`), newest first: each failing
    /// state read newest first through its index (three times the rows wanted, for the jobs with several), then
    /// merged.
    static func failures(_ call: Call, window: Window, limit: Int) throws -> [Failure] {
        var found: [Failure] = []
        for state in ["RUN_ERROR", "RUN_TIMEOUT", "FAILED"] {
            var c = Conditions(owner: call.user.id, column: "e.owner_id")
            c.add("e.to_state = \(.text(state))")
            // One rule with the site's (`Reports.failures`): a job finished since (retried) is no failure to
            // report (a deleted one is gone with its events).
            c.add("j.state <> \(.text(JobState.jobFinished.rawValue))")
            window.eventConditions(&c)
            let rows = try call.connection.query(
                """
                SELECT e.job_id, j.site_id, e.timestamp, e.data, j.workdir, a.name, j.tags, e.from_state
                FROM events e JOIN jobs j ON j.id = e.job_id JOIN apps a ON a.id = j.app_id
                WHERE \(c.sql) ORDER BY e.timestamp DESC, e.id DESC LIMIT \(.of(limit * 3))
                """)
            for r in rows {
                let tags = ((try? JSONValue.parse(r.text(6)))?.objectValue ?? [:]).compactMapValues(\.stringValue)
                found.append(
                    Failure(
                        job: r.int(0), site: r.int(1), state: state, time: Int64(r.int(2)),
                        data: (try? JSONValue.parse(r.text(3)))?.objectValue ?? [:], workdir: r.text(4),
                        app: r.text(5), tags: tags, from: r.text(7),
                        attempts: endsARun(state: state, from: r.text(7)) ? 1 : 0))
            }
        }
        var rows: [Failure] = []
        var position: [Int: Int] = [:]
        // Newest first; at the same time a FAILED is after the run's end that led to it.
        for f in found.sorted(by: {
            $0.time != $1.time ? $0.time > $1.time : $0.state == "FAILED" && $1.state != "FAILED"
        }) {
            if let i = position[f.job] {
                var (data, attempts) = (rows[i].data, rows[i].attempts)
                foldOlderFailure(into: &data, attempts: &attempts, state: f.state, from: f.from, older: f.data)
                (rows[i].data, rows[i].attempts) = (data, attempts)
            } else {
                position[f.job] = rows.count
                rows.append(f)
            }
        }
        return Array(rows.prefix(limit))
    }
}

extension ReportRoutes {
    /// `/reports/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e, [(.get, "/throughput", throughput), (.get, "/utilization", utilization), (.get, "/failures", failures)])
    }
}
