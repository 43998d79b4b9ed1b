import Foundation
import Spool
import TestSupport
import Testing
import Wire

/// `POST /sync/push` against the live binary: what a site's token may do (the protocol itself is tested
/// in-process, `SyncProtocolTests`).
@Suite struct SyncPushTests {
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
        func push(_ name: String, _ path: String) -> Data {
            Data(PushRequest(site: PushedSite(name: name, path: path)).json.serialized().utf8)
        }
        let mine = try await server.request("POST", "/sync/push", body: push("polaris", "/p"), token: token)
        #expect(mine.status == 200, "\(mine.text)")
        let other = try await server.request("POST", "/sync/push", body: push("aurora", "/a"), token: token)
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
