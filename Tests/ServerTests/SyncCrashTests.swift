import Foundation
import Spool
import TestSupport
import Testing

/// The sync under kill -9: a watcher killed mid-push again and again loses nothing and doubles nothing.
@Suite struct SyncCrashTests {
    @Test("the watcher SIGKILLed ten times while it pushes 2,000 jobs: the server ends with exactly the site's history")
    func killedMidPush() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let site = try makeSite(dir)
        let token = try await syncing(site, to: server, user: "vic", period: 0.05)
        func startWatcher() throws -> Spawned {
            try startBinary("balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"])
        }
        var watcher = try startWatcher()
        defer { if watcher.isRunning { kill(watcher.processIdentifier, SIGKILL) } }
        for batch in 0..<10 {
            let lines = (0..<200).map { #"{"app":"hello","workdir":"k\#(batch)/\#($0)","parameters":{"name":"n"}}"# }
            // The cursor before the batch: read after it, a watcher quick enough to push the whole batch first (and
            // nothing more to push since events are logged once) left nothing to wait for.
            let before = (try? JSONValue.parse(try read(site.root + "/sync/state.json")))?.objectValue?["cursor"]
            #expect(
                try balsamSubmit(["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
                    .status == 0)
            // Let it push part of the batch, then kill it where it stands, and start another.
            try await waitFor("the watcher pushes something", timeout: 60) {
                (try? JSONValue.parse(try read(site.root + "/sync/state.json")).objectValue?["cursor"]) != before
            }
            kill(watcher.processIdentifier, SIGKILL)
            watcher.waitUntilExit()
            watcher = try startWatcher()
        }
        kill(watcher.processIdentifier, SIGTERM)
        watcher.waitUntilExit()
        // A move's event is logged before its state file says so: what the last kill cut short (its events
        // pushed already) is finished by a watcher's recovery, as the next start would.
        #expect(try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"]).status == 0)
        let pushed = try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root])
        #expect(pushed.status == 0, "\(pushed.stderr)")

        let listed = try balsam(["ls", "--json"], site: site.root)
        var atSite: [String: String] = [:]
        for line in listed.stdout.split(separator: "\n") {
            if let o = try? JSONValue.parse(String(line)).objectValue, let id = o["id"]?.stringValue {
                atSite[id] = o["state"]?.stringValue
            }
        }
        #expect(atSite.count == 2000)
        let reply = try await server.request("GET", "/jobs/?limit=100000", token: token)
        var onServer: [String: String] = [:]
        for job in reply.object["results"] as? [[String: Any]] ?? [] {
            if let id = job["site_job_id"] as? String { onServer[id] = job["state"] as? String }
        }
        let differing = atSite.filter { onServer[$0.key] != $0.value }
        #expect(
            onServer.count == atSite.count && differing.isEmpty,
            "\(differing.count) jobs differ, e.g. \(differing.first.map { "\($0)" } ?? "")")
        let logged = try entries(site.eventsPath).filter { $0.hasSuffix(".jsonl") }.reduce(0) { total, name in
            total + (try read(site.eventsPath + "/" + name)).split(separator: "\n").count
        }
        let events = try await server.request("GET", "/events/?limit=0", token: token)
        #expect(events.object["count"] as? Int == logged, "every event once: the server has \(events.text)")
    }
}

/// The server away while the site works: every job and transition reaches it once when it is back.
@Suite struct SyncOutageTests {
    @Test("the server stopped while 2,000 jobs run to the end, then back: every job and transition arrives once")
    func serverAwayWhileJobsRun() async throws {
        let server = try await LiveServer(.sqlite)
        let dir = server.dir
        let token = try await server.user("xena")
        try dir.file("token", token)
        let site = try makeSite(dir)
        try setSync(site, url: server.url, tokenFile: dir.path + "/token", period: 0.2)
        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"])
        try background.start(
            "balsam-launcher", ["--site", site.root, "--wall-time-min", "20", "--idle-timeout", "600"])
        let lines = (0..<2000).map { #"{"app":"hello","workdir":"o/\#($0)","parameters":{"name":"n\#($0)"}}"# }
        #expect(
            try balsamSubmit(["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8)).status
                == 0)
        try await server.stop()
        try await waitFor("the site finishes its 2,000 jobs with the server away", timeout: 600) {
            let counts = try balsam(["ls", "--by-state"], site: site.root).stdout
            return counts.split(separator: "\n").contains { $0.contains("JOB_FINISHED") && $0.contains("2000") }
        }
        let back = try await LiveServer(.sqlite, db: server.db, dir: dir)
        defer { Task { try? await back.stop() } }
        try setSync(site, url: back.url, tokenFile: dir.path + "/token", period: 0.2)
        let logged = { () throws -> Int in
            try entries(site.eventsPath).filter { $0.hasSuffix(".jsonl") }.reduce(0) { total, name in
                total + (try read(site.eventsPath + "/" + name)).split(separator: "\n").count
            }
        }
        try await waitFor("the server holds every event of the site", timeout: 300) {
            let events = try await back.request("GET", "/events/?limit=0", token: token)
            return events.object["count"] as? Int == (try logged())
        }
        let finished = try await back.request("GET", "/jobs/?state=JOB_FINISHED&limit=0", token: token)
        #expect(finished.object["count"] as? Int == 2000)
        let all = try await back.request("GET", "/jobs/?limit=0", token: token)
        #expect(all.object["count"] as? Int == 2000)
    }
}
