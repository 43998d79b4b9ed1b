import Foundation
import Lifecycle
import Spool
import TestSupport
import Testing

/// The rule that lets the watcher's engine keep the active directories' entries instead of listing them at every
/// step: a listing taken at any moment, with every change inotify reported replayed on it in order, is the
/// directory. Random entries are made, renamed between states and out of the site and back, and removed, by
/// "other programs", while the engine lists a random directory now and then and hears the names drained at
/// random moments; at the end every directory the engine keeps equals its listing.
@Suite struct KeptEntriesTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_ENTRIES_SEED"].flatMap { UInt64($0) }
        ?? UInt64.random(in: 1...UInt64(UInt32.max))

    @Test(arguments: 0..<4)
    func keptEntriesAreTheDirectories(round: Int) throws {
        let seed = Self.seed &+ UInt64(round)
        var rng = SplitMix(seed: seed)
        let fixture = try Fixture()
        let site = fixture.site
        let engine = fixture.engine
        engine.keepsEntries = true
        let states = JobState.active
        let paths = states.map { site.activePath($0) }
        let monitor = try ChangeMonitor(directories: paths, named: Set(paths), inotify: true)
        let outside = site.tmpPath + "/kept-entries"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let names = (0..<60).map { "01TESTENTRY\(String(format: "%015d", $0))" } + [".x.relink", ".y.tmp"]

        func entries(in dir: String) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
        }
        func hear() {
            _ = monitor.wait(seconds: 0)
            engine.heard(monitor.takeNames())
        }
        for _ in 0..<1500 {
            let dir = paths.randomElement(using: &rng)!
            let name = names.randomElement(using: &rng)!
            switch Int.random(in: 0..<10, using: &rng) {
            case 0...2:  // made (an ingest, a submission)
                _ = FileManager.default.createFile(atPath: dir + "/" + name, contents: Data("{}".utf8))
            case 3...5:  // moved to another state (a move's publishing rename)
                if let present = entries(in: dir).randomElement(using: &rng) {
                    rename(dir + "/" + present, paths.randomElement(using: &rng)! + "/" + present)
                }
            case 6:  // claimed out of the site's state directories (tmp/, a lease)
                if let present = entries(in: dir).randomElement(using: &rng) {
                    rename(dir + "/" + present, outside + "/" + present)
                }
            case 7:  // given back
                if let away = entries(in: outside).randomElement(using: &rng) {
                    rename(outside + "/" + away, dir + "/" + away)
                }
            case 8:  // removed
                if let present = entries(in: dir).randomElement(using: &rng) { unlink(dir + "/" + present) }
            default:  // the engine steps a state (listed the first time) or hears what happened so far
                if Bool.random(using: &rng) {
                    _ = try engine.entries(states.randomElement(using: &rng)!)
                } else {
                    hear()
                }
            }
        }
        hear()
        #expect(monitor.overflows == 0, "seed \(seed)")
        for (state, dir) in zip(states, paths) {
            let listed = Set(entries(in: dir).filter { !$0.hasPrefix(".") })
            #expect(try engine.entries(state) == listed, "seed \(seed): \(state.rawValue)")
        }
    }

    /// Without `keepsEntries` (a shared filesystem, no inotify) every step lists: what is heard changes nothing.
    @Test func withoutKeepingEveryStepLists() throws {
        let fixture = try Fixture()
        let dir = fixture.site.activePath(.ready)
        _ = try fixture.engine.entries(.ready)
        _ = FileManager.default.createFile(atPath: dir + "/01TESTENTRY000000000000001", contents: Data("{}".utf8))
        fixture.engine.heard([.init(directory: dir, name: "01TESTENTRY000000000000002", arrived: true)])
        #expect(try fixture.engine.entries(.ready) == ["01TESTENTRY000000000000001"])
    }
}
