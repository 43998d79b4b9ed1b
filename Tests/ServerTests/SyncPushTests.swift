import Foundation
import Spool
import TestSupport
import Testing

/// `POST /sync/push`, the route a site mirrors itself through.
@Suite struct SyncPushTests {
    func event(_ id: String, _ t: String, _ from: String, _ to: String) -> [String: Any] {
        ["site_job_id": id, "t": t, "from": from, "to": to, "data": [:] as [String: Any]]
    }

    /// A job of the app `hello` as a site pushes it.
    func spec(_ id: String, _ workdir: String) -> [String: Any] {
        ["site_job_id": id, "app": "hello", "workdir": workdir, "parameters": ["name": "x"], "state": "STAGED_IN"]
    }

    @Test(
        "a push registers the site, its apps, jobs and events; repeated, it adds nothing", arguments: Backend.available)
    func pushIsIdempotent(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let token = try await server.user("nina")
        let body: [String: Any] = [
            "site": ["name": "cluster", "path": "/scratch/site"],
            "apps": [
                [
                    "name": "hello", "description": "says hello", "source_code": "command_template: echo {{ name }}",
                    "parameters": ["name": ["required": true, "default": NSNull(), "help": ""]],
                ]
            ],
            "jobs": [
                [
                    "site_job_id": "01AAA", "app": "hello", "workdir": "a", "parameters": ["name": "world!"],
                    "tags": ["k": "v"], "state": "RUNNING",
                ],
                [
                    "site_job_id": "01BBB", "app": "hello", "workdir": "b", "parameters": ["name": "two"],
                    "parent_site_ids": ["01AAA"], "state": "AWAITING_PARENTS",
                ],
            ],
            "events": [
                // The launcher host's file pushed before the watcher's: the latest event still wins.
                event("01AAA", "2026-11-29T10:00:02.000Z", "PREPROCESSED", "RUNNING"),
                event("01AAA", "2026-11-29T10:00:00.000Z", "CREATED", "STAGED_IN"),
                event("01AAA", "2026-11-29T10:00:01.000Z", "STAGED_IN", "PREPROCESSED"),
                event("01BBB", "2026-11-29T10:00:00.500Z", "CREATED", "AWAITING_PARENTS"),
            ],
        ]
        let first = try await server.request("POST", "/sync/push", json: body, token: token)
        #expect(first.status == 200, "\(first.text)")
        #expect(first.object["events"] as? Int == 4)
        let ids = try #require(first.object["jobs"] as? [String: Int])
        let a = try #require(ids["01AAA"])
        let again = try await server.request("POST", "/sync/push", json: body, token: token)
        #expect(again.status == 200 && again.object["events"] as? Int == 0, "\(again.text)")
        #expect((again.object["jobs"] as? [String: Int]) == ids)

        let job = try await server.request("GET", "/jobs/\(a)", token: token)
        #expect(job.object["state"] as? String == "RUNNING")
        #expect(job.object["return_code"] is NSNull)
        #expect(job.object["site_job_id"] as? String == "01AAA")
        let params = try Pickle.decodeBase64(job.object["serialized_parameters"] as? String ?? "")
        #expect(params == .object(["name": .string("world!")]))
        let child = try await server.request("GET", "/jobs/\(ids["01BBB"] ?? 0)", token: token)
        #expect(child.object["parent_ids"] as? [Int] == [a])
        let events = try await server.request("GET", "/events/?job_id=\(a)&ordering=timestamp", token: token)
        let stamps = (events.object["results"] as? [[String: Any]] ?? []).map { $0["timestamp"] as? String ?? "" }
        #expect(
            stamps == ["2026-11-29T10:00:00.000000", "2026-11-29T10:00:01.000000", "2026-11-29T10:00:02.000000"])
        let sites = try await server.request("GET", "/sites/?name=cluster", token: token)
        #expect(sites.object["count"] as? Int == 1)
        let apps = try await server.request("GET", "/apps/?site_name=cluster", token: token)
        #expect(apps.object["count"] as? Int == 1)

