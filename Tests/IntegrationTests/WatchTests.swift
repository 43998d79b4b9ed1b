import Foundation
import Spool
import Synchronization
import TestSupport
import Testing

/// A `balsam-watch` process under test.
final class WatchProcess {
    let process: Spawned
    let stderrPath: String

    /// With `user`, run as that uid and gid (root only), through setpriv.
    init(
        site: String, _ args: [String] = [], logDirectory: String, env: [String: String] = [:], user: uid_t? = nil
    ) throws {
        stderrPath = logDirectory + "/watch-\(UUID().uuidString.prefix(6)).log"
        var environment = ProcessInfo.processInfo.environment
        environment["BALSAM_SITE"] = nil
        for (key, value) in env { environment[key] = value }
        let command = [binDirectory + "/balsam-watch", "--site", site, "--poll-interval", "0.2"] + args
        let (program, arguments) = asUser(user, command)
        process = try Spawned(program, arguments, environment: environment, stderr: .file(stderrPath))
    }

    var log: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    func terminate() -> Int32 {
        process.terminate()
        return process.waitUntilExit()
    }

    func kill9() {
        process.signal(SIGKILL)
        process.waitUntilExit()
    }
}

/// `command` (program first) as a program and its arguments that run it as `uid` (with a group of the same
/// number and no other groups) through setpriv; nil: as it is.
func asUser(_ uid: uid_t?, _ command: [String]) -> (String, [String]) {
    guard let uid else { return (command[0], Array(command.dropFirst())) }
    return ("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + command)
}

/// Waits for `condition` with a deadline, polling; fails the test if the deadline passes.
func waitUntil(_ what: String, timeout: Double = 30, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(20_000)
    }
    if try condition() { return }  // a last look, for a process whose threads were busy past the deadline
    Issue.record("timed out after \(timeout) s waiting until \(what)")
}

/// `waitUntil` for long async tests: it sleeps with `Task.sleep`, so a test that waits minutes does not hold one
/// of the cooperative pool's few threads (other tests need them to resume).
func waitFor(_ what: String, timeout: Double = 30, _ condition: () throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if try condition() { return }  // a last look, for a process whose threads were busy past the deadline
    Issue.record("timed out after \(timeout) s waiting until \(what)")
}

@Suite(.serialized) struct WatchTests {
    let dir: TempDir
    let site: Site

    init() throws {
        dir = try TempDir()
        site = try makeSite(dir)
    }

    func state(_ id: String) -> JobState? { try? Query(site: site).find(id).state }

