import Foundation
import TestSupport
import Testing

/// What one logged-in user sends must never take the server down for the others, nor store what a site cannot
/// read (issue 23): each refusal is a 400 naming the field, and the server answers the next request.
@Suite struct HostileInputTests {
    /// 100,000 nested lists, pickled: 267 KB of base64, under the parameters' size limit.
    static var deepPickle: String {
        let depth = 100_000
        var bytes: [UInt8] = [0x80, 4, UInt8(ascii: "}"), 0x8C, 1, UInt8(ascii: "x")]
        for _ in 0..<depth { bytes += [UInt8(ascii: "]"), UInt8(ascii: "(")] }
        bytes += Array(repeating: UInt8(ascii: "e"), count: depth) + [UInt8(ascii: "s"), UInt8(ascii: ".")]
        return Data(bytes).base64EncodedString()
    }

    /// `{"x": [[[...]]]}` nested `depth` lists deep: within the JSON reader's limit, beyond a job's parameters'.
    static func nestedPickle(_ depth: Int) -> String {
        var bytes: [UInt8] = [0x80, 4, UInt8(ascii: "}"), 0x8C, 1, UInt8(ascii: "x")]
        for _ in 0..<depth { bytes += [UInt8(ascii: "]"), UInt8(ascii: "(")] }
        bytes += Array(repeating: UInt8(ascii: "e"), count: depth) + [UInt8(ascii: "s"), UInt8(ascii: ".")]
        return Data(bytes).base64EncodedString()
    }

    @Test("crafted and deep pickles get a 400 naming the field; the server lives on", arguments: Backend.available)
    func pickles(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let alice = try await server.user("alice")
        let (siteID, appID) = try await server.siteAndApp(alice)
        for (what, pickle) in [
            ("a length of 2^63 - 1", "gASN/////////38u"), ("100,000 deep", Self.deepPickle),
            ("300 deep", Self.nestedPickle(300)), ("cut short", "gAR9lIwEbmFtZZSMBndvcmxk"),
        ] {
            let reply = try await server.request(
                "POST", "/jobs/", json: [["app_id": appID, "workdir": "w/1", "serialized_parameters": pickle]],
                token: alice)
            #expect(reply.status == 400, "\(what): \(reply.status) \(reply.text)")
            #expect(reply.object["field"] as? String == "[0].serialized_parameters", "\(what): \(reply.text)")
            #expect(try await server.request("GET", "/auth/how").status == 200, "\(what) took the server down")
        }
        // A Python app's parameters may hold objects only Python loads (a complex number here): they pass.
        let complex = "gASVLgAAAAAAAACMCGJ1aWx0aW5zlIwHY29tcGxleJSTlEc/8AAAAAAAAEdAAAAAAAAAAIaUUpQu"
        let python = try await server.request(
            "POST", "/jobs/", json: [["app_id": appID, "workdir": "w/2", "serialized_parameters": complex]],
            token: alice)
        #expect(python.status == 201, "\(python.text)")

        for cls in ["gASMEGNvbW1hbmRfdGVtcGxhdGWN/////////38u", "gASMEGNvbW1hbmRfdGVtcGxhdGWMB2VjaG8gaGmN/////////38u"]
        {
            let reply = try await server.request(
                "POST", "/apps/",
                json: ["site_id": siteID, "name": "Evil", "serialized_class": cls, "source_code": ""], token: alice)
            #expect(reply.status == 400, "\(reply.text)")
            #expect(reply.object["field"] as? String == "serialized_class", "\(reply.text)")
        }
        #expect(try await server.request("GET", "/auth/how").status == 200)
    }

    @Test("a NUL in a string, or an unknown ordering, is a 400 naming the field", arguments: Backend.available)
    func stringsAndOrderings(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let alice = try await server.user("alice")
        let (siteID, _) = try await server.siteAndApp(alice)
        let site = try await server.request(
            "POST", "/sites/", json: ["name": "nul", "path": "/data/ok\u{0}/../../etc"], token: alice)
        #expect(site.status == 400 && site.object["field"] as? String == "path", "\(site.text)")
        let app = try await server.request(
            "PUT", "/apps/1", json: ["description": "a\u{0}b"], token: alice)
        #expect(app.status == 400 && app.object["field"] as? String == "description", "\(app.text)")
        let batch = try await server.request(
            "POST", "/batch-jobs/",
            json: [
                "site_id": siteID, "num_nodes": 1, "wall_time_min": 5, "job_mode": "mpi", "project": "p\u{0}",
                "queue": "q",
            ],
            token: alice)
        #expect(batch.status == 400 && batch.object["field"] as? String == "project", "\(batch.text)")
        for path in ["/sites/", "/apps/", "/transfers/", "/jobs/"] {
            let reply = try await server.request("GET", path + "?ordering=password_hash", token: alice)
            #expect(reply.status == 400 && reply.object["field"] as? String == "ordering", "\(path): \(reply.text)")
            #expect(try await server.request("GET", path + "?ordering=-id", token: alice).status == 200, "\(path)")
        }
    }
}