        // An event of a job the server has not got is refused by itself (code unknown_job), not recorded, and
        // does not stop the rest of the push: a bad job beside it is refused too, a good one taken.
        var bad = spec("01BAD", "w/bad")
        bad["num_nodes"] = 0
        let orphan = try await server.request(
            "POST", "/sync/push",
            json: [
                "site": ["name": "cluster", "path": "/scratch/site"],
                "jobs": [bad, spec("01GOOD", "w/good")],
                "events": [
                    event("01ZZZ", "2026-11-29T10:00:03.000Z", "CREATED", "STAGED_IN"),
                    event("01GOOD", "2026-11-29T10:00:03.000Z", "CREATED", "STAGED_IN"),
                ],
            ],
            token: token)
        #expect(orphan.status == 200, "\(orphan.text)")
        let refused = orphan.object["refused"] as? [[String: Any]] ?? []
        let codes = Dictionary(
            uniqueKeysWithValues: refused.map { ($0["site_job_id"] as? String ?? "", $0["code"] as? String ?? "") })
        #expect(codes == ["01ZZZ": "unknown_job", "01BAD": "invalid"], "\(orphan.text)")
        #expect((orphan.object["jobs"] as? [String: Any])?["01GOOD"] != nil, "\(orphan.text)")
        #expect(orphan.object["events"] as? Int == 1)

        // The site's RUN_ERROR event carries the exit status: the job's return_code.
        var failed = event("01AAA", "2026-11-29T10:00:04.000Z", "RUNNING", "RUN_ERROR")
        failed["data"] = ["return_code": 3, "tail": "boom"]
        // A hook's change of data rides in its event's data.
        var hooked = event("01BBB", "2026-11-29T10:00:05.000Z", "AWAITING_PARENTS", "FAILED")
        hooked["data"] = ["data": ["energy": -1.5, "gone": NSNull()]]
        let ended = try await server.request(
            "POST", "/sync/push",
            json: ["site": ["name": "cluster", "path": "/scratch/site"], "events": [failed, hooked]], token: token)
        #expect(ended.status == 200, "\(ended.text)")
        let erred = try await server.request("GET", "/jobs/\(a)", token: token)
        #expect(erred.object["state"] as? String == "RUN_ERROR" && erred.object["return_code"] as? Int == 3)
        let withData = try await server.request("GET", "/jobs/\(ids["01BBB"] ?? 0)", token: token)
        #expect((withData.object["data"] as? [String: Any])?["energy"] as? Double == -1.5, "\(withData.text)")

        // Another user's push of a site with the same name is another site.
        let other = try await server.user("omar")
        let theirs = try await server.request(
            "POST", "/sync/push", json: ["site": ["name": "cluster", "path": "/other"]], token: other)
        #expect(theirs.status == 200 && theirs.object["site_id"] as? Int != first.object["site_id"] as? Int)
        #expect(try await server.request("GET", "/jobs/\(a)", token: other).status == 404)
    }

    @Test("a site token pushes only as its own site, and does nothing else (issue 23, 7)", arguments: [Backend.sqlite])
    func siteTokensAreBound(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        _ = try await server.user("uma")
        let made = try run(
            binDirectory + "/balsam-server",
            [
                "token", "create", "--user", "uma", "--site", "polaris", "--db", server.db, "--secret-file",
                server.dir.path + "/secret",
            ])
        let token = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let mine = try await server.request(
            "POST", "/sync/push", json: ["site": ["name": "polaris", "path": "/p"]], token: token)
        #expect(mine.status == 200, "\(mine.text)")
        let other = try await server.request(
            "POST", "/sync/push", json: ["site": ["name": "aurora", "path": "/a"]], token: token)
        #expect(other.status == 403 && other.object["field"] as? String == "site.name", "\(other.text)")
        // Everything but its sync is refused: renaming its site (to take another's name), making sites, apps and
        // jobs, deleting, registering, reading the user's other sites.
        let login = try await server.login("uma", "uma-password")
        let sites = try await server.request("GET", "/sites/", token: login).object["results"] as? [[String: Any]]
        let siteID = try #require(sites?.first?["id"] as? Int)
        for (method, path, body) in [
            ("PUT", "/sites/\(siteID)", ["name": "aurora"] as [String: Any]), ("GET", "/sites/", nil),
            ("POST", "/sites/", ["name": "x", "path": "/x"]), ("DELETE", "/sites/\(siteID)", nil),
            ("POST", "/apps/", ["site_id": siteID, "name": "a", "serialized_class": "", "source_code": ""]),
            ("POST", "/jobs/", [] as [Any]), ("GET", "/jobs/", nil), ("DELETE", "/jobs/", nil),
            ("POST", "/batch-jobs/", [:] as [String: Any]), ("GET", "/events/", nil),
        ] as [(String, String, Any?)] {
            let reply = try await server.request(method, path, json: body, token: token)
            #expect(reply.status == 403, "\(method) \(path) with a site token: \(reply.status) \(reply.text)")
        }
    }
}
