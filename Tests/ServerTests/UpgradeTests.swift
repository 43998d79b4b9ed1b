import Foundation
import Spool
import TestSupport
import Testing

@testable import Server

/// Issue #37, item 3: a database an earlier server wrote (Fixtures/upgrade-d2b963a: its README says how it was
/// made) is upgraded by this one's `migrate`, and everything survives: every job and event with the fields it
/// had, the sites, apps and batch job, the user's password, and a site token made then. On PostgreSQL the
/// earlier server's database is made from the fixture: the schema of its version (this server's migrations up to
/// it), then every row of the fixture copied in as it is, so that the migrations after it (PostgreSQL's own among
/// them) run over an earlier server's data.
@Suite struct UpgradeTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/upgrade-d2b963a").path

    /// `objects` by id, each reduced to the fields the old server listed (a newer one may list more).
    static func byID(_ objects: [JSONValue]) -> [Int: [String: JSONValue]] {
        var out: [Int: [String: JSONValue]] = [:]
        for object in objects {
            if let fields = object.objectValue, let id = fields["id"]?.intValue { out[id] = fields }
        }
        return out
    }

    /// A PostgreSQL database holding what the SQLite database at `path` holds, at its schema version.
    static func postgres(as path: String) throws -> String {
        let base = try #require(Backend.postgresBase, "BALSAM_TEST_POSTGRES is not set: run the tests through dev/test")
        let name = "balsam_upgrade_" + UUID().uuidString.prefix(8).lowercased()
        let created = try run("/usr/bin/psql", [base + "/postgres", "-q", "-c", "CREATE DATABASE \(name)"])
        #expect(created.status == 0, "\(created.stderr)")
        let url = base + "/" + name
        let old = try Database(.sqlite(path: path), threads: 1)
        let version = try old.withConnection { try Schema.version($0) }
        let pg = try Database(.postgresql(url: url), threads: 1)
        #expect(try pg.migrate(upTo: version).last == version)
        try old.withConnection { from in
            try pg.withConnection { to in
                // Rows as they are: no trigger counts them again, no key is checked before its row is in.
                try to.executeScript("SET session_replication_role = replica")
                let tables = try from.query(
                    """
                    SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
                    AND name <> 'schema_migrations' ORDER BY name
                    """
                ).map { $0.text(0) }
                #expect(tables.contains("jobs") && tables.contains("events"))
                for table in tables {
                    let columns = try from.query("SELECT name FROM pragma_table_info(\(.text(table)))").map {
                        $0.text(0)
                    }
                    let list = columns.joined(separator: ", ")
                    for row in try from.query("SELECT \(raw: list) FROM \(raw: table)") {
                        try to.execute("INSERT INTO \(raw: table) (\(raw: list)) VALUES (\(list: row.values))")
                    }
                    // Its ids go on from the largest, as the earlier server's sequence would.
                    if columns.contains("id"),
                        let sequence = try to.query("SELECT pg_get_serial_sequence('\(raw: table)', 'id')").first?
                            .optionalText(0)
                    {
                        _ = try to.query("SELECT setval('\(raw: sequence)', max(id)) FROM \(raw: table)")
                    }
                }
                try to.executeScript("SET session_replication_role = origin")
            }
        }
        return url
    }

    @Test(arguments: Backend.available)
    func aDatabaseOfAnEarlierServerIsMigratedAndEverythingSurvives(_ backend: Backend) async throws {
        let dir = try TempDir()
        for name in ["server.db", "secret"] {
            try FileManager.default.copyItem(atPath: Self.fixture + "/" + name, toPath: dir.path + "/" + name)
        }
        // git keeps no 0600: the server refuses a secret others may read.
        chmod(dir.path + "/secret", 0o600)
        let expected =
            try JSONValue.parse(
                Array(try Data(contentsOf: URL(fileURLWithPath: Self.fixture + "/expected.json")))
            )
            .objectValue ?? [:]
        let db = backend == .sqlite ? "sqlite:\(dir.path)/server.db" : try Self.postgres(as: dir.path + "/server.db")
        let migrated = try run(binDirectory + "/balsam-server", ["migrate", "--db", db])
        #expect(migrated.status == 0 && migrated.stdout.contains("applied"), "\(migrated)")
        let server = try await LiveServer(backend, db: db, dir: dir)
        defer { Task { try? await server.stop() } }
        let token = try await server.login("ursula", "ursula-password")
        let routes = [
            ("jobs", "/jobs/?limit=1000"), ("events", "/events/?limit=1000"), ("sites", "/sites/"), ("apps", "/apps/"),
            ("batch_jobs", "/batch-jobs/"),
        ]
        for (name, path) in routes {
            let reply = try await server.request("GET", path, token: token)
            #expect(reply.status == 200, "\(path): \(reply.text)")
            let listed = try JSONValue.parse(Array(reply.body))
            let now = Self.byID(listed.objectValue?["results"]?.arrayValue ?? listed.arrayValue ?? [])
            let then = Self.byID(expected[name]?.arrayValue ?? [])
            #expect(
                !then.isEmpty && Set(now.keys) == Set(then.keys),
                "\(name): \(then.keys.sorted()) then, \(now.keys.sorted()) now")
            for (id, old) in then {
                for (field, value) in old where field != "last_update" {
                    #expect(
                        now[id]?[field] == value,
                        "\(name) \(id).\(field): \(value) then, \(now[id]?[field] ?? .null) now")
                }
            }
        }
        // The site token made then still pushes as its site.
        let siteToken = try #require(expected["site_token"]?.stringValue)
        let push = try await server.request(
            "POST", "/sync/push", json: ["site": ["name": "polaris", "path": "/home/ursula/polaris"]], token: siteToken)
        #expect(push.status == 200, "\(push.text)")
        // A row made now gets an id of its own (PostgreSQL's sequences go on from the earlier server's).
        let made = try await server.request(
            "POST", "/sites/", json: ["name": "aurora", "path": "/home/ursula/aurora"], token: token)
        let madeID = try #require(made.object["id"] as? Int, "\(made.text)")
        #expect(Self.byID(expected["sites"]?.arrayValue ?? [])[madeID] == nil && madeID > 0)
        // The trigger-kept job counts agree with the jobs (PostgreSQL's are sharded by a migration since).
        let database = try Database(try DatabaseLocation(parsing: db), threads: 1)
        let (counted, grouped) = try database.withConnection { c in
            (
                try c.query("\(raw: BackupTests.countsAgree.0)").map { r in (0..<4).map { r.text($0) } },
                try c.query("\(raw: BackupTests.countsAgree.1)").map { r in (0..<4).map { r.text($0) } }
            )
        }
        #expect(!grouped.isEmpty && counted == grouped, "\(counted) / \(grouped)")
        let again = try run(binDirectory + "/balsam-server", ["migrate", "--db", db])
        #expect(again.status == 0 && again.stdout.contains("up to date"))
    }
}
