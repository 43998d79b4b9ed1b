import Spool
import Wire

/// The per-minute sums the report routes read instead of every event, kept as events are recorded: state
/// changes per (site, state, minute), busy node-seconds per (site, minute) for each run that ended (its node
/// share times its time in each minute), and each batch job's busy node-seconds when the run's launcher named it.
/// Runs still going are added when a report is made.
enum Rollups {
    /// Microseconds per minute, the rollups' unit.
    static let minute: Int64 = 60_000_000

    /// Updates the rollups for events just inserted: `(job, from, to, data JSON, time)`.
    /// `siteID`: every job's site, when the caller knows it (a site's push); else each job's is looked up.
    static func record(
        _ events: [(Int, String, String, String, Int64)], owner: Int, siteID: Int? = nil,
        connection c: any SQLConnection
    ) throws {
        guard !events.isEmpty else { return }
        let site =
            try siteID.map { s in Dictionary(events.map { ($0.0, s) }, uniquingKeysWith: { a, _ in a }) }
            ?? sites(of: Set(events.map(\.0)), connection: c)
        var counts: [String: (site: Int, state: String, minute: Int64, n: Int)] = [:]
        var ends: [(job: Int, time: Int64)] = []
        for e in events {
            guard let s = site[e.0] else { continue }
            let m = e.4 / minute
            counts["\(s) \(e.2) \(m)", default: (s, e.2, m, 0)].n += 1
            if e.1 == JobState.running.rawValue { ends.append((e.0, e.4)) }
        }
        // PostgreSQL: each connection adds to rows of its own shard (the column's default), so concurrent pushes
        // and creates of one user never wait on each other's row (Schema.shardedCounters).
        let key = Schema.counterKey("owner_id, to_state, site_id, minute", c.dialect)
        for chunk in Array(counts.values).chunked(c.rowsPerStatement(columns: 5)) {
            let rows = SQL.rows(chunk.map { [.of(owner), .of($0.site), .text($0.state), .int($0.minute), .of($0.n)] })
            try c.execute(
                """
                INSERT INTO state_minutes (owner_id, site_id, to_state, minute, n) VALUES \(rows)
                ON CONFLICT (\(raw: key)) DO UPDATE SET n = state_minutes.n + excluded.n
                """)
        }
        guard !ends.isEmpty else { return }
        // Each ended run's start: the job's latest RUNNING event at or before the end (recorded now or before).
        let starts = try runStarts(Set(ends.map(\.job)), connection: c)
        var busy: [String: (site: Int, minute: Int64, seconds: Double)] = [:]
        var batches: [String: (site: Int, batch: Int, seconds: Double)] = [:]
        for (job, end) in ends {
            guard let s = site[job], let start = starts[job]?.last(where: { $0.time <= end }) else { continue }
            spread(from: start.time, to: end, share: start.share) { m, seconds in
                busy["\(s) \(m)", default: (s, m, 0)].seconds += seconds
            }
            if let batch = start.batchJob {
                batches["\(s) \(batch)", default: (s, batch, 0)].seconds +=
                    start.share * Double(end - start.time) / 1e6
            }
        }
        for chunk in Array(busy.values).chunked(c.rowsPerStatement(columns: 4)) {
            let rows = SQL.rows(chunk.map { [.of(owner), .of($0.site), .int($0.minute), .double($0.seconds)] })
            try c.execute(
                """
                INSERT INTO busy_minutes (owner_id, site_id, minute, node_seconds) VALUES \(rows)
                ON CONFLICT (owner_id, site_id, minute) DO UPDATE SET
                node_seconds = busy_minutes.node_seconds + excluded.node_seconds
                """)
        }
        for b in batches.values {
            let (site, batch) = (SQLValue.of(b.site), SQLValue.of(b.batch))
            try c.execute(
                """
                UPDATE batch_jobs SET busy_node_seconds = busy_node_seconds + \(.double(b.seconds))
                WHERE owner_id = \(.of(owner)) AND site_id = \(site) AND site_batch_id = \(batch)
                """)
            // A batch job the site has not reported yet keeps them until its row is made (`takePending`).
            try c.execute(
                """
                INSERT INTO batch_busy_pending (owner_id, site_id, site_batch_id, node_seconds)
                SELECT CAST(\(.of(owner)) AS BIGINT), CAST(\(site) AS BIGINT), CAST(\(batch) AS BIGINT),
                CAST(\(.double(b.seconds)) AS DOUBLE PRECISION) WHERE NOT EXISTS (SELECT 1 FROM batch_jobs
                WHERE owner_id = \(.of(owner)) AND site_id = \(site) AND site_batch_id = \(batch))
                ON CONFLICT (owner_id, site_id, site_batch_id) DO UPDATE SET
                node_seconds = batch_busy_pending.node_seconds + excluded.node_seconds
                """)
        }
    }

