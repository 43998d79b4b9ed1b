import Foundation
import TestSupport
import Testing

@testable import Spool

@Suite struct SiteTests {
    @Test func initMakesTheWholeLayout() throws {
        let dir = try TempDir()
        let site = try Site.create(at: dir.path + "/s", name: "alpha")
        #expect(site.name == "alpha")
        for sub in Site.directories { #expect(FileManager.default.fileExists(atPath: site.root + "/" + sub), "\(sub)") }
        let marker = try JSONValue.parse(read(site.markerPath))
        #expect(marker.objectValue?["format"] == .int(Site.formatVersion))
        let settings = try read(site.settingsPath)
        #expect(settings.contains("name: \"alpha\"") && settings.contains("# "))
        #expect(try YAML.parse(settings).objectValue?["launcher"]?.objectValue?["idle_ttl_sec"] == .int(60))
        #expect(throws: SpoolError.self) { try Site.create(at: site.root) }
        try FileManager.default.createDirectory(atPath: dir.path + "/file-parent", withIntermediateDirectories: false)
        try "x".write(toFile: dir.path + "/file-parent/f", atomically: false, encoding: .utf8)
        #expect { _ = try Site.create(at: dir.path + "/file-parent/f/s") } throws: {
            ($0 as? SpoolError)?.code == .cannotCreate
        }
        let nested = try Site.create(at: dir.path + "/missing/parent/s")
        #expect(Site.directories.allSatisfy { FileManager.default.fileExists(atPath: nested.root + "/" + $0) })
        #expect(entries(dir.path) == ["file-parent", "missing", "s"])  // no staging leftovers
        #expect(entries(dir.path + "/missing/parent") == ["s"])
    }

