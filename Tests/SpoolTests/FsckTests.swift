import Foundation
import TestSupport
import Testing

@testable import Spool

@Suite struct FsckTests {
    @Test func rebuildsLostIndexesFromTheJobDirectories() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let ids = try (0..<3).map { try submission.submit(helloJob("j/\($0)")).0.id }
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)

        // Lose the whole active index, mark one job FAILED behind the index's back, leave a stale entry and
        // a leftover of an interrupted submission.
        for id in ids { unlink(site.activePath(.ready) + "/" + id) }
        let record = try Query(site: site).readRecord(workdir: "j/2").moved(to: .failed, actor: "test", reason: "x")
        try Data(record.fileBytes()).write(to: URL(fileURLWithPath: site.jobDirectory("j/2") + "/state"))
        symlink("../../data/gone/job.json", site.activePath(.running) + "/" + JobID.make())
        try FileManager.default.createDirectory(
            atPath: site.stagingPath + "/" + JobID.make() + (try deadOwnerSuffix()), withIntermediateDirectories: true)

        let check = try Fsck(site: site).run(repair: false)
        #expect(check.jobs == 3)
        #expect(check.problems.count == 5, "\(check.problems)")
        #expect(check.problems.allSatisfy { !$0.repaired })
        #expect(try SiteIndex(site: site).activeIDs(.ready).isEmpty, "read-only without --repair")

        let repaired = try Fsck(site: site).run(repair: true)
        #expect(repaired.problems.count == 5 && repaired.problems.allSatisfy(\.repaired))
        #expect(try Set(SiteIndex(site: site).activeIDs(.ready)) == Set(ids[0..<2]))
        #expect(try SiteIndex(site: site).activeIDs(.running).isEmpty)
        #expect(entries(site.stagingPath).isEmpty)
        let counts = try Query(site: site).countByState()
        #expect(counts[.ready] == 2 && counts[.failed] == 1)
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty, "idempotent")
    }

    @Test func anEntryInTheWrongStateIsMoved() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (job, _) = try submission.submit(helloJob("x"))
        try FileManager.default.moveItem(
            atPath: site.activePath(.ready) + "/" + job.id, toPath: site.activePath(.stagedIn) + "/" + job.id)
        let report = try Fsck(site: site).run(repair: true)
        #expect(report.problems.count == 1, "moved back, not removed and recreated")
        #expect(SiteIndex(site: site).activeState(of: job.id) == .ready)
    }
}
