import HTTPTypes
import Spool
import Testing
import Wire

/// `POST /sync/push` in-process, spoken with the wire types the site itself uses (`PushRequest`, `PushReply`).
@Suite struct SyncProtocolTests {
    static let site = PushedSite(name: "cluster", path: "/scratch/site")

    static func job(_ id: String, _ workdir: String, _ state: JobState, name: String, parents: [String] = [])
        -> PushedJob
    {
        var job = Job(workdir: workdir, app: "hello")
        job.parameters = ["name": .string(name)]
        job.parentIDs = parents
        return PushedJob(id: id, job, state: state)
    }

    /// A push of the site with its app `hello` (a required parameter `name`).
    static func pushWithApp() -> PushRequest {
        var push = PushRequest(site: site)
        var app = PushedApp(name: "hello")
        app.sourceCode = "command_template: echo {{ name }}"
        app.parameters = ["name": .object(["required": .bool(true), "default": .null, "help": .string("")])]
        push.apps = [app]
        return push
    }

    static func event(_ id: String, _ t: String, _ from: JobState, _ to: JobState) -> PushItem<PushedEvent> {
        .read(PushedEvent(siteJobID: id, time: t, from: from, to: to))
    }

    @Test func aPushRegistersTheSiteItsAppsJobsAndEventsAndRepeatedAddsNothing() async throws {
        let server = try InProcessServer()
        let token = try await server.user("nina")
        var push = Self.pushWithApp()
        var tagged = Self.job("01AAA", "a", .running, name: "world!")
        tagged.spec.tags = ["k": "v"]
        push.jobs = [.read(tagged), .read(Self.job("01BBB", "b", .awaitingParents, name: "two", parents: ["01AAA"]))]
        push.events = [
            // The launcher host's file pushed before the watcher's: the latest event still wins.
            Self.event("01AAA", "2026-11-29T10:00:02.000Z", .preprocessed, .running),
            Self.event("01AAA", "2026-11-29T10:00:00.000Z", .created, .stagedIn),
            Self.event("01AAA", "2026-11-29T10:00:01.000Z", .stagedIn, .preprocessed),
            Self.event("01BBB", "2026-11-29T10:00:00.500Z", .created, .awaitingParents),
        ]
        let first = try await server.push(push, token: token)
        #expect(first.status == 200 && first.reply.events == 4 && first.reply.refused.isEmpty)
        let a = try #require(first.reply.jobs["01AAA"])
        let again = try await server.push(push, token: token)
        #expect(again.reply.events == 0 && again.reply.jobs == first.reply.jobs)

        let job = try #require(try await server.request(.get, "/jobs/\(a)", token: token).json.objectValue)
        #expect(job["state"] == .string("RUNNING") && job["return_code"] == .null)
        #expect(job["site_job_id"] == .string("01AAA") && job["tags"] == .object(["k": .string("v")]))
        let parameters = try Pickle.decodeBase64(job["serialized_parameters"]?.stringValue ?? "")
        #expect(parameters == .object(["name": .string("world!")]))
        let child = try await server.request(.get, "/jobs/\(first.reply.jobs["01BBB"] ?? 0)", token: token)
        #expect(child.json.objectValue?["parent_ids"] == .array([.int(a)]))
    }

    @Test func aWrongItemIsRefusedByItselfWithACodeTheSiteSwitchesOn() async throws {
        let server = try InProcessServer()
        let token = try await server.user("nina")
        var push = Self.pushWithApp()
        var bad = Self.job("01BAD", "w/bad", .stagedIn, name: "x")
        bad.spec.numNodes = 0
        var elsewhere = Self.job("01APP", "w/app", .stagedIn, name: "x")
        elsewhere.spec.app = "missing"
        push.jobs = [.read(bad), .read(Self.job("01GOOD", "w/good", .stagedIn, name: "x")), .read(elsewhere)]
        push.events = [
            Self.event("01ZZZ", "2026-11-29T10:00:03.000Z", .created, .stagedIn),
            Self.event("01GOOD", "2026-11-29T10:00:03.000Z", .created, .stagedIn),
        ]
        let (status, reply) = try await server.push(push, token: token)
        #expect(status == 200)
        let codes = Dictionary(uniqueKeysWithValues: reply.refused.map { ($0.siteJobID, $0.code) })
        #expect(codes == ["01ZZZ": .unknownJob, "01BAD": .invalid, "01APP": .unknownApp], "\(reply.refused)")
        #expect(reply.refused.first { $0.siteJobID == "01BAD" }?.field == "jobs[0].num_nodes")
        #expect(reply.jobs["01GOOD"] != nil && reply.events == 1)
    }

    @Test func anEventsDataReachesTheJobAndAnotherUsersSiteIsAnotherSite() async throws {
        let server = try InProcessServer()
        let token = try await server.user("nina")
        var push = Self.pushWithApp()
        push.jobs = [.read(Self.job("01AAA", "a", .running, name: "x"))]
        let first = try await server.push(push, token: token)
        let a = try #require(first.reply.jobs["01AAA"])
        var ended = PushRequest(site: Self.site)
        // The site's RUN_ERROR event carries the exit status (the job's return_code); a hook's change of the
        // job's data rides in its event's data (null deletes).
        ended.events = [
            .read(
                PushedEvent(
                    siteJobID: "01AAA", time: "2026-11-29T10:00:04.000Z", from: .running, to: .runError,
                    data: ["return_code": .int(3), "data": .object(["energy": .double(-1.5), "gone": .null])]))
        ]
        #expect(try await server.push(ended, token: token).status == 200)
        let job = try #require(try await server.request(.get, "/jobs/\(a)", token: token).json.objectValue)
        #expect(job["state"] == .string("RUN_ERROR") && job["return_code"] == .int(3))
        #expect(job["data"]?.objectValue?["energy"] == .double(-1.5), "\(job)")

        let other = try await server.user("omar")
        let theirs = try await server.push(PushRequest(site: Self.site), token: other)
        #expect(theirs.status == 200 && theirs.reply.siteID != first.reply.siteID)
        #expect(try await server.request(.get, "/jobs/\(a)", token: other).status == 404)
    }
}

