import Foundation
import Spool
import TestSupport
import Testing

/// `balsam kill`, `retry`, `rm` and `modify` as real binaries, without a watcher running.
@Suite struct ControlTests {
    let dir: TempDir
    let site: Site

    init() throws {
        dir = try TempDir()
        site = try makeSite(dir)
    }

    func submit(_ workdir: String, tags: [String: String] = [:], parents: [String] = []) throws -> String {
        var job = helloJob(workdir)
        job.tags = tags
        job.parentIDs = parents
        var submission = Submission(site: site)
        return try submission.submit(job).0.id
    }

    func state(_ id: String) throws -> JobState { try Query(site: site).find(id).state }

    /// Starts `balsam` with `args` without waiting (so several run at once); `wait()` gives the status.
    func start(_ args: [String]) throws -> Spawned {
        try Spawned(binDirectory + "/balsam", args, environment: ["BALSAM_SITE": site.root, "PATH": "/usr/bin:/bin"])
    }

    /// Two commands on the same ended jobs at once: each job is changed by one of them, legally, never twice.
    @Test(arguments: [["retry", "--all"], ["rm", "--all"]])
    func concurrentControlsOnEndedJobsTakeEachJobOnce(second: [String]) throws {
        var submission = Submission(site: site)
        let lines = (0..<150).map { #"{"app":"hello","workdir":"c/\#($0)","parameters":{"name":"x"}}"# }
        let ids = try submission.accept(Array(lines.joined(separator: "\n").utf8)).accepted.map(\.job.id)
        #expect(try balsam(["kill", "--all"], site: site.root).status == 0)
        let first = try start(["retry", "--all"])
        let other = try start(second)
        first.waitUntilExit()
        other.waitUntilExit()
        for (i, id) in ids.enumerated() {
            let listing = try? Query(site: site).find(id)
            guard let listing else {
                // Removed: gone from the listing and from disk.
                #expect(second == ["rm", "--all"])
                #expect(!FileManager.default.fileExists(atPath: site.jobDirectory("c/\(i)")))
                continue
            }
            let history = try #require(listing.record?.history.map(\.state))
            #expect(history.filter { $0 == .ready }.count == 2, "\(id): \(history)")  // submitted, retried once
            #expect(listing.state == .ready)
            #expect(FileManager.default.fileExists(atPath: site.jobDirectory(listing.workdir) + "/state"))
        }
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
        #expect(
            try balsam(["ls", "--json"], site: site.root).stdout.split(separator: "\n").count
                == (try Query(site: site).countByState().values.reduce(0, +)))
    }

    @Test func killRetryAndTheirReports() throws {
        let a = try submit("a", tags: ["grp": "x"])
        let b = try submit("b", tags: ["grp": "x"])
        let c = try submit("c", tags: ["grp": "y"])
        let kill = try balsam(["kill", "--tag", "grp=x", "--reason", "wrong input"], site: site.root)
        #expect(kill.status == 0, "\(kill.stderr)")
        #expect(kill.stdout.contains("\(a) done: FAILED") && kill.stdout.contains("\(b) done: FAILED"))
        #expect(try state(a) == .failed && state(c) == .ready)
        #expect(try Query(site: site).find(a).record?.reason == "wrong input")
        let again = try balsam(["kill", a], site: site.root)
        #expect(again.status == 0 && again.stdout.contains("unchanged: already ended FAILED"))

        let retry = try balsam(["retry", "--state", "FAILED"], site: site.root)
        #expect(retry.status == 0 && retry.stdout.split(separator: "\n").count == 2)
        #expect(try state(a) == .ready && state(b) == .ready)
        let restart = try balsam(["retry", c], site: site.root)
        #expect(restart.stdout.contains("unchanged: is READY, not FAILED"))
        #expect(try balsam(["kill"], site: site.root).status == 64, "no selection is a usage error")
        #expect(try balsam(["kill", "--tag", "grp=none"], site: site.root).status == 66)
    }

