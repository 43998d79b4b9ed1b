import Foundation
import Spool
import Sync
import Synchronization

/// One site of the fleet: its directory, the jobs its writer moves along, its pusher and what the pushes did.
/// The writer (one thread for all sites) and the site's pushing thread share only `marks` and the counters
/// behind locks.
final class FleetSite: @unchecked Sendable {
    let name: String
    let site: Site
    /// Used by the site's pushing thread only.
    private let pusher: Pusher
    private var schedule = SyncSchedule(period: 1)
    private var failingSince: Double?
    /// When the next round is due (monotonic seconds); the pushing thread's.
    private(set) var due = 0.0

    /// Used by the writer only: the submission (it keeps the site's workdirs), the jobs in each state of their
    /// run, the new jobs owed (a fraction carried), jobs made so far.
    private var submission: Submission
    private var stages: [[String]] = [[], [], [], []]
    private var owed = 0.0
    private var made = 0
    private(set) var written = 0

    /// Writes not yet in a push the server answered: where each ends in the log, when it was written (seconds
    /// since the start) and how many events it holds.
    private let marks = Mutex<[(end: Int, time: Double, n: Int)]>([])
    /// Events written and not yet pushed.
    var waiting: Int { marks.withLock { $0.reduce(0) { $0 + $1.n } } }

    struct Results {
        /// Each write's lag once pushed: seconds since the start it was written at, lag, events.
        var lags: [(written: Double, lag: Double, n: Int)] = []
        /// Events pushed, rounds, failed rounds, the longest wait after failures, the longest time from a first
        /// failure to the next success.
        var pushed = 0
        var rounds = 0
        var failures = 0
        var maxBackoff = 0.0
        var longestOutage = 0.0
        /// When each push was answered (seconds since the start) and the events it carried.
        var answered: [(time: Double, n: Int)] = []
    }
    let results = Mutex(Results())

    private static let moves: [(JobState, JobState)] = [
        (.ready, .running), (.running, .runDone), (.runDone, .postprocessed), (.postprocessed, .jobFinished),
    ]

    init(index: Int, dir: String, url: String, tokenFile: String) throws {
        name = String(format: "fleet-%04d", index)
        site = try Site.create(at: dir + "/" + name, name: name)
        try site.createApp(
            App(
                name: "hello", commandTemplate: "echo hello {{ name }}",
                parameters: ["name": App.Parameter(required: true)]))
        var settings = SiteSettings.Sync(url: url)
        settings.tokenFile = tokenFile
        settings.siteName = name
        pusher = try Pusher(site: site, settings: settings)
        submission = Submission(site: site, actor: "fleet-driver")
        due = Posix.monotonicSeconds() + Double(index % 100) / 100
    }

    /// One second's events: `rate / 5` new jobs (a fraction carried to the next second), and each job made
    /// before moved one step along READY → RUNNING → RUN_DONE → POSTPROCESSED → JOB_FINISHED.
    func write(rate: Double, start: Double) throws {
        owed += rate / 5
        let new = Int(saturating: owed)
        owed -= Double(new)
        let time = Timestamp.now()
        var events: [Event] = []
        for (k, (from, to)) in Self.moves.enumerated().reversed() {
            for id in stages[k] {
                events.append(Event(time: time, jobID: id, from: from, to: to, actor: "fleet-driver"))
            }
            if k + 1 < stages.count { stages[k + 1] = stages[k] }
        }
        stages[0] = []
        if !events.isEmpty { try EventLog(site: site).append(events, sync: false) }
        if new > 0 {
            var lines: [UInt8] = []
            for i in made..<(made + new) {
                lines += Array(#"{"app":"hello","workdir":"w/\#(i)","parameters":{"name":"n\#(i)"}}"#.utf8) + [0x0A]
            }
            made += new
            let result = try submission.accept(lines)
            if let failure = result.failures.first { throw failure.error }
            stages[0] = result.accepted.map(\.job.id)
        }
        let n = events.count + new
        guard n > 0 else { return }
        written += n
        let end = try logSize()
        let now = Posix.monotonicSeconds() - start
        marks.withLock { $0.append((end, now, n)) }
    }

    /// Bytes in the site's event logs.
    private func logSize() throws -> Int {
        var size = 0
        for name in try Posix.listDirectory(site.eventsPath) where name.hasSuffix(".jsonl") {
            size += Int(try Posix.statIfExists(site.eventsPath + "/" + name)?.st_size ?? 0)
        }
        return size
    }

    /// One round of the site's sync, on its schedule; every write the server now holds is timed.
    func round(start: Double) {
        var wait: Double
        var pushed = 0
        let began = Posix.monotonicSeconds()
        do {
            let round = try pusher.round()
            wait = schedule.succeeded(round)
            pushed = round.events
            if let since = failingSince {
                let outage = began - since
                results.withLock { $0.longestOutage = max($0.longestOutage, outage) }
                failingSince = nil
            }
        } catch {
            wait = schedule.failed()
            if failingSince == nil {
                failingSince = began
                FileHandle.standardError.write(Data("fleet-driver: \(name): \(error)\n".utf8))
            }
            results.withLock {
                $0.failures += 1
                $0.maxBackoff = max($0.maxBackoff, wait)
            }
        }
        let now = Posix.monotonicSeconds()
        due = now + wait
        let cursor = ((try? SyncState.load(site))?.cursor ?? [:]).values.reduce(0, +)
        let settled = marks.withLock { marks -> [(end: Int, time: Double, n: Int)] in
            let k = marks.firstIndex { $0.end > cursor } ?? marks.count
            defer { marks.removeFirst(k) }
            return Array(marks.prefix(k))
        }
        results.withLock {
            $0.rounds += 1
            $0.pushed += pushed
            for m in settled { $0.lags.append((m.time, now - start - m.time, m.n)) }
            if pushed > 0 { $0.answered.append((now - start, pushed)) }
        }
    }

    /// Events the server took by `time` (seconds since the start).
    func pushedBy(_ time: Double) -> Int {
        results.withLock { $0.answered.filter { $0.time <= time }.reduce(0) { $0 + $1.n } }
    }
}
