import Foundation
import TestSupport
import Testing

/// The REST API against a live `balsam-server` process, once per backend.
@Suite struct APITests {
    @Test("auth: tokens, one answer for every bad credential, per-user isolation", arguments: Backend.available)
    func authAndIsolation(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        #expect(try await server.request("GET", "/auth/how").text == #"["LoginMethod.password"]"#)
        let alice = try await server.user("alice")
        let bob = try await server.user("bob")
        let me = try await server.request("GET", "/auth/password/me", token: alice)
        #expect(me.object["username"] as? String == "alice")

        // Taken names, no token, a forged token.
        let again = try await server.request(
            "POST", "/auth/password/register", json: ["username": "alice", "password": "another-password"])
        #expect(again.status == 400)
        #expect(try await server.request("GET", "/jobs/").status == 401)
        #expect(try await server.request("GET", "/jobs/", token: alice + "x").status == 401)
        let parts = alice.split(separator: ".")
        let forged = "\(parts[0]).\(parts[1]).AAAA"
        #expect(try await server.request("GET", "/jobs/", token: forged).status == 401)

        // A wrong password and an unknown user get the same reply.
        let form = { (u: String, p: String) in Data("username=\(u)&password=\(p)".utf8) }
        let wrong = try await server.request(
            "POST", "/auth/password/login", body: form("alice", "nope-nope"),
            contentType: "application/x-www-form-urlencoded")
        let unknown = try await server.request(
            "POST", "/auth/password/login", body: form("mallory", "nope-nope"),
            contentType: "application/x-www-form-urlencoded")
        #expect(wrong.status == 401 && unknown.status == 401)
        #expect(wrong.text == unknown.text)

        // Alice's objects do not exist for Bob, on every route.
        let (siteID, appID) = try await server.siteAndApp(alice)
        let created = try await server.request(
            "POST", "/jobs/", json: [["app_id": appID, "workdir": "a/1", "serialized_parameters": pickledName("x")]],
            token: alice)
        #expect(created.status == 201)
        let jobID = try #require(created.list.first?["id"] as? Int)
        let batch = try await server.request(
            "POST", "/batch-jobs/",
            json: [
                "site_id": siteID, "num_nodes": 1, "wall_time_min": 5, "job_mode": "mpi", "project": "p", "queue": "q",
            ],
            token: alice)
        let batchID = try #require(batch.object["id"] as? Int)
        for (method, path) in [
            ("GET", "/sites/\(siteID)"), ("PUT", "/sites/\(siteID)"), ("DELETE", "/sites/\(siteID)"),
            ("GET", "/apps/\(appID)"), ("PUT", "/apps/\(appID)"), ("DELETE", "/apps/\(appID)"),
            ("GET", "/jobs/\(jobID)"), ("PUT", "/jobs/\(jobID)"), ("DELETE", "/jobs/\(jobID)"),
            ("GET", "/batch-jobs/\(batchID)"), ("PUT", "/batch-jobs/\(batchID)"),
            ("DELETE", "/batch-jobs/\(batchID)"),
        ] {
            let bodies: [String: [String: Any]] = [
                "sites": ["path": "/stolen"], "apps": ["description": "stolen"], "jobs": ["data": ["stolen": true]],
                "batch-jobs": ["status_info": ["stolen": "yes"]],
            ]
            let body = method == "PUT" ? bodies[String(path.split(separator: "/")[0])] : nil
            let reply = try await server.request(method, path, json: body, token: bob)
            #expect(reply.status == 404, "\(method) \(path) as bob: \(reply.status) \(reply.text)")
        }
        for path in ["/sites/", "/apps/", "/jobs/", "/batch-jobs/", "/events/", "/transfers/"] {
            let reply = try await server.request("GET", path, token: bob)
            #expect(reply.object["count"] as? Int == 0, "\(path) as bob: \(reply.text)")
        }
        let patched = try await server.request("PATCH", "/jobs/", json: [["id": jobID, "state": "FAILED"]], token: bob)
        #expect(patched.status == 404)
        let steal = try await server.request(
            "POST", "/jobs/", json: [["app_id": appID, "workdir": "b/1"]], token: bob)
        #expect(steal.status == 404)
        let queryDelete = try await server.request("DELETE", "/jobs/?id=\(jobID)", token: bob)
        #expect(queryDelete.status == 204)
        #expect(try await server.request("GET", "/jobs/\(jobID)", token: alice).status == 200)
    }

