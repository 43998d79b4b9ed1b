import Foundation
import Lifecycle
import Spool
import Synchronization
import TestSupport
import Testing

/// Hands a non-Sendable value to the one thread that uses it while the test awaits.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A site with apps and a way to play the launcher's part through the library.
struct Fixture {
    let dir: TempDir
    let site: Site
    let engine: Engine

    init(settings: String? = nil) throws {
        dir = try TempDir()
        site = try makeSite(dir)
        if let settings { try settings.write(toFile: site.settingsPath, atomically: false, encoding: .utf8) }
        engine = try Engine(site: site)
    }

    /// An app `name` running `true`, with hook scripts and extra app.yml lines.
    func app(_ name: String, hooks: [String: String] = [:], yaml: String = "", mode: Int = 0o755) throws {
        var app = try App(name: name, commandTemplate: "true")
        app.description = name
        try site.createApp(app)
        let dir = site.appsPath + "/" + name
        if !yaml.isEmpty {
            let text = try read(dir + "/app.yml") + yaml
            try text.write(toFile: dir + "/app.yml", atomically: false, encoding: .utf8)
        }
        for (hook, body) in hooks {
            try ("#!/bin/sh\n" + body + "\n").write(toFile: dir + "/" + hook, atomically: false, encoding: .utf8)
            chmod(dir + "/" + hook, mode_t(mode))
        }
    }

    @discardableResult
    func submit(_ workdir: String, app: String = "hello", parents: [String] = []) throws -> String {
        var job = app == "hello" ? helloJob(workdir) : Job(workdir: workdir, app: app)
        job.parentIDs = parents
        var submission = Submission(site: site)
        return try submission.submit(job).0.id
    }

    /// One engine pass, on a thread of its own: hooks run through swift-subprocess, which finishes each run in a
    /// task of the cooperative pool, so a pass must not block one of the pool's threads while it waits.
    @discardableResult
    func pass() async -> Engine.Report { await timedPass().report }

    /// `pass()`, with how long the pass itself took (measured on its thread, not counting the wait for the test
    /// to be resumed, which a busy test run can delay).
    func timedPass() async -> (report: Engine.Report, seconds: Double) {
        let engine = UncheckedBox(engine)
        return await withCheckedContinuation { continuation in
            Thread {
                let started = Date()
                let report = engine.value.pass()
                continuation.resume(returning: (report, Date().timeIntervalSince(started)))
            }.start()
        }
    }

    func state(_ id: String) throws -> JobState { try Query(site: site).find(id).state }

    func record(_ id: String) throws -> StateRecord {
        try #require(try Query(site: site).find(id).record)
    }

    /// What a launcher does: claim a runnable job, run it, report how it ended.
    func run(_ id: String, ending: JobState, returnCode: Int? = nil) throws {
        let launcher = JobStore(site: site, actor: "test-launcher")
        let state = try self.state(id)
        let loaded = try #require(try launcher.load(id, in: state))
        let running = try launcher.move(loaded, to: .running)
        try launcher.move(running, to: ending) { _, record in record.returnCode = returnCode }
    }
}