    @Test func jobsHeldByALauncherAreRequestedOrReportedNeverSkipped() throws {
        let running = try submit("r")
        let idle = try submit("i")
        for id in [running, idle] {
            let store = JobStore(site: site, actor: "test")
            let ready = try #require(try store.load(id, in: .ready))
            let staged = try store.move(ready, to: .stagedIn)
            try store.move(staged, to: .preprocessed)
        }
        let lease = try Lease.create(site)
        #expect(lease.claim(running, from: .preprocessed, site: site))
        let store = JobStore(site: site, actor: "test-launcher")
        try store.move(
            try #require(try store.load(entryAt: lease.path + "/" + running)), to: .running,
            entryAt: lease.path + "/" + running)

        let rm = try balsam(["rm", running, idle], site: site.root)
        #expect(rm.status == 75, "one could not be removed now")
        #expect(rm.stdout.contains("\(running) not now: RUNNING under a launcher"))
        #expect(rm.stdout.contains("\(idle) done: removed"))
        #expect(!FileManager.default.fileExists(atPath: site.jobDirectory("i")))
        #expect(try Query(site: site).countByState().values.reduce(0, +) == 1)

        let kill = try balsam(["kill", running], site: site.root)
        #expect(kill.status == 0 && kill.stdout.contains("requested"))
        #expect(FileManager.default.fileExists(atPath: site.controlPath + "/kill." + running))
        #expect(try state(running) == .running, "its launcher carries the kill out")
    }

