import Spool
import Testing
import Wire

/// The push and its reply: what the site writes the server reads back whole, a wrong job or event is kept as
/// that item's refusal (not the push's), and anything else wrong refuses the push naming the field.
@Suite struct PushTests {
    static func push() -> PushRequest {
        var site = PushedSite(name: "theta", path: "/projects/p/site")
        site.transferLocations = ["theta": "globus://abc"]
        site.policy = PushedSite.Policy()
        site.policy?.allowedQueues = [
            "debug": SiteSettings.QueuePolicy(maxNodes: 2, maxWallTimeMinutes: 60, maxQueuedJobs: 1)
        ]
        site.policy?.allowedProjects = ["p"]
        var push = PushRequest(site: site)
        var app = PushedApp(name: "sim")
        app.parameters = ["x": .object(["required": .bool(true), "default": .null, "help": .string("")])]
        push.apps = [app]
        push.jobs = [.read(PushedJob(id: "01A", JobSpecTests.siteJob(), state: .stagedIn))]
        push.events = [
            .read(PushedEvent(siteJobID: "01A", time: "2026-12-05T10:00:00.000Z", from: .created, to: .ready))
        ]
        push.removed = ["01GONE"]
        push.rejected = [Rejection(serverID: 4, reason: "no app")]
        push.requestsDone = [RequestAnswer(id: 9), RequestAnswer(id: 10, refused: "ended already")]
        var batch = BatchJob(project: "p", queue: "debug", numNodes: 2, wallTimeMinutes: 30)
        batch.id = 3
        batch.state = .queued
        batch.schedulerID = "1234"
        push.batchJobs = [BatchJobReport(batch, serverID: 7)]
        push.launcherSessions = [
            LauncherSession(lease: "h.1.x", nodes: 2, start: "2026-12-05T10:00:00Z", end: nil, batchJob: 3)
        ]
        push.refusedApps = ["Hello": "cannot install"]
        push.unpushedLagSeconds = 3.5
        return push
    }

    @Test func aPushReadsBackAsTheSiteWroteIt() throws {
        let push = Self.push()
        let read = try PushRequest(try JSONValue.parse(Array(push.json.serialized().utf8)))
        #expect(read == push)
    }

    @Test func aWrongJobOrEventIsThatItemsRefusalNotThePushs() throws {
        var o = Self.push().json.objectValue ?? [:]
        o["jobs"] = .array([.object(["site_job_id": .string("01B"), "workdir": .int(3)])])
        o["events"] = .array([.object(["site_job_id": .string("01C"), "t": .string("yesterday")])])
        let read = try PushRequest(.object(o))
        #expect(
            read.jobs == [.unreadable(id: "01B", WireError("must be a string, not a number", field: "jobs[0].workdir"))]
        )
        guard case .unreadable(let id, let error) = read.events.first else {
            Issue.record("the event was read")
            return
        }
        #expect(id == "01C" && error.field == "events[0].t")
    }

    @Test(arguments: [
        ("site", JSONValue.null, "site"),
        ("rejected", .array([.object(["server_id": .int(0), "reason": .string("x")])]), "rejected[0].server_id"),
        ("batch_jobs", .array([.object(["site_batch_id": .int(1), "state": .string("done")])]), "batch_jobs[0].state"),
        ("launcher_sessions", .array(Array(repeating: .object([:]), count: 1001)), "launcher_sessions"),
        ("colour", .string("blue"), "colour"),
    ])
    func anythingElseWrongRefusesThePush(key: String, value: JSONValue, field: String) throws {
        var o = Self.push().json.objectValue ?? [:]
        o[key] = value
        do {
            _ = try PushRequest(.object(o))
            Issue.record("\(key) was taken")
        } catch {
            #expect(error.field == field, "\(error)")
        }
    }

    @Test func aReplyReadsBackAndPassesOverWhatItCannotRead() throws {
        var reply = PushReply(siteID: 5)
        reply.jobs = ["01A": 11]
        reply.events = 3
        reply.refused = [SyncRefusal(kind: "event", siteJobID: "01Z", code: .unknownJob, message: "push it first")]
        reply.remoteJobs = [.read(RemoteJob(id: 12, spec: Job(workdir: "w", app: "sim")))]
        reply.requests = [JobRequest(id: 1, siteJobID: "01A", kind: .state, target: "FAILED")]
        reply.batchDeletions = [3]
        #expect(PushReply(reply.json) == reply)
        var o = reply.json.objectValue ?? [:]
        o["remote_jobs"] = .array([.object(["id": .int(13), "workdir": .int(1)])])
        o["requests"] = .array([.object(["id": .string("x")])])
        o["something_newer"] = .bool(true)
        let read = PushReply(.object(o))
        #expect(read.requests.isEmpty && read.siteID == 5)
        guard case .unreadable(let id, _) = read.remoteJobs.first else {
            Issue.record("the remote job was read")
            return
        }
        #expect(id == "13")
    }
}
