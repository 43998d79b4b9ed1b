import Foundation
import Spool
import TestSupport
import Testing

/// The server's `/reports/` routes and the original client's `balsam.analytics` over a real site's runs: jobs
/// run by a real batch job (local scheduler, real launcher), pushed by the watcher's sync. The client side runs
/// Tests/client/analytics_test.py; this side compares its figures with the site's own `balsam report`.
@Suite struct ReportRouteTests {
    @Test(
        "balsam.analytics against our server gives our reports' series, and the site's balsam report the same figures",
        .enabled(if: PythonTools.clientPython != nil || PythonTools.required, "dev/test makes the client's venv"),
        arguments: Backend.available)
    func analyticsMatchTheReports(_ backend: Backend) async throws {
        let python = try #require(PythonTools.clientPython, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("rita")
        try dir.file("token", token)
        let site = try Site.create(at: dir.path + "/site")
        try setSync(site, url: server.url, tokenFile: dir.path + "/token", period: 0.2)
        let settings = try read(site.settingsPath).replacingOccurrences(of: "idle_ttl_sec: 60", with: "idle_ttl_sec: 1")
            .replacingOccurrences(of: "sync_period: 2", with: "sync_period: 0.2")
        try settings.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        try site.createApp(try App(name: "nap", commandTemplate: "sleep 0.3"))
        try site.createApp(try App(name: "bad", commandTemplate: "echo broken; exit 3"))
        var lines = (0..<8).map { #"{"app":"nap","workdir":"n/\#($0)","node_packing_count":2}"# }
        lines += (0..<2).map { #"{"app":"bad","workdir":"b/\#($0)"}"# }
        let submitted = try balsamSubmit(
            ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
        #expect(submitted.status == 0, "\(submitted.stderr)")
        #expect(try balsam(["queue", "submit", "-n", "1", "-t", "5"], site: site.root).status == 0)
        let background = Background()
        defer { background.stop() }
        try background.start(
            "balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"],
            env: ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"])
        try await waitFor("the batch job ended and every job with it, on the server too", timeout: 120) {
            guard (try? BatchJobStore(site: site).load(1))?.state == .finished else { return false }
            let jobs = try await server.request("GET", "/jobs/?limit=100", token: token)
            let states = (jobs.object["results"] as? [[String: Any]] ?? []).compactMap { $0["state"] as? String }
            let batch = try await server.request("GET", "/batch-jobs/", token: token)
            let ended = (batch.object["results"] as? [[String: Any]])?.first?["end_time"] is String
            return ended && states.filter { $0 == "JOB_FINISHED" }.count == 8
                && states.filter { $0 == "FAILED" }.count == 2
        }
        let sites = try await server.request("GET", "/sites/", token: token)
        let siteID = try #require((sites.object["results"] as? [[String: Any]])?.first?["id"] as? Int)
        let script = URL(fileURLWithPath: PythonTools.scriptPath).deletingLastPathComponent()
            .appendingPathComponent("analytics_test.py").path
        let result = try await runOffPool(
            python, [script],
            env: [
                "BALSAM_TEST_SERVER": server.url, "BALSAM_TEST_TOKEN": token, "BALSAM_TEST_SITE_ID": String(siteID),
            ])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)\n\((try? read(dir.path + "/watch.log")) ?? "")")
        let figures = try JSONValue.parse(String(result.stdout.split(separator: "\n").last ?? "")).objectValue ?? [:]

        // The site's own reports: the same counts, busy node-seconds and batch job utilization.
        func report(_ args: [String]) throws -> [String: JSONValue] {
            try JSONValue.parse(try balsam(["report"] + args + ["--json"], site: site.root).stdout).objectValue ?? [:]
        }
        #expect(try report(["throughput"])["total"]?.intValue == figures["finished"]?.intValue)
        #expect(figures["finished"]?.intValue == 8 && figures["failures"]?.intValue == 2, "\(figures)")
        let atSite = try report(["utilization"])
        let busy = atSite["busy_node_seconds"]?.doubleValue ?? -1
        #expect(busy > 8 * 0.3 * 0.5 && abs(busy - (figures["busy_node_seconds"]?.doubleValue ?? 0)) < 1e-3)
        let siteUse = try #require(atSite["batch_jobs"]?.arrayValue?.first?.objectValue)
        let serverUse = try #require(figures["batch_jobs"]?.arrayValue?.first?.objectValue)
        let siteMean = siteUse["mean_utilization"]?.doubleValue ?? -1
        #expect(
            siteMean > 0 && abs(siteMean - (serverUse["mean_utilization"]?.doubleValue ?? 0)) < 1e-6,
            "site \(siteUse), server \(serverUse)")
    }
}