    @Test func jobsMoveToTheReadyQueueAndOnToTheEnd() throws {
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        var submission = Submission(site: site)
        let id = try submission.submit(helloJob("a")).0.id
        try waitUntil("the job is PREPROCESSED") {
            FileManager.default.fileExists(atPath: site.activePath(.preprocessed) + "/" + id)
        }
        try dir.file("site/queue/new/dropped/job.json", #"{"app":"hello","parameters":{"name":"d"}}"#)
        try waitUntil("the drop is adopted") { (try? Query(site: site).find("dropped").state) == .preprocessed }
        // Play the launcher, in one step: a job left in jobs/RUNNING/ between two moves is one a launcher gave
        // back (no lease holds it), which the watcher may take back first under load (seen in CI).
        let launcher = JobStore(site: site, actor: "test-launcher")
        try launcher.move(
            try #require(try launcher.load(id, in: .preprocessed)), through: [(.running, nil), (.runDone, nil)])
        try waitUntil("the job is finished") { state(id) == .jobFinished }
        #expect(watcher.terminate() == 0)
        #expect(!FileManager.default.fileExists(atPath: site.root + "/watcher.json"), "the claim is released")
        #expect(watcher.log.contains("stopped"))
    }

    /// A settings.yml with a typo: refused at start (65, before the claim); made while the watcher runs, it is
    /// said once and the settings in force stay (jobs go on).
    @Test func aBrokenSettingsFileIsRefusedAtStartAndKeptOutWhileRunning() throws {
        let good = try read(site.settingsPath)
        let typo = good.replacingOccurrences(of: "  idle_ttl_sec: 60", with: "  idel_ttl_sec: 60")
        #expect(typo != good)
        try typo.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        let refused = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(refused.status == 65 && refused.stderr.contains("unknown key 'launcher.idel_ttl_sec'"))
        #expect(!refused.stderr.contains("watching"), "said before the claim: \(refused.stderr)")

        try good.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the watcher runs") { watcher.log.contains("recovery:") }
        try typo.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        try waitUntil("the error is said") { watcher.log.contains("keeping the settings in force") }
        let submitted = try balsamSubmit(["-a", "hello", "-w", "after-typo", "-p", "name=x"], site: site.root)
        #expect(submitted.status == 0 && !submitted.stderr.contains("no balsam-watch"), "one runs: \(submitted.stderr)")
        let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try waitUntil("the job is PREPROCESSED") { state(id) == .preprocessed }
        // The services looked again (a transfer round every second): still one line.
        let seen = watcher.log.components(separatedBy: "keeping the settings in force").count - 1
        #expect(seen == 1, "\(watcher.log)")
        #expect(watcher.terminate() == 0)
    }

    @Test func twoWatchersStartedTogetherLeaveExactlyOneRunning() throws {
        let a = try WatchProcess(site: site.root, logDirectory: dir.path)
        let b = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("one of them exits") { !a.process.isRunning || !b.process.isRunning }
        let (loser, winner) = a.process.isRunning ? (b, a) : (a, b)
        #expect(loser.process.terminationStatus == 69)
        #expect(loser.log.contains("already watched by balsam-watch pid \(winner.process.processIdentifier)"))
        #expect(winner.process.isRunning)
        #expect(winner.terminate() == 0)
    }

    @Test func aClaimLeftByADeadWatcherIsTakenOver() throws {
        let dead = try Spawned("/bin/true", [])
        dead.waitUntilExit()
        let claim =
            #"{"host":"\#(Posix.hostName())","pid":\#(dead.processIdentifier),"since":"2026-01-01T00:00:00.000Z"}"#
        try claim.write(toFile: site.root + "/watcher.json", atomically: false, encoding: .utf8)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the new watcher holds the claim") {
            (try? read(site.root + "/watcher.json"))?.contains("\"pid\":\(watcher.process.processIdentifier)") == true
        }
        #expect(watcher.terminate() == 0)
    }

    /// A claim held from another host is judged by whether its heartbeat moves, not by how old its stamp looks:
    /// a live watcher whose clock is an hour behind keeps the site; one whose heartbeat stopped loses it.
    @Test func aClaimFromAHostWhoseClockIsBehindIsKeptWhileItsHeartbeatMoves() throws {
        let claim = #"{"host":"elsewhere.invalid","pid":4242,"since":"2026-01-01T00:00:00.000Z"}"#
        let path = site.root + "/watcher.json"
        try claim.write(toFile: path, atomically: false, encoding: .utf8)
        let beating = Mutex(true)
        let beater = Thread {
            var stamp: Int = time(nil) - 3600
            while beating.withLock({ $0 }) {
                stamp += 1
                var times = [timespec(tv_sec: stamp, tv_nsec: 0), timespec(tv_sec: stamp, tv_nsec: 0)]
                utimensat(AT_FDCWD, path, &times, 0)
                usleep(300_000)
            }
        }
        beater.start()
        let refused = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(refused.status == 69 && refused.stderr.contains("already watched"), "\(refused.stderr)")
        beating.withLock { $0 = false }
        // Its heartbeat stopped an hour ago (by its clock): the claim is taken over.
        try waitUntil("the beating stops") { !beater.isExecuting }
        let taken = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(taken.status == 0, "\(taken.stderr)")
    }

    @Test func onceDaemonAndStop() throws {
        var submission = Submission(site: site)
        let id = try submission.submit(helloJob("o")).0.id
        let once = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(once.status == 0 && state(id) == .preprocessed)

        let started = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--daemon"])
        #expect(started.status == 0 && started.stdout.contains("balsam-watch running as pid"), "\(started.stderr)")
        let again = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--daemon"])
        #expect(again.status == 69 && again.stderr.contains("already watched"))
        let stopped = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--stop"])
        #expect(stopped.status == 0 && stopped.stdout.contains("stopped"))
        #expect(!FileManager.default.fileExists(atPath: site.root + "/watcher.json"))
        #expect(try read(site.logPath + "/balsam-watch.log").contains("watching"))
        let none = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--stop"])
        #expect(none.status == 0 && none.stdout.contains("no watcher"))
        // The original Balsam's spellings of the same.
        let siteStart = try balsam(["site", "start"], site: site.root)
        #expect(siteStart.status == 0 && siteStart.stdout.contains("running as pid"), "\(siteStart.stderr)")
        let siteStop = try balsam(["site", "stop"], site: site.root)
        #expect(siteStop.status == 0 && siteStop.stdout.contains("stopped"), "\(siteStop.stderr)")
    }

    /// The cron and scrontab line (`--daemon --if-not-running`): several started at once leave exactly one
    /// watcher, and every one of them exits 0; while it lives, each later start (background or foreground)
    /// exits 0 at once and prints nothing (cron mails any output); once it is stopped, the next start starts one.
    @Test func startsIfNotRunningAreSilentWhileAWatcherLives() throws {
        let line = ["--site", site.root, "--daemon", "--if-not-running"]
        let racers = 4
        let results = Mutex([(status: Int32, stdout: String, stderr: String)]())
        DispatchQueue.concurrentPerform(iterations: racers) { _ in
            if let r = try? run(binDirectory + "/balsam-watch", line) {
                results.withLock { $0.append((r.status, r.stdout, r.stderr)) }
            }
        }
        let all = results.withLock { $0 }
        #expect(all.count == racers && all.allSatisfy { $0.status == 0 && $0.stderr.isEmpty }, "\(all)")
        #expect(all.filter { $0.stdout.contains("running as pid") }.count == 1, "\(all)")
        /// The pid in the site's claim, if that process lives.
        func holder() -> Int32? {
            guard let claim = try? read(site.root + "/watcher.json"),
                let field = claim.split(separator: ",").first(where: { $0.contains("\"pid\"") }),
                let pid = Int32(
                    field.split(separator: ":").last?.trimmingCharacters(in: .init(charactersIn: " }")) ?? "")
            else { return nil }
            return kill(pid, 0) == 0 ? pid : nil
        }
        let first = try #require(holder())
        for args in [line, ["--site", site.root, "--if-not-running"]] {
            let again = try run(binDirectory + "/balsam-watch", args)
            #expect(again.status == 0 && again.stdout.isEmpty && again.stderr.isEmpty, "\(args): \(again)")
        }
        #expect(holder() == first)
        #expect(try run(binDirectory + "/balsam-watch", ["--site", site.root, "--stop"]).status == 0)
        let restarted = try run(binDirectory + "/balsam-watch", line)
        #expect(restarted.status == 0 && restarted.stdout.contains("running as pid"), "\(restarted)")
        #expect(holder() != nil && holder() != first)
        #expect(try run(binDirectory + "/balsam-watch", ["--site", site.root, "--stop"]).status == 0)
        let refused = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once", "--if-not-running"])
        #expect(refused.status == 64 && refused.stderr.contains("--if-not-running"))
        let reloadIfNot = try run(
            binDirectory + "/balsam-watch", ["--site", site.root, "--reload", "--if-not-running"])
        #expect(reloadIfNot.status == 64)
    }

    /// Kill -9 the watcher at random moments while jobs flow through hooks, retries and dependencies, restarting
    /// it each time: every job ends exactly once, in a state its history leads to legally.
    @Test func killNineAtRandomMomentsLosesNothing() throws {
        let jobCount = ProcessInfo.processInfo.environment["BALSAM_CRASH_JOBS"].flatMap(Int.init) ?? 300
        let kills = ProcessInfo.processInfo.environment["BALSAM_CRASH_KILLS"].flatMap(Int.init) ?? 20
        var app = try App(name: "slow", commandTemplate: "true")
        app.onError = .init(retries: 1)
        try site.createApp(app)
        try "#!/bin/sh\nsleep 0.05\n".write(
            toFile: site.appsPath + "/slow/preprocess", atomically: false, encoding: .utf8)
        chmod(site.appsPath + "/slow/preprocess", 0o755)
        var lines: [String] = []
        for i in 0..<jobCount {
            let app = i % 4 == 0 ? "slow" : "hello"
            let params = app == "hello" ? #","parameters":{"name":"n"}"# : ""
            lines.append(#"{"app":"\#(app)","workdir":"c/\#(i)"\#(params)}"#)
        }
        var submission = Submission(site: site)
        let accepted = try submission.accept(Array(lines.joined(separator: "\n").utf8))
        let ids = accepted.accepted.map(\.job.id)
        #expect(ids.count == jobCount)
        // Children of the first ten jobs, submitted one by one.
        var children: [String] = []
        for i in 0..<10 {
            var child = helloJob("child/\(i)")
            child.parentIDs = [ids[i]]
            children.append(try submission.submit(child).0.id)
        }

        let stop = LockedFlag()
        let launcherErrors = LockedList()
        let conflicts = LockedList()
        let site = self.site
        let launcher = Thread {
            let store = JobStore(site: site, actor: "test-launcher")
            var rng = SystemRandomNumberGenerator()
            while !stop.value {
                for state in [JobState.preprocessed, .restartReady] {
                    for id in (try? SiteIndex(site: site).activeIDs(state)) ?? [] {
                        guard let loaded = try? store.load(id, in: state),
                            let running = try? store.move(loaded, to: .running)
                        else { continue }
                        let fail = Int.random(in: 0..<10, using: &rng) == 0
                        do {
                            try store.move(running, to: fail ? .runError : .runDone) { _, record in
                                record.returnCode = fail ? 1 : 0
                            }
                        } catch {
                            // This launcher parks its jobs in jobs/RUNNING/, where the watcher takes a job for one
                            // given back by a launcher that could not record its end (and times it out): that is
                            // the watcher's rule, not recovery disturbing a launcher. A watcher killed while it
                            // takes one back has not logged it yet, so a conflict is judged once every job ended.
                            if (error as? SpoolError)?.code == .conflict {
                                conflicts.append(id)
                            } else {
                                launcherErrors.append("\(id): \(error)")
                            }
                        }
                    }
                }
                usleep(5_000)
            }
        }
        launcher.start()
        defer { stop.value = true }

        var rng = SystemRandomNumberGenerator()
        for _ in 0..<kills {
            let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
            usleep(UInt32.random(in: 50_000...400_000, using: &rng))
            watcher.kill9()
        }
        let last = try WatchProcess(site: site.root, logDirectory: dir.path)
        let everything = ids + children
        try waitUntil("every job has ended", timeout: 60) {
            let counts = try Query(site: site).countByState()
            return (counts[.jobFinished] ?? 0) + (counts[.failed] ?? 0) == everything.count
        }
        stop.value = true
        #expect(last.terminate() == 0)
        for id in Set(conflicts.items) {
            let history = try Query(site: site).find(id).record?.history ?? []
            if !history.contains(where: { $0.reason?.contains("given back RUNNING") == true }) {
                launcherErrors.append("\(id): a conflict, and the watcher never took it back: \(history)")
            }
        }
        #expect(launcherErrors.items.isEmpty, "the launcher's moves must not be disturbed by recovery")
        let lost = Set(everything).subtracting(try SiteIndex(site: site).finalLines().map(\.id))
        if !lost.isEmpty {
            // Say where the unfinished jobs are, for the failure report.
            let tmp = entries(site.tmpPath).joined(separator: " ")
            let states = lost.map { id in
                let line =
                    (try? String(
                        contentsOfFile: site.eventsPath + "/" + Posix.hostName() + ".jsonl", encoding: .utf8))?
                    .split(separator: "\n").filter { $0.contains(id) }.suffix(2).joined(separator: " | ") ?? ""
                return "\(id): \(line)"
            }
            let report =
                "jobs without an end: \(states); launcher errors: \(launcherErrors.items); tmp/: \(tmp); rejected/: \(entries(site.rejectedPath)); "
                + "watcher log: \(last.log.suffix(2000))"
            Issue.record("\(report)")
        }

        // Exactly one final-index line per job, no active entries, nothing left in tmp/.
        let finalLines = try SiteIndex(site: site).finalLines()
        #expect(finalLines.count == everything.count)
        #expect(Set(finalLines.map(\.id)) == Set(everything))
        for state in JobState.active { #expect(try SiteIndex(site: site).activeIDs(state).isEmpty) }
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
        // Every history is a legal path; the event log holds every transition (a redone step may repeat).
        let events = try read(site.eventsPath + "/" + Posix.hostName() + ".jsonl").split(separator: "\n")
        var eventsByJob: [String: [(JobState, JobState)]] = [:]
        for line in events {
            guard case .object(let o) = try JSONValue.parse(String(line)), let job = o["job"]?.stringValue,
                let from = o["from"]?.stringValue.flatMap(JobState.init(rawValue:)),
                let to = o["to"]?.stringValue.flatMap(JobState.init(rawValue:))
            else { continue }
            eventsByJob[job, default: []].append((from, to))
        }
        for id in everything {
            let listing = try Query(site: site).find(id)
            let history = try #require(listing.record).history.map(\.state)
            for (a, b) in zip(history, history.dropFirst()) {
                #expect(a.canTransition(to: b), "\(id): \(a) -> \(b)")
            }
            let logged = eventsByJob[id] ?? []
            #expect(logged.first?.0 == .created && logged.last?.1 == listing.state, "\(id) events \(logged)")
            for (from, to) in logged { #expect(from.canTransition(to: to)) }
        }
    }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    var value: Bool {
        get { lock.withLock { flag } }
        set { lock.withLock { flag = newValue } }
    }
}

final class LockedList: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    var items: [String] { lock.withLock { list } }
    func append(_ item: String) { lock.withLock { list.append(item) } }
}
