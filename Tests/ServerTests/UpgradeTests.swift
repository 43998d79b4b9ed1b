import Foundation
import Spool
import TestSupport
import Testing

/// Issue #37, item 3: a database an earlier server wrote (Fixtures/upgrade-d2b963a: its README says how it was
/// made) is upgraded by this one's `migrate`, and everything survives: every job and event with the fields it
/// had, the sites, apps and batch job, the user's password, and a site token made then.
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

    @Test func aDatabaseOfAnEarlierServerIsMigratedAndEverythingSurvives() async throws {
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
        let db = "sqlite:\(dir.path)/server.db"
        let migrated = try run(binDirectory + "/balsam-server", ["migrate", "--db", db])
        #expect(migrated.status == 0 && migrated.stdout.contains("applied"), "\(migrated)")
        let server = try await LiveServer(.sqlite, db: db, dir: dir)
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
        let again = try run(binDirectory + "/balsam-server", ["migrate", "--db", db])
        #expect(again.status == 0 && again.stdout.contains("up to date"))
    }
}
