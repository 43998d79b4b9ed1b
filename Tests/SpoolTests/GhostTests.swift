import Foundation
import Spool
import TestSupport
import Testing

/// A job directory deleted by hand leaves no ghost (issue 35, item 5): random jobs in random states, random ones
/// of their directories removed; `balsam fsck --repair` (or `balsam rm`, chosen at random per ghost) takes every
/// ghost out of the indexes with one REMOVED line saying why, and nothing else; the site is then consistent, and
/// the ghost's workdir makes one new job, not a second one beside it.
@Suite struct GhostTests {
    @Test func removedDirectoriesLeaveNoGhost() throws {
        let seed = UInt64(saturating: Date().timeIntervalSince1970 * 1000)
        var random = SplitMix(seed: seed)
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let store = JobStore(site: site, actor: "test")
        let ends: [JobState?] = [nil, .jobFinished, .failed]
        var ids: [String] = []
        for n in 0..<60 {
            let (job, _) = try submission.submit(helloJob("sweep/\(n)"))
            ids.append(job.id)
            if let end = ends[Int.random(in: 0..<ends.count, using: &random)] {
                let loaded = try #require(try store.load(job.id))
                try store.move(
                    loaded,
                    through: end == .failed
                        ? [(.failed, "test")]
                        : [
                            (.stagedIn, nil), (.preprocessed, nil), (.running, nil), (.runDone, nil),
                            (.postprocessed, nil),
                            (.stagedOut, nil), (.jobFinished, nil),
                        ])
            }
        }
        let query = Query(site: site)
        let before = Dictionary(
            uniqueKeysWithValues: try query.list(JobFilter(), load: false).map { ($0.id, $0.state) })
        let ghosts = Set(ids.filter { _ in Int.random(in: 0..<3, using: &random) == 0 })
        var byRemove = Set<String>()
        for id in ghosts {
            let listing = try query.find(id)
            Posix.removeTree(site.jobDirectory(listing.workdir))
            if Bool.random(using: &random) { byRemove.insert(id) }
        }
        let context = "seed \(seed): \(ghosts.count) ghosts, \(byRemove.count) by rm"
        let removed = Control(site: site, actor: "test").remove(
            try query.list(JobFilter(), load: false).filter { byRemove.contains($0.id) }, keepFiles: false)
        #expect(removed.allSatisfy { $0.kind == .done }, "\(context): \(removed.map(\.message))")
        _ = try Fsck(site: site).run(repair: true, full: true)
        let after = Dictionary(uniqueKeysWithValues: try query.list(JobFilter(), load: false).map { ($0.id, $0.state) })
        #expect(Set(after.keys) == Set(ids).subtracting(ghosts), "\(context)")
        for (id, state) in after { #expect(before[id] == state, "\(context): \(id) changed") }
        #expect(try Fsck(site: site).run(repair: false, full: true).problems.isEmpty, "\(context)")
        let log = try read(site.eventsPath + "/" + Posix.hostName() + ".jsonl")
        for id in ids {
            let marks = log.split(separator: "\n").filter { $0.contains(id) && $0.contains(#""to":"REMOVED""#) }
            #expect(marks.count == (ghosts.contains(id) ? 1 : 0), "\(context): \(id)")
            #expect(marks.allSatisfy { $0.contains("is gone (deleted or renamed by hand)") }, "\(context)")
        }
        // A ghost's workdir is free: one job there, the new one.
        if let ghost = ghosts.first {
            let workdir = try #require(before.keys.contains(ghost) ? "sweep/\(ids.firstIndex(of: ghost) ?? 0)" : nil)
            let (made, _) = try submission.submit(helloJob(workdir))
            let there = try query.list(JobFilter(), load: false).filter { $0.workdir == workdir }
            #expect(there.map(\.id) == [made.id], "\(context)")
        }
    }
}
