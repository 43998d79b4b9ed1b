import Foundation
import Spool
import TestSupport
import Testing

/// A real site pushed to a real server with `balsam sync push`: jobs, their specs and every transition arrive
/// once, also after the server was away.
@Suite struct SiteSyncTests {
    /// Each job's state at the site, by its id.
    func siteStates(_ site: Site) throws -> [String: String] {
        let listed = try balsam(["ls", "--json"], site: site.root)
        var states: [String: String] = [:]
        for line in listed.stdout.split(separator: "\n") {
            if let o = try? JSONValue.parse(String(line)).objectValue, let id = o["id"]?.stringValue {
                states[id] = o["state"]?.stringValue
            }
        }
        return states
    }

    /// Each job's state on the server, by the site's id.
    func serverStates(_ server: LiveServer, _ token: String) async throws -> [String: String] {
        let reply = try await server.request("GET", "/jobs/?limit=100000", token: token)
        var states: [String: String] = [:]
        for job in reply.object["results"] as? [[String: Any]] ?? [] {
            if let id = job["site_job_id"] as? String { states[id] = job["state"] as? String }
        }
        return states
    }

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
        let settings = try read(site.settingsPath)
        try dir.file(
            "site/settings.yml",
            settings + "\nsync:\n  url: \(server.url)\n  token_file: \(dir.path)/site-token\n  period: 1\n")
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
        let third = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(third.stdout.contains("(0 new to the server)"), "\(third.stdout)")

        // The server away: the push fails (69, the URL named), the status says so, the cursor stays.
        try await server.stop()
        _ = try balsam(["kill", "--all"], site: site.root)
        let away = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(away.status == 69 && away.stderr.contains(server.url), "\(away.stderr)")
        let status = try balsam(["sync", "status", "--json"], site: site.root)
        let o = try #require(try JSONValue.parse(status.stdout).objectValue)
        #expect(o["last_error"]?.stringValue?.contains(server.url) == true)
        #expect((o["unpushed_log_bytes"]?.intValue ?? 0) > 0)

        // Back (same database; on another port, which settings.yml is told): the push catches up, and the server
        // holds exactly the site's history.
        let back = try await LiveServer(backend, db: server.db, dir: dir)
        defer { Task { try? await back.stop() } }
        try dir.file(
            "site/settings.yml", try read(site.settingsPath).replacingOccurrences(of: server.url, with: back.url))
        let caughtUp = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(caughtUp.status == 0, "\(caughtUp.stderr)")
        #expect(try await serverStates(back, token) == (try siteStates(site)))
        let all = try await back.request("GET", "/events/?limit=0", token: token)
        #expect(all.object["count"] as? Int == (try eventLines(site)))
        let cleared = try JSONValue.parse(try balsam(["sync", "status", "--json"], site: site.root).stdout)
        #expect(cleared.objectValue?["last_error"] == .null)
    }
}
