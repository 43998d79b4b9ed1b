import HTTPTypes
import Spool
import TestSupport
import Testing

/// A job's app and parents are fixed when it is made (issue 31, item 10): the original client's `save()` sends
/// them back as they are, which is taken; another value is refused naming the field, never dropped in silence.
@Suite struct FixedFieldsTests {
    @Test func echoedAppAndParentsAreTakenOthersRefused() async throws {
        let server = try InProcessServer()
        let token = try await server.user("fay")
        let other = try await server.user("gus")
        let site = try await server.request(
            .post, "/sites/", json: .object(["name": .string("s"), "path": .string("/s")]), token: token)
        let siteID = try #require(site.json.objectValue?["id"]?.intValue)
        var appIDs: [Int] = []
        for name in ["a", "b"] {
            let app = try await server.request(
                .post, "/apps/",
                json: .object([
                    "site_id": .int(siteID), "name": .string(name), "serialized_class": .string(""),
                    "source_code": .string(""),
                ]), token: token)
            appIDs.append(try #require(app.json.objectValue?["id"]?.intValue, "\(app)"))
        }
        var jobs: [(id: Int, app: Int, parents: [Int])] = []
        var rng = SplitMix(seed: 10)
        for n in 0..<12 {
            let app = appIDs[n % 2]
            let parents = jobs.filter { _ in rng.next() % 3 == 0 }.map(\.id)
            let made = try await server.request(
                .post, "/jobs/",
                json: .array([
                    .object([
                        "app_id": .int(app), "workdir": .string("w/\(n)"),
                        "parent_ids": .array(parents.map { .int($0) }),
                    ])
                ]), token: token)
            let id = try #require(made.json.arrayValue?.first?.objectValue?["id"]?.intValue, "\(made)")
            jobs.append((id, app, parents))
        }
        for _ in 0..<200 {
            let job = jobs[Int(rng.next() % UInt64(jobs.count))]
            var body: [String: JSONValue] = ["tags": .object(["k": .string("v")])]
            var expected = 200
            var field: String?
            switch rng.next() % 4 {
            case 0: body["app_id"] = .int(job.app)
            case 1: body["parent_ids"] = .array(job.parents.shuffled(using: &rng).map { .int($0) })
            case 2:
                body["app_id"] = .int(appIDs.first { $0 != job.app } ?? 0)
                (expected, field) = (400, "app_id")
            default:
                let others = jobs.map(\.id).filter { $0 != job.id && !job.parents.contains($0) }
                body["parent_ids"] = .array(
                    (job.parents + [others[Int(rng.next() % UInt64(others.count))]]).map { .int($0) })
                (expected, field) = (400, "parent_ids")
            }
            let reply = try await server.request(.put, "/jobs/\(job.id)", json: .object(body), token: token)
            #expect(reply.status == expected, "\(body) → \(reply)")
            if let field { #expect(reply.json.objectValue?["field"]?.stringValue == field, "\(reply)") }
            // Another user learns nothing of the job, whatever is sent.
            let stranger = try await server.request(.put, "/jobs/\(job.id)", json: .object(body), token: other)
            #expect(stranger.status == 404, "\(stranger)")
        }
    }
}
