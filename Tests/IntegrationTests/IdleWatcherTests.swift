import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Counts the opens of directories under some of the site's directories, as inotify reports them: listing a
/// directory begins with opening it, and inotify reports that open on the directory itself (`IN_ISDIR`), so a
/// watcher that lists nothing raises none.
final class ListingProbe {
    let fd: Int32
    private(set) var opens: [String] = []
    private var names: [Int32: String] = [:]

    init(_ directories: [String]) throws {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        try #require(fd >= 0)
        for directory in directories {
            let wd = inotify_add_watch(fd, directory, UInt32(IN_OPEN))
            try #require(wd >= 0, "watch \(directory)")
            names[wd] = directory
        }
    }

    deinit { close(fd) }

    /// Reads what is queued; returns the number of directory opens read.
    @discardableResult
    func drain() -> Int {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var count = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return count }
            var offset = 0
            while offset + 16 <= n {
                let wd = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset, as: Int32.self) }
                let mask = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 4, as: UInt32.self) }
                let length = Int(buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 12, as: UInt32.self) })
                if mask & UInt32(IN_ISDIR) != 0 {
                    let name = String(
                        decoding: buffer[(offset + 16)..<(offset + 16 + length)].prefix { $0 != 0 }, as: UTF8.self)
                    opens.append((names[wd] ?? "?") + (name.isEmpty ? "" : "/" + name))
                    count += 1
                }
                offset += 16 + length
            }
        }
    }

    /// Waits until `seconds` pass with no directory opened (true), or `timeout` passes (false).
    func quiet(for seconds: Double, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        var since = Date()
        while Date() < deadline {
            if drain() > 0 { since = Date() }
            if Date().timeIntervalSince(since) >= seconds { return true }
            usleep(20_000)
        }
        return false
    }
}

/// An idle site is silent (issue #36). On a node-local filesystem, where inotify sees every writer, a watcher with
/// nothing to do lists none of the site's directories, however short its poll interval; every change still
/// reaches it at once. Without inotify (a shared filesystem's path) it looks again every poll interval.
@Suite(.serialized) struct IdleWatcherTests {
    let dir: TempDir
    let site: Site

    init() throws {
        dir = try TempDir()
        site = try makeSite(dir)
        // Directories the site makes when first needed, made now; then the test waits until every directory's
        // stamp is older than a node-local filesystem's margin: a directory read within that instant of a change
        // is read once more after it settles (ChangeStamp), which is not idleness lost.
        for path in [site.root + "/batchjobs", site.root + "/sync"] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        let directories = siteDirectories
        try waitUntil("the new site's directories settle") {
            let now = Date().timeIntervalSince1970
            return directories.allSatisfy { path in
                var st = stat()
                guard stat(path, &st) == 0 else { return false }
                let newest = max(
                    Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9,
                    Double(st.st_ctim.tv_sec) + Double(st.st_ctim.tv_nsec) / 1e9)
                return now - newest > 2 * ChangeStamp.localMargin
            }
        }
    }

    /// Every directory a pass, a service round or the housekeeping reads.
    var siteDirectories: [String] {
        [
            site.root, site.jobsPath, site.dropBoxPath, site.acceptedPath, site.controlPath, site.tmpPath,
            site.dataPath, site.finalIndexPath, site.root + "/batchjobs", site.root + "/sync",
        ] + JobState.active.map { site.activePath($0) }
    }

    func state(_ id: String) -> JobState? { try? Query(site: site).find(id).state }

