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

    /// 40 rounds of 25 jobs made and 10 of them moved to RUNNING; the jobs made.
    static func write(_ server: LiveServer, token: String, appID: Int) -> Task<Int, any Error> {
        Task {
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
    }

    static let countsAgree = (
        "SELECT owner_id, site_id, state, sum(n) FROM job_counts GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3",
        "SELECT owner_id, site_id, state, count(*) FROM jobs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )

    @Test func copiesTakenUnderWritesAreConsistentAndTheLastRestoresTheSameServer() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let live = String(server.db.dropFirst("sqlite:".count))
        let token = try await server.user("bea")
        let (_, appID) = try await server.siteAndApp(token)
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        var rng = SplitMix(seed: seed)
        let writing = Self.write(server, token: token, appID: appID)
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
            let counted = try await Self.rows(copy, Self.countsAgree.0)
            let grouped = try await Self.rows(copy, Self.countsAgree.1)
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

    /// PostgreSQL's backup is pg_dump's (balsam-server(8)): a dump taken under writes restores to a database of
    /// one moment, the last one to the live database's rows, and a server on it serves the same jobs.
    @Test(.enabled(if: Backend.postgresBase != nil, "needs the test PostgreSQL (dev/test)"))
    func aPgDumpTakenUnderWritesRestoresToAConsistentDatabase() async throws {
        let server = try await LiveServer(.postgresql)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("ivo")
        let (_, appID) = try await server.siteAndApp(token)
        let writing = Self.write(server, token: token, appID: appID)
        try await Task.sleep(for: .milliseconds(300))
        let during = dir.path + "/during.dump"
        #expect(try run("/usr/bin/pg_dump", ["-Fc", "-f", during, server.db]).status == 0)
        let made = try await writing.value
        let after = dir.path + "/after.dump"
        #expect(try run("/usr/bin/pg_dump", ["-Fc", "-f", after, server.db]).status == 0)
        func psql(_ url: String, _ sql: String) throws -> String {
            let r = try run("/usr/bin/psql", [url, "-At", "-c", sql])
            #expect(r.status == 0, "\(sql): \(r.stderr)")
            return r.stdout
        }
        func restored(_ dump: String) throws -> String {
            let base = try #require(Backend.postgresBase)
            let name = "balsam_restore_" + UUID().uuidString.prefix(8).lowercased()
            _ = try psql(base + "/postgres", "CREATE DATABASE \(name)")
            let url = base + "/" + name
            let r = try run("/usr/bin/pg_restore", ["--no-owner", "-d", url, dump])
            #expect(r.status == 0, "\(r.stderr)")
            return url
        }
        for dump in [during, after] {
            let url = try restored(dump)
            #expect(try psql(url, Self.countsAgree.0) == psql(url, Self.countsAgree.1), "\(dump): counts of one moment")
            if dump == after {
                for table in ["jobs", "events", "users", "tokens", "sites", "apps"] {
                    let sql = "SELECT * FROM \(table) ORDER BY 1, 2"
                    #expect(try psql(url, sql) == psql(server.db, sql), "\(table): restored equals live")
                }
                let again = try await LiveServer(.postgresql, db: url, dir: dir)
                defer { Task { try? await again.stop() } }
                let listed = try await again.request("GET", "/jobs/?limit=1", token: token)
                #expect(listed.status == 200 && listed.object["count"] as? Int == made, "\(listed.text)")
            }
        }
    }
}
