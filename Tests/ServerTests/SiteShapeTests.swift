import Foundation
import HTTPTypes
import Spool
import TestSupport
import Testing

@testable import Server

/// A site's record is read by the original client for every user of the site (`Site.objects.get`, `App.sync()`):
/// what the server stores must load in the client's own model (issue 31, item 9). Random members, near misses
/// and URLs are put to the server; every site it keeps is read back and parsed by the client's `SiteOut`
/// (pydantic), and every transfer location our rule takes by pydantic's `AnyUrl`.
@Suite struct SiteShapeTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_SHAPE_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)

    /// A value near `shape`: mostly right, sometimes a wrong type, a missing or extra member, a bad key or state.
    static func value(_ shape: Sites.Shape, _ rng: inout SplitMix, depth: Int = 0) -> JSONValue {
        let roll = rng.next() % 40
        if roll == 0 { return .string("x") }
        if roll == 1 { return depth > 6 ? .null : .array([value(shape, &rng, depth: depth + 1)]) }
        if roll == 2 { return .double(1.5) }
        switch shape {
        case .int: return .int(Int(truncatingIfNeeded: rng.next() % 100_000))
        case .string: return .string(["debug", "prod", "é", ""][Int(rng.next() % 4)])
        case .oneOf(let names):
            return .string(rng.next() % 8 == 0 ? "lost" : names[Int(rng.next() % UInt64(names.count))])
        case .location: return .string(url(&rng))
        case .list(let item): return .array((0..<rng.next() % 3).map { _ in value(item, &rng, depth: depth + 1) })
        case .map(let item, let intKeys):
            var members: [String: JSONValue] = [:]
            for k in 0..<rng.next() % 3 {
                let key = intKeys && rng.next() % 8 != 0 ? String(1000 + k) : "q\(k)"
                members[key] = value(item, &rng, depth: depth + 1)
            }
            return .object(members)
        case .record(let fields):
            var members: [String: JSONValue] = [:]
            for (key, item) in fields where rng.next() % 16 != 0 { members[key] = value(item, &rng, depth: depth + 1) }
            if rng.next() % 16 == 0 { members["extra"] = .int(1) }
            return .object(members)
        }
    }

    /// URLs from parts that the client and our rule may judge differently.
    static func url(_ rng: inout SplitMix) -> String {
        func pick(_ options: [String]) -> String { options[Int(rng.next() % UInt64(options.count))] }
        let scheme = pick(["rsync://", "globus://", "file://", "file:/", "r://", "RSYNC://", "", "git+ssh://"])
        let user = pick(["", "", "user@", "u:p@", "@", "a@b@", "us er@"])
        let host = pick([
            "host", "", "localhost", "dtn.alcf.anl.gov", "ddb59aef-6d04-11e5-ba46-22000b92c6ec", "-bad", "a_b",
            "[::1]", "[zz]", "10.0.0.1", "é.org", "a..b", "x.", String(repeating: "a", count: 64),
        ])
        let port = pick(["", "", ":22", ":", ":99999", ":0"])
        let path = pick(["", "/data", "/", "/p?q=1#f", " /p", "/p q", ":/p"])
        return scheme + user + host + port + path
    }

    @Test func storedSitesLoadInTheOriginalClient() async throws {
        guard let python = PythonTools.clientPython else {
            #expect(!PythonTools.required, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
            return
        }
        let server = try InProcessServer()
        let token = try await server.user("sam")
        let made = try await server.request(
            .post, "/sites/", json: .object(["name": .string("s"), "path": .string("/s")]), token: token)
        let id = try #require(made.json.objectValue?["id"]?.intValue, "\(made)")
        var rng = SplitMix(seed: Self.seed)
        var stored: [String] = []
        var (taken, refused) = (0, 0)
        for _ in 0..<400 {
            let key = Array(Sites.shapes.keys).sorted()[Int(rng.next() % UInt64(Sites.shapes.count))]
            let candidate = Self.value(try #require(Sites.shapes[key]), &rng)
            let reply = try await server.request(
                .put, "/sites/\(id)", json: .object([key: candidate]), token: token)
            #expect(reply.status == 200 || reply.status == 400, "\(key): \(candidate.serialized()) → \(reply)")
            if reply.status == 200 {
                taken += 1
                stored.append(reply.json.serialized())
            } else {
                refused += 1
                #expect(reply.json.objectValue?["field"]?.stringValue?.hasPrefix(key) == true, "\(reply)")
            }
        }
        #expect(taken > 40 && refused > 40, "the generator must give both: \(taken) taken, \(refused) refused")
        var urls: [String] = []
        for _ in 0..<400 { urls.append(Self.url(&rng)) }
        let script = """
            import json, sys
            from pydantic import AnyUrl, BaseModel
            from balsam.schemas.site import SiteOut
            class Location(BaseModel):
                url: AnyUrl
            for line in sys.stdin:
                kind, text = line.rstrip("\\n").split("\\t", 1)
                try:
                    if kind == "site":
                        SiteOut(**json.loads(text))
                    else:
                        Location(url=json.loads(text))
                    print("ok")
                except Exception as e:
                    print("bad " + str(e).replace("\\n", " ")[:300])
            """
        let lines =
            stored.map { "site\t" + $0 } + urls.map { "url\t" + JSONValue.string($0).serialized() }
        let result = try await runOffPool(
            python, ["-c", script], stdin: Data((lines.joined(separator: "\n") + "\n").utf8))
        #expect(result.status == 0, "\(result.stderr)")
        let verdicts = result.stdout.split(separator: "\n").map(String.init)
        try #require(verdicts.count == lines.count, "\(result.stderr)")
        for (line, verdict) in zip(stored, verdicts) {
            #expect(
                verdict == "ok", "seed \(Self.seed): the client cannot read a site the server kept: \(verdict) \(line)")
        }
        var ours = 0
        for (url, verdict) in zip(urls, verdicts.dropFirst(stored.count)) where ClientURL.problem(url) == nil {
            ours += 1
            #expect(
                verdict == "ok", "seed \(Self.seed): our rule takes \(url), the client's AnyUrl does not: \(verdict)")
        }
        #expect(ours > 20, "\(ours) URLs taken")
    }
}