    /// The busy node-seconds kept for the site's batch job `siteBatchID` before its row existed, added to its row
    /// (just made, or just linked to a batch job asked for through the API): so a batch job's busy node-seconds
    /// are what its ended runs add up to, whatever push carried its report.
    static func takePending(owner: Int, siteID: Int, siteBatchID: Int, connection c: any SQLConnection) throws {
        let key = "owner_id = \(owner) AND site_id = \(siteID) AND site_batch_id = \(siteBatchID)"
        guard
            let pending: Double = try c.query(
                "SELECT node_seconds FROM batch_busy_pending WHERE \(raw: key)"
            ).first.map({ $0.double(0) })
        else { return }
        try c.execute(
            """
            UPDATE batch_jobs SET busy_node_seconds = busy_node_seconds + \(.double(pending)) WHERE \(raw: key)
            """)
        try c.execute("DELETE FROM batch_busy_pending WHERE \(raw: key)")
    }

    /// Calls `add(minute, node-seconds)` for each minute the run from `start` to `end` (microseconds) overlaps.
    static func spread(from start: Int64, to end: Int64, share: Double, _ add: (Int64, Double) -> Void) {
        guard end > start else { return }
        var m = start / minute
        while m * minute < end {
            let a = max(start, m * minute)
            let b = min(end, (m + 1) * minute)
            if b > a { add(m, share * Double(b - a) / 1e6) }
            m += 1
        }
    }

    static func sites(of jobs: Set<Int>, connection c: any SQLConnection) throws -> [Int: Int] {
        var site: [Int: Int] = [:]
        for chunk in Array(jobs).chunked(5000) {
            for r in try c.query(
                "SELECT id, site_id FROM jobs WHERE id IN (\(list: chunk.map { .of($0) }))")
            {
                site[r.int(0)] = r.int(1)
            }
        }
        return site
    }

    struct Start {
        var time: Int64
        var share: Double
        /// The site's batch job id its launcher gave.
        var batchJob: Int?
    }

    /// Every RUNNING event of `jobs`, oldest first per job.
    static func runStarts(_ jobs: Set<Int>, connection c: any SQLConnection) throws -> [Int: [Start]] {
        var starts: [Int: [Start]] = [:]
        for chunk in Array(jobs).chunked(5000) {
            let rows = try c.query(
                """
                SELECT job_id, timestamp, data FROM events
                WHERE job_id IN (\(list: chunk.map { .of($0) })) AND to_state = 'RUNNING' ORDER BY timestamp
                """)
            for r in rows { starts[r.int(0), default: []].append(start(time: Int64(r.int(1)), data: r.text(2))) }
        }
        return starts
    }

    /// A RUNNING event's node share (1 when it names none) and batch job.
    static func start(time: Int64, data: String) -> Start {
        let facts = EventFacts(data: (try? JSONValue.parse(data))?.objectValue ?? [:])
        return Start(time: time, share: facts.share ?? 1, batchJob: facts.batchJob)
    }
}
