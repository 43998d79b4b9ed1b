import Foundation
import TestSupport
import Testing

@testable import Spool

@Suite struct JobStoreTests {
    let dir: TempDir
    let site: Site
    let id: String

    init() throws {
        dir = try TempDir()
        site = try makeSite(dir)
        var submission = Submission(site: site)
        id = try submission.submit(helloJob("j")).0.id
    }

    @Test func aMoveRenamesTheEntryWritesTheStateAndLogsAnEvent() throws {
        let store = JobStore(site: site, actor: "tester")
        let loaded = try #require(try store.load(id, in: .ready))
        let moved = try store.move(loaded, to: .stagedIn, reason: "no stage-in")
        #expect(moved.record.state == .stagedIn && moved.record.history.map(\.state) == [.ready, .stagedIn])
        #expect(SiteIndex(site: site).activeState(of: id) == .stagedIn)
        #expect(try Query(site: site).readRecord(workdir: "j").state == .stagedIn)
        let events = try read(site.eventsPath + "/" + Posix.hostName() + ".jsonl")
        #expect(events.contains(#""from":"READY""#) && events.contains(#""reason":"no stage-in""#))
        #expect(try store.load(id, in: .ready) == nil)
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
    }

    @Test func anIllegalMoveChangesNothing() throws {
        let store = JobStore(site: site, actor: "tester")
        let loaded = try #require(try store.load(id, in: .ready))
        #expect { try store.move(loaded, to: .runDone) } throws: { "\($0)".contains("READY -> RUN_DONE") }
        #expect(SiteIndex(site: site).activeState(of: id) == .ready)
        #expect(entries(site.tmpPath).isEmpty)
    }

    @Test func theSecondOfTwoMoversGetsAConflict() throws {
        let a = JobStore(site: site, actor: "a")
        let b = JobStore(site: site, actor: "b")
        let seenByA = try #require(try a.load(id, in: .ready))
        let seenByB = try #require(try b.load(id, in: .ready))
        try a.move(seenByA, to: .stagedIn)
        #expect { try b.move(seenByB, to: .failed, reason: "killed") } throws: {
            ($0 as? SpoolError)?.code == .conflict
        }
        #expect(try Query(site: site).readRecord(workdir: "j").state == .stagedIn)
        #expect(try Query(site: site).countByState()[.failed, default: 0] == 0)
    }

    @Test func endingAndRetryingMoveBetweenTheIndexes() throws {
        let store = JobStore(site: site, actor: "tester")
        let failed = try store.move(try #require(try store.load(id, in: .ready)), to: .failed, reason: "killed")
        #expect(SiteIndex(site: site).activeState(of: id) == nil)
        #expect(try Query(site: site).countByState()[.failed] == 1)
        let again = try #require(try store.load(id))
        #expect(again.record.state == .failed)
        try store.move(again, to: .ready, reason: "retry")
        let counts = try Query(site: site).countByState()
        #expect(counts[.ready] == 1 && counts[.failed, default: 0] == 0)
        #expect(try Query(site: site).find(id).state == .ready)
        _ = failed
    }

    @Test func aMoveMayUpdateTheSpecAndTheEntryFollows() throws {
        let store = JobStore(site: site, actor: "hook")
        let loaded = try #require(try store.load(id, in: .ready))
        try store.move(loaded, to: .stagedIn) { job, _ in job.data["answer"] = .int(42) }
        let reloaded = try #require(try store.load(id, in: .stagedIn))
        #expect(reloaded.job.data["answer"] == .int(42))
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty, "the entry is the new job.json")
    }

    @Test func aMoveCutShortByACrashIsFinishedByTheQuickPass() throws {
        // The claim happened (entry renamed into tmp/), the state file was never written.
        try FileManager.default.moveItem(
            atPath: site.activePath(.ready) + "/" + id,
            toPath: site.tmpPath + "/" + id + (try deadOwnerSuffix()) + ".moving")
        #expect(SiteIndex(site: site).activeState(of: id) == nil)
        let report = try Fsck(site: site).run(repair: true, full: false)
        #expect(report.problems.count == 1 && report.problems[0].repaired)
        #expect(SiteIndex(site: site).activeState(of: id) == .ready)
        #expect(entries(site.tmpPath).isEmpty)
    }
}