    @Test("tokens: an expired login and a revoked site token are refused", arguments: Backend.available)
    func tokenLifetimes(_ backend: Backend) async throws {
        let server = try await LiveServer(backend, arguments: ["--token-hours", "0.006"])
        defer { Task { try? await server.stop() } }
        let before = Date()
        let token = try await server.user("carol")
        // Under the load of the whole suite the login itself can take seconds (scrypt): a token older than its
        // 21.6 s by the first request may only have expired.
        let first = try await server.request("GET", "/sites/", token: token).status
        #expect(first == 200 || Date().timeIntervalSince(before) > 21, "a fresh token is refused: \(first)")
        try await waitFor("the 22-second token expires", timeout: 120) {
            try await server.request("GET", "/sites/", token: token).status == 401
        }

        let args = ["--db", server.db, "--secret-file", server.dir.path + "/secret"]
        let made = try run(
            binDirectory + "/balsam-server", ["token", "create", "--user", "carol", "--site", "laptop"] + args)
        #expect(made.status == 0, "\(made.stderr)")
        // No site of that name yet: said, with what will happen (issue 35, item 10).
        #expect(made.stderr.contains("carol has no site named laptop yet"), "\(made.stderr)")
        let siteToken = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await server.request("GET", "/auth/password/me", token: siteToken).status == 200)
        let listed = try run(binDirectory + "/balsam-server", ["token", "ls"] + args)
        #expect(listed.stdout.contains("site") && listed.stdout.contains("laptop"))
        let id = try #require(made.stderr.split(separator: " ").dropFirst(2).first.map(String.init))
        let revoked = try run(binDirectory + "/balsam-server", ["token", "revoke", id] + args)
        #expect(revoked.status == 0, "\(revoked.stderr)")
        #expect(try await server.request("GET", "/auth/password/me", token: siteToken).status == 401)
        let unknownUser = try run(
            binDirectory + "/balsam-server", ["token", "create", "--user", "nobody", "--site", "x"] + args)
        #expect(unknownUser.status == 66 && unknownUser.stderr.contains("nobody"))
    }

    @Test("repeated wrong passwords are held longer and longer", arguments: [Backend.sqlite])
    func loginSlowdown(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        _ = try await server.user("dave")
        let form = Data("username=dave&password=wrong-password".utf8)
        var last: Duration = .zero
        for _ in 0..<6 {
            let start = ContinuousClock.now
            let reply = try await server.request(
                "POST", "/auth/password/login", body: form, contentType: "application/x-www-form-urlencoded")
            #expect(reply.status == 401)
            last = ContinuousClock.now - start
        }
        // The sixth failure in ten minutes is held 2 s before its reply (a lower bound, never an upper one).
        #expect(last >= .seconds(2))
        _ = try await server.login("dave", "dave-password")
    }

    @Test("bad input: a clear 400 naming the field, and nothing stored", arguments: Backend.available)
    func badInput(_ backend: Backend) async throws {
        let server = try await LiveServer(backend, arguments: ["--max-body-mib", "1"])
        defer { Task { try? await server.stop() } }
        let token = try await server.user("erin")
        let (_, appID) = try await server.siteAndApp(token)
        func post(_ body: Data) async throws -> HTTPReply {
            try await server.request("POST", "/jobs/", body: body, token: token)
        }
        let malformed = try await post(Data("[{\"app_id\": 1,".utf8))
        #expect(malformed.status == 400 && (malformed.object["detail"] as? String ?? "").contains("malformed JSON"))
        let cases: [([String: Any], String)] = [
            (["app_id": appID, "workdir": "w", "num_nodes": "many"], "[1].num_nodes"),
            (["app_id": appID, "workdir": "w", "num_nodes": 0], "[1].num_nodes"),
            (["app_id": appID, "workdir": "w", "node_packing_count": 0], "[1].node_packing_count"),
            (["app_id": appID, "workdir": "w", "gpus_per_rank": -1], "[1].gpus_per_rank"),
            (["app_id": appID, "workdir": "/abs"], "[1].workdir"),
            (["app_id": appID, "workdir": "w", "tags": ["k": ["nested": 1]]], "[1].tags.k"),
            (
                ["app_id": appID, "workdir": "w", "serialized_parameters": pickledName("x"), "colour": "red"],
                "[1].colour"
            ),
            (["app_id": appID, "workdir": "w"], "[1].parameters"),
            (["workdir": "w"], "[1].app_id"),
        ]
        for (job, field) in cases {
            let good: [String: Any] = ["app_id": appID, "workdir": "ok", "serialized_parameters": pickledName("y")]
            let reply = try await server.request("POST", "/jobs/", json: [good, job], token: token)
            #expect(reply.status == 400, "\(job): \(reply.text)")
            #expect(reply.object["field"] as? String == field, "\(job): \(reply.text)")
        }
        let wrongState = try await server.request("GET", "/jobs/?state=running", token: token)
        #expect(wrongState.status == 400 && wrongState.object["field"] as? String == "state")
        let unknownFilter = try await server.request("GET", "/jobs/?colour=red", token: token)
        #expect(unknownFilter.status == 400 && unknownFilter.object["field"] as? String == "colour")
        let badLimit = try await server.request("GET", "/jobs/?limit=-1", token: token)
        #expect(badLimit.status == 400)

        // The bulk cap, and the body cap.
        let many = (0..<5001).map { ["app_id": appID, "workdir": "m/\($0)"] as [String: Any] }
        let tooMany = try await server.request("POST", "/jobs/", json: many, token: token)
        #expect(tooMany.status == 400 && tooMany.text.contains("5000"))
        let huge = try await post(Data(repeating: UInt8(ascii: " "), count: 2 << 20))
        #expect(huge.status == 413)
        let count = try await server.request("GET", "/jobs/?limit=0", token: token)
        #expect(count.object["count"] as? Int == 0 && (count.object["results"] as? [Any])?.isEmpty == true)

        // SQL metacharacters in every string filter are values, never SQL.
        let created = try await server.request(
            "POST", "/jobs/",
            json: [
                [
                    "app_id": appID, "workdir": "it's/\"quoted\"", "serialized_parameters": pickledName("z"),
                    "tags": ["k'; DROP TABLE jobs; --": "v"],
                ]
            ], token: token)
        #expect(created.status == 201)
        for query in [
            "workdir__contains=%27%3B%20DROP%20TABLE%20jobs%3B%20--", "tags=a%27%20OR%20%271%27%3D%271:b",
            "tags=k%27%3B%20DROP%20TABLE%20jobs%3B%20--:v", "workdir__contains=it%27s",
        ] {
            let reply = try await server.request("GET", "/jobs/?\(query)", token: token)
            #expect(reply.status == 200, "\(query): \(reply.text)")
        }
        let tagged = try await server.request(
            "GET", "/jobs/?tags=k%27%3B%20DROP%20TABLE%20jobs%3B%20--:v", token: token)
        #expect(tagged.object["count"] as? Int == 1)
        let quoted = try await server.request("GET", "/jobs/?workdir__contains=it%27s", token: token)
        #expect(quoted.object["count"] as? Int == 1)
        for path in ["/sites/?name=%27%20OR%201%3D1%20--", "/apps/?site_name=x%27--", "/batch-jobs/?queue=%27%3B"] {
            let reply = try await server.request("GET", path, token: token)
            #expect(reply.status == 200 && reply.object["count"] as? Int == 0, "\(path): \(reply.text)")
        }

        // A 204 carries no body.
        let deleted = try await server.request("DELETE", "/jobs/?workdir__contains=quoted", token: token)
        #expect(deleted.status == 204 && deleted.body.isEmpty)
    }

    @Test(
        "job states: creation rules, validated transitions, children released, events and last_update",
        arguments: Backend.available)
    func stateRules(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let token = try await server.user("frank")
        let (siteID, appID) = try await server.siteAndApp(token)
        let params = pickledName("p")
        let parent = try #require(
            try await server.request(
                "POST", "/jobs/", json: [["app_id": appID, "workdir": "p", "serialized_parameters": params]],
                token: token
            ).list.first?["id"] as? Int)
        let child = try await server.request(
            "POST", "/jobs/",
            json: [["app_id": appID, "workdir": "c", "serialized_parameters": params, "parent_ids": [parent]]],
            token: token)
        #expect(child.list.first?["state"] as? String == "AWAITING_PARENTS")
        let childID = try #require(child.list.first?["id"] as? Int)
        let missingParent = try await server.request(
            "POST", "/jobs/",
            json: [["app_id": appID, "workdir": "d", "serialized_parameters": params, "parent_ids": [999_999]]],
            token: token)
        #expect(missingParent.status == 404)

        // Illegal: named both states; nothing changed.
        let illegal = try await server.request(
            "PATCH", "/jobs/", json: [["id": parent, "state": "RUN_DONE"]], token: token)
        #expect(illegal.status == 400)
        #expect((illegal.object["detail"] as? String ?? "").contains("STAGED_IN -> RUN_DONE"))

        var updates: [String] = []
        let stamp = "2026-01-02T03:04:05.678901"
        for state in ["PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED"] {
            let reply = try await server.request(
                "PATCH", "/jobs/",
                json: [["id": parent, "state": state, "state_timestamp": stamp, "state_data": ["by": "test"]]],
                token: token)
            #expect(reply.status == 200 && reply.text == "1", "\(state): \(reply.text)")
            updates.append(
                try await server.request("GET", "/jobs/\(parent)", token: token).object["last_update"] as? String ?? "")
        }
        #expect(updates == updates.sorted() && Set(updates).count == updates.count, "\(updates)")
        let finished = try await server.request("GET", "/jobs/\(parent)", token: token)
        #expect(finished.object["state"] as? String == "JOB_FINISHED")
        #expect(
            try await server.request("GET", "/jobs/\(childID)", token: token).object["state"] as? String == "STAGED_IN")
        let events = try await server.request("GET", "/events/?job_id=\(parent)&ordering=timestamp", token: token)
        let pairs = (events.object["results"] as? [[String: Any]] ?? []).map {
            "\($0["from_state"] ?? "")>\($0["to_state"] ?? "")"
        }
        // Oldest first: the four reported changes carry the site's (earlier) stamp, creation the server's now.
        #expect(
            pairs == [
                "STAGED_IN>PREPROCESSED", "PREPROCESSED>RUNNING", "RUNNING>RUN_DONE", "RUN_DONE>JOB_FINISHED",
                "CREATED>STAGED_IN",
            ], "\(pairs)")
        let stamped = try await server.request("GET", "/events/?job_id=\(parent)&to_state=RUNNING", token: token)
        let runningEvent = try #require((stamped.object["results"] as? [[String: Any]])?.first)
        #expect(runningEvent["timestamp"] as? String == stamp)
        #expect((runningEvent["data"] as? [String: Any])?["by"] as? String == "test")
        let released = try await server.request("GET", "/events/?job_id=\(childID)&to_state=STAGED_IN", token: token)
        #expect(released.text.contains("All parents finished"))
        let byParent = try await server.request("GET", "/jobs/?parent_id=\(parent)", token: token)
        #expect((byParent.object["results"] as? [[String: Any]])?.map { $0["id"] as? Int } == [childID])

        // Query update and the bulk limit of a query update; deleting the site removes everything under it.
        let put = try await server.request(
            "PUT", "/jobs/?state=STAGED_IN", json: ["data": ["round": 2]], token: token)
        #expect(put.status == 200 && put.text == "1")
        #expect(try await server.request("DELETE", "/sites/\(siteID)", token: token).status == 204)
        for path in ["/apps/", "/jobs/", "/events/"] {
            #expect(try await server.request("GET", path, token: token).object["count"] as? Int == 0)
        }
    }

    @Test("transfers: stage-ins done make STAGED_IN; stage-outs done make JOB_FINISHED", arguments: Backend.available)
    func transfers(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let token = try await server.user("gina")
        let slots: [String: Any] = [
            "input": [
                "required": true, "direction": "in", "local_path": "in.dat", "description": "", "recursive": false,
            ],
            "output": [
                "required": false, "direction": "out", "local_path": "out.dat", "description": "",
                "recursive": false,
            ],
        ]
        let (_, appID) = try await server.siteAndApp(token, transfers: slots)
        let params = pickledName("t")
        let unknownSlot = try await server.request(
            "POST", "/jobs/",
            json: [
                ["app_id": appID, "workdir": "x", "serialized_parameters": params, "transfers": ["nope": "aps:/d"]]
            ],
            token: token)
        #expect(unknownSlot.status == 400 && unknownSlot.object["field"] as? String == "[0].transfers.nope")
        let unknownAlias = try await server.request(
            "POST", "/jobs/",
            json: [
                ["app_id": appID, "workdir": "x", "serialized_parameters": params, "transfers": ["input": "zz:/d"]]
            ],
            token: token)
        #expect(unknownAlias.status == 400)
        let created = try await server.request(
            "POST", "/jobs/",
            json: [
                [
                    "app_id": appID, "workdir": "x", "serialized_parameters": params,
                    "transfers": [
                        "input": "aps:/data/in.dat", "output": ["location_alias": "cluster", "path": "/out"],
                    ],
                ]
            ], token: token)
        let job = try #require(created.list.first)
        let id = try #require(job["id"] as? Int)
        #expect(job["state"] as? String == "READY")
        let items = try await server.request("GET", "/transfers/?job_id=\(id)", token: token)
        let list = try #require(items.object["results"] as? [[String: Any]])
        let stageIn = try #require(list.first { $0["direction"] as? String == "in" })
        let stageOut = try #require(list.first { $0["direction"] as? String == "out" })
        #expect(stageIn["state"] as? String == "pending" && stageOut["state"] as? String == "awaiting_job")
        #expect(stageIn["remote_path"] as? String == "/data/in.dat" && stageIn["local_path"] as? String == "in.dat")
        let inID = try #require(stageIn["id"] as? Int)
        let outID = try #require(stageOut["id"] as? Int)
        let done = try await server.request(
            "PATCH", "/transfers/", json: [["id": inID, "state": "done", "task_id": "globus:1"]], token: token)
        #expect(done.status == 200)
        #expect(try await server.request("GET", "/jobs/\(id)", token: token).object["state"] as? String == "STAGED_IN")
        for state in ["PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED"] {
            _ = try await server.request("PATCH", "/jobs/", json: [["id": id, "state": state]], token: token)
        }
        #expect(
            try await server.request("GET", "/jobs/\(id)", token: token).object["state"] as? String == "POSTPROCESSED")
        let pending = try await server.request("GET", "/transfers/\(outID)", token: token)
        #expect(pending.object["state"] as? String == "pending")
        let outDone = try await server.request("PUT", "/transfers/\(outID)", json: ["state": "done"], token: token)
        #expect(outDone.status == 200)
        #expect(
            try await server.request("GET", "/jobs/\(id)", token: token).object["state"] as? String == "JOB_FINISHED")
    }

    @Test("SIGTERM stops the server gracefully, exit status 0", arguments: [Backend.sqlite])
    func gracefulStop(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        _ = try await server.user("hank")
        #expect(try await server.stop() == 0)
    }

    @Test("the OpenAPI document lists every route", arguments: [Backend.sqlite])
    func openAPI(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let doc = try await server.request("GET", "/openapi.json")
        let paths = try #require(doc.object["paths"] as? [String: Any])
        for path in [
            "/jobs/", "/jobs/{id}", "/sites/", "/apps/", "/batch-jobs/", "/events/", "/transfers/",
            "/auth/password/login",
        ] {
            #expect(paths[path] != nil, "\(path) missing")
        }
    }
}
