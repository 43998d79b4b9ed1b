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
}