    @Test func modifyChangesSpecsAndChecksThem() throws {
        let id = try submit("m", tags: ["k": "v"])
        let ok = try balsam(
            ["modify", id, "--set-tag", "k=w", "--set-data", "n=3", "--set-param", "name=you", "--num-nodes", "4"],
            site: site.root)
        #expect(ok.status == 0 && ok.stdout.contains("done: modified"), "\(ok.stdout) \(ok.stderr)")
        let job = try #require(try Query(site: site).find(id).job)
        #expect(job.tags == ["k": "w"] && job.data["n"] == .int(3) && job.parameters["name"] == .string("you"))
        #expect(job.numNodes == 4)
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty, "the entry follows the new job.json")
        let bad = try balsam(["modify", id, "--set-param", "bogus=1"], site: site.root)
        #expect(bad.status == 65 && bad.stdout.contains("no parameter 'bogus'"), "bad data, not 'try again'")
        let zero = try balsam(["modify", id, "--num-nodes", "0"], site: site.root)
        #expect(zero.status == 65 && zero.stdout.contains("'num_nodes' must be between 1"))
        #expect(try Query(site: site).find(id).job?.numNodes == 4)
    }

    @Test func removedFinishedJobsLeaveTheCounts() throws {
        let id = try submit("f")
        #expect(try balsam(["kill", id], site: site.root).status == 0)
        #expect(try Query(site: site).countByState()[.failed] == 1)
        let rm = try balsam(["rm", "--keep-files", id], site: site.root)
        #expect(rm.status == 0, "\(rm.stdout)")
        #expect(try Query(site: site).countByState().values.reduce(0, +) == 0)
        #expect(FileManager.default.fileExists(atPath: site.jobDirectory("f") + "/job.json.removed"))
        #expect(try balsam(["show", id], site: site.root).status == 66)
    }

    /// A random DAG whose roots fail at first: their descendants fail through them. Retrying a root says which
    /// jobs stay failed because of it; `--with-children` takes them along; `retry --all` sends each job whose
    /// parents have not finished to wait for them. Every job then finishes, none before its parents.
    @Test(arguments: [UInt64(1), 2, 3])
    func retryingParentsTakesTheirFailedChildrenAlong(seed: UInt64) throws {
        #expect(
            try balsam(
                [
                    "app", "create", "gate", "--command-template", #"test -e "$BALSAM_SITE/ok""#, "--on-error-retries",
                    "0",
                ],
                site: site.root
            ).status == 0)
        #expect(
            try balsam(
                ["app", "create", "after", "--command-template", #"echo "$BALSAM_JOB_ID" >> "$BALSAM_SITE/order""#],
                site: site.root
            ).status == 0)
        var rng = SplitMix(seed: seed)
        var ids: [String] = []
        var parents: [String: [String]] = [:]
        for i in 0..<20 {
            var job = helloJob("dag/\(i)")
            job.parameters = [:]
            if i < 4 {
                job.app = "gate"
            } else {
                job.app = "after"
                let count = Int(rng.next() % 3) + 1
                job.parentIDs = Array(Set((0..<count).map { _ in ids[Int(rng.next() % UInt64(ids.count))] }))
            }
            var submission = Submission(site: site)
            let id = try submission.submit(job).0.id
            ids.append(id)
            parents[id] = job.parentIDs
        }
        func runSite() throws {
            let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
            // Stopped once every job has ended (idle, on a loaded machine, it could leave between two levels).
            let launcher = try LauncherProcess(
                site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "120"], logDirectory: dir.path)
            try waitUntil("every job has ended", timeout: 120) { ids.allSatisfy { (try? state($0))?.isFinal == true } }
            launcher.process.terminate()
            _ = launcher.wait(timeout: 60)
            #expect(watcher.terminate() == 0)
        }
        try runSite()
        #expect(try ids.allSatisfy { try state($0) == .failed })
        // Which parent each job failed through, as its reason says ("parent P ..." or "... (through parent P)").
        var through: [String: String] = [:]
        for id in ids.dropFirst(4) {
            let reason = try #require(try Query(site: site).find(id).record?.reason)
            let named =
                reason.hasPrefix("parent ")
                ? reason.dropFirst(7).prefix { $0 != " " }
                : reason.components(separatedBy: "(through parent ").last?.prefix { $0 != ")" } ?? ""
            #expect(parents[id]?.contains(String(named)) == true, "\(id): \(reason)")
            through[id] = String(named)
        }
        func failedBecause(of root: String) -> Set<String> {
            var found = Set<String>()
            var queue = [root]
            while let next = queue.popLast() {
                for (child, parent) in through where parent == next && found.insert(child).inserted {
                    queue.append(child)
                }
            }
            return found
        }

        // The first gate alone: the jobs that failed because of it are counted, and stay FAILED.
        try "".write(toFile: site.root + "/ok", atomically: false, encoding: .utf8)
        let first = try balsam(["retry", ids[0]], site: site.root)
        let below = failedBecause(of: ids[0])
        #expect(first.status == 0 && first.stdout.contains("\(ids[0]) done: READY"), "\(first.stdout)")
        #expect(
            below.isEmpty
                ? !first.stdout.contains("stay FAILED")
                : first.stdout.contains("; \(below.count) job(s) that failed because it did stay FAILED"),
            "\(below.count): \(first.stdout)")
        #expect(try below.allSatisfy { try state($0) == .failed })
        // The other gates with theirs; then whatever is left, each to wait for its parents.
        let others = try balsam(["retry", "--with-children", "-y", ids[1], ids[2], ids[3]], site: site.root)
        #expect(others.status == 0, "\(others.stdout)\(others.stderr)")
        let taken = failedBecause(of: ids[1]).union(failedBecause(of: ids[2])).union(failedBecause(of: ids[3]))
        for id in ids.dropFirst(4) {
            #expect(try state(id) == (taken.contains(id) ? .awaitingParents : .failed), "\(id)")
        }
        let rest = try balsam(["retry", "--all", "-y"], site: site.root)
        #expect(rest.status == 0, "\(rest.stdout)\(rest.stderr)")
        #expect(try ids.dropFirst(4).allSatisfy { try state($0) == .awaitingParents })
        try runSite()
        for id in ids where try state(id) != .jobFinished {
            let record = try Query(site: site).find(id).record
            let history = record?.history.map(\.state.rawValue) ?? []
            Issue.record("not finished: \(id) \(record?.state.rawValue ?? "?"): \(record?.reason ?? "") \(history)")
        }
        // None ran before a parent of its: the order of their runs respects every edge.
        let order = try read(site.root + "/order").split(separator: "\n").map(String.init)
        for (child, its) in parents {
            guard let at = order.firstIndex(of: child) else { continue }
            for parent in its where parent != ids[0] && !ids.prefix(4).contains(parent) {
                #expect((order.firstIndex(of: parent) ?? .max) < at, "\(child) ran before its parent \(parent)")
            }
        }
    }
}
