import Foundation
import TestSupport
import Testing

@testable import Spool

/// The final-state cache that submission, the watcher and recovery share.
@Suite struct FinalStatesTests {
    @Test func readsOnceRecordsItsOwnMovesRereadsOnRequestAndHonoursRemovals() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let index = SiteIndex(site: site)
        let (a, b, c) = (JobID.make(), JobID.make(), JobID.make())
        func line(_ id: String, _ state: JobState) -> SiteIndex.FinalLine {
            .init(id: id, state: state, workdir: "w/" + id, app: "hello", time: Timestamp.now())
        }
        try index.appendFinal([line(a, .jobFinished), line(b, .failed)], sync: false)
        var cache = FinalStates(index: index)
        #expect(try cache.state(of: a) == .jobFinished && cache.state(of: b) == .failed)
        #expect(try cache.state(of: c) == nil && cache.state(of: "not-an-id") == nil)

        try index.appendFinal([line(c, .jobFinished)], sync: false)
        #expect(try cache.state(of: c) == nil, "read once: a line written since is not seen without a reread")
        cache.record(a, .failed)
        #expect(try cache.state(of: a) == .failed, "its owner's own moves are recorded")
        #expect(try cache.state(of: c, reread: true) == .jobFinished)

        try index.appendRemoved([(id: b, workdir: "w/" + b, app: "hello")])
        #expect(try cache.state(of: b, reread: true) == nil, "a removed job has no final state")
    }
}
