import Foundation
import Spool
import TestSupport
import Testing
import Wire

@testable import Server

/// A batch job's busy node-seconds on the server are what its ended runs add up to (each run's node share times
/// its time), whatever pushes carried the runs and the batch job's report: the report before the runs, with them,
/// or after they ended (a site catching up, a client pushing in its own order). Random sites' histories, cut into
/// random pushes with each batch job's report in a random one, against the sum worked out from the runs made.
/// From a seed that a failure prints (`BALSAM_BUSY_SEED=N`).
@Suite struct BatchBusyPropertyTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_BUSY_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)

    /// A history: every job's events in time order, and each batch job's busy node-seconds as its runs make them.
    struct History {
        var jobs: [PushedJob] = []
        var events: [PushedEvent] = []
        var batches: [Int: Double] = [:]
    }

    static func history(_ rng: inout SplitMix) -> History {
        var h = History()
        let batchCount = 1 + rng.below(3)
        for b in 1...batchCount { h.batches[b] = 0 }
        let base: Int64 = 1_796_000_000_000_000
        for j in 0..<(1 + rng.below(5)) {
            let id = "01J\(j)"
            h.jobs.append(SyncProtocolTests.job(id, "w/\(j)", .created, name: "n\(j)"))
            var t = base + Int64(rng.below(10_000)) * 1000
            func event(_ from: JobState, _ to: JobState, _ facts: EventFacts = EventFacts()) {
                var e = PushedEvent(siteJobID: id, time: ServerClock.iso(t), from: from, to: to)
                e.data = facts.data
                h.events.append(e)
            }
            event(.created, .ready)
            var state = JobState.ready
            let runs = 1 + rng.below(3)
            for run in 0..<runs {
                t += Int64(1 + rng.below(5_000)) * 1000
                var facts = EventFacts()
                let batch = 1 + rng.below(batchCount)
                facts.batchJob = batch
                let share = [1.0, 0.5, 0.25, 2][rng.below(4)]
                facts.share = share
                event(state, .running, facts)
                let duration = Int64(1 + rng.below(100_000)) * 1000
                t += duration
                h.batches[batch, default: 0] += share * Double(duration) / 1e6
                if run == runs - 1 {
                    event(.running, .runDone)
                } else {
                    event(.running, .runError)
                    event(.runError, .restartReady)
                    state = .restartReady
                }
            }
        }
        // The site's log is in time order (events of different jobs interleave).
        h.events.sort { ($0.microseconds, $0.siteJobID) < ($1.microseconds, $1.siteJobID) }
        return h
    }

    @Test(arguments: Backend.available)
    func aBatchJobsBusyNodeSecondsDoNotDependOnWhichPushCarriedItsReport(_ backend: Backend) async throws {
        var rng = SplitMix(seed: Self.seed)
        var reportsAfterRuns = 0
        let server = try InProcessServer(backend)
        for n in 0..<25 {
            // A user each: a site and batch jobs of its own.
            let token = try await server.user("bea\(n)")
            let h = Self.history(&rng)
            // Cut the log into 1 to 4 pushes; each batch job's report goes in any of them.
            let count = 1 + rng.below(4)
            var cuts = (0..<(count - 1)).map { _ in rng.below(h.events.count + 1) }.sorted()
            cuts = [0] + cuts + [h.events.count]
            var pushes = (0..<count).map { k in
                var push = k == 0 ? SyncProtocolTests.pushWithApp() : PushRequest(site: SyncProtocolTests.site)
                if k == 0 { push.jobs = h.jobs.map { PushItem.read($0) } }
                push.events = h.events[cuts[k]..<cuts[k + 1]].map { PushItem.read($0) }
                return push
            }
            for b in h.batches.keys.sorted() {
                var batch = BatchJob(project: "p", queue: "q", numNodes: 2, wallTimeMinutes: 10)
                batch.id = b
                batch.state = .running
                let k = rng.below(count)
                pushes[k].batchJobs.append(BatchJobReport(batch))
                if k > 0 { reportsAfterRuns += 1 }
            }
            for push in pushes {
                let sent = try await server.push(push, token: token)
                #expect(sent.status == 200 && sent.reply.refused.isEmpty, "seed \(Self.seed) case \(n): \(sent)")
            }
            let busy = try server.database.withConnection { c in
                try c.query(
                    """
                    SELECT site_batch_id, busy_node_seconds FROM batch_jobs
                    WHERE owner_id = (SELECT id FROM users WHERE username = \(.text("bea\(n)")))
                    """
                ).map { ($0.int(0), $0.double(1)) }
            }
            #expect(Set(busy.map(\.0)) == Set(h.batches.keys), "seed \(Self.seed) case \(n)")
            for (batch, seconds) in busy {
                let expected = h.batches[batch] ?? -1
                #expect(
                    abs(seconds - expected) < 1e-6,
                    "seed \(Self.seed) case \(n): batch job \(batch) busy \(seconds), its runs \(expected)")
            }
        }
        #expect(reportsAfterRuns > 0, "some reports must come after their runs")
    }
}
