import Foundation
import Spool
import TestSupport
import Testing

/// The sync protocol under hostile pushes (issue 23): valid pushes with one value replaced by something hostile
/// (wrong types, huge or negative numbers, NULs, deep nesting, long strings, unknown states). The server never
/// answers 5xx, never stops, and still takes a good push after. Bounded and replayable (`BALSAM_SYNC_FUZZ_SEED`,
/// `BALSAM_SYNC_FUZZ_CASES`).
@Suite struct SyncFuzzTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_SYNC_FUZZ_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)
    static let cases = Int(ProcessInfo.processInfo.environment["BALSAM_SYNC_FUZZ_CASES"] ?? "") ?? 300

    static let hostile: [JSONValue] = [
        .null, .bool(true), .int(-1), .int(0), .int(Int.max), .int(Int.min), .double(1e308), .string(""),
        .string("a\u{0}b"), .string(String(repeating: "x", count: 70_000)), .string("../../etc"),
        .string("FINISHED"), .string("2026-13-45T99:99:99Z"), .array([]), .object([:]),
        .string("gASN/////////38u"), .object(["x": .array([.array([.array([.null])])])]),
    ]

    func push(_ n: Int) -> JSONValue {
        let id = "01FUZZ\(n)"
        return .object([
            "site": .object([
                "name": .string("fuzz"), "path": .string("/scratch/fuzz"),
                "allowed_queues": .object([
                    "q": .object(["max_nodes": .int(2), "max_walltime": .int(60), "max_queued_jobs": .int(5)])
                ]),
                "allowed_projects": .array([.string("p")]), "optional_batch_job_params": .object(["k": .string("v")]),
            ]),
            "launcher_sessions": .array([
                .object([
                    "lease": .string("h.1.\(n)"), "nodes": .int(1), "start": .string("2026-11-29T10:00:00.000Z"),
                    "end": .null,
                ])
            ]),
            "apps": .array([
                .object([
                    "name": .string("hello"), "description": .string(""), "source_code": .string(""),
                    "parameters": .object([
                        "name": .object(["required": .bool(true), "default": .null, "help": .string("")])
                    ]),
                ])
            ]),
            "jobs": .array([
                .object([
                    "site_job_id": .string(id), "app": .string("hello"), "workdir": .string("w/\(n)"),
                    "parameters": .object(["name": .string("x")]), "tags": .object(["k": .string("v")]),
                    "state": .string("STAGED_IN"), "parent_site_ids": .array([]),
                ]),
                // An adoption of a job made through the API, by a server id that may be this user's, another's, or
                // none at all.
                .object(["site_job_id": .string(id + "A"), "server_id": .int(1 + n % 7)]),
            ]),
            "events": .array([
                .object([
                    "site_job_id": .string(id), "t": .string("2026-11-29T10:00:00.000Z"), "from": .string("CREATED"),
                    "to": .string("STAGED_IN"), "data": .object([:]),
                ])
            ]),
            "batch_jobs": .array([
                .object([
                    "site_batch_id": .int(n), "project": .string("p"), "queue": .string("q"), "num_nodes": .int(1),
                    "wall_time_min": .int(5), "state": .string("queued"), "filter_tags": .object([:]),
                    "optional_params": .object([:]),
                ])
            ]),
            "requests_done": .array([]), "rejected": .array([]), "removed": .array([]),
        ])
    }

    /// `value` with one leaf or member, chosen by `pick`, replaced by `replacement`.
    func replacing(_ value: JSONValue, _ pick: inout Int, with replacement: JSONValue) -> JSONValue {
        if pick == 0 { return replacement }
        pick -= 1
        switch value {
        case .array(let items): return .array(items.map { replacing($0, &pick, with: replacement) })
        case .object(let members): return .object(members.mapValues { replacing($0, &pick, with: replacement) })
        default: return value
        }
    }

    @Test("mutated pushes never get a 5xx nor stop the server", arguments: Backend.available)
    func mutatedPushes(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let token = try await server.user("fuzz")
        // Another user's jobs, whose ids the pushes name: never adopted, never touched.
        let other = try await server.user("other")
        let (_, appID) = try await server.siteAndApp(other)
        let theirs = try await server.request(
            "POST", "/jobs/",
            json: (0..<3).map { ["app_id": appID, "workdir": "o/\($0)", "serialized_parameters": pickledName("o")] },
            token: other)
        #expect(theirs.status == 201, "\(theirs.text)")
        var rng = SplitMix(seed: Self.seed)
        for n in 0..<Self.cases {
            var pick = Int(rng.next() % 60)
            let hostile = Self.hostile[Int(rng.next() % UInt64(Self.hostile.count))]
            let body = replacing(push(n), &pick, with: hostile)
            let reply = try await server.request(
                "POST", "/sync/push", body: Data(body.serialized().utf8), token: token)
            #expect(
                reply.status < 500,
                "seed \(Self.seed) case \(n): \(reply.status) \(reply.text) for \(body.serialized().prefix(300))")
        }
        let good = try await server.request(
            "POST", "/sync/push", body: Data(push(Self.cases).serialized().utf8), token: token)
        #expect(good.status == 200, "\(good.text)")
        let untouched = try await server.request("GET", "/jobs/", token: other).object["results"] as? [[String: Any]]
        #expect(untouched?.count == 3 && untouched?.allSatisfy { $0["site_job_id"] is NSNull } == true)
    }
}