    /// Rounds of random work of every kind that reaches the watcher (submissions, drops, a launcher's moves and
    /// lease, kills, retries), each followed by quiet: then no directory is opened for a second (five poll
    /// intervals), and the round's jobs reached the states the work leads to — by inotify alone.
    @Test(arguments: [UInt64(1), 2])
    func anIdleWatcherListsNothingAndMissesNothing(seed: UInt64) throws {
        try #require(Posix.sharedFilesystem(site.root) == nil, "the test's site is on a node-local filesystem")
        let watcher = try WatchProcess(site: site.root, ["--verbose"], logDirectory: dir.path)
        defer { _ = watcher.terminate() }
        let probe = try ListingProbe(siteDirectories)
        var rng = SplitMix(seed: seed)
        var expected: [String: JobState] = [:]
        var made = 0
        let launcher = JobStore(site: site, actor: "test-launcher")
        for round in 0..<4 {
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                made += 1
                let workdir = "r\(round)/j\(made)"
                switch Int.random(in: 0..<6, using: &rng) {
                case 0:  // a drop
                    try dir.file("site/queue/new/d\(made)/job.json", #"{"app":"hello","parameters":{"name":"d"}}"#)
                    expected["d\(made)"] = .preprocessed
                case 1:  // a launcher runs one to its end
                    var submission = Submission(site: site)
                    let id = try submission.submit(helloJob(workdir)).0.id
                    try waitUntil("job \(id) is PREPROCESSED") { state(id) == .preprocessed }
                    try launcher.move(
                        try #require(try launcher.load(id, in: .preprocessed)),
                        through: [(.running, nil), (.runDone, nil)])
                    expected[id] = .jobFinished
                case 2:  // killed
                    var submission = Submission(site: site)
                    let id = try submission.submit(helloJob(workdir)).0.id
                    try waitUntil("job \(id) is PREPROCESSED") { state(id) == .preprocessed }
                    #expect(try balsam(["kill", id], site: site.root).status == 0)
                    expected[id] = .failed
                case 3:  // killed and retried
                    var submission = Submission(site: site)
                    let id = try submission.submit(helloJob(workdir)).0.id
                    #expect(try balsam(["kill", id], site: site.root).status == 0)
                    try waitUntil("job \(id) is FAILED") { state(id) == .failed }
                    #expect(try balsam(["retry", id], site: site.root).status == 0)
                    expected[id] = .preprocessed
                case 4:  // a launcher's lease comes and goes
                    let lease = try Lease.create(site)
                    try waitUntil("the watcher looks at the lease") { probe.drain() > 0 }
                    lease.remove()
                default:  // a bulk submission
                    let lines = (0..<3).map {
                        #"{"app":"hello","workdir":"\#(workdir)-\#($0)","parameters":{"name":"b"}}"#
                    }
                    let out = try balsamSubmit(
                        ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
                    #expect(out.status == 0, "\(out.stderr)")
                    for i in 0..<3 { expected["\(workdir)-\(i)"] = .preprocessed }
                }
            }
            for (id, want) in expected {
                try waitUntil("job \(id) is \(want.rawValue) (seed \(seed), round \(round))") { state(id) == want }
            }
            // Its last moves raise events of its own, and a pass follows them; then nothing more (a second without a
            // listing, so that a pass delayed by a loaded machine is not taken for one in the window).
            #expect(probe.quiet(for: 1, timeout: 15), "the watcher settles (seed \(seed), round \(round))")
            // The window observed: an absence is seen only over time (no condition ends it sooner).
            let before = probe.opens.count
            Thread.sleep(forTimeInterval: 1)
            probe.drain()
            #expect(
                probe.opens.count == before,
                "an idle watcher listed \(probe.opens.dropFirst(before).prefix(5)) (seed \(seed), round \(round)); its log: \(watcher.log.suffix(3000))"
            )
        }
        #expect(!watcher.log.contains("error"), "\(watcher.log)")
    }

    /// The probe sees a watcher that lists: without inotify, every poll interval (the path of a shared
    /// filesystem, where inotify misses other nodes' changes).
    @Test func withoutInotifyTheWatcherLooksEveryPollInterval() throws {
        let watcher = try WatchProcess(site: site.root, ["--no-inotify"], logDirectory: dir.path)
        defer { _ = watcher.terminate() }
        let probe = try ListingProbe(siteDirectories)
        var submission = Submission(site: site)
        let id = try submission.submit(helloJob("a")).0.id
        try waitUntil("the job is PREPROCESSED") { state(id) == .preprocessed }
        probe.drain()
        let before = probe.opens.count
        try waitUntil("the watcher lists its queues again, unasked") { probe.drain() > 0 || probe.opens.count > before }
    }
}
