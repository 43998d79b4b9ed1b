import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The time of day stepped under a running site (an NTP correction), as libfaketime steps it: the wall clock of
/// the watcher and of the launcher an hour ahead, their monotonic clocks and the files' times untouched. Every
/// duration (a lease's age, a launcher's wall time) is measured on the monotonic clock, so nothing changes:
/// every job runs once to its end, none times out. Before, the watcher reaped every lease at its first look
/// (an hour without a heartbeat, by its clock) and each running job ended RUN_TIMEOUT.
@Suite struct ClockTests {
    static let library = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"

    /// The environment that steps a process's time of day by `offset` (libfaketime's syntax, "+1h").
    static func stepped(_ offset: String) -> [String: String] {
        ["LD_PRELOAD": library, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"]
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: library)), arguments: ["+1h", "-1h"])
    func aSteppedClockTimesNothingOut(offset: String) throws {
        let dir = try TempDir()
        let root = dir.path + "/site"
        #expect(try balsam(["init", root]).status == 0)
        let site = try Site.open(root)
        var settings = try read(site.settingsPath)
        // A lease timeout shorter than each job: a lease judged by the stepped clock would expire under it.
        settings = settings.replacingOccurrences(
            of: #"(?m)^(\s*)#?\s*lease_timeout_sec:.*$"#, with: "$1lease_timeout_sec: 2", options: .regularExpression)
        try settings.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        #expect(try balsam(["app", "create", "nap", "--command-template", "sleep 4"], site: root).status == 0)
        let lines = (0..<4).map { #"{"app":"nap","workdir":"n/\#($0)"}"# }.joined(separator: "\n")
        #expect(try balsamSubmit(["--from", "-"], site: root, stdin: Data(lines.utf8)).status == 0)

        var environment = ProcessInfo.processInfo.environment
        environment["BALSAM_SITE"] = nil
        for (key, value) in Self.stepped(offset) { environment[key] = value }
        /// Runs `program` with its time of day stepped. Through timeout(1): libfaketime 0.9.10 loses a Swift
        /// program's arguments when that program is the first it is loaded into (seen here), not under timeout.
        func stepped(_ program: String, _ arguments: [String], log: String) throws -> Spawned {
            try Spawned(
                "/usr/bin/timeout", ["600", binDirectory + "/" + program] + arguments, environment: environment,
                stdout: .file(log), stderr: .file(log))
        }
        let watchLog = dir.path + "/watch.log"
        let watcher = try stepped("balsam-watch", ["--site", root, "--poll-interval", "0.2"], log: watchLog)
        let log = dir.path + "/launcher.log"
        let launcher = try stepped(
            "balsam-launcher", ["--site", root, "--wall-time-min", "5", "--idle-timeout", "2"], log: log)
        let query = Query(site: site)
        try waitUntil("every job ends", timeout: 120) { (try? query.countByState())?[.jobFinished] == 4 }
        #expect(launcher.wait(timeout: 60) == 0, "\((try? read(log)) ?? "")")
        watcher.terminate()
        #expect(watcher.waitUntilExit() == 0)
        // The launcher's time of day was stepped: its own log says so, so the step did happen.
        #expect(((try? read(log)) ?? "").contains(offset == "+1h" ? "T\(hour(+1))" : "T\(hour(-1))"))
        for listing in try query.list(JobFilter(), load: true) {
            let history = try #require(listing.record).history.map(\.state)
            #expect(!history.contains(.runTimeout), "\(listing.id): \(history)\n\((try? read(watchLog)) ?? "")")
        }
    }

    /// The hour of the day `delta` hours from now, as the logs print it ("HH:").
    func hour(_ delta: Int) -> String {
        var t = time(nil) + delta * 3600
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(format: "%02d:", parts.tm_hour)
    }
}
