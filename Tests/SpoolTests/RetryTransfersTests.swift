import Foundation
import Spool
import TestSupport
import Testing

/// A retry starts a job's unfinished transfers over (issue 35, item 3): whatever its items held when it failed
/// (random states, attempts, tasks and errors, in both directions), after a retry to any target every item of a
/// stage the job has not passed is as a new job's (a stage-in `pending`, a stage-out `awaiting_job`, no attempts,
/// task or error), a stage-in already `done` stays done, and items of a stage it has passed are untouched.
@Suite struct RetryTransfersTests {
    @Test func aRetryStartsEveryUnfinishedTransferOver() throws {
        let seed = UInt64(saturating: Date().timeIntervalSince1970 * 1000)
        var random = SplitMix(seed: seed)
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let store = JobStore(site: site, actor: "test")
        let control = Control(site: site, actor: "test")
        let targets: [JobState] = [.ready, .restartReady, .awaitingParents]
        for n in 0..<100 {
            let (job, _) = try submission.submit(helloJob("r/\(n)"))
            let loaded = try #require(try store.load(job.id))
            try store.move(loaded, to: .failed, reason: "test")
            let directory = site.jobDirectory(job.workdir)
            let items = (0..<Int.random(in: 0...4, using: &random)).map { i in
                var item = TransferItem(
                    slot: "s\(i)", direction: Bool.random(using: &random) ? .in : .out, localPath: "f\(i)",
                    alias: "dtn", remotePath: "/p/\(i)", recursive: false,
                    state: TransferState.allCases[Int.random(in: 0..<TransferState.allCases.count, using: &random)])
                item.attempts = Int.random(in: 0...3, using: &random)
                if Bool.random(using: &random) { item.taskID = "rsync:\(i)" }
                if Bool.random(using: &random) { item.info = ["error": .string("rsync: No such file")] }
                return item
            }
            if !items.isEmpty { try TransferItem.save(items, directory: directory) }
            let target = targets[Int.random(in: 0..<targets.count, using: &random)]
            let listing = try Query(site: site).find(job.id)
            let outcome = try #require(control.retry([listing], to: target).first)
            let context = "seed \(seed), job \(n) retried to \(target): \(outcome.message)"
            #expect(outcome.kind == .done, "\(context)")
            let after = try TransferItem.load(directory: directory) ?? []
            #expect(after.count == items.count, "\(context)")
            for (old, new) in zip(items, after) {
                if TransferItem.isPast(old.direction, target) || (old.direction == .in && old.state == .done) {
                    #expect(new == old, "\(context): \(old.slot) changed")
                } else {
                    #expect(new.state == (old.direction == .in ? .pending : .awaitingJob), "\(context): \(new)")
                    #expect(new.attempts == 0 && new.taskID == nil && new.info.isEmpty, "\(context): \(new)")
                }
            }
        }
    }
}
