import Foundation
import Spool
import TestSupport
import Testing

/// Transfer items through the sync: a site's jobs' items appear on the server and follow the site's transfers;
/// a job made through the API with transfers is staged in and out at the site.
@Suite struct SyncTransferTests {
    @Test("transfer items are mirrored to /transfers/, and a job made through the API stages in and out at the site")
    func transfersAreMirrored() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("tess")
        try dir.file("token", token)
        let remote = dir.path + "/remote"
        try FileManager.default.createDirectory(atPath: remote + "/in", withIntermediateDirectories: true)
        try "from the site\n".write(toFile: remote + "/in/a.txt", atomically: false, encoding: .utf8)
        try "from the API\n".write(toFile: remote + "/in/b.txt", atomically: false, encoding: .utf8)
        let site = try Site.create(at: dir.path + "/site")
        try Posix.makeDirectories(site.appsPath + "/stage")
        try """
        command_template: "cp input.txt result.txt"
        transfers:
          input: {required: true, direction: in, local_path: input.txt}
          result: {required: true, direction: out, local_path: result.txt}
        """.write(toFile: site.appsPath + "/stage/app.yml", atomically: false, encoding: .utf8)
        // A stage-in that keeps failing is retried (almost) for ever here: the user settles it through the API.
        let settings =
            try read(site.settingsPath).replacingOccurrences(
                of: "{retries: 2,", with: "{retries: 1000000,")
            + "transfer_locations:\n  here: file://\(remote)\n"
        try settings.write(toFile: site.settingsPath, atomically: false, encoding: .utf8)
        try setSync(site, url: server.url, tokenFile: dir.path + "/token", period: 0.2)
        let submitted = try balsamSubmit(
            ["-a", "stage", "-w", "a", "--transfer", "input=here:/in/a.txt", "--transfer", "result=here:/out/a.txt"],
            site: site.root)
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let stuck = try balsamSubmit(
            [
                "-a", "stage", "-w", "c", "--transfer", "input=here:/in/nowhere.txt", "--transfer",
                "result=here:/out/c.txt",
            ],
            site: site.root)
        #expect(stuck.status == 0, "\(stuck.stderr)")
        #expect(try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]).status == 0)

        // The site's locations and the app's slots are on the server: a job made through the API can use them.
        let apps = try await server.request("GET", "/apps/?site_name=site", token: token)
        let app = try #require((apps.object["results"] as? [[String: Any]])?.first { $0["name"] as? String == "stage" })
        let appID = try #require(app["id"] as? Int)
        let made = try await server.request(
            "POST", "/jobs/",
            json: [
                [
                    "app_id": appID, "workdir": "b", "serialized_parameters": Pickle.encodeBase64(.object([:])),
                    "transfers": ["input": "here:/in/b.txt", "result": "here:/out/b.txt"],
                ]
            ], token: token)
        #expect(made.status == 201, "\(made.text)")
        let apiJob = try #require(made.list.first?["id"] as? Int)

        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"])
        try background.start(
            "balsam-launcher", ["--site", site.root, "--wall-time-min", "5", "--idle-timeout", "60"])
        // The stuck job's stage-in, on the server: the user puts the file in place and marks the item done.
        var stuckItem: Int?
        try await waitFor("the stuck job's items are on the server", timeout: 60) {
            let items = try await server.request("GET", "/transfers/?direction=in", token: token)
            stuckItem =
                (items.object["results"] as? [[String: Any]] ?? []).first {
                    ($0["remote_path"] as? String) == "/in/nowhere.txt"
                }?["id"] as? Int
            return stuckItem != nil
        }
        try "put there by hand\n".write(
            toFile: site.jobDirectory("c") + "/input.txt", atomically: false, encoding: .utf8)
        let marked = try await server.request(
            "PATCH", "/transfers/", json: [["id": try #require(stuckItem), "state": "done"]], token: token)
        #expect(marked.status == 200, "\(marked.text)")
        var states: [String] = []
        try await waitFor("the jobs are finished on the server", timeout: 90) {
            let jobs = try await server.request("GET", "/jobs/?site_id=\(try siteID())", token: token)
            states = (jobs.object["results"] as? [[String: Any]] ?? []).compactMap { $0["state"] as? String }
            return states.count == 3 && states.allSatisfy { $0 == "JOB_FINISHED" }
        }
        func siteID() throws -> Int { (app["site_id"] as? Int) ?? 0 }
        #expect(
            states == ["JOB_FINISHED", "JOB_FINISHED", "JOB_FINISHED"], "\((try? read(dir.path + "/watch.log")) ?? "")")
        #expect(try read(remote + "/out/c.txt") == "put there by hand\n")
        #expect(try read(remote + "/out/a.txt") == "from the site\n")
        #expect(try read(remote + "/out/b.txt") == "from the API\n")
        let items = try await server.request("GET", "/transfers/?site_id=\(try siteID())", token: token)
        let listed = items.object["results"] as? [[String: Any]] ?? []
        #expect(listed.count == 6, "\(items.text)")
        #expect(listed.allSatisfy { $0["state"] as? String == "done" }, "\(items.text)")
        let mine = listed.filter { $0["job_id"] as? Int == apiJob }
        #expect(Set(mine.compactMap { $0["direction"] as? String }) == ["in", "out"], "\(items.text)")
    }
}
