import Foundation
import HTTPTypes
import Spool
import Sync
import TestSupport
import Testing
import Wire

@testable import Server

/// The site's `Pusher` against the server in this process: its rounds mirror the site, and what a user asks
/// through the API comes back in the reply and is carried out at the site.
@Suite struct PusherTests {
    @Test func roundsMirrorTheSiteAndCarryOutAUsersKill() async throws {
        let server = try InProcessServer()
        let token = try await server.user("pia")
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (a, _) = try submission.submit(helloJob("w/a"))
        let (b, _) = try submission.submit(helloJob("w/b", name: "two"))
        try dir.file("token", token)
        let tokenFile = dir.path + "/token"
        try await server.serving { url in
            var sync = SiteSettings.Sync(url: url)
            sync.tokenFile = tokenFile
            let settings = sync
            let (first, second) = try await offPool {
                let pusher = try Pusher(site: site, settings: settings)
                return (try pusher.round(), try pusher.round())
            }
            #expect(first.jobs == 2 && first.events == 2 && first.newRefusals.isEmpty)
            #expect(second.events == 0, "nothing new, nothing sent twice")
        }
        let listed = try await server.request(.get, "/jobs/?ordering=id", token: token)
        let jobs = listed.json.objectValue?["results"]?.arrayValue ?? []
        let bySite = Dictionary(
            uniqueKeysWithValues: jobs.compactMap { j -> (String, Int)? in
                guard let o = j.objectValue, let id = o["site_job_id"]?.stringValue, let n = o["id"]?.intValue
                else { return nil }
                return (id, n)
            })
        #expect(Set(bySite.keys) == [a.id, b.id])

        // A kill through the API is held as a request; the next rounds carry it out and report the move.
        let serverID = try #require(bySite[a.id])
        let kill = try await server.request(
            .patch, "/jobs/", json: .array([.object(["id": .int(serverID), "state": .string("FAILED")])]), token: token)
        #expect(kill.status == 200)
        try await server.serving { url in
            var sync = SiteSettings.Sync(url: url)
            sync.tokenFile = tokenFile
            let settings = sync
            try await offPool {
                let pusher = try Pusher(site: site, settings: settings)
                _ = try pusher.round()  // the request comes down and is carried out
                _ = try pusher.round()  // the move goes up
            }
        }
        #expect(try Query(site: site).readRecord(workdir: "w/a").state == .failed)
        let job = try await server.request(.get, "/jobs/\(serverID)", token: token)
        #expect(job.json.objectValue?["state"] == .string("FAILED"))
    }

    /// A job the server has, run and then removed before the next push (its run's end and its removal in one
    /// chunk): the run still counts on the server, as in the site's report (found by the differential test).
    @Test func aRunOfAJobRemovedBeforeThePushStillCounts() async throws {
        let server = try InProcessServer()
        let token = try await server.user("rob")
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (job, _) = try submission.submit(helloJob("w/r"))
        try dir.file("token", token)
        let tokenFile = dir.path + "/token"
        let push = { @Sendable (url: String) throws in
            var sync = SiteSettings.Sync(url: url)
            sync.tokenFile = tokenFile
            _ = try Pusher(site: site, settings: sync).round()
        }
        try await server.serving { url in try await offPool { try push(url) } }
        let store = JobStore(site: site, actor: "test")
        var loaded = try #require(try store.load(job.id))
        loaded = try store.move(
            loaded, through: [(.stagedIn, nil), (.preprocessed, nil), (.running, nil)],
            eventData: [EventFacts.Key.share.rawValue: .int(1)])
        try await Task.sleep(for: .milliseconds(50))  // a run of 50 ms
        try store.move(loaded, to: .runDone)
        let removed = Control(site: site, actor: "test").remove([try Query(site: site).find(job.id)], keepFiles: false)
        #expect(removed.first?.kind == .done)
        try await server.serving { url in try await offPool { try push(url) } }
        let report = try await server.request(.get, "/reports/utilization", token: token)
        let busy = report.json.objectValue?["busy_node_seconds"]?.doubleValue ?? 0
        #expect(busy >= 0.04, "\(report.json)")
        let local = try Reports(site: site).utilization()
        #expect(abs(local.busyNodeSeconds - busy) < 0.01, "site \(local.busyNodeSeconds), server \(busy)")
    }

