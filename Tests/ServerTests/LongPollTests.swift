import Foundation
import Spool
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The sync waits for news (issue #36, item 3): a push with nothing to tell may wait on the server
/// (`POST /sync/push?wait=N`) until a user changes something for the site through the API, N seconds pass, or the
/// server shuts down. Each test shows its behaviour against a wait far longer than its deadline, so a push that was
/// not woken by the news would fail it.
@Suite(.serialized) struct LongPollTests {
    /// Requests of this suite's own: a held push must not take one of the shared session's few connections per
    /// host, which every other test's requests queue for.
    let session: URLSession = {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpMaximumConnectionsPerHost = 16
        configuration.timeoutIntervalForRequest = 120
        return URLSession(configuration: configuration)
    }()

    /// A registered site with one app, as its own pushes made them: (token, site id, app id, an idle push's body).
    func registeredSite(
        _ server: LiveServer, user: String, site: String = "lp", token given: String? = nil
    ) async throws -> (String, Int, Int, Data) {
        var token = given ?? ""
        if given == nil { token = try await server.user(user) }
        let body: [String: Any] = [
            "site": ["name": site, "path": "/" + site],
            "apps": [["name": "hello", "description": "", "parameters": [:] as [String: Any], "source_code": ""]],
        ]
        let first = try await server.request("POST", "/sync/push", json: body, token: token, session: session)
        #expect(first.status == 200, "\(first.text)")
        let siteID = try #require(first.object["site_id"] as? Int, "\(first.text)")
        let appID = try #require((first.object["apps"] as? [String: Any])?["hello"] as? Int, "\(first.text)")
        let idle = try JSONSerialization.data(withJSONObject: ["site": ["name": site, "path": "/" + site]])
        return (token, siteID, appID, idle)
    }

    @Test(arguments: Backend.available)
    func aHeldPushCarriesAJobMadeThroughTheAPIAtOnce(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let (token, _, appID, idle) = try await registeredSite(server, user: "lena")
        // News at random moments: before the push is held (then its own look finds the job) or while it is.
        var rng = SplitMix(seed: 36)
        for round in 0..<4 {
            async let held = server.request("POST", "/sync/push?wait=50", body: idle, token: token, session: session)
            try await Task.sleep(for: .milliseconds(Int(rng.next() % 300)))
            let made = try await server.request(
                "POST", "/jobs/",
                json: [["app_id": appID, "workdir": "lp/\(round)"]],
                token: token, session: session)
            #expect(made.status == 201, "\(made.text)")
            let reply = try await held
            let remote = try #require(reply.object["remote_jobs"] as? [[String: Any]], "\(reply.text)")
            #expect(remote.contains { $0["workdir"] as? String == "lp/\(round)" }, "round \(round): \(reply.text)")
            // The reply holds the job, so it was not the one computed before the news: a push that waited out its
            // hold would answer with what it found then (nothing), whatever the time a loaded machine took.
            // The site takes it: the next push says so (the job then has the site's id), and is not held for it.
            let adoption: [String: Any] = [
                "site": ["name": "lp", "path": "/lp"],
                "jobs": [
                    [
                        "site_job_id": "site-\(round)", "server_id": remote[0]["id"] as Any, "app": "hello",
                        "workdir": "lp/\(round)", "state": "READY",
                    ] as [String: Any]
                ],
            ]
            let adopted = try await server.request("POST", "/sync/push", json: adoption, token: token, session: session)
            #expect(adopted.status == 200, "\(adopted.text)")
        }
    }

    /// News is for the site it concerns: a job made for another user's site, or for another site of the same
    /// user, leaves the push held until its wait ends, empty.
    @Test(arguments: [false, true])
    func aHeldPushEndsEmptyAfterItsWaitAndOthersNewsDoesNotWakeIt(sameUser: Bool) async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let (token, _, _, idle) = try await registeredSite(server, user: "mira")
        let (other, _, otherApp, _) = try await registeredSite(
            server, user: "nils", site: "lp2", token: sameUser ? token : nil)
        let started = Date()
        async let held = server.request("POST", "/sync/push?wait=2", body: idle, token: token, session: session)
        let made = try await server.request(
            "POST", "/jobs/", json: [["app_id": otherApp, "workdir": "x/1"]],
            token: other, session: session)
        #expect(made.status == 201, "\(made.text)")
        let reply = try await held
        #expect(reply.status == 200, "\(reply.text)")
        #expect((reply.object["remote_jobs"] as? [Any])?.isEmpty == true, "\(reply.text)")
        #expect(Date().timeIntervalSince(started) >= 2, "held for its wait: another site's job is not this site's news")
    }

    @Test(arguments: ["-1", "51", "1.5", "x", "1&wait=2"])
    func aWaitOutOfBoundsIsRefusedNamingIt(_ wait: String) async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let (token, _, _, idle) = try await registeredSite(server, user: "olga")
        let reply = try await server.request(
            "POST", "/sync/push?wait=\(wait)", body: idle, token: token, session: session)
        #expect(reply.status == 400, "\(reply.text)")
        #expect(reply.object["field"] as? String == "wait", "\(reply.text)")
    }

    /// A held push keeps its body for the run after the news: a large one (padded past 64 KiB, telling nothing)
    /// is answered at once, not held.
    @Test func aLargePushIsNotHeld() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let (token, _, _, _) = try await registeredSite(server, user: "ugo")
        let digests = Dictionary(
            uniqueKeysWithValues: (0..<2000).map { ("app\($0)", String(repeating: "d", count: 50)) })
        let padded: [String: Any] = ["site": ["name": "lp", "path": "/lp"], "app_digests": digests]
        let started = Date()
        let reply = try await server.request(
            "POST", "/sync/push?wait=50", json: padded, token: token, session: session)
        #expect(reply.status == 200, "\(String(reply.text.prefix(300)))")
        #expect(Date().timeIntervalSince(started) < 30, "a 100 KB push was held")
    }

    /// A server asked to stop answers its held pushes and exits, instead of waiting out their holds.
    @Test func heldPushesEndAtShutdown() async throws {
        let server = try await LiveServer(.sqlite)
        let (token, siteID, _, idle) = try await registeredSite(server, user: "pia")
        func refreshed() async throws -> String {
            let sites = try await server.request("GET", "/sites/\(siteID)", token: token, session: session)
            return "\(sites.object["last_refresh"] ?? "")"
        }
        let before = try await refreshed()
        let started = Date()
        async let held = try? server.request("POST", "/sync/push?wait=45", body: idle, token: token, session: session)
        // The push's transaction has run (it is the site's heartbeat) when the site's record says so: then it
        // is held, or about to be.
        try await waitFor("the push reached the server", timeout: 20) { try await refreshed() != before }
        #expect(try await server.stop() == 0)
        let reply = await held
        #expect(reply?.status == 200, "a held push is answered at shutdown: \(String(describing: reply?.text))")
        #expect(Date().timeIntervalSince(started) < 40, "the server waited out a held push before it stopped")
    }

    /// End to end: a site whose sync would poll every 30 s takes each job made through the API within seconds, by
    /// the news that wakes its held push.
    @Test func aSiteTakesAnAPIJobByNewsNotByItsPeriod() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let site = try makeSite(server.dir)
        let token = try await syncing(site, to: server, user: "quin", period: 30)
        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", server.dir.path + "/watch.log"])
        let appID = try await siteApp(server, token)
        for round in 0..<3 {
            let made = try await server.request(
                "POST", "/jobs/",
                json: [["app_id": appID, "workdir": "api/\(round)", "serialized_parameters": pickledName("n")]],
                token: token, session: session)
            #expect(made.status == 201, "\(made.text)")
            try await waitFor("the API's job \(round) is at the site, well within the 30 s period", timeout: 10) {
                (try? Query(site: site).find("api/\(round)")) != nil
            }
        }
    }

    /// The site's own news ends its held push: a job submitted at the site reaches the server within seconds,
    /// though the push waits up to 50 s for the server's news.
    @Test func aSitesOwnNewsEndsItsHeldPush() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let site = try makeSite(server.dir)
        let token = try await syncing(site, to: server, user: "rosa", period: 1)
        try (try read(site.settingsPath) + "  wait_for_news: 50\n").write(
            toFile: site.settingsPath, atomically: true, encoding: .utf8)
        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", server.dir.path + "/watch.log"])
        _ = try await siteApp(server, token)
        for round in 0..<2 {
            var submission = Submission(site: site)
            _ = try submission.submit(helloJob("local/\(round)"))
            try await waitFor("the server has the site's own job \(round)", timeout: 15) {
                let found = try await server.request(
                    "GET", "/jobs/?workdir__contains=local/\(round)", token: token, session: session)
                return (found.object["count"] as? Int) == 1
            }
        }
    }

    /// A site given API jobs at random moments, several within one `sync.period`, pushes a bounded number of
    /// times per job: a listen the server answers at once (it has the new job for the site) is followed by the
    /// site's telling push, not by another listen. Before, the site listened again and again until the period ran
    /// out: hundreds of pushes a second while jobs arrived.
    @Test func aSiteGivenAPIJobsPushesABoundedNumberOfTimesPerJob() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let site = try makeSite(server.dir)
        let token = try await syncing(site, to: server, user: "sven", period: 1)
        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", server.dir.path + "/watch.log"])
        let appID = try await siteApp(server, token)
        let pushes = { server.log.components(separatedBy: "route=/sync/push").count - 1 }
        let before = pushes()
        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        var rng = SplitMix(seed: seed)
        let jobs = 6
        for n in 0..<jobs {
            try await Task.sleep(for: .milliseconds(Int.random(in: 100...600, using: &rng)))
            let made = try await server.request(
                "POST", "/jobs/",
                json: [["app_id": appID, "workdir": "burst/\(n)", "serialized_parameters": pickledName("n")]],
                token: token, session: session)
            #expect(made.status == 201, "\(made.text)")
        }
        try await waitFor("the API's jobs are at the site", timeout: 15) {
            (try? Query(site: site).find("burst/\(jobs - 1)")) != nil
        }
        // The site's events of those jobs reach the server too: then it is quiet, and its push is held.
        try await waitFor("the server has the site's events of every job", timeout: 15) {
            let found = try await server.request(
                "GET", "/events/?to_state=PREPROCESSED&limit=0", token: token, session: session)
            return (found.object["count"] as? Int) == jobs
        }
        let made = pushes() - before
        #expect(made <= 5 * jobs + 5, "seed \(seed): \(made) pushes for \(jobs) jobs")
    }

    /// The id of the site's app once its first push made it on the server.
    func siteApp(_ server: LiveServer, _ token: String) async throws -> Int {
        var appID: Int?
        try await waitFor("the site's app is on the server", timeout: 30) {
            let apps = try await server.request("GET", "/apps/?site_name=site", token: token, session: session)
            appID = (apps.object["results"] as? [[String: Any]])?.first?["id"] as? Int
            return appID != nil
        }
        return try #require(appID)
    }
}