@Suite struct EngineTests {
    @Test func aJobGoesFromSubmissionToTheReadyQueueAndFromRunDoneToFinished() async throws {
        let f = try Fixture()
        let id = try f.submit("a")
        let report = await f.pass()
        #expect(report.moves == 1 && report.errors.isEmpty, "one move through STAGED_IN to PREPROCESSED: \(report)")
        #expect(try f.state(id) == .preprocessed)
        #expect(SiteIndex(site: f.site).activeState(of: id) == .preprocessed)
        try f.run(id, ending: .runDone, returnCode: 0)
        await f.pass()
        #expect(try f.state(id) == .jobFinished)
        let states = try f.record(id).history.map(\.state)
        #expect(
            states == [.ready, .stagedIn, .preprocessed, .running, .runDone, .postprocessed, .stagedOut, .jobFinished])
        let events = try read(f.site.eventsPath + "/" + Posix.hostName() + ".jsonl").split(separator: "\n")
            .filter { $0.contains(id) }
        #expect(events.count == states.count, "one event per transition, creation included")
        #expect(try Fsck(site: f.site).run(repair: false).problems.isEmpty)
    }

    @Test func aBulkSubmissionIsAdvancedAsItsDirectoriesAreMadeWithEveryStepLogged() async throws {
        let f = try Fixture()
        try f.app("hooked", hooks: ["preprocess": "exit 0"])
        var submission = Submission(site: f.site)
        let lines = (0..<6).map { i in
            i % 2 == 0
                ? #"{"app":"hello","workdir":"b/\#(i)","parameters":{"name":"n"}}"#
                : #"{"app":"hooked","workdir":"b/\#(i)"}"#
        }
        let ids = try submission.accept(Array(lines.joined(separator: "\n").utf8)).accepted.map(\.job.id)
        let parent = try #require(ids.first)
        let child = try f.submit("child", parents: [parent])
        var ingest = Ingest(site: f.site, actor: "balsam-watch")
        ingest.advance = { app, state in
            state == .ready && app == "hello" ? [(.stagedIn, "no stage-in"), (.preprocessed, nil)] : []
        }
        #expect(try ingest.run().materialized == 6)
        for (i, id) in ids.enumerated() {
            let expected: [JobState] = i % 2 == 0 ? [.ready, .stagedIn, .preprocessed] : [.ready]
            #expect(try f.record(id).history.map(\.state) == expected)
            #expect(SiteIndex(site: f.site).activeState(of: id) == expected.last)
            let events = try read(f.site.eventsPath + "/" + Posix.hostName() + ".jsonl").split(separator: "\n")
                .filter { $0.contains(id) }
            #expect(events.count == expected.count, "one event per transition, creation included: \(events)")
        }
        #expect(try f.state(child) == .awaitingParents)
        #expect(try Fsck(site: f.site).run(repair: false).problems.isEmpty)

        // The watcher's engine does the same (a hooked app stops at STAGED_IN for its hook).
        let more = try submission.accept(
            Array(lines.joined(separator: "\n").replacingOccurrences(of: "b/", with: "c/").utf8))
        await f.pass()
        for id in more.accepted.map(\.job.id) {
            #expect(try f.record(id).history.map(\.state).prefix(3) == [.ready, .stagedIn, .preprocessed])
        }
    }

    @Test func childrenWaitForParentsAndFailWithThem() async throws {
        let f = try Fixture()
        let good = try f.submit("good")
        let bad = try f.submit("bad")
        let child = try f.submit("child", parents: [good])
        let orphan = try f.submit("orphan", parents: [good, bad])
        let grandchild = try f.submit("grandchild", parents: [orphan])
        let greatGrandchild = try f.submit("great", parents: [grandchild])
        await f.pass()
        #expect(try f.state(child) == .awaitingParents && f.state(grandchild) == .awaitingParents)
        try f.run(good, ending: .runDone)
        try f.run(bad, ending: .runError, returnCode: 2)
        await f.pass()
        #expect(try f.state(good) == .jobFinished && f.state(bad) == .failed)
        #expect(try f.state(child) == .preprocessed)
        let badReason = try #require(try f.record(bad).reason)
        #expect(badReason.contains("return code 2"))
        #expect(try f.state(orphan) == .failed)
        #expect(try f.record(orphan).reason == "parent \(bad) (workdir bad) ended FAILED: \(badReason)")
        // Every descendant names the job that failed first, with its workdir and reason.
        for (id, through) in [(grandchild, orphan), (greatGrandchild, grandchild)] {
            #expect(try f.state(id) == .failed)
            #expect(
                try f.record(id).reason
                    == "ancestor \(bad) (workdir bad) ended FAILED: \(badReason) (through parent \(through))")
        }
    }

    @Test func hooksSeeTheJobAndMayChooseTheStateAndUpdateData() async throws {
        let f = try Fixture()
        try f.app(
            "hooked",
            hooks: [
                "preprocess": """
                echo "pre $BALSAM_JOB_ID $BALSAM_STATE $(pwd)"
                echo '{"data": {"prepared": true, "n": 3}, "reason": "inputs ready"}' > "$BALSAM_HOOK_RESULT"
                """,
                "postprocess": """
                echo "post rc=$BALSAM_RETURN_CODE data=$BALSAM_DATA"
                [ -e again ] && exit 0
                touch again
                echo '{"state": "RESTART_READY"}' > "$BALSAM_HOOK_RESULT"
                """,
            ])
        let id = try f.submit("h", app: "hooked")
        await f.pass()
        let dir = f.site.jobDirectory("h")
        #expect(try f.state(id) == .preprocessed)
        let listing = try Query(site: f.site).find(id)
        #expect(listing.job?.data == ["prepared": .bool(true), "n": .int(3)])
        #expect(listing.record?.reason == "inputs ready")
        // The change of data is in the event too (the sync pushes it from there).
        let events = try entries(f.site.eventsPath).map { try read(f.site.eventsPath + "/" + $0) }.joined()
        #expect(events.contains(#""data":{"data":{"n":3,"prepared":true}"#), "\(events)")
        let log = try read(dir + "/balsam.log")
        #expect(log.contains("pre \(id) STAGED_IN \(dir)"))
        try f.run(id, ending: .runDone, returnCode: 0)
        await f.pass()
        #expect(try f.state(id) == .restartReady, "postprocess asked for a rerun")
        #expect(try read(dir + "/balsam.log").contains(#"post rc=0 data={"n":3,"prepared":true}"#))
        try f.run(id, ending: .runDone, returnCode: 0)
        await f.pass()
        #expect(try f.state(id) == .jobFinished)
        #expect(try f.record(id).attempts == 2)
    }

    @Test func failingHangingAndBrokenHooksFailTheJobWithTheReason() async throws {
        let f = try Fixture(settings: "processing:\n  hook_timeout_sec: 0.5\n")
        try f.app("exits", hooks: ["preprocess": "echo 'cannot find input.dat' >&2; exit 3"])
        try f.app("hangs", hooks: ["preprocess": "echo started; sleep 30"])
        try f.app("asks", hooks: ["preprocess": #"echo '{"state": "JOB_FINISHED"}' > "$BALSAM_HOOK_RESULT""#])
        try f.app("garbled", hooks: ["preprocess": #"echo 'not json' > "$BALSAM_HOOK_RESULT""#])
        try f.app("plain", hooks: ["preprocess": "exit 0"], mode: 0o644)
        let exits = try f.submit("e", app: "exits")
        let hangs = try f.submit("h", app: "hangs")
        let asks = try f.submit("a", app: "asks")
        let garbled = try f.submit("g", app: "garbled")
        let plain = try f.submit("p", app: "plain")
        let (_, seconds) = await f.timedPass()
        #expect(seconds < 20, "the hanging hook was killed")
        for id in [exits, hangs, asks, garbled, plain] { #expect(try f.state(id) == .failed) }
        let reason = { (id: String) in (try? f.record(id).reason) ?? "" }
        #expect(
            reason(exits).contains("hook preprocess exited with status 3")
                && reason(exits).contains("cannot find input.dat"))
        #expect(reason(hangs).contains("did not finish within 0 s") && reason(hangs).contains("started"))
        #expect(reason(asks).contains("not a legal successor of STAGED_IN"))
        #expect(reason(garbled).contains("malformed"))
        #expect(reason(plain).contains("not executable"))
    }

    @Test func retryPoliciesBoundRetries() async throws {
        let f = try Fixture()
        try f.app("flaky", yaml: "")
        let appYAML = f.site.appsPath + "/flaky/app.yml"
        let text = try read(appYAML).replacingOccurrences(of: "on_error: {retries: 0}", with: "on_error: {retries: 2}")
            .replacingOccurrences(of: "on_timeout: {retries: 3}", with: "on_timeout: {retries: 1}")
        try text.write(toFile: appYAML, atomically: false, encoding: .utf8)
        let id = try f.submit("f", app: "flaky")
        await f.pass()
        for attempt in 1...2 {
            try f.run(id, ending: .runError, returnCode: 1)
            await f.pass()
            #expect(try f.state(id) == .restartReady, "retry \(attempt)")
            #expect(try f.record(id).errorRetries == attempt)
        }
        try f.run(id, ending: .runTimeout)
        await f.pass()
        #expect(try f.state(id) == .restartReady && f.record(id).timeoutRetries == 1)
        try f.run(id, ending: .runError, returnCode: 1)
        await f.pass()
        #expect(try f.state(id) == .failed)
        #expect(try f.record(id).reason == "RUN_ERROR (return code 1) and no retries left (2 allowed)")
        #expect(try f.record(id).attempts == 4)

        let defaults = try f.submit("d")
        await f.pass()
        try f.run(defaults, ending: .runError, returnCode: 7)
        await f.pass()
        #expect(try f.state(defaults) == .failed, "by default an error is not retried")
    }

    @Test func cleanupNeverDeletesTheSpoolsOwnFiles() async throws {
        let f = try Fixture()
        try f.app("greedy", yaml: "")
        let appYAML = f.site.appsPath + "/greedy/app.yml"
        let text = try read(appYAML).replacingOccurrences(of: "cleanup_files: []", with: #"cleanup_files: ["*"]"#)
        try text.write(toFile: appYAML, atomically: false, encoding: .utf8)
        let id = try f.submit("g", app: "greedy")
        let dir = f.site.jobDirectory("g")
        for name in ["job.out", "balsam.log", "output.dat"] {
            try "x".write(toFile: dir + "/" + name, atomically: false, encoding: .utf8)
        }
        await f.pass()
        try f.run(id, ending: .runDone)
        await f.pass()
        #expect(try f.state(id) == .jobFinished)
        #expect(visibleEntries(dir) == ["balsam.log", "job.json", "job.out", "state"], "output.dat alone goes")
        #expect(try Query(site: f.site).find(id).job?.id == id, "the job can still be shown")
        #expect(try Fsck(site: f.site).run(repair: false).problems.isEmpty)
    }

    @Test func cleanupDeletesMatchingFilesInsideTheJobDirectoryOnly() async throws {
        let f = try Fixture()
        try f.app("tidy", yaml: "")
        let appYAML = f.site.appsPath + "/tidy/app.yml"
        let text = try read(appYAML).replacingOccurrences(
            of: "cleanup_files: []", with: #"cleanup_files: ["*.tmp", "scratch/*", "../*.keep"]"#)
        try text.write(toFile: appYAML, atomically: false, encoding: .utf8)
        let id = try f.submit("t", app: "tidy")
        let dir = f.site.jobDirectory("t")
        try "x".write(toFile: dir + "/a.tmp", atomically: false, encoding: .utf8)
        try "x".write(toFile: dir + "/result.dat", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/scratch", withIntermediateDirectories: true)
        try "x".write(toFile: dir + "/scratch/big", atomically: false, encoding: .utf8)
        try "outside".write(toFile: f.dir.path + "/precious.tmp", atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: dir + "/link.tmp", withDestinationPath: f.dir.path + "/precious.tmp")
        await f.pass()
        try f.run(id, ending: .runDone)
        await f.pass()
        #expect(try f.state(id) == .jobFinished)
        #expect(visibleEntries(dir) == ["job.json", "link.tmp", "result.dat", "scratch", "state"])
        #expect(visibleEntries(dir + "/scratch").isEmpty)
        #expect(try read(f.dir.path + "/precious.tmp") == "outside")
    }

    @Test func brokenJobsAreQuarantinedAndTheRestGoOn() async throws {
        let f = try Fixture()
        let broken = try f.submit("broken")
        let fine = try f.submit("fine")
        try "{\"state\": \"WHATEVER\"".write(
            toFile: f.site.jobDirectory("broken") + "/state", atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: f.site.appsPath + "/hello")
        try f.app("other")
        let missingApp = try f.submit("m", app: "other")
        try FileManager.default.removeItem(atPath: f.site.appsPath + "/other")
        let report = await f.pass()
        #expect(try f.state(broken) == .failed)
        #expect(try f.record(broken).reason?.contains("quarantined") == true)
        #expect(FileManager.default.fileExists(atPath: f.site.jobDirectory("broken") + "/state.broken"))
        #expect(try f.state(fine) == .stagedIn || f.state(fine) == .failed)
        #expect(try f.state(missingApp) == .failed)
        #expect(try f.record(missingApp).reason?.contains("no app 'other'") == true)
        _ = report
    }

    @Test func droppedDirectoriesAreAdoptedByAPass() async throws {
        let f = try Fixture()
        try f.dir.file("site/queue/new/dropped/job.json", #"{"app":"hello","parameters":{"name":"drop"}}"#)
        try f.dir.file("site/queue/new/junk/job.json", "{")
        let young = await f.pass()
        #expect(
            young.ingested == 1 && !FileManager.default.fileExists(atPath: f.site.rejectedPath + "/junk.reason"),
            "a broken drop that just changed may still be being copied in")
        f.engine.dropSettleSeconds = 0
        let report = await f.pass()
        #expect(report.ingested == 0)
        #expect(try Query(site: f.site).find("dropped").state == .preprocessed)
        #expect(FileManager.default.fileExists(atPath: f.site.rejectedPath + "/junk.reason"))
    }

    @Test func aSymlinkedJobJSONIsRejectedAndHoldsUpNoOtherDrop() async throws {
        let f = try Fixture()
        f.engine.dropSettleSeconds = 0
        try f.dir.file("elsewhere.json", #"{"app":"hello","parameters":{"name":"x"}}"#)
        try FileManager.default.createDirectory(
            atPath: f.site.dropBoxPath + "/a-linked", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: f.site.dropBoxPath + "/a-linked/job.json", withDestinationPath: f.dir.path + "/elsewhere.json")
        try f.dir.file("site/queue/new/b-fine/job.json", #"{"app":"hello","parameters":{"name":"b"}}"#)
        await f.pass()
        #expect(try Query(site: f.site).find("b-fine").state == .preprocessed, "the drop sorting after it went in")
        let reason = try read(f.site.rejectedPath + "/a-linked.reason")
        #expect(reason.contains("symbolic link"), "\(reason)")
        #expect(visibleEntries(f.site.dropBoxPath).isEmpty)
    }
}

@Suite struct LeaseTests {
    @Test func anExpiredLeaseGivesItsJobsBack() async throws {
        let f = try Fixture()
        let running = try f.submit("r")
        let claimed = try f.submit("c")
        let child = try f.submit("child", parents: [running])
        await f.pass()
        let clock = Mutex(1000.0)
        f.engine.clock = { clock.withLock { $0 } }
        let lease = try Lease.create(f.site, info: ["batch_job": .string("test")])
        #expect(lease.claim(running, from: .preprocessed, site: f.site))
        #expect(lease.claim(claimed, from: .preprocessed, site: f.site))
        #expect(!lease.claim(claimed, from: .preprocessed, site: f.site), "a job is claimed once")
        let store = JobStore(site: f.site, actor: "test-launcher")
        let loaded = try #require(try store.load(entryAt: lease.path + "/" + running))
        try store.move(loaded, to: .running, entryAt: lease.path + "/" + running)
        #expect(try lease.jobIDs() == [claimed, running].sorted())

        // While the lease is alive, its jobs are listed and the child keeps waiting.
        await f.pass()
        let counts = try Query(site: f.site).countByState()
        #expect(counts[.running] == 1 && counts[.preprocessed] == 1 && counts[.awaitingParents] == 1)
        #expect(try f.state(child) == .awaitingParents)
        #expect(try f.state(running) == .running)

        // The launcher dies in the middle of a move of the claimed job: the entry is left under its claim name.
        #expect(rename(lease.path + "/" + claimed, lease.path + "/" + claimed + ".moving") == 0)
        #expect(try lease.jobIDs() == [claimed, running].sorted(), "a job being moved is still the lease's")
        #expect(SiteIndex(site: f.site).activeState(of: claimed) == .preprocessed)

        // The launcher's clock is stepped back an hour: its heartbeat still moves, so the lease lives on however
        // old its stamp looks (and however long the watcher's own clock says it has been).
        var old = [timespec(tv_sec: time(nil) - 3600, tv_nsec: 0), timespec(tv_sec: time(nil) - 3600, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, lease.path + "/.lease", &old, 0) == 0)
        clock.withLock { $0 += 100 }
        await f.pass()
        #expect(try f.state(running) == .running)
        #expect(FileManager.default.fileExists(atPath: lease.path))

        // The launcher dies: its heartbeat stops, and after the timeout on the watcher's monotonic clock the
        // lease is taken back.
        clock.withLock { $0 += 121 }
        await f.pass()
        #expect(try f.state(running) == .restartReady, "RUN_TIMEOUT, then the default timeout policy retries")
        #expect(try f.record(running).history.map(\.state).suffix(3) == [.running, .runTimeout, .restartReady])
        #expect(try f.state(claimed) == .preprocessed)
        #expect(SiteIndex(site: f.site).activeState(of: claimed) == .preprocessed)
        #expect(!FileManager.default.fileExists(atPath: lease.path))
        #expect(try Fsck(site: f.site).run(repair: false).problems.isEmpty)
    }
}
