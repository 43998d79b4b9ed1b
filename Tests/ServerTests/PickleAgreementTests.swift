import Foundation
import Spool
import TestSupport
import Testing

/// What the server takes, a site can read (issue 31, item 7): one verdict on a job's pickled parameters, given by
/// the server when a client creates the job and by the site when it adopts it.
@Suite struct PickleAgreementTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_PICKLE_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)

    /// A random dict (at the top) of plain values.
    static func plainValue(_ rng: inout SplitMix, depth: Int) -> JSONValue {
        let pick = depth == 0 ? 5 : rng.next() % (depth > 2 ? 4 : 6)
        switch pick {
        case 0: return .int(Int(truncatingIfNeeded: rng.next()) >> Int(rng.next() % 64))
        case 1: return .double(Double(rng.next() % 1000) / 7)
        case 2: return .string(String(repeating: "é✓x", count: Int(rng.next() % 4)))
        case 3: return rng.next() % 2 == 0 ? .null : .bool(true)
        case 4: return .array((0..<rng.next() % 4).map { _ in plainValue(&rng, depth: depth + 1) })
        default:
            var members: [String: JSONValue] = [:]
            for k in 0..<rng.next() % 4 { members["k\(k)"] = plainValue(&rng, depth: depth + 1) }
            return .object(members)
        }
    }

    @Test(
        "random and mutated pickles, for a shell app and a Python app: the server takes exactly the jobs the site's own verdict takes, and the site adopts every one it took"
    )
    func serverAndSiteAgree() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let site = try Site.create(at: server.dir.path + "/site")
        let optional = App.Parameter(required: false, defaultValue: .string("x"))
        try site.createApp(
            App(
                name: "plain", commandTemplate: "true {{ name }} {{ k0 }} {{ k1 }} {{ k2 }}",
                parameters: ["name": optional, "k0": optional, "k1": optional, "k2": optional]))
        try PythonApps.install(
            App(name: "py", commandTemplate: "", python: true), classText: "gAQu", overridden: [], site: site,
            python: "python3")
        let token = try await syncing(site, to: server, user: "pia")
        let push = { try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]) }
        let first = try await push()
        #expect(first.status == 0, "\(first.stderr)")
        let listed = try await server.request("GET", "/apps/?site_name=site", token: token)
        var appIDs: [String: Int] = [:]
        for app in listed.object["results"] as? [[String: Any]] ?? [] {
            if let name = app["name"] as? String, let id = app["id"] as? Int { appIDs[name] = id }
        }
        let plain = try #require(appIDs["plain"])
        let python = try #require(appIDs["py"])

        // The site's own verdict: its reading of the pickle, then its app's rule for the names.
        let siteApps = [plain: try site.app("plain"), python: try site.app("py")]
        func siteTakes(_ text: String, _ app: App) -> Bool {
            guard let verdict = try? Pickle.jobParameters(base64: text, pythonApp: app.isPython) else { return false }
            guard case .plain(let given) = verdict else { return true }
            return (try? app.checkParameters(given, serialized: app.isPython)) != nil
        }

        var rng = SplitMix(seed: Self.seed)
        let written = try PickleCorpus.fromPython()
        var cases = written.filter { _ in rng.next() % 4 == 0 }
        for n in 0..<120 {
            let base =
                n % 2 == 0
                ? written[Int(rng.next() % UInt64(written.count))]
                : Base64.decode(Pickle.encodeBase64(Self.plainValue(&rng, depth: 0))) ?? []
            cases.append(n % 3 == 0 ? base : PickleCorpus.mutate(base, &rng))
        }
        var taken: [Int] = []
        var counts = (plain: 0, python: 0, refused: 0)
        for (n, bytes) in cases.enumerated() where !bytes.isEmpty {
            let text = Base64.encode(bytes)
            for (app, isPython) in [(plain, false), (python, true)] {
                let verdict = try? Pickle.jobParameters(base64: text, pythonApp: isPython)
                let takes = try siteTakes(text, #require(siteApps[app]))
                let reply = try await server.request(
                    "POST", "/jobs/",
                    json: [["app_id": app, "workdir": "agree/\(n)-\(app)", "serialized_parameters": text]],
                    token: token)
                let context =
                    "seed \(Self.seed) case \(n), \(isPython ? "Python" : "shell") app: \(text) → \(reply.text)"
                #expect(reply.status == (takes ? 201 : 400), "\(context)")
                if reply.status == 400 {
                    #expect(reply.text.contains("parameters\""), "\(context)")
                    counts.refused += 1
                } else if let id = reply.list.first?["id"] as? Int {
                    taken.append(id)
                    if case .plain? = verdict { counts.plain += 1 } else { counts.python += 1 }
                }
            }
        }
        #expect(counts.plain > 10 && counts.python > 10 && counts.refused > 10, "\(counts)")

        // The site adopts every job the server took: none refused, none failed.
        #expect(try await push().status == 0)
        #expect(try await push().status == 0)
        for id in taken {
            let job = try await server.request("GET", "/jobs/\(id)", token: token)
            #expect(job.object["site_job_id"] is String, "job \(id): \(job.text)")
            if job.object["state"] as? String == "FAILED" {
                let why = try await server.request("GET", "/events/?job_id=\(id)&to_state=FAILED", token: token)
                Issue.record("seed \(Self.seed): job \(id) refused at the site: \(why.text) \(job.text)")
            }
        }
    }
}
