import Foundation
import TestSupport
import Testing

/// Several server processes on one PostgreSQL database: the server keeps no state of its own, so concurrent
/// bulk updates through either lose nothing.
@Suite struct ConcurrencyTests {
    @Test(
        "two servers on one PostgreSQL: concurrent bulk updates lose nothing, last_update only grows",
        .enabled(if: Backend.available.contains(.postgresql), "needs the test PostgreSQL (dev/test)"))
    func twoServersOneDatabase() async throws {
        let first = try await LiveServer(.postgresql)
        defer { Task { try? await first.stop() } }
        let second = try await LiveServer(.postgresql, db: first.db, dir: first.dir)
        defer { Task { try? await second.stop() } }
        let token = try await first.user("ivy")
        let (_, appID) = try await first.siteAndApp(token)
        let count = 400
        let created = try await second.request(
            "POST", "/jobs/",
            json: (0..<count).map {
                ["app_id": appID, "workdir": "c/\($0)", "serialized_parameters": pickledName("v")]
            },
            token: token)
        #expect(created.status == 201)
        let ids = created.list.compactMap { $0["id"] as? Int }
        #expect(ids.count == count)

        // Four writers, two per server, each its own data key, ten rounds over every job; meanwhile the jobs
        // move STAGED_IN -> PREPROCESSED -> RUNNING through alternating servers, and a reader samples last_update.
        let servers = [first, second]
        let rounds = 10
        let sampled = ids.prefix(20).map { $0 }
        try await withThrowingTaskGroup(of: [String: [String]].self) { group in
            for writer in 0..<4 {
                group.addTask {
                    for round in 0..<rounds {
                        let patch = ids.map { ["id": $0, "data": ["writer\(writer)": round]] as [String: Any] }
                        let reply = try await servers[writer % 2].request("PATCH", "/jobs/", json: patch, token: token)
                        #expect(reply.status == 200, "writer \(writer) round \(round): \(reply.status) \(reply.text)")
                    }
                    return [:]
                }
            }
            group.addTask {
                for (i, state) in ["PREPROCESSED", "RUNNING"].enumerated() {
                    let patch = ids.map { ["id": $0, "state": state] as [String: Any] }
                    let reply = try await servers[i % 2].request("PATCH", "/jobs/", json: patch, token: token)
                    #expect(reply.status == 200, "\(state): \(reply.status) \(reply.text)")
                }
                return [:]
            }
            group.addTask {
                var seen: [String: [String]] = [:]
                for round in 0..<30 {
                    let query = sampled.map { "id=\($0)" }.joined(separator: "&")
                    let reply = try await servers[round % 2].request("GET", "/jobs/?\(query)", token: token)
                    for job in reply.object["results"] as? [[String: Any]] ?? [] {
                        if let id = job["id"] as? Int, let stamp = job["last_update"] as? String {
                            seen["\(id)", default: []].append(stamp)
                        }
                    }
                }
                return seen
            }
            for try await seen in group {
                for (id, stamps) in seen {
                    #expect(stamps == stamps.sorted(), "job \(id): last_update went back: \(stamps)")
                }
            }
        }
        // Every writer's last round is in every job (each PATCH replaces data, so the last write of the last
        // writer wins; what must hold is that each job saw every update: the events and the final states).
        let all = try await first.request("GET", "/jobs/?limit=\(count)", token: token)
        let results = all.object["results"] as? [[String: Any]] ?? []
        #expect(results.count == count)
        for job in results {
            #expect(job["state"] as? String == "RUNNING", "\(job["id"] ?? 0): \(job["state"] ?? "")")
            let data = job["data"] as? [String: Any] ?? [:]
            #expect(data.count == 1 && (data.values.first as? Int) == rounds - 1, "\(data)")
        }
        for state in ["PREPROCESSED", "RUNNING"] {
            let events = try await second.request("GET", "/events/?to_state=\(state)&limit=0", token: token)
            #expect(events.object["count"] as? Int == count, "\(state) events: \(events.text)")
        }
        #expect(!first.log.contains("status=500") && !second.log.contains("status=500"))
    }
}