    @Test func openRefusesDirectoriesThatAreNotSitesAndNewerFormats() throws {
        let dir = try TempDir()
        #expect { _ = try Site.open(dir.path) } throws: {
            ($0 as? SpoolError)?.code == .notFound && "\($0)".contains("not a Balsam site")
        }
        let site = try Site.create(at: dir.path + "/s")
        try #"{"format":99,"name":"s"}"#.write(toFile: site.markerPath, atomically: false, encoding: .utf8)
        #expect { _ = try Site.open(site.root) } throws: {
            ($0 as? SpoolError)?.code == .unavailable && "\($0)".contains("format 99")
        }
    }

    @Test func locateUsesFlagThenEnvironmentThenAncestors() throws {
        let dir = try TempDir()
        let a = try Site.create(at: dir.path + "/a")
        let b = try Site.create(at: dir.path + "/b")
        try FileManager.default.createDirectory(atPath: a.root + "/data/x/y", withIntermediateDirectories: true)
        #expect(try Site.locate(explicit: b.root, environment: a.root, from: "/").root == b.root)
        #expect(try Site.locate(explicit: nil, environment: b.root, from: a.root + "/data/x/y").root == b.root)
        #expect(try Site.locate(explicit: nil, environment: nil, from: a.root + "/data/x/y").root == a.root)
        #expect(throws: SpoolError.self) { try Site.locate(explicit: nil, environment: nil, from: dir.path) }
    }

    @Test func submitMakesADurableIndexedJobDirectory() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (job, state) = try submission.submit(helloJob("runs/one"))
        #expect(state == .ready && JobID.isValid(job.id))
        let jobDir = site.jobDirectory("runs/one")
        #expect(entries(jobDir) == ["job.json", "state"])
        #expect(try Job(bytes: Array(read(jobDir + "/job.json").utf8)) == job)
        let record = try StateRecord(bytes: Array(read(jobDir + "/state").utf8), path: "")
        #expect(record.state == .ready && record.history.count == 1)
        #expect(try read(jobDir + "/state").hasPrefix(#"{"state":"READY""#))
        // The entry is the job's job.json under a second name: same inode, no inode of its own.
        var entry = stat()
        var spec = stat()
        #expect(stat(site.activePath(.ready) + "/" + job.id, &entry) == 0 && stat(jobDir + "/job.json", &spec) == 0)
        #expect(entry.st_ino == spec.st_ino && spec.st_nlink == 2)
        #expect(entries(site.stagingPath).isEmpty)
        let events = try read(site.eventsPath + "/" + Posix.hostName() + ".jsonl")
        #expect(events.contains(#""from":"CREATED""#) && events.contains(job.id))
    }

    @Test func submitRefusesBadJobsAndLeavesNothingBehind() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        _ = try submission.submit(helloJob("taken"))
        var unknownApp = helloJob("u")
        unknownApp.app = "nope"
        var extra = helloJob("e")
        extra.parameters["bogus"] = .int(1)
        var orphan = helloJob("o")
        orphan.parentIDs = [JobID.make()]
        let cases: [(Job, SpoolError.Code, String)] = [
            (unknownApp, .notFound, "no app 'nope'"),
            (Job(workdir: "m", app: "hello"), .invalidInput, "missing required parameter 'name'"),
            (extra, .invalidInput, "no parameter 'bogus'"),
            (helloJob("taken"), .cannotCreate, "already exists"),
            (helloJob("taken/inner/x"), .cannotCreate, "inside the directory of job 'taken'"),
            (orphan, .invalidInput, "unknown parent"),
        ]
        try "file".write(toFile: site.dataPath + "/afile", atomically: false, encoding: .utf8)
        for (job, code, message) in cases + [(helloJob("afile/x"), .cannotCreate, "parent of it is a file")] {
            #expect {
                _ = try submission.submit(job)
            } throws: { error in
                guard let error = error as? SpoolError else { return false }
                return error.code == code && error.description.contains(message)
            }
        }
        #expect(visibleEntries(site.dataPath) == ["afile", "taken"])
        #expect(try SiteIndex(site: site).activeIDs(.ready).count == 1)
        #expect(entries(site.stagingPath).isEmpty)
    }

    @Test func childrenWaitForUnfinishedParents() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (parent, _) = try submission.submit(helloJob("p"))
        var child = helloJob("c")
        child.parentIDs = [parent.id]
        #expect(try submission.submit(child).1 == .awaitingParents)
        // A parent that has finished: recorded in the final index.
        try SiteIndex(site: site).appendFinal(
            [.init(id: parent.id, state: .jobFinished, workdir: "p", app: "hello", time: Timestamp.now())], sync: false)
        unlink(site.activePath(.ready) + "/" + parent.id)
        var submission2 = Submission(site: site)
        var child2 = helloJob("c2")
        child2.parentIDs = [parent.id]
        #expect(try submission2.submit(child2).1 == .ready)
    }

    @Test func bulkAcceptIsAllOrNothingAndVisibleAtOnce() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let bad = """
            {"app":"hello","workdir":"a","parameters":{"name":"x"}}
            {"app":"hello","workdir":"a","parameters":{"name":"y"}}
            not json

            {"app":"hello","workdir":"/abs","parameters":{"name":"z"}}
            """
        let result = try submission.accept(Array(bad.utf8))
        #expect(result.accepted.isEmpty)
        #expect(result.failures.map(\.line) == [2, 3, 5])
        #expect(result.failures[0].error.message.contains("used by another job of this submission"))
        #expect(entries(site.acceptedPath).isEmpty && entries(site.stagingPath).isEmpty)

        let good = (0..<50).map { #"{"app":"hello","workdir":"d/\#($0)","parameters":{"name":"n\#($0)"}}"# }
            .joined(separator: "\n")
        let ok = try submission.accept(Array(good.utf8))
        #expect(ok.failures.isEmpty && ok.accepted.count == 50)
        #expect(ok.accepted.map(\.job.id) == ok.accepted.map(\.job.id).sorted())
        #expect(entries(site.acceptedPath).count == 1)
        let query = Query(site: site)
        #expect(try query.countByState()[.ready] == 50)
        var filter = JobFilter()
        filter.workdir = WorkdirPattern("d/4*")
        #expect(
            try query.list(filter, load: true).map(\.workdir) == [
                "d/4", "d/40", "d/41", "d/42", "d/43", "d/44", "d/45", "d/46", "d/47", "d/48", "d/49",
            ])
        // A pending workdir cannot be taken by a later submission.
        var other = Submission(site: site)
        #expect { _ = try other.submit(helloJob("d/7")) } throws: { "\($0)".contains("not made yet") }

        let report = try Ingest(site: site).materializePending()
        #expect(report.materialized == 50 && report.batches == 1)
        #expect(entries(site.acceptedPath).isEmpty)
        #expect(try query.countByState()[.ready] == 50)
        #expect(try SiteIndex(site: site).activeIDs(.ready).count == 50)
        let first = ok.accepted[0].job
        #expect(try Job(bytes: Array(read(site.jobDirectory("d/0") + "/job.json").utf8)) == first)
    }

    @Test func countsAgreeWithTheListingWhileABatchIsBeingMade() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let lines = (0..<10).map { #"{"app":"hello","workdir":"half/\#($0)","parameters":{"name":"x"}}"# }
        let accepted = try submission.accept(Array(lines.joined(separator: "\n").utf8))
        let name = try #require(try SiteIndex(site: site).batchNames().first)
        let saved = try Data(contentsOf: URL(fileURLWithPath: site.acceptedPath + "/" + name))
        _ = try Ingest(site: site).materializePending()
        // As an ingest pass sees it midway (or after a crash before the batch file went): every job has its
        // directory and entry, and the batch is still there.
        try saved.write(to: URL(fileURLWithPath: site.acceptedPath + "/" + name))
        try Data().write(to: URL(fileURLWithPath: site.acceptedPath + "/." + name + ".materializing"))
        let query = Query(site: site)
        let counts = { try query.countByState().filter { $0.value > 0 } }
        #expect(try counts() == [.ready: 10], "not 20")
        #expect(try query.list(JobFilter(), load: false).count == 10)
        // One of them ended meanwhile: counted once, from the final index.
        let store = JobStore(site: site, actor: "test")
        let loaded = try #require(try store.load(accepted.accepted[0].job.id))
        try store.move(loaded, to: .failed, reason: "test")
        #expect(try counts() == [.ready: 9, .failed: 1])
        _ = try Ingest(site: site).materializePending()
        #expect(try counts() == [.ready: 9, .failed: 1])
        #expect(entries(site.acceptedPath).isEmpty, "the resumed pass removed the batch and its marker")
    }

    /// Two submitters at once each pass the submission's check (neither sees the other's batch); ingest refuses
    /// the directory that would land inside another job's, in either order.
    @Test(arguments: [false, true])
    func concurrentSubmissionsNeverNestJobDirectories(innerFirst: Bool) throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let outer = (0..<10).map { #"{"app":"hello","workdir":"n/\#($0)","parameters":{"name":"o"}}"# }
        let inner = (0..<10).map { #"{"app":"hello","workdir":"n/\#($0)/sub","parameters":{"name":"i"}}"# }
        var late = Submission(site: site)
        try late.checkWorkdirFree("unrelated", claimedWorkdirs: [])  // it looked before the other wrote its batch
        var early = Submission(site: site)
        let first = innerFirst ? inner : outer
        let second = innerFirst ? outer : inner
        #expect(try early.accept(Array(first.joined(separator: "\n").utf8)).accepted.count == 10)
        #expect(try late.accept(Array(second.joined(separator: "\n").utf8)).accepted.count == 10)
        let report = try Ingest(site: site).materializePending()
        #expect(report.conflicts.count == 10)
        let counts = try Query(site: site).countByState().filter { $0.value > 0 }
        #expect(counts == [.ready: 10, .failed: 10])
        for i in 0..<10 {
            let made = try Query(site: site).find("n/\(i)" + (innerFirst ? "/sub" : ""))
            #expect(made.state == .ready)
        }
        if !innerFirst {
            #expect(!exists(site.jobDirectory("n/0/sub")), "no directory was made inside another job's")
            let failed = try Query(site: site).list(JobFilter(), load: true).filter { $0.state == .failed }
            #expect(failed.allSatisfy { $0.record?.reason?.contains("inside the directory of job 'n/") == true })
        }
        let problems = try Fsck(site: site).run(repair: false).problems
        #expect(problems.isEmpty, "\(problems)")
    }

    @Test func fsckReportsAJobInsideAnotherJobsDirectory() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        _ = try submission.submit(helloJob("outer"))
        let (moved, _) = try submission.submit(helloJob("x"))
        // Nested by hand, as an older version could leave it: the directory moved in, its spec rewritten in place.
        try FileManager.default.moveItem(atPath: site.jobDirectory("x"), toPath: site.jobDirectory("outer/x"))
        var spec = moved
        spec.workdir = "outer/x"
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: site.jobDirectory("outer/x") + "/job.json"))
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data(spec.fileBytes()))
        try handle.close()
        let problems = try Fsck(site: site).run(repair: false).problems
        #expect(problems.count == 1 && problems[0].message.contains("lies inside the directory of job"), "\(problems)")
    }

    @Test func ingestResumesAfterAnInterruptedPassAndFailsConflicts() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let lines = (0..<4).map { #"{"app":"hello","workdir":"r/\#($0)","parameters":{"name":"n"}}"# }
        let ok = try submission.accept(Array(lines.joined(separator: "\n").utf8))
        // Simulate a crash: r/0 fully made, r/1 made with a torn job.json and no state, r/2 taken by a stranger's
        // job, r/3 holding inputs staged for it (adopted).
        let batch = try SiteIndex(site: site).readBatch(try SiteIndex(site: site).batchNames()[0])
        try FileManager.default.createDirectory(atPath: site.jobDirectory("r/0"), withIntermediateDirectories: true)
        try Data(batch.lines[0].jobJSON + [0x0A]).write(
            to: URL(fileURLWithPath: site.jobDirectory("r/0") + "/job.json"))
        try StateRecord(initial: .ready, actor: "x").fileBytes().withUnsafeBytes {
            try Data($0).write(to: URL(fileURLWithPath: site.jobDirectory("r/0") + "/state"))
        }
        try FileManager.default.createDirectory(atPath: site.jobDirectory("r/1"), withIntermediateDirectories: true)
        try "{\"app\":".write(toFile: site.jobDirectory("r/1") + "/job.json", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: site.jobDirectory("r/2"), withIntermediateDirectories: true)
        try "mine".write(toFile: site.jobDirectory("r/2") + "/notes.txt", atomically: false, encoding: .utf8)
        try #"{"id":"01STRANGER","app":"hello"}"#.write(
            toFile: site.jobDirectory("r/2") + "/job.json", atomically: false, encoding: .utf8)
        try dir.file("site/data/r/3/in.dat", "staged")

        let report = try Ingest(site: site).materializePending()
        #expect(report.materialized == 3)
        #expect(report.conflicts == [ok.accepted[2].job.id])
        #expect(try read(site.jobDirectory("r/2") + "/notes.txt") == "mine")  // nothing of the stranger's is lost
        #expect(try read(site.jobDirectory("r/3") + "/in.dat") == "staged")
        #expect(entries(site.jobDirectory("r/3")) == ["in.dat", "job.json", "state"])
        let conflictDir = site.jobDirectory(".balsam-conflicts/" + ok.accepted[2].job.id)
        #expect(try read(conflictDir + "/state").contains("FAILED"))
        let counts = try Query(site: site).countByState()
        #expect(counts[.ready] == 3 && counts[.failed] == 1)
        #expect(try Job(bytes: Array(read(site.jobDirectory("r/1") + "/job.json").utf8)).id == ok.accepted[1].job.id)
        // Idempotent: a second pass does nothing.
        let again = try Ingest(site: site).materializePending()
        #expect(again.materialized == 0 && again.batches == 0)
    }

    @Test func adoptMovesAHandMadeDirectoryAndLeavesFailuresUntouched() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        try dir.file("mine/job.json", #"{"app":"hello","parameters":{"name":"me"}}"#)
        try dir.file("mine/input.dat", "payload")
        var submission = Submission(site: site)
        let (job, _) = try submission.adopt(directory: dir.path + "/mine")
        #expect(job.workdir == "mine")
        #expect(!exists(dir.path + "/mine"))
        #expect(try read(site.jobDirectory("mine") + "/input.dat") == "payload")
        #expect(entries(site.jobDirectory("mine")) == ["input.dat", "job.json", "state"])

        let original = #"{"app":"hello","workdir":"mine","parameters":{"name":"again"}}"#
        try dir.file("dup/job.json", original)
        #expect { _ = try submission.adopt(directory: dir.path + "/dup") } throws: {
            "\($0)".contains("already exists")
        }
        #expect(try read(dir.path + "/dup/job.json") == original)
        #expect(entries(dir.path + "/dup") == ["job.json"])

        try FileManager.default.createSymbolicLink(atPath: dir.path + "/link", withDestinationPath: dir.path + "/dup")
        #expect { _ = try submission.adopt(directory: dir.path + "/link") } throws: {
            "\($0)".contains("symbolic link")
        }
    }

    @Test func dropBoxAdoptsGoodDirectoriesAndRejectsBadOnesWithAReason() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        try dir.file("site/queue/new/good/job.json", #"{"app":"hello","parameters":{"name":"x"}}"#)
        try dir.file("site/queue/new/bad/job.json", #"{"app":"hello"}"#)
        try dir.file("site/queue/new/.copying/job.json", #"{"app":"hello","parameters":{"name":"x"}}"#)
        var report = Ingest.Report()
        try Ingest(site: site).adoptDropBox(into: &report)
        #expect(report.adopted == ["good"])
        #expect(report.rejected.map(\.name) == ["bad"])
        #expect(entries(site.dropBoxPath) == [".copying"])
        #expect(try read(site.rejectedPath + "/bad.reason").contains("missing required parameter 'name'"))
        #expect(try read(site.rejectedPath + "/bad/job.json") == #"{"app":"hello"}"#)
        #expect(exists(site.jobDirectory("good") + "/state"))
    }

    @Test func aHugeJobFileIsRefusedWithoutReadingIt() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let path = dir.path + "/huge/job.json"
        try FileManager.default.createDirectory(atPath: dir.path + "/huge", withIntermediateDirectories: true)
        let fd = open(path, O_WRONLY | O_CREAT, 0o644)
        ftruncate(fd, 100 << 20)
        close(fd)
        var submission = Submission(site: site)
        #expect { _ = try submission.adopt(directory: dir.path + "/huge") } throws: {
            ($0 as? SpoolError)?.code == .invalidInput && "\($0)".contains("limit")
        }
        #expect(visibleEntries(site.dataPath).isEmpty)
    }

    @Test(.enabled(if: canMount)) func aFullFilesystemFailsCleanlyAndLosesNothing() throws {
        let fs = try SmallFilesystem(size: "2m")
        let small = try Site.create(at: fs.path + "/site")
        try small.createApp(
            App(name: "hello", commandTemplate: "echo {{ name }}", parameters: ["name": .init(required: true)]))
        var submission = Submission(site: small)
        let (kept, _) = try submission.submit(helloJob("kept"))
        fs.fill()
        #expect {
            _ = try submission.submit(helloJob("new", name: String(repeating: "x", count: 8000)))
        } throws: { ($0 as? SpoolError)?.code == .io && "\($0)".contains("No space left") }
        let many = (0..<200).map {
            #"{"app":"hello","workdir":"m/\#($0)","parameters":{"name":"\#(String(repeating: "y", count: 2000))"}}"#
        }
        #expect { _ = try submission.accept(Array(many.joined(separator: "\n").utf8)) } throws: {
            ($0 as? SpoolError)?.code == .io
        }
        #expect(visibleEntries(small.dataPath) == ["kept"])
        #expect(entries(small.stagingPath).isEmpty && entries(small.acceptedPath).isEmpty)
        #expect(try SiteIndex(site: small).activeIDs(.ready) == [kept.id])
        #expect(try read(small.jobDirectory("kept") + "/job.json").contains(kept.id))
    }

    @Test(.enabled(if: canMount)) func aReadOnlySiteIsReportedAsAnIOError() throws {
        let fs = try SmallFilesystem(size: "2m")
        let site = try Site.create(at: fs.path + "/site")
        try site.createApp(
            App(name: "hello", commandTemplate: "echo {{ name }}", parameters: ["name": .init(required: true)]))
        try fs.remountReadOnly()
        var submission = Submission(site: site)
        #expect {
            _ = try submission.submit(helloJob("x"))
        } throws: { ($0 as? SpoolError)?.code == .io && "\($0)".contains("Read-only") }
        #expect(try Query(site: site).countByState().values.reduce(0, +) == 0)
    }
}

