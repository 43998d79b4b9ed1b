import Foundation
import TestSupport
import Testing

@testable import Spool

/// A bulk batch whose materialization died part-way is finished along the plan its first pass recorded, whoever
/// finishes it: the jobs end where the events logged for them say.
@Suite struct IngestPlanTests {
    @Test("balsam ingest finishes a batch the watcher began along the watcher's steps, with their events")
    func aLaterPassFollowsTheRecordedPlan() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let lines = (0..<3).map { #"{"app":"hello","workdir":"p/\#($0)","parameters":{"name":"x"}}"# }
        let accepted = try submission.accept(Array(lines.joined(separator: "\n").utf8))
        #expect(accepted.accepted.count == 3)
        let index = SiteIndex(site: site)
        let name = try #require(try index.batchNames().first)
        // What the watcher's pass records before it logs anything, as if it had died right after.
        let plan =
            #"{"hello\tREADY":[{"reason":"no stage-in","state":"STAGED_IN"},{"reason":null,"state":"PREPROCESSED"}]}"#
        try Posix.createFile(index.materializingMarker(name), Array(plan.utf8), sync: false)

        let report = try Ingest(site: site).materializePending()  // balsam ingest: no plan of its own
        #expect(report.materialized == 3)
        for job in accepted.accepted {
            #expect(try Query(site: site).readRecord(workdir: job.job.workdir).state == .preprocessed)
        }
        let events = try entries(site.eventsPath).map { try read(site.eventsPath + "/" + $0) }.joined()
        #expect(events.components(separatedBy: #""to":"PREPROCESSED""#).count - 1 == 3)
        #expect(!exists(index.materializingMarker(name)))
    }
}
