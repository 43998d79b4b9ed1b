import Foundation
import Spool
import TestSupport
import Testing

@testable import Batch

/// Batch job records, the site's policy, and job scripts.
@Suite struct PolicyTests {
    let dir: TempDir

    init() throws { dir = try TempDir() }

    func site(scheduler: String = "slurm", extra: String = "") throws -> (String, Site) {
        let site = try Site.create(
            at: dir.path + "/site-" + scheduler + "-\(UUID().uuidString.prefix(6))", scheduler: scheduler)
        if !extra.isEmpty {
            let path = site.settingsPath
            let text = try String(contentsOfFile: path, encoding: .utf8) + extra
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        }
        return (site.root, site)
    }

    @Test("the launcher's wall time leaves a margin: 5%, at least 1 minute, at most 10, never half")
    func launcherWallTimeLeavesAMargin() {
        #expect(JobScript.launcherMinutes(30) == "28.5")
        #expect(JobScript.launcherMinutes(60) == "57")
        #expect(JobScript.launcherMinutes(5) == "4")
        #expect(JobScript.launcherMinutes(1) == "0.5")
        #expect(JobScript.launcherMinutes(720) == "710")
    }

    @Test func newSitesCarryTheirSchedulersDefaults() throws {
        for kind in SiteSettings.schedulerKinds {
            let (_, site) = try self.site(scheduler: kind)
            let settings = try SiteSettings.load(site)
            #expect(settings.scheduler.kind == kind)
            #expect(settings.scheduler.allowedQueues.count == 1 && settings.elasticQueue == nil)
            let template = JobScript.defaultTemplate(for: kind)
            var job = BatchJob(project: "p", queue: "q", numNodes: 2, wallTimeMinutes: 30)
            job.filterTags = ["exp": "a1"]
            let script = try JobScript.render(
                template, templatePath: nil, job: job, name: "balsam-x-1", site: site, binDirectory: "/opt/b")
            #expect(
                script.contains(
                    "/opt/b/balsam-launcher --site \(site.root) --wall-time-min 28.5 --batch-job \(job.id) --tag exp=a1"
                ))
            #expect(!script.contains("{{"))
        }
    }

    @Test func submissionsOutsideThePolicyAreRefusedWithWhatIsAllowed() throws {
        let (_, site) = try self.site()
        let policy = try SiteSettings.load(site).scheduler
        func check(_ change: (inout BatchJob) -> Void, active: [BatchJob] = []) -> String? {
            var job = BatchJob(project: "default", queue: "debug", numNodes: 2, wallTimeMinutes: 30)
            change(&job)
            do {
                try job.validate(against: policy, active: active)
                return nil
            } catch { return error.message }
        }
        #expect(check { _ in } == nil)
        #expect(
            check { $0.queue = "prod" }?.contains("queue 'prod' is not allowed on this site (allowed: debug") == true)
        #expect(check { $0.project = "x" }?.contains("project 'x' is not allowed") == true)
        #expect(check { $0.numNodes = 9 }?.contains("allows 1 to 4") == true)
        #expect(check { $0.wallTimeMinutes = 61 }?.contains("allows 1 to 60") == true)
        #expect(check { $0.optionalParams["gpus"] = "1" }?.contains("unknown parameter 'gpus'") == true)
        #expect(check { $0.filterTags["k"] = "a b" }?.contains("may hold only") == true)
        let four = (0..<4).map { _ in BatchJob(project: "default", queue: "debug", numNodes: 1, wallTimeMinutes: 5) }
        #expect(check({ _ in }, active: four)?.contains("max_queued_jobs") == true)
    }

    @Test func elasticQueueSettingsAreRead() throws {
        let (_, site) = try self.site(extra: "")
        var text = try String(contentsOfFile: site.settingsPath, encoding: .utf8)
        text = text.replacingOccurrences(
            of: "elastic_queue: null",
            with:
                "elastic_queue:\n  submit_project: 12345\n  submit_queue: debug\n  max_num_nodes: 3\n  use_backfill: true"
        )
        try text.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        let elastic = try #require(try SiteSettings.load(site).elasticQueue)
        #expect(elastic.project == "12345" && elastic.queue == "debug" && elastic.maxNodes == 3 && elastic.useBackfill)
    }

    @Test func badSettingsNameTheKey() throws {
        let (_, site) = try self.site(extra: "")
        var text = try String(contentsOfFile: site.settingsPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "scheduler_class: slurm", with: "scheduler_class: condor")
        try text.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        #expect { try SiteSettings.load(site) } throws: { ($0 as? SpoolError)?.message.contains("condor") == true }
        text = text.replacingOccurrences(of: "scheduler_class: condor", with: "scheduler_class: slurm")
            .replacingOccurrences(of: "elastic_queue: null", with: "elastic_queue:\n  max_num_nodes: 0")
        try text.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        #expect { try SiteSettings.load(site) } throws: {
            ($0 as? SpoolError)?.message.contains("elastic_queue.max_num_nodes") == true
        }
    }

    @Test func recordsGetNumbersAndSurviveARoundTrip() throws {
        let (_, site) = try self.site()
        let store = BatchJobStore(site: site)
        var job = BatchJob(project: "default", queue: "debug", numNodes: 2, wallTimeMinutes: 30)
        job.optionalParams = ["x": "1"]
        let a = try store.create(job)
        let b = try store.create(job)
        #expect(a.id == 1 && b.id == 2)
        var loaded = try #require(try store.load(1))
        #expect(loaded == a)
        loaded.schedulerID = "77"
        loaded.move(to: .queued, message: "submitted")
        loaded.finish(.timedOut, message: "timed out")
        try store.save(loaded)
        #expect(try store.load(1) == loaded)
        #expect(loaded.history.map(\.state) == [.pendingSubmission, .queued, .finished])
        #expect(a.schedulerName(site: site) != b.schedulerName(site: site))
        try store.requestDeletion(2)
        #expect(store.deletionRequested(2))
        #expect(throws: SpoolError.self) { try store.requestDeletion(1) }  // already ended
        #expect(throws: SpoolError.self) { try store.requestDeletion(9) }  // no such record
        try "{\"id\": 3}".write(toFile: store.path + "/3.json", atomically: true, encoding: .utf8)
        let (jobs, problems) = try store.all()
        #expect(jobs.count == 2 && problems.count == 1 && problems[0].contains("3.json"))
    }

    @Test func aTemplateWithAnUnknownPlaceholderIsAnError() throws {
        let (_, site) = try self.site()
        let job = BatchJob(project: "p", queue: "q", numNodes: 1, wallTimeMinutes: 5)
        #expect {
            try JobScript.render(
                "#!/bin/bash\n{{ nonsense }}\n", templatePath: "/t.sh", job: job, name: "n", site: site,
                binDirectory: "/b")
        } throws: { ($0 as? SpoolError)?.message.contains("nonsense") == true }
    }

    /// The elastic queue's wait after failed batch jobs: counted only over its own batch jobs that failed with
    /// none since (generated histories), its period doubled per failure, at most 10 minutes.
    @Test func theElasticQueueCountsOnlyItsFailuresInARow() {
        var rng = SplitMix(seed: 3299)
        for _ in 0..<300 {
            var all: [BatchJob] = []
            for id in 1...(1 + Int(rng.next() % 8)) {
                var job = BatchJob(project: "p", queue: "q", numNodes: 1, wallTimeMinutes: 5)
                job.id = id
                if rng.next() % 3 != 0 { job.origin = BatchService.elasticOrigin }
                switch rng.next() % 3 {
                case 0: job.move(to: .finished, message: "failed"); job.outcome = .failed
                case 1: job.move(to: .finished, message: "done"); job.outcome = .completed
                default: job.move(to: .queued, message: "queued")
                }
                all.append(job)
            }
            let mine = all.filter { $0.origin == BatchService.elasticOrigin }.sorted { $0.id > $1.id }
            let expected = mine.prefix { $0.state == .finished && $0.outcome == .failed }.map(\.id)
            #expect(BatchService.failuresInARow(all.shuffled()).map(\.id) == expected)
        }
        #expect(BatchService.failureBackoff(period: 0.2, failures: 0) == 0)
        #expect(BatchService.failureBackoff(period: 0.2, failures: 1) == 2)
        #expect(BatchService.failureBackoff(period: 60, failures: 3) == 480)
        #expect(BatchService.failureBackoff(period: 60, failures: 40) == 600)
    }
}