@Suite struct SeparateDataFilesystemTests {
    @Test(.enabled(if: canMount)) func dataOnAnotherFilesystemUsesSymlinkEntries() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let fs = try SmallFilesystem(size: "4m")
        try FileManager.default.removeItem(atPath: site.dataPath)
        try FileManager.default.createDirectory(
            atPath: fs.path + "/data/.balsam-staging", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: site.dataPath, withDestinationPath: fs.path + "/data")
        var submission = Submission(site: site)
        let (job, _) = try submission.submit(helloJob("on/scratch"))
        let entry = site.activePath(.ready) + "/" + job.id
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: entry) == "../../data/on/scratch/job.json")
        let listed = try Query(site: site).list(JobFilter(), load: false)
        #expect(listed.map(\.workdir) == ["on/scratch"] && listed[0].job?.id == job.id)
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
    }
}

@Suite struct CountTests {
    @Test func aJobIsCountedOnceWhateverTheFinalIndexSays() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (retried, _) = try submission.submit(helloJob("retried"))
        let index = SiteIndex(site: site)
        let other = JobID.make()
        let now = Timestamp.now()
        // `retried` ended FAILED, then was retried (it is READY again); `other` failed, was retried, and finished.
        try index.appendFinal(
            [
                .init(id: retried.id, state: .failed, workdir: "retried", app: "hello", time: now),
                .init(id: other, state: .failed, workdir: "other", app: "hello", time: now),
                .init(id: other, state: .jobFinished, workdir: "other", app: "hello", time: now),
            ], sync: false)
        let counts = try Query(site: site).countByState()
        #expect(counts[.ready] == 1 && counts[.failed, default: 0] == 0 && counts[.jobFinished] == 1)
        #expect(JobKey(retried.id.utf8) != JobKey(other.utf8) && JobKey("not-an-id".utf8) == nil)
    }
}