    /// Issue #37: the site tells its server how far behind it is (`unpushed_lag_seconds`), a field added after
    /// the handshake: its first push, before any reply named the field, leaves it out; once the server said it
    /// reads it, every push carries it, and `/metrics` shows it by the server's site id.
    @Test func theSiteSendsItsLagOnceTheServerSaidItReadsIt() async throws {
        let server = try InProcessServer()
        let token = try await server.user("lou")
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        _ = try submission.submit(helloJob("w/a"))
        try dir.file("token", token)
        let tokenFile = dir.path + "/token"
        let lagSeries = "balsam_sync_site_lag_seconds{site_id="
        let metrics = server.metrics
        try await server.serving { url in
            var settings = SiteSettings.Sync(url: url)
            settings.tokenFile = tokenFile
            let sync = settings
            let (firstSaid, before) = try await offPool { () throws -> (Bool, Double) in
                let pusher = try Pusher(site: site, settings: sync)
                _ = try pusher.round()
                let firstSaid = metrics.render().contains(lagSeries)
                // A job made now, not yet pushed: the next push says how old its event is.
                let before = Timestamp.nowSeconds()
                var more = Submission(site: site)
                _ = try more.submit(helloJob("w/b"))
                _ = try pusher.round()
                return (firstSaid, before)
            }
            #expect(!firstSaid, "the first push names no later field")
            let now = Timestamp.nowSeconds()
            let siteID = try #require(try SyncState.load(site).siteID)
            let text = metrics.render()
            let line = text.split(separator: "\n").first { $0.hasPrefix(lagSeries + "\"\(siteID)\"} ") }
            let lag = try #require(line.flatMap { Double($0.split(separator: " ").last ?? "") }, "\(text)")
            #expect(lag > 0 && lag <= now - before + 0.001, "lag \(lag)")
            #expect(text.contains("balsam_sync_site_lag_max_seconds \(PrometheusText.number(lag))"), "\(text)")
        }
    }

