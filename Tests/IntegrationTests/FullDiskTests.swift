import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A site whose filesystem fills up for a while under a running watcher and launcher: every job must still end,
/// without a restart, and the logs must stay small meanwhile.
@Suite(.serialized) struct FullDiskTests {
    // Synchronous: an async test waits on the test pool's few threads to wake up, and behind long synchronous
    // tests it woke too late (every job had ended before the disk was filled, in one CI run).
    @Test(.enabled(if: canMount)) func aTransientlyFullDiskStrandsNoJob() throws {
        let fs = try SmallFilesystem(size: "16m", inodes: 8192)
        let logs = try TempDir()
        let root = fs.path + "/site"
        #expect(try balsam(["init", root]).status == 0)
        #expect(try balsam(["app", "create", "nap", "--command-template", "sleep 0.3"], site: root).status == 0)
        let lines = (0..<40).map { #"{"app":"nap","workdir":"j/\#($0)"}"# }.joined(separator: "\n")
        #expect(try balsamSubmit(["--from", "-"], site: root, stdin: Data(lines.utf8)).status == 0)
        let site = try Site.open(root)
        let watcher = try WatchProcess(site: root, logDirectory: logs.path)
        let launcher = try LauncherProcess(
            site: root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "30"], logDirectory: logs.path)
        let counts = { (try? Query(site: site).countByState()) ?? [:] }
        try waitUntil("jobs run", timeout: 60) { (counts()[.running] ?? 0) + (counts()[.jobFinished] ?? 0) >= 4 }
        fs.fill()
        try waitUntil("the full disk is met", timeout: 30) {
            launcher.log.contains("No space left") || watcher.log.contains("No space left")
        }
        // The fault's duration, not a wait for a result: the disk stays full for 4 s more.
        usleep(4_000_000)
        #expect(unlink(fs.path + "/filler") == 0)
        try waitUntil("every job ends", timeout: 120) { counts()[.jobFinished] == 40 }
        #expect(counts().filter { $0.value > 0 } == [.jobFinished: 40], "nothing stranded: \(counts())")
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
        #expect(entries(site.tmpPath).isEmpty, "no move left unfinished: \(entries(site.tmpPath))")
        let launcherLines = launcher.log.split(separator: "\n").count
        let watcherLines = watcher.log.split(separator: "\n").count
        #expect(launcherLines < 100, "launcher log: \(launcherLines) lines\n\(launcher.log.suffix(3000))")
        #expect(watcherLines < 200, "watcher log: \(watcherLines) lines\n\(watcher.log.suffix(3000))")
        #expect(watcher.terminate() == 0)
        _ = launcher.wait(timeout: 60)
    }

    /// The site's filesystem turned read-only under a running watcher and launcher (ext4 after an I/O error):
    /// the watcher says so and waits (it must not think it lost its claim), the launcher names it and, having
    /// nothing it can run, leaves; once the filesystem is repaired a new watcher and launcher finish every job.
    @Test(.enabled(if: canLoopMount)) func aSiteTurnedReadOnlyIsWaitedOutAndLosesNothing() throws {
        let fs = try LoopFilesystem(megabytes: 64)
        let logs = try TempDir()
        let root = fs.path + "/site"
        #expect(try balsam(["init", root]).status == 0)
        #expect(try balsam(["app", "create", "nap", "--command-template", "sleep 1"], site: root).status == 0)
        let settingsPath = root + "/settings.yml"
        // The first launcher's lease (left behind: nothing could be written) is reaped in seconds, not 2 minutes.
        try read(settingsPath).replacingOccurrences(
            of: #"(?m)^(\s*)#?\s*lease_timeout_sec:.*$"#, with: "$1lease_timeout_sec: 10", options: .regularExpression
        ).write(toFile: settingsPath, atomically: true, encoding: .utf8)
        let lines = (0..<12).map { #"{"app":"nap","workdir":"j/\#($0)"}"# }.joined(separator: "\n")
        #expect(try balsamSubmit(["--from", "-"], site: root, stdin: Data(lines.utf8)).status == 0)
        let site = try Site.open(root)
        let counts = { (try? Query(site: site).countByState()) ?? [:] }
        let watcher = try WatchProcess(site: root, logDirectory: logs.path)
        let launcher = try LauncherProcess(
            site: root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "3"], logDirectory: logs.path)
        try waitUntil("jobs run", timeout: 60) { (counts()[.running] ?? 0) > 0 }
        try fs.failReadOnly()
        // The launcher leaves (its endings tried for 5 s more); the watcher waits meanwhile.
        #expect(launcher.wait(timeout: 90) != nil, "the launcher left\n\(launcher.log.suffix(2000))")
        #expect(launcher.log.contains("the filesystem is read-only"), "\(launcher.log.suffix(2000))")
        try waitUntil("the watcher says why it waits", timeout: 30) {
            watcher.log.contains("cannot write to the site") && watcher.log.contains("Read-only file system")
        }
        #expect(watcher.process.isRunning, "\(watcher.log.suffix(2000))")
        #expect(!watcher.log.contains("lost the claim"), "\(watcher.log.suffix(2000))")
        #expect(watcher.terminate() == 0)

        try fs.repair()
        let again = try WatchProcess(site: root, logDirectory: logs.path)
        let second = try LauncherProcess(
            site: root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "30"], logDirectory: logs.path)
        try waitUntil("every job ends", timeout: 120) { counts()[.jobFinished] == 12 }
        #expect(again.terminate() == 0)
        second.process.terminate()
        _ = second.wait(timeout: 60)
        #expect(counts().filter { $0.value > 0 } == [.jobFinished: 12], "nothing lost: \(counts())")
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
    }
}
