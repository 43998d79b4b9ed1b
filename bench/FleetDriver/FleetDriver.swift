import ArgumentParser
import Foundation
import Spool
import Sync
import Synchronization

/// The sites of `bench/fleet-bench`: many real site directories in one process, each with events produced at a
/// set rate by the spool's own writers (`Submission` for new jobs, `EventLog` for their moves) and pushed by the
/// site's own `Pusher` on the watcher's schedule (`SyncSchedule`), on a pool of threads. Prints one JSON object:
/// what was written and pushed, the lag of every event (written → in a push the server answered), per second of
/// writing, and the sites' failures and backoffs.
@main
struct FleetDriver: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet-driver", abstract: "Run many sites' sync against one server, for bench/fleet-bench.")

    @Option(help: "The server's URL (nginx in front of the server processes, or one of them).")
    var url: String
    @Option(help: "A file holding the bearer token every site pushes with.")
    var tokenFile: String
    @Option(help: "The directory the sites are made in (it must not hold them yet).")
    var dir: String
    @Option(help: "How many sites.")
    var sites = 10
    @Option(help: "Events per site per second: a fifth new jobs, the rest their moves to JOB_FINISHED.")
    var rate = 10.0
    @Option(help: "Seconds of writing; the pushes go on until every site is caught up (or --drain passes).")
    var seconds = 10.0
    @Option(help: "Longest wait, after the writing, for the sites to catch up.")
    var drain = 120.0
    @Option(help: "Threads pushing (each owns every Nth site).")
    var threads = 16
    @Option(help: "A file made when the sites are made and the writing starts.")
    var startFile: String?

    func run() throws {
        let fleet = try (0..<sites).map { i in
            try FleetSite(index: i, dir: dir, url: url, tokenFile: tokenFile)
        }
        FileHandle.standardError.write(Data("fleet-driver: \(sites) sites made\n".utf8))
        let start = Posix.monotonicSeconds()
        if let startFile { try Posix.createFile(startFile, [], sync: false) }
        let shared = Shared()
        var workers: [Thread] = []
        let pool = max(1, min(threads, sites))
        for t in 0..<pool {
            let mine = stride(from: t, to: fleet.count, by: pool).map { fleet[$0] }
            let thread = Thread {
                Self.push(mine, start: start, shared: shared)
                shared.done.add(1, ordering: .sequentiallyConsistent)
            }
            thread.stackSize = 1 << 20
            workers.append(thread)
            thread.start()
        }
        // Writing: each site once a second, the sites spread over the second.
        var second = 0
        while Double(second) < seconds {
            for (i, site) in fleet.enumerated() {
                let due = start + Double(second) + Double(i) / Double(fleet.count)
                let wait = due - Posix.monotonicSeconds()
                if wait > 0 { usleep(UInt32(saturating: wait * 1e6)) }
                try site.write(rate: rate, start: start)
            }
            second += 1
        }
        let wrote = Posix.monotonicSeconds() - start
        let deadline = Posix.monotonicSeconds() + drain
        while Posix.monotonicSeconds() < deadline && fleet.contains(where: { $0.waiting > 0 }) { usleep(20_000) }
        let drained = Posix.monotonicSeconds() - start
        shared.stopping.store(true, ordering: .sequentiallyConsistent)
        while shared.done.load(ordering: .sequentiallyConsistent) < pool { usleep(10_000) }
        print(Self.report(fleet, wrote: wrote, drained: drained).serialized())
    }

    /// One pushing thread: each of its sites' rounds when due, until stopped.
    static func push(_ sites: [FleetSite], start: Double, shared: Shared) {
        while !shared.stopping.load(ordering: .sequentiallyConsistent) {
            guard let next = sites.min(by: { $0.due < $1.due }) else { return }
            let now = Posix.monotonicSeconds()
            if next.due > now {
                usleep(UInt32(saturating: min(next.due - now, 0.02) * 1e6))
                continue
            }
            next.round(start: start)
        }
    }

    /// The run as JSON.
    static func report(_ fleet: [FleetSite], wrote: Double, drained: Double) -> JSONValue {
        var lags: [(lag: Double, n: Int)] = []
        var timeline: [Int: (n: Int, maxLag: Double)] = [:]
        var written = 0
        var sites: [JSONValue] = []
        for site in fleet {
            let r = site.results.withLock { $0 }
            written += site.written
            for l in r.lags {
                lags.append((l.lag, l.n))
                let second = Int(saturating: l.written)
                let was = timeline[second] ?? (0, 0)
                timeline[second] = (was.n + l.n, max(was.maxLag, l.lag))
            }
            sites.append(
                .object([
                    "name": .string(site.name), "written": .int(site.written), "pushed": .int(r.pushed),
                    "unpushed": .int(site.waiting), "rounds": .int(r.rounds), "failures": .int(r.failures),
                    "max_backoff": .double(r.maxBackoff), "longest_outage": .double(r.longestOutage),
                ]))
        }
        lags.sort { $0.lag < $1.lag }
        let total = lags.reduce(0) { $0 + $1.n }
        func percentile(_ p: Double) -> Double {
            var seen = 0
            for l in lags {
                seen += l.n
                if Double(seen) >= p * Double(total) { return l.lag }
            }
            return lags.last?.lag ?? 0
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu =
            Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        return .object([
            "sites": .int(fleet.count), "written": .int(written), "write_seconds": .double(wrote),
            "drain_seconds": .double(drained), "pushed_in_time": .int(fleet.reduce(0) { $0 + $1.pushedBy(wrote) }),
            "lag_p50": .double(percentile(0.5)), "lag_p99": .double(percentile(0.99)),
            "lag_max": .double(lags.last?.lag ?? 0), "driver_cpu_seconds": .double(cpu),
            "timeline": .array(
                timeline.keys.sorted().map { s in
                    .array([.int(s), .int(timeline[s]?.n ?? 0), .double(timeline[s]?.maxLag ?? 0)])
                }),
            "per_site": .array(sites),
        ])
    }
}

/// What the writer and the pushing threads share: the order to stop, and how many threads have.
final class Shared: Sendable {
    let stopping = Atomic(false)
    let done = Atomic(0)
}
