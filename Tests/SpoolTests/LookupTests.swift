import Foundation
import Spool
import TestSupport
import Testing

/// `Query.lookup`: jobs by ID wherever they are (active, accepted in bulk, ended), the removed left out.
@Suite struct LookupTests {
    @Test("lookup finds active, accepted and ended jobs by ID, and leaves removed ones out")
    func findsJobsWherever() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (active, _) = try submission.submit(helloJob("a"))
        let (ended, _) = try submission.submit(helloJob("b"))
        let (removed, _) = try submission.submit(helloJob("c"))
        let bulk = try submission.accept(Array(#"{"app":"hello","workdir":"d","parameters":{"name":"x"}}"#.utf8))
        let accepted = try #require(bulk.accepted.first?.job)
        let control = Control(site: site, actor: "test")
        var filter = JobFilter()
        filter.ids = [ended.id]
        _ = control.kill(try Query(site: site).list(filter, load: false))
        filter.ids = [removed.id]
        _ = control.remove(try Query(site: site).list(filter, load: false), keepFiles: false)

        let found = try Query(site: site).lookup([active.id, ended.id, removed.id, accepted.id])
        let byID = Dictionary(uniqueKeysWithValues: found.map { ($0.id, $0) })
        #expect(byID[active.id]?.state == .ready && byID[active.id]?.job?.workdir == "a")
        #expect(byID[ended.id]?.state == .failed && byID[ended.id]?.source == .final)
        #expect(byID[accepted.id]?.source == .accepted && byID[accepted.id]?.job?.workdir == "d")
        #expect(byID[removed.id] == nil)
    }

    /// The server's ids (issue 35, item 6): `find` takes them as the original CLI shows them, the later line of
    /// the map winning; digits that are a workdir of one job and the server id of another are refused by name.
    @Test func findTakesTheServersIDs() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (first, _) = try submission.submit(helloJob("runs/1"))
        let (second, _) = try submission.submit(helloJob("91"))
        try ServerIDs.append(site, [(first.id, 7), (second.id, 8)])
        let query = Query(site: site)
        #expect(try query.find("7").id == first.id)
        #expect(try query.find("91").id == second.id, "a workdir in digits that no server id names")
        try ServerIDs.append(site, [(first.id, 91)])
        #expect(throws: SpoolError.self, "7 is no server id any more, nor a workdir") { try query.find("7") }
        #expect {
            try query.find("91")
        } throws: {
            "\($0)".contains("workdir of job \(second.id) and the server id of job \(first.id)")
        }
    }
}
