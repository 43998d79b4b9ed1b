import Foundation
import Spool
import TestSupport
import Testing

/// A page's `count` by owner, site and state comes from the counts the database keeps (`job_counts`); it must
/// equal the count of the rows through every kind of change: creation, state changes, bulk changes, deletion,
/// a site's deletion cascading, and another user's jobs.
@Suite struct JobCountTests {
    @Test("kept counts equal counted rows through creates, moves, deletes and cascades", arguments: Backend.available)
    func keptCountsMatchRows(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let token = try await server.user("carol")
        let other = try await server.user("dave")
        let (site1, app1) = try await server.siteAndApp(token, site: "one")
        let (site2, app2) = try await server.siteAndApp(token, site: "two")
        let (_, otherApp) = try await server.siteAndApp(other, site: "one")
        let params = pickledName("p")
        func create(_ app: Int, _ prefix: String, _ n: Int, parents: [Int] = [], as who: String) async throws -> [Int] {
            let body = (0..<n).map { i -> [String: Any] in
                ["app_id": app, "workdir": "w\(prefix)/\(i)", "serialized_parameters": params, "parent_ids": parents]
            }
            let reply = try await server.request("POST", "/jobs/", json: body, token: who)
            #expect(reply.status == 201, "\(reply.text)")
            return reply.list.compactMap { $0["id"] as? Int }
        }
        func count(_ query: String) async throws -> Int {
            let reply = try await server.request("GET", "/jobs/?limit=0&\(query)", token: token)
            return try #require(reply.object["count"] as? Int, "\(reply.text)")
        }
        // Each filter the kept counts answer, against the same filter with one they do not (every workdir has a
        // w), which counts the rows.
        func check(_ step: String) async throws {
            for query in [
                "", "site_id=\(site1)", "site_id=\(site2)", "state=STAGED_IN", "state=RUNNING",
                "state__ne=STAGED_IN", "site_id=\(site1)&state=AWAITING_PARENTS", "state=STAGED_IN&state=RUNNING",
            ] {
                let kept = try await count(query)
                let counted = try await count(query + "&workdir__contains=w")
                #expect(kept == counted, "\(step): \(query): kept \(kept), rows \(counted)")
            }
        }
        let first = try await create(app1, "a", 30, as: token)
        _ = try await create(app1, "b", 5, parents: [first[0]], as: token)
        let second = try await create(app2, "c", 20, as: token)
        _ = try await create(otherApp, "d", 7, as: other)
        try await check("created")
        #expect(try await count("") == 55)

        for state in ["PREPROCESSED", "RUNNING"] {
            let moves = first.prefix(10).map { ["id": $0, "state": state] as [String: Any] }
            #expect(try await server.request("PATCH", "/jobs/", json: moves, token: token).status == 200)
        }
        try await check("moved one by one")
        #expect(try await count("state=RUNNING") == 10)
        let bulk = try await server.request(
            "PUT", "/jobs/?site_id=\(site2)&state=STAGED_IN", json: ["state": "PREPROCESSED"], token: token)
        #expect(bulk.status == 200, "\(bulk.text)")
        try await check("moved in bulk")

        let removed = try await server.request("DELETE", "/jobs/\(first[29])", token: token)
        #expect(removed.status == 204, "\(removed.text)")
        try await check("one deleted")
        let site = try await server.request("DELETE", "/sites/\(site2)", token: token)
        #expect(site.status == 204, "\(site.text)")
        try await check("a site deleted")
        #expect(try await count("") == 34)
        #expect(try await count("site_id=\(site2)") == 0)

        // Creates and moves of one user's jobs at one site in one state at once (issue #36, item 4): on
        // PostgreSQL they run on several connections, each adding to counter rows of its own shard; the kept
        // counts must still be the rows.
        let made = try await withThrowingTaskGroup(of: [Int].self) { group in
            for k in 0..<8 { group.addTask { try await create(app1, "e\(k)", 10, as: token) } }
            return try await group.reduce(into: [Int]()) { $0 += $1 }
        }
        #expect(made.count == 80)
        try await check("created at once")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for part in stride(from: 0, to: made.count, by: 10) {
                let moves = made[part..<part + 10].map { ["id": $0, "state": "PREPROCESSED"] as [String: Any] }
                let body = try JSONSerialization.data(withJSONObject: moves)
                group.addTask {
                    let reply = try await server.request("PATCH", "/jobs/", body: body, token: token)
                    #expect(reply.status == 200, "\(reply.text)")
                }
            }
            try await group.waitForAll()
        }
        try await check("moved at once")
        #expect(try await count("state=PREPROCESSED") >= 80)
        _ = (second, app2)
    }
}
