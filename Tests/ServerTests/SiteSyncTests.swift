import Foundation
import Spool
import TestSupport
import Testing

/// A real site pushed to a real server with `balsam sync push`: jobs, their specs and every transition arrive
/// once, also after the server was away.
@Suite struct SiteSyncTests {
    func eventLines(_ site: Site) throws -> Int {
        try entries(site.eventsPath).filter { $0.hasSuffix(".jsonl") }.reduce(0) { total, name in
            total + (try read(site.eventsPath + "/" + name)).split(separator: "\n").count
        }
    }

    @Test(
        "balsam sync push mirrors jobs and transitions, once, and catches up after the server was away",
        arguments: Backend.available)
    func pushMirrorsTheSite(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        let dir = server.dir
        let token = try await server.user("pia")
        let made = try run(
            binDirectory + "/balsam-server",
            [
                "token", "create", "--user", "pia", "--site", "site", "--db", server.db, "--secret-file",
                dir.path + "/secret",
            ])
        try dir.file("site-token", made.stdout)
        let site = try makeSite(dir)
        try setSync(site, url: server.url, tokenFile: dir.path + "/site-token", period: 1)
        let lines = (0..<40).map {
            #"{"app":"hello","workdir":"w/\#($0)","parameters":{"name":"n\#($0)"},"tags":{"batch":"x"}}"#
        }
        let submitted = try balsamSubmit(
            ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
        #expect(submitted.status == 0, "\(submitted.stderr)")

        let first = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(first.status == 0, "\(first.stderr)")
        var onServer = try await serverStates(server, token)
        #expect(onServer.count == 40)
        #expect(onServer == (try siteStates(site)))
        let apps = try await server.request("GET", "/apps/?site_name=site", token: token)
        #expect((apps.object["results"] as? [[String: Any]])?.first?["name"] as? String == "hello")
        let one = try await server.request("GET", "/jobs/?workdir__contains=w/7&limit=1", token: token)
        let job = try #require((one.object["results"] as? [[String: Any]])?.first)
        #expect(
            try Pickle.decodeBase64(job["serialized_parameters"] as? String ?? "") == .object(["name": .string("n7")]))
        #expect((job["tags"] as? [String: String]) == ["batch": "x"])

        // The watcher moves them on; a push brings every transition; another push brings nothing new.
        let watched = try await runOffPool(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(watched.status == 0, "\(watched.stderr)")
        let second = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(second.status == 0, "\(second.stderr)")
        onServer = try await serverStates(server, token)
        let atSite = try siteStates(site)
        #expect(onServer == atSite)
        #expect(Set(atSite.values) != ["READY"], "the watcher moved nothing: \(atSite.values)")
        let events = try await server.request("GET", "/events/?limit=0", token: token)
        #expect(events.object["count"] as? Int == (try eventLines(site)))
        // The original's spelling, `balsam site sync`, is the same push.
        let third = try await runOffPool(binDirectory + "/balsam", ["site", "sync", "--site", site.root])
        #expect(third.stdout.contains("(0 new to the server)"), "\(third.stdout)")

        // The server away: the push fails (69, the URL named), the status says so, the cursor stays.
        try await server.stop()
        let killed = Timestamp.nowSeconds()
        _ = try balsam(["kill", "--all"], site: site.root)
        let away = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(away.status == 69 && away.stderr.contains(server.url), "\(away.stderr)")
        let status = try balsam(["sync", "status", "--json"], site: site.root)
        let o = try #require(try JSONValue.parse(status.stdout).objectValue)
        #expect(o["last_error"]?.stringValue?.contains(server.url) == true)
        #expect((o["unpushed_log_bytes"]?.intValue ?? 0) > 0)
        // How old the oldest unpushed event (the first kill) is: no older than the kill, nor in the future.
        let lag = o["unpushed_lag_seconds"]?.doubleValue ?? -1
        #expect(lag > 0 && lag <= Timestamp.nowSeconds() - killed + 0.01, "\(status.stdout)")

        // Back (same database; on another port, which settings.yml is told): the push catches up, and the server
        // holds exactly the site's history.
        let back = try await LiveServer(backend, db: server.db, dir: dir)
        defer { Task { try? await back.stop() } }
        try setSync(site, url: back.url, tokenFile: dir.path + "/site-token", period: 1)
        let caughtUp = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(caughtUp.status == 0, "\(caughtUp.stderr)")
        #expect(try await serverStates(back, token) == (try siteStates(site)))
        let all = try await back.request("GET", "/events/?limit=0", token: token)
        #expect(all.object["count"] as? Int == (try eventLines(site)))
        let cleared = try JSONValue.parse(try balsam(["sync", "status", "--json"], site: site.root).stdout)
        #expect(cleared.objectValue?["last_error"] == .null)
        #expect(cleared.objectValue?["unpushed_lag_seconds"]?.doubleValue == 0, "\(cleared)")
    }

    @Test("balsam-watch's sync service mirrors the site as it moves, and says once that the server is away")
    func watcherSyncs() async throws {
        let server = try await LiveServer(.sqlite)
        let dir = server.dir
        let token = try await server.user("quinn")
        let site = try makeSite(dir)
        let clientFile = dir.path + "/client.yml"
        try dir.file(
            "client.yml",
            "api_root: \(server.url)\nclient_class: balsam.client.BasicAuthRequestsClient\ntoken: \(token)\n")
        try setSync(site, url: server.url, period: 0.2)
        let background = Background()
        defer { background.stop() }
        let watcher = try background.start(
            "balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"],
            env: ["BALSAM_CLIENT_PATH": clientFile])
        let lines = (0..<20).map { #"{"app":"hello","workdir":"s/\#($0)","parameters":{"name":"n"}}"# }
        #expect(
            try balsamSubmit(["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8)).status
                == 0)
        try await waitFor("the server has the 20 jobs in the site's states", timeout: 60) {
            let onServer = try await serverStates(server, token)
            let atSite = try siteStates(site)
            return onServer.count == 20 && onServer == atSite
        }

        // The server away: the watcher goes on and says so once; back, it catches up and says so.
        try await server.stop()
        _ = try balsam(["kill", "--all"], site: site.root)
        try await waitFor("the watcher reports the server away", timeout: 60) {
            (try? read(dir.path + "/watch.log"))?.contains("sync: POST \(server.url)/sync/push") == true
        }
        let back = try await LiveServer(.sqlite, db: server.db, dir: dir)
        defer { Task { try? await back.stop() } }
        try setSync(site, url: back.url, period: 0.2)
        try await waitFor("the server has every job FAILED, as the site", timeout: 120) {
            let onServer = try await serverStates(back, token)
            return onServer.count == 20 && Set(onServer.values) == ["FAILED"]
        }
        try await waitFor("the watcher says the sync works again", timeout: 30) {
            (try? read(dir.path + "/watch.log"))?.contains("sync: working again") == true
        }
        let log = try read(dir.path + "/watch.log")
        let failures = log.split(separator: "\n").filter { $0.contains("sync: POST") }
        #expect(failures.count <= 2, "one line per condition, not per attempt:\n\(failures.joined(separator: "\n"))")
        #expect(watcher.isRunning)
    }

    /// The original package's own `balsam` command from a laptop: `queue submit`, which checks the site's
    /// queues and projects itself, and `job create`, against a site that syncs; both reach the site.
    @Test(
        "the original client's balsam CLI submits a batch job and creates a job at a synced site",
        .enabled(if: PythonTools.clientPython != nil || PythonTools.required, "dev/test makes the client's venv"))
    func originalCommandLine() async throws {
        let python = try #require(PythonTools.clientPython, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
        let original = Posix.parentPath(python) + "/balsam"
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("olga")
        try dir.file("token", token)
        let site = try makeSite(dir)
        try setSync(site, url: server.url, tokenFile: dir.path + "/token")
        let push = { try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]) }
        #expect(try await push().status == 0)
        let sites = try await server.request("GET", "/sites/", token: token)
        let record = try #require((sites.object["results"] as? [[String: Any]])?.first)
        let siteID = try #require(record["id"] as? Int)
        #expect((record["allowed_queues"] as? [String: Any])?["local"] != nil, "the site's policy: \(record)")
        #expect(record["allowed_projects"] as? [String] == ["local"], "\(record)")

        let clientFile = dir.path + "/client.yml"
        let login = try await runOffPool(
            binDirectory + "/balsam",
            ["login", server.url, "--token-file", dir.path + "/token", "--client-file", clientFile])
        #expect(login.status == 0, "\(login.stderr)")
        let env = ["BALSAM_CLIENT_PATH": clientFile, "HOME": dir.path]
        let queued = try await runOffPool(
            original,
            [
                "queue", "submit", "--site", String(siteID), "-q", "local", "-A", "local", "-n", "1", "-t", "5", "-j",
                "mpi",
            ],
            env: env)
        #expect(queued.status == 0, "\(queued.stdout)\n\(queued.stderr)")
        let refused = try await runOffPool(
            original,
            [
                "queue", "submit", "--site", String(siteID), "-q", "nope", "-A", "local", "-n", "1", "-t", "5", "-j",
                "mpi",
            ],
            env: env)
        #expect(refused.status != 0 && "\(refused.stdout)\(refused.stderr)".contains("nope"), "the client checks")
        let created = try await runOffPool(
            original,
            ["job", "create", "--site", String(siteID), "-a", "hello", "-w", "remote/1", "-p", "name=7", "-y"],
            env: env)
        #expect(created.status == 0, "\(created.stdout)\n\(created.stderr)")
        // The next pushes take both to the site.
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        #expect(try siteStates(site).count == 1, "the job from the original CLI is at the site")
        let batch = try balsam(["queue", "ls", "--history"], site: site.root)
        #expect(batch.stdout.contains("local"), "the batch job from the original CLI is at the site: \(batch.stdout)")
    }