    /// In the middle of a rolling upgrade one address answers as two servers, one from before the handshake
    /// (Fixtures/older-server-proxy.py, in front of this server: it refuses a push with a member it does not read,
    /// and its replies name no later field). The site, told by the newer one that it reads a later field, is
    /// refused by the older one for it, sends that push again at once without it, and no round fails.
    @Test func aSiteAlternatingBetweenANewerAndAnOlderServerLosesNoRound() async throws {
        let server = try InProcessServer()
        let token = try await server.user("ola")
        let dir = try TempDir()
        let site = try makeSite(dir)
        try dir.file("token", token)
        let tokenFile = dir.path + "/token"
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/older-server-proxy.py").path
        // What every server before the handshake reads (PushFieldTests.before).
        let members = [
            "site", "apps", "jobs", "events", "removed", "rejected", "app_digests", "requests_done", "batch_jobs",
            "rejected_batch_jobs", "launcher_sessions", "refused_apps",
        ]
        let rounds = 6
        let path = dir.path
        try await server.serving { url in
            let portFile = path + "/proxy-port"
            let proxy = try Spawned(
                "/usr/bin/python3", [fixture, url, portFile, members.joined(separator: ",")],
                stderr: .file(path + "/proxy.log"))
            defer { proxy.signal(SIGKILL) }
            try await waitFor("the proxy listens") { FileManager.default.fileExists(atPath: portFile) }
            let proxyURL = "http://127.0.0.1:" + (try String(contentsOfFile: portFile, encoding: .utf8))
            var settings = SiteSettings.Sync(url: proxyURL)
            settings.tokenFile = tokenFile
            let sync = settings
            try await offPool {
                let pusher = try Pusher(site: site, settings: sync)
                var submission = Submission(site: site)
                for k in 0..<rounds {
                    _ = try submission.submit(helloJob("w/\(k)"))
                    _ = try pusher.round()
                }
            }
            let said = try JSONValue.parse(Array(try Data(contentsOf: try #require(URL(string: proxyURL)))))
            #expect((said.objectValue?["refused"]?.intValue ?? 0) >= rounds / 2 - 1, "\(said)")
        }
        let listed = try await server.request(.get, "/jobs/?limit=0", token: token)
        #expect(listed.json.objectValue?["count"]?.intValue == rounds, "\(listed.json)")
    }

    /// A watcher killed after it took a job made through the API (the job is at the site, its server id in its
    /// record) but before it saved its sync state: the next watcher pushes the job's creation as the adoption it
    /// is, so the server holds the job once, under the id the user has (the differential test found it twice).
    @Test func aJobTakenJustBeforeAKillIsAdoptedNotPushedAgainAsNew() async throws {
        let world = try await PushingSite("kit")
        let (server, token, site) = (world.server, world.token, world.site)
        try await world.round()
        let apps = try await server.request(.get, "/apps/", token: token).json
        let appID = try #require(apps.objectValue?["results"]?.arrayValue?.first?.objectValue?["id"]?.intValue)
        let made = try await server.request(
            .post, "/jobs/",
            json: .array([
                .object([
                    "app_id": .int(appID), "workdir": .string("r/1"),
                    "serialized_parameters": .string(Pickle.encodeBase64(.object(["name": .string("x")]))),
                ])
            ]), token: token)
        let apiID = try #require(made.json.arrayValue?.first?.objectValue?["id"]?.intValue, "\(made.json)")
        // The round that takes it; then the state as it was before, as if the watcher died before saving it.
        let before = try SyncState.load(site)
        try await world.round()
        let taken = try Query(site: site).find("r/1")
        #expect(taken.job?.serverID == apiID)
        try before.save(site)
        for _ in 0..<3 { try await world.round() }
        let listed = try await server.request(.get, "/jobs/?limit=10", token: token).json
        let jobs = listed.objectValue?["results"]?.arrayValue ?? []
        #expect(jobs.count == 1, "\(listed)")
        #expect(jobs.first?.objectValue?["id"]?.intValue == apiID, "\(listed)")
        #expect(jobs.first?.objectValue?["site_job_id"]?.stringValue == taken.id, "\(listed)")
        let all = try await server.request(.get, "/jobs/?limit=0", token: token).json
        #expect(all.objectValue?["count"]?.intValue == 1, "\(all)")
    }

    /// The same window for a batch job asked for through the API: taken (made at the site), then the sync state
    /// put back as it was before. The site makes no second batch job for it, and the server holds one, not
    /// refused, linked to the site's.
    @Test func aBatchJobTakenJustBeforeAKillIsNotMadeTwice() async throws {
        let world = try await PushingSite("bex")
        let (server, token, site) = (world.server, world.token, world.site)
        try await world.round()
        let siteID = try #require(try SyncState.load(site).siteID)
        let asked = try await server.request(
            .post, "/batch-jobs/",
            json: .object([
                "site_id": .int(siteID), "num_nodes": .int(1), "wall_time_min": .int(5), "job_mode": .string("mpi"),
                "project": .string("local"), "queue": .string("local"),
            ]), token: token)
        let serverID = try #require(asked.json.objectValue?["id"]?.intValue, "\(asked.json)")
        let before = try SyncState.load(site)
        try await world.round()
        #expect(try BatchJobStore(site: site).all().jobs.map(\.serverID) == [serverID])
        try before.save(site)
        for _ in 0..<3 { try await world.round() }
        #expect(try BatchJobStore(site: site).all().jobs.count == 1, "one batch job at the site")
        let listed = try await server.request(.get, "/batch-jobs/", token: token).json
        let batches = listed.objectValue?["results"]?.arrayValue ?? []
        #expect(batches.count == 1, "\(listed)")
        #expect(batches.first?.objectValue?["id"]?.intValue == serverID, "\(listed)")
        #expect(batches.first?.objectValue?["state"]?.stringValue != "submit_failed", "\(listed)")
    }
}

/// A server in this process, a user, and a site that pushes to it with the user's token: `round()` is one round
/// of a new `Pusher` (a watcher started afresh each time).
struct PushingSite {
    let server: InProcessServer
    let token: String
    let dir: TempDir
    let site: Site

    init(_ user: String) async throws {
        server = try InProcessServer()
        token = try await server.user(user)
        dir = try TempDir()
        site = try makeSite(dir)
        try dir.file("token", token)
    }

    func round() async throws {
        let (site, tokenFile) = (site, dir.path + "/token")
        try await server.serving { url in
            var settings = SiteSettings.Sync(url: url)
            settings.tokenFile = tokenFile
            let sync = settings
            try await offPool { _ = try Pusher(site: site, settings: sync).round() }
        }
    }
}
