import Foundation
import Spool
import TestSupport
import Testing

@testable import Server

/// Issue #37, item 3: `balsam-server backup` copies a SQLite database while the server writes to it. Each copy,
/// taken at a random moment under writes, is a database of one moment (its counts, kept by triggers in the same
/// transactions as the jobs, agree with its jobs: a copy torn between transactions would not); a copy taken once
/// the writes stop equals the live database row for row; and a server started on it serves the same jobs to the
/// same token.
@Suite struct BackupTests {
    static func rows(_ path: String, _ sql: String) async throws -> [[String]] {
        let database = try Database(.sqlite(path: path), threads: 1)
        defer { Task { await database.close() } }
        return try await database.run { c in
            try c.query(SQL(stringLiteral: sql)).map { row in row.values.map { "\($0)" } }
        }
    }

    @Test func copiesTakenUnderWritesAreConsistentAndTheLastRestoresTheSameServer() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let live = String(server.db.dropFirst("sqlite:".count))
        let token = try await server.user("bea")
        let (_, appID) = try await server.siteAndApp(token)
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        var rng = SplitMix(seed: seed)
        let writing = Task {
            var made = 0
            for round in 0..<40 {
                let jobs = (0..<25).map { i in
                    ["app_id": appID, "workdir": "r\(round)/\(i)", "serialized_parameters": pickledName("v")]
                        as [String: Any]
                }
                let created = try await server.request("POST", "/jobs/", json: jobs, token: token)
                let ids = created.list.compactMap { $0["id"] as? Int }
                made += ids.count
                let patch = ids.prefix(10).map { ["id": $0, "state": "RUNNING"] as [String: Any] }
                _ = try await server.request("PATCH", "/jobs/", json: patch, token: token)
            }
            return made
        }
        var copies: [String] = []
        for k in 0..<3 {
            try await Task.sleep(for: .milliseconds(50 + Int(rng.next() % 400)))
            let copy = dir.path + "/copy-\(k).db"
            let taken = try run(binDirectory + "/balsam-server", ["backup", "--db", server.db, copy])
            #expect(taken.status == 0, "seed \(seed): \(taken.stderr)")
            copies.append(copy)
        }
        let made = try await writing.value
        let final = dir.path + "/final.db"
        #expect(try run(binDirectory + "/balsam-server", ["backup", "--db", server.db, final]).status == 0)
        for copy in copies + [final] {
            #expect(!FileManager.default.fileExists(atPath: copy + "-wal"), "a copy is one file")
            #expect(try await Self.rows(copy, "PRAGMA integrity_check") == [["text(\"ok\")"]], "\(copy)")
            let counted = try await Self.rows(
                copy,
                "SELECT owner_id, site_id, state, sum(n) FROM job_counts GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3"
            )
            let grouped = try await Self.rows(
                copy, "SELECT owner_id, site_id, state, count(*) FROM jobs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
            #expect(counted == grouped, "seed \(seed): \(copy): the counts of one moment")
        }
        for table in ["jobs", "events", "users", "tokens", "sites", "apps", "job_counts"] {
            let a = try await Self.rows(live, "SELECT * FROM \(table) ORDER BY 1, 2")
            let b = try await Self.rows(final, "SELECT * FROM \(table) ORDER BY 1, 2")
            #expect(a == b, "\(table): the last copy equals the live database")
        }
        #expect(made == 1000)
        // Restored: a server on the copy (the same secret) serves the same jobs to the same token.
        let restored = try await LiveServer(.sqlite, db: "sqlite:" + final, dir: dir)
        defer { Task { try? await restored.stop() } }
        let listed = try await restored.request("GET", "/jobs/?limit=1", token: token)
        #expect(listed.status == 200 && listed.object["count"] as? Int == made, "\(listed.text)")
        let refused = try run(
            binDirectory + "/balsam-server",
            ["backup", "--db", "postgresql://nobody@127.0.0.1:1/x", dir.path + "/pg.db"])
        #expect(refused.status != 0 && refused.stderr.contains("pg_dump"), "\(refused.stderr)")
    }
}