    @Test("jobs made through the API are taken into the site, or refused on the server with the reason")
    func remoteJobsAreTaken() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let site = try makeSite(server.dir)
        let token = try await syncing(site, to: server, user: "rita")
        let push = { try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]) }
        #expect(try await push().status == 0)
        let apps = try await server.request("GET", "/apps/?site_name=site", token: token)
        let appID = try #require((apps.object["results"] as? [[String: Any]])?.first?["id"] as? Int)

        let parent = try await server.request(
            "POST", "/jobs/",
            json: [["app_id": appID, "workdir": "remote/p", "serialized_parameters": pickledName("p")]],
            token: token)
        let parentID = try #require(parent.list.first?["id"] as? Int)
        // A complex number: a pickle only Python can load. The site said its app is a shell app, so the server
        // gives the site's own verdict (issue 31, item 7): refused here, naming the item, not failed later.
        let complex = "gASVLgAAAAAAAACMCGJ1aWx0aW5zlIwHY29tcGxleJSTlEc/8AAAAAAAAEdAAAAAAAAAAIaUUpQu"
        let refused = try await server.request(
            "POST", "/jobs/", json: [["app_id": appID, "workdir": "remote/bad", "serialized_parameters": complex]],
            token: token)
        #expect(refused.status == 400, "\(refused.text)")
        #expect(refused.text.contains("[0].serialized_parameters") && refused.text.contains("not plain values"))
        let more = try await server.request(
            "POST", "/jobs/",
            json: [
                [
                    "app_id": appID, "workdir": "remote/c", "serialized_parameters": pickledName("c"),
                    "parent_ids": [parentID],
                ]
            ], token: token)
        #expect(more.status == 201, "\(more.text)")
        let childID = try #require(more.list.first?["id"] as? Int)
        // What only the site can know is refused there: an app the server has by name and the site has not.
        let siteID = try #require((apps.object["results"] as? [[String: Any]])?.first?["site_id"] as? Int)
        let ghost = try await server.request(
            "POST", "/apps/", json: ["site_id": siteID, "name": "ghost", "serialized_class": "", "source_code": ""],
            token: token)
        let ghostID = try #require(ghost.object["id"] as? Int, "\(ghost.text)")
        let lost = try await server.request(
            "POST", "/jobs/", json: [["app_id": ghostID, "workdir": "remote/ghost"]], token: token)
        let badID = try #require(lost.list.first?["id"] as? Int, "\(lost.text)")

        // One push takes them (its reply carries them), the next tells the server.
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        let atSite = try siteStates(site)
        #expect(atSite.count == 2, "\(atSite)")
        let p = try await server.request("GET", "/jobs/\(parentID)", token: token)
        let c = try await server.request("GET", "/jobs/\(childID)", token: token)
        let pSite = try #require(p.object["site_job_id"] as? String)
        let cSite = try #require(c.object["site_job_id"] as? String)
        #expect(atSite[pSite] == p.object["state"] as? String && atSite[cSite] == c.object["state"] as? String)
        let shown = try balsam(["show", cSite, "--json"], site: site.root)
        #expect(shown.stdout.contains(pSite) && shown.stdout.contains("\"name\":\"c\""), "\(shown.stdout)")
        let bad = try await server.request("GET", "/jobs/\(badID)", token: token)
        #expect(bad.object["state"] as? String == "FAILED")
        let why = try await server.request("GET", "/events/?job_id=\(badID)&to_state=FAILED", token: token)
        #expect(why.text.contains("no app 'ghost'"), "\(why.text)")
        // ... and in the job's record: the exception its job.result() raises (a pickled RuntimeError).
        let exception = try #require(bad.object["serialized_exception"] as? String)
        #expect(Pickle.strings(inBase64: exception).contains { $0.contains("no app 'ghost'") }, "\(exception)")
        // A workdir the site's job already has is refused by the server, naming the item.
        let again = try await server.request(
            "POST", "/jobs/",
            json: [
                ["app_id": appID, "workdir": "remote/new", "serialized_parameters": pickledName("n")],
                ["app_id": appID, "workdir": "remote/p", "serialized_parameters": pickledName("p2")],
            ], token: token)
        #expect(again.status == 400 && again.text.contains("[1].workdir"), "\(again.text)")
        #expect(again.text.contains("taken at this site by job \(parentID)"), "\(again.text)")
        // The server's history of a taken job is one history, never rewritten: its creation through the API
        // (what the original client shows), then the site's, from its adoption by balsam-sync on.
        let history = try await server.request("GET", "/events/?job_id=\(parentID)&ordering=timestamp", token: token)
        let steps = history.object["results"] as? [[String: Any]] ?? []
        #expect(steps.first?["from_state"] as? String == "CREATED" && steps.count >= 2, "\(history.text)")
        #expect((steps.first?["data"] as? [String: Any])?["actor"] == nil, "\(history.text)")
        let adoption = steps.dropFirst().first
        #expect((adoption?["data"] as? [String: Any])?["actor"] as? String == "balsam-sync", "\(history.text)")
        #expect(adoption?["from_state"] as? String == steps.first?["to_state"] as? String, "\(history.text)")
        // Nothing is taken twice.
        #expect(try await push().status == 0)
        #expect(try siteStates(site).count == 2)

        // Every refusal of a user's request is said at the site too (issue 35, item 8): the job above, and a
        // batch job in a queue the site does not allow, each in `sync status` and on the push's stderr.
        let batch = try await server.request(
            "POST", "/batch-jobs/",
            json: [
                "site_id": siteID, "num_nodes": 1, "wall_time_min": 5, "job_mode": "mpi", "project": "p", "queue": "q",
            ], token: token)
        let batchID = try #require(batch.object["id"] as? Int, "\(batch.text)")
        let told = try await push()
        #expect(told.stderr.contains("refused: batch job \(batchID)"), "\(told.stderr)")
        let status = try balsam(["sync", "status", "--json", "--site", site.root]).stdout
        let here = (try? JSONValue.parse(status))?.objectValue?["refused_here"]?.arrayValue ?? []
        let what = here.compactMap { $0.objectValue?["what"]?.stringValue }
        #expect(what.contains { $0.hasPrefix("job \(badID) (workdir remote/ghost)") }, "\(status)")
        #expect(what.contains { $0.hasPrefix("batch job \(batchID)") }, "\(status)")
        #expect(
            here.contains { $0.objectValue?["reason"]?.stringValue?.contains("allowed_queues") == true }, "\(status)")
        let text = try balsam(["sync", "status", "--site", site.root]).stdout
        #expect(text.contains("refused here: 2") && text.contains("no app 'ghost'"), "\(text)")
    }

    @Test(
        "the seed's remote example: the original client defines Hello and creates the job; the site runs it",
        .enabled(if: PythonTools.clientPython != nil || PythonTools.required, "dev/test makes the client's venv"),
        arguments: Backend.available)
    func seedRemoteExample(_ backend: Backend) async throws {
        let python = try #require(PythonTools.clientPython, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("sam")
        try dir.file("token", token)
        let site = try Site.create(at: dir.path + "/site")
        try setSync(site, url: server.url, tokenFile: dir.path + "/token", period: 0.2)
        // The site registers itself; then the user, elsewhere, uses only the original client.
        #expect(try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]).status == 0)
        let background = Background()
        defer { background.stop() }
        // Only the watcher: the user's BatchJob goes through the site's scheduler (local), which starts the launcher.
        try background.start("balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"])
        let script = URL(fileURLWithPath: PythonTools.scriptPath).deletingLastPathComponent()
            .appendingPathComponent("seed_remote_test.py").path
        let result = try await runOffPool(
            python, [script],
            env: ["BALSAM_TEST_SERVER": server.url, "BALSAM_TEST_TOKEN": token, "BALSAM_TEST_SITE": site.name])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)\n\((try? read(dir.path + "/watch.log")) ?? "")")
        #expect(try read(site.jobDirectory("test/say-hello") + "/job.out").contains("hello world!"))
        #expect(try read(site.appsPath + "/Hello/app.yml").contains("echo hello {{ name }}"))
        let queued = try balsam(["queue", "ls", "--history", "--json"], site: site.root)
        #expect(queued.stdout.contains("balsam-server (batch job"), "\(queued.stdout)")
        // The history the client sees is one: the job's creation on the server, then the site's, transition for
        // transition, its adoption a step from the server's state.
        let shown = try JSONValue.parse(try balsam(["show", "test/say-hello", "--json"], site: site.root).stdout)
        let states = (shown.objectValue?["history"]?.arrayValue ?? []).compactMap {
            $0.objectValue?["state"]?.stringValue
        }
        let seen = result.stdout.split(separator: "\n").filter { $0.hasPrefix("EVENT") }.map(String.init)
        let made = seen.first?.split(separator: " ").last.map(String.init) ?? "?"
        let history = ["EVENT CREATED \(made)"] + zip([made] + states, states).map { "EVENT \($0) \($1)" }
        #expect(!states.isEmpty && seen == history, "server: \(seen)\nsite: \(history)")
    }

    @Test("a remote kill, retry and delete take effect at the site; what the site cannot do is refused visibly")
    func remoteRequests() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("tina")
        try dir.file("token", token)
        let site = try makeSite(dir)
        try setSync(site, url: server.url, tokenFile: dir.path + "/token")
        let lines = ["a", "b", "c"].map { #"{"app":"hello","workdir":"\#($0)","parameters":{"name":"n"}}"# }
        #expect(
            try balsamSubmit(["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8)).status
                == 0)
        let push = { try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]) }
        #expect(try await push().status == 0)
        var ids: [String: Int] = [:]
        var siteIDs: [String: String] = [:]
        for job in (try await server.request("GET", "/jobs/", token: token)).object["results"] as? [[String: Any]] ?? []
        {
            ids[job["workdir"] as? String ?? ""] = job["id"] as? Int
            siteIDs[job["workdir"] as? String ?? ""] = job["site_job_id"] as? String
        }
        let a = try #require(ids["a"])
        let b = try #require(ids["b"])
        let c = try #require(ids["c"])
        func serverState(_ id: Int) async throws -> String? {
            try await server.request("GET", "/jobs/\(id)", token: token).object["state"] as? String
        }

        // Kill: held as a request (the job here unchanged), carried out at the site, then reported.
        let kill = try await server.request("PATCH", "/jobs/", json: [["id": a, "state": "FAILED"]], token: token)
        #expect(kill.status == 200, "\(server.log)")
        #expect(try await serverState(a) == "READY")
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        #expect(try siteStates(site)[siteIDs["a"] ?? ""] == "FAILED")
        #expect(try await serverState(a) == "FAILED")

        // Retry of the failed job.
        _ = try await server.request("PATCH", "/jobs/", json: [["id": a, "state": "RESTART_READY"]], token: token)
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        #expect(try siteStates(site)[siteIDs["a"] ?? ""] == "RESTART_READY")
        #expect(try await serverState(a) == "RESTART_READY")

        // Delete: the site removes it, and then the server does.
        #expect(try await server.request("DELETE", "/jobs/\(b)", token: token).status == 204)
        #expect(try await server.request("GET", "/jobs/\(b)", token: token).status == 200)
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        #expect(try siteStates(site)[siteIDs["b"] ?? ""] == nil)
        #expect(try await server.request("GET", "/jobs/\(b)", token: token).status == 404)

        // A change of the spec: here at once, and at the site once it has carried it out; a workdir stays.
        let modified = try await server.request(
            "PATCH", "/jobs/", json: [["id": c, "tags": ["lane": "fast"], "num_nodes": 1]], token: token)
        #expect(modified.status == 200, "\(modified.text)")
        #expect(try await push().status == 0)
        let shown = try balsam(["show", siteIDs["c"] ?? "", "--json"], site: site.root)
        #expect(shown.stdout.contains(#""lane":"fast""#), "\(shown.stdout)")
        let moved = try await server.request(
            "PATCH", "/jobs/", json: [["id": c, "workdir": "elsewhere"]], token: token)
        #expect(moved.status == 400 && moved.object["field"] as? String == "workdir")

        // A move the site makes itself: refused, with the reason in the job's data.
        _ = try await server.request("PATCH", "/jobs/", json: [["id": c, "state": "STAGED_IN"]], token: token)
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        let refused = try await server.request("GET", "/jobs/\(c)", token: token)
        let reason = (refused.object["data"] as? [String: Any])?["balsam_request_refused"] as? String
        #expect(reason?.contains("moves its jobs itself") == true, "\(refused.text)")
        #expect(try siteStates(site)[siteIDs["c"] ?? ""] == "READY")
    }
}