extension SyncProtocolTests {
    @Test func aSiteAppKeepsItsNameOnTheServer() async throws {
        let server = try InProcessServer()
        let token = try await server.user("nina")
        var push = PushRequest(site: Self.site)
        push.apps = [PushedApp(name: "md-run.v2"), PushedApp(name: "md_run_v2")]
        var job = Job(workdir: "w/1", app: "md-run.v2")
        job.parameters = [:]
        push.jobs = [.read(PushedJob(id: "01A", job, state: .stagedIn))]
        let (status, reply) = try await server.push(push, token: token)
        #expect(status == 200 && reply.refused.isEmpty && Set(reply.apps.keys) == ["md-run.v2", "md_run_v2"])
        let apps = try await server.request(.get, "/apps/?site_name=cluster", token: token)
        let names = (apps.json.objectValue?["results"]?.arrayValue ?? []).compactMap {
            $0.objectValue?["name"]?.stringValue
        }
        #expect(Set(names) == ["md-run.v2", "md_run_v2"])

        var bad = PushRequest(site: Self.site)
        bad.apps = [PushedApp(name: "-x")]
        let refused = try await server.request(.post, "/sync/push", json: bad.json, token: token)
        #expect(refused.status == 400 && refused.json.objectValue?["field"] == .string("apps[0].name"))
    }
}

/// Which batch job ran a job (issue 34, item 1): the site's RUNNING event names its batch job by the site's id;
/// the server links the job to that batch job's row whether the event or the batch job's report comes first.
@Suite struct BatchJobLinkTests {
    /// A push of job 01RUN (in `state`), made READY at 10:00:00 and RUNNING at 10:00:01 by the launcher of the
    /// site's batch job 3, and that batch job, running.
    static func runInBatchJob3(_ state: JobState) -> (PushRequest, BatchJob) {
        var push = SyncProtocolTests.pushWithApp()
        push.jobs = [.read(SyncProtocolTests.job("01RUN", "w/run", state, name: "x"))]
        var running = PushedEvent(
            siteJobID: "01RUN", time: "2026-11-29T10:00:01.000Z", from: .preprocessed, to: .running)
        var facts = EventFacts()
        facts.batchJob = 3
        running.data = facts.data
        push.events = [
            .read(PushedEvent(siteJobID: "01RUN", time: "2026-11-29T10:00:00.000Z", from: .created, to: .ready)),
            .read(running),
        ]
        var batch = BatchJob(project: "p", queue: "q", numNodes: 1, wallTimeMinutes: 10)
        batch.id = 3
        batch.state = .running
        return (push, batch)
    }

    @Test(arguments: [true, false])
    func aJobIsLinkedToTheBatchJobItRanIn(batchJobFirst: Bool) async throws {
        let server = try InProcessServer()
        let token = try await server.user("bo")
        var (push, batch) = Self.runInBatchJob3(.running)
        let report = BatchJobReport(batch)
        if batchJobFirst {
            var first = SyncProtocolTests.pushWithApp()
            first.batchJobs = [report]
            #expect(try await server.push(first, token: token).status == 200)
        } else {
            push.batchJobs = []
        }
        let pushed = try await server.push(push, token: token)
        #expect(pushed.status == 200 && pushed.reply.refused.isEmpty, "\(pushed.reply.refused)")
        if !batchJobFirst {
            var later = SyncProtocolTests.pushWithApp()
            later.batchJobs = [report]
            #expect(try await server.push(later, token: token).status == 200)
        }
        let batches = try await server.request(.get, "/batch-jobs/", token: token).json.objectValue
        let id = try #require(batches?["results"]?.arrayValue?.first?.objectValue?["id"]?.intValue)
        let jobs = try await server.request(.get, "/jobs/?batch_job_id=\(id)", token: token).json.objectValue
        #expect(jobs?["count"]?.intValue == 1, "\(jobs ?? [:])")
    }

    /// A run's node-seconds reach the batch job its RUNNING event names when the batch job came in an earlier push
    /// or in the same one (a local batch job made, run and ended within one sync period; DifferentialTests found
    /// them lost when the push recorded its events before its batch jobs).
    @Test(arguments: [true, false])
    func aRunsNodeSecondsReachItsBatchJob(batchJobInAnEarlierPush: Bool) async throws {
        let server = try InProcessServer()
        let token = try await server.user("bo")
        var (push, batch) = Self.runInBatchJob3(.runDone)
        push.events.append(
            .read(PushedEvent(siteJobID: "01RUN", time: "2026-11-29T10:00:03.000Z", from: .running, to: .runDone)))
        batch.startTime = "2026-11-29T09:59:59.000Z"
        if batchJobInAnEarlierPush {
            var first = SyncProtocolTests.pushWithApp()
            first.batchJobs = [BatchJobReport(batch)]
            #expect(try await server.push(first, token: token).status == 200)
        } else {
            push.batchJobs = [BatchJobReport(batch)]
        }
        #expect(try await server.push(push, token: token).status == 200)
        let report = try await server.request(.get, "/reports/utilization", token: token).json.objectValue
        let busy = report?["batch_jobs"]?.arrayValue?.first?.objectValue?["busy_node_seconds"]?.doubleValue
        #expect(busy.map { abs($0 - 2) < 1e-6 } == true, "\(report ?? [:])")
    }
}
