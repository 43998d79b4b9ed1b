import Foundation
import Spool
import TestSupport
import Testing
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// The site and the server agree, proven (issue 34): a real site (its watcher syncing, launchers, a local batch
/// job) and a real server are driven by random operations from a seed — jobs submitted at the site and made
/// through the API with parents, tags and resources; kills, retries, changes and deletions from either end; a
/// rename of the site through the API; launcher runs with failures; watcher and server restarts — then, once the
/// sync settles, every field of every job (by the job's one declaration, `JobField`), its history, its batch job
/// and every batch job are compared as the site shows them with what the API returns. Any difference fails,
/// naming the seed (`BALSAM_DIFF_SEEDS=1,2`, `BALSAM_DIFF_OPS=N` for a long run: bench/diff-bench).
@Suite(.serialized) struct DifferentialTests {
    static let environment = ProcessInfo.processInfo.environment
    static let seeds: [UInt64] =
        environment["BALSAM_DIFF_SEEDS"].map { $0.split(separator: ",").compactMap { UInt64($0) } }
        ?? [UInt64(saturating: Date().timeIntervalSince1970)]
    static let operations = Int(environment["BALSAM_DIFF_OPS"] ?? "") ?? 40

    @Test(
        "random operations at the site and through the API leave the site and the server agreeing on everything",
        arguments: seeds)
    func siteAndServerAgree(seed: UInt64) async throws {
        let world = try await DifferentialWorld(seed: seed)
        defer { world.stop() }
        for n in 0..<Self.operations {
            let done = try await world.step(n)
            world.log("\(n): \(done)")
        }
        try await world.settle()
        var differences: [String] = []
        do {
            try await waitFor("the site and the server agree (seed \(seed))", timeout: 180) {
                differences = try await world.differences(deep: false)
                return differences.isEmpty
            }
            differences = try await world.differences(deep: true)
        } catch {}
        let report =
            "seed \(seed): \(differences.count) difference(s):\n\(differences.prefix(40).joined(separator: "\n"))\n"
            + "operations:\n\(world.journal.joined(separator: "\n"))\nwatcher:\n\(world.watchLog.suffix(3000))"
        #expect(differences.isEmpty, "\(report)")
        let counts = world.counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        let states = Dictionary(grouping: (try? world.siteJobs()) ?? [], by: { $0["state"]?.stringValue ?? "" })
            .map { "\($0.key) \($0.value.count)" }.sorted()
        print(
            "differential seed \(seed): \(Self.operations) operations (\(counts.joined(separator: ", "))), "
                + "\(world.jobCount) jobs compared (\(states.joined(separator: ", ")))")
    }
}

/// A site, a server and a watcher, driven by a seed.
final class DifferentialWorld {
    let seed: UInt64
    var rng: SplitMix
    let dir: TempDir
    var server: LiveServer
    let site: Site
    let token: String
    let background = Background()
    var watcher: Spawned?
    var journal: [String] = []
    var counts: [String: Int] = [:]
    var jobCount = 0
    var siteID = 0
    var appIDs: [String: Int] = [:]
    var workdirs = 0
    var launchers: [Spawned] = []
    static let mpi = [
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_plm_rsh_agent": "false",
    ]

    init(seed: UInt64) async throws {
        self.seed = seed
        rng = SplitMix(seed: seed)
        dir = try TempDir()
        server = try await LiveServer(.sqlite, dir: dir)
        let root = dir.path + "/site"
        let made = try balsam(["init", root, "--scheduler", "local"])
        guard made.status == 0 else { throw ServerTestError(description: made.stderr) }
        site = try Site.open(root)
        try balsam(
            ["app", "create", "hello", "--command-template", "echo hello {{ name }}", "--param", "name"], site: root)
        // Fails when asked to (name=fail): a run that ends in RUN_ERROR, retried, then FAILED.
        try balsam(
            ["app", "create", "flaky", "--command-template", "echo {{ name }} | grep -qvx fail", "--param", "name"],
            site: root)
        token = try await syncing(site, to: server, user: "dora", period: 0.2)
        try edit(["idle_ttl_sec": "1", "kill_grace_sec": "0.2", "retry_delay_sec": "0"])
        #expect(try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", root]).status == 0)
        try await learnSite()
        startWatcher()
    }

    func log(_ line: String) { journal.append(line) }

    var watchLog: String { (try? read(dir.path + "/watch.log")) ?? "" }

    func stop() {
        for l in launchers where l.isRunning { kill(l.processIdentifier, SIGTERM) }
        background.stop()
        Task { [server] in try? await server.stop() }
    }

    func edit(_ values: [String: String]) throws {
        var lines = try read(site.settingsPath).split(separator: "\n", omittingEmptySubsequences: false).map(
            String.init)
        for (key, value) in values {
            guard let i = lines.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix(key + ":") })
            else { continue }
            lines[i] = lines[i].prefix { $0 == " " } + key + ": " + value
        }
        try lines.joined(separator: "\n").write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
    }

    func startWatcher() {
        watcher = try? background.start(
            "balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"], env: Self.mpi)
    }

    /// The site's id and apps on the server.
    func learnSite() async throws {
        let apps = try await get("/apps/?limit=1000")
        for app in apps["results"]?.arrayValue ?? [] {
            guard let o = app.objectValue, let name = o["name"]?.stringValue, let id = o["id"]?.intValue else {
                continue
            }
            appIDs[name] = id
            siteID = o["site_id"]?.intValue ?? siteID
        }
    }

    func get(_ path: String) async throws -> [String: JSONValue] {
        let reply = try await server.request("GET", path, token: token)
        return (try? JSONValue.parse(Array(reply.body)))?.objectValue ?? [:]
    }

    /// A reply that is a JSON array (the reports' failures).
    func getArray(_ path: String) async throws -> [JSONValue] {
        let reply = try await server.request("GET", path, token: token)
        return (try? JSONValue.parse(Array(reply.body)))?.arrayValue ?? []
    }

    func pick<T>(_ items: [T]) -> T? { items.isEmpty ? nil : items[Int(rng.next() % UInt64(items.count))] }
    func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }

    /// The jobs as each end lists them now.
    func siteJobs() throws -> [[String: JSONValue]] {
        try balsam(["ls", "--json"], site: site.root).stdout.split(separator: "\n").compactMap {
            try? JSONValue.parse(String($0)).objectValue
        }
    }

    func serverJobs() async throws -> [[String: JSONValue]] {
        try await get("/jobs/?limit=100000")["results"]?.arrayValue?.compactMap(\.objectValue) ?? []
    }

    /// A random spec, as a submit's options and as the API's fields.
    func spec() -> (options: [String], fields: [String: Any]) {
        var options: [String] = []
        var fields: [String: Any] = [:]
        if chance(60) {
            let value = pick(["a", "b", "x y", "é"]) ?? "a"
            options += ["--tag", "k=\(value)"]
            fields["tags"] = ["k": value]
        }
        let packing = Int(rng.next() % 4) + 1
        options += ["--node-packing-count", String(packing)]
        fields["node_packing_count"] = packing
        let minutes = Int(rng.next() % 3)
        options += ["--wall-time-min", String(minutes)]
        fields["wall_time_min"] = minutes
        if chance(20) {
            options += ["--data", "n=\(rng.next() % 9)"]
            fields["data"] = ["n": Int(rng.next() % 9)]
        }
        return (options, fields)
    }

    /// One random operation; returns what it did.
    func step(_ n: Int) async throws -> String {
        let roll = rng.next() % 100
        let name = chance(25) ? "fail" : "n\(n)"
        let app = chance(50) ? "flaky" : "hello"
        let kind: String
        defer { counts[kind, default: 0] += 1 }
        switch roll {
        case 0..<25:
            kind = "submit at the site"
            workdirs += 1
            var (options, _) = spec()
            if chance(30), let parent = pick(try siteJobs()), let id = parent["id"]?.stringValue {
                options += ["--parent", id]
            }
            let r = try balsamSubmit(
                ["-a", app, "-w", "s/\(workdirs)", "-p", "name=\(name)"] + options, site: site.root)
            return "\(kind) s/\(workdirs) \(options): \(r.status) \(r.stdout.prefix(30))\(r.stderr.prefix(200))"
        case 25..<50:
            kind = "create through the API"
            workdirs += 1
            var (_, fields) = spec()
            fields["app_id"] = appIDs[app] ?? 0
            fields["workdir"] = "r/\(workdirs)"
            fields["serialized_parameters"] = Pickle.encodeBase64(.object(["name": .string(name)]))
            if chance(30), let parent = pick(try await serverJobs()), let id = parent["id"]?.intValue {
                fields["parent_ids"] = [id]
            }
            let reply = try await server.request("POST", "/jobs/", json: [fields], token: token)
            let made = reply.list.first?["id"] as? Int
            return "\(kind) r/\(workdirs) (id \(made ?? 0), parents \(fields["parent_ids"] ?? [])): \(reply.status)"
        case 50..<58:
            kind = "kill"
            return try await onEitherEnd(kind, command: "kill") { id in
                try await self.server.request("PUT", "/jobs/\(id)", json: ["state": "FAILED"], token: self.token)
            }
        case 58..<66:
            kind = "retry"
            return try await onEitherEnd(kind, command: "retry", in: "FAILED") { id in
                try await self.server.request("PUT", "/jobs/\(id)", json: ["state": "READY"], token: self.token)
            }
        case 66..<76:
            kind = "modify"
            let (options, fields) = spec()
            if chance(50), let job = pick(try siteJobs()), let id = job["id"]?.stringValue {
                let change = options.enumerated().map { i, o in
                    i % 2 == 0 ? (o == "--tag" ? "--set-tag" : o == "--data" ? "--set-data" : o) : o
                }
                let r = try balsam(["modify", id, "--yes"] + change, site: site.root)
                return "\(kind) at the site \(id) \(change): \(r.status) \(r.stderr.prefix(200))"
            }
            guard let job = pick(try await serverJobs()), let id = job["id"]?.intValue else { return kind }
            let reply = try await server.request("PUT", "/jobs/\(id)", json: fields, token: token)
            return "\(kind) through the API \(id) \(fields): \(reply.status)"
        case 76..<81:
            kind = "delete"
            return try await onEitherEnd(kind, command: "rm") { id in
                try await self.server.request("DELETE", "/jobs/\(id)", token: self.token)
            }
        case 81..<84:
            kind = "rename the site through the API"
            let reply = try await server.request(
                "PUT", "/sites/\(siteID)", json: ["name": "renamed-\(n)"], token: token)
            return "\(kind): \(reply.status) \(reply.text.prefix(200))"
        case 84..<92:
            kind = "launcher run"
            launchers = launchers.filter(\.isRunning)
            guard launchers.isEmpty else { return "\(kind): one runs" }
            let launcher = try startBinary(
                "balsam-launcher", ["--site", site.root, "--wall-time-min", "1", "--idle-timeout", "3"], env: Self.mpi)
            launchers.append(launcher)
            return kind
        case 92..<95:
            kind = "batch job"
            let r = try balsam(["queue", "submit", "-n", "1", "-t", "1"], site: site.root)
            return "\(kind): \(r.status) \(r.stderr.prefix(200))"
        case 95..<98:
            kind = "watcher restart"
            if let watcher, watcher.isRunning {
                kill(watcher.processIdentifier, chance(50) ? SIGKILL : SIGTERM)
                watcher.waitUntilExit()
            }
            startWatcher()
            return kind
        default:
            kind = "server restart"
            try await server.stop()
            server = try await LiveServer(.sqlite, db: server.db, dir: dir)
            try setSync(site, url: server.url, tokenFile: dir.path + "/token", period: 0.2)
            return kind
        }
    }

    /// `kind` on a random job (of those in `state`) at either end, by a coin: `balsam COMMAND ID --yes` at the
    /// site, or `api` with its id on the server.
    func onEitherEnd(
        _ kind: String, command: String, in state: String? = nil, api: (Int) async throws -> HTTPReply
    ) async throws -> String {
        func eligible(_ jobs: [[String: JSONValue]]) -> [[String: JSONValue]] {
            state.map { s in jobs.filter { $0["state"] == .string(s) } } ?? jobs
        }
        if chance(50), let job = pick(eligible(try siteJobs())), let id = job["id"]?.stringValue {
            let r = try balsam([command, id, "--yes"], site: site.root)
            return "\(kind) at the site \(id): \(r.status)"
        }
        guard let job = pick(eligible(try await serverJobs())), let id = job["id"]?.intValue else { return kind }
        return "\(kind) through the API \(id): \(try await api(id).status)"
    }

    /// Waits for what is running to end: launchers, batch jobs; then for the sync to have nothing left to push.
    func settle() async throws {
        try await waitFor("the launchers end", timeout: 180) { self.launchers.allSatisfy { !$0.isRunning } }
        try await waitFor("the batch jobs end", timeout: 240) {
            try BatchJobStore(site: self.site).all().jobs.allSatisfy(\.state.isFinal)
        }
        if watcher?.isRunning != true { startWatcher() }
        // A last launcher runs what is left to run (or leaves when there is nothing for it).
        let last = try startBinary(
            "balsam-launcher", ["--site", site.root, "--wall-time-min", "2", "--idle-timeout", "5"], env: Self.mpi)
        launchers.append(last)
        try await waitFor("the last launcher ends", timeout: 180) { !last.isRunning }
    }

    /// Every difference between the site and the server: jobs by every field of the declaration, their
    /// parents, app, state, return code and (deep) history and batch job; batch jobs.
    func differences(deep: Bool) async throws -> [String] {
        var out: [String] = []
        let atSite = try siteJobs()
        let onServer = try await serverJobs()
        try await learnSite()
        let appNames = Dictionary(appIDs.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        var bySiteID: [String: [String: JSONValue]] = [:]
        var serverIDs: [String: Int] = [:]
        for job in onServer {
            guard let siteJobID = job["site_job_id"]?.stringValue else {
                // A job killed through the API before a site took it, or one the site refused (a parent deleted
                // meanwhile, with the site's reason): FAILED here, and never at the site.
                if job["state"] != .string("FAILED") {
                    out.append(
                        "server job \(job["id"] ?? .null) (\(job["workdir"] ?? .null)) was not taken by the site")
                }
                continue
            }
            bySiteID[siteJobID] = job
            serverIDs[siteJobID] = job["id"]?.intValue
        }
        jobCount = atSite.count
        let sites = try await get("/sites/")["results"]?.arrayValue ?? []
        if sites.count != 1 { out.append("the server has \(sites.count) sites for the one site: \(sites)") }
        if Set(atSite.compactMap { $0["id"]?.stringValue }) != Set(bySiteID.keys) {
            let siteIDs = Set(atSite.compactMap { $0["id"]?.stringValue })
            out.append(
                "jobs only at the site: \(siteIDs.subtracting(bySiteID.keys).sorted()); "
                    + "only on the server: \(Set(bySiteID.keys).subtracting(siteIDs).sorted())")
        }
        for job in atSite {
            guard let id = job["id"]?.stringValue, let other = bySiteID[id] else { continue }
            func differ(_ what: String, _ a: JSONValue?, _ b: JSONValue?) {
                out.append(
                    "job \(id) (\(job["workdir"]?.stringValue ?? "")): \(what) is \(a ?? .null) at the site, \(b ?? .null) on the server"
                )
            }
            if job["state"] != other["state"] { differ("state", job["state"], other["state"]) }
            // The server's id as the site knows it (issue 35, item 6): what `show 91`, `kill 91`... take.
            if job["server_id"]?.intValue != other["id"]?.intValue {
                differ("server id", job["server_id"], other["id"])
            }
            if job["workdir"] != other["workdir"] { differ("workdir", job["workdir"], other["workdir"]) }
            let app = other["app_id"]?.intValue.flatMap { appNames[$0] }
            if job["app"]?.stringValue != app { differ("app", job["app"], app.map(JSONValue.string)) }
            for field in JobField.spec where field.column != nil {
                let (a, b) = (job[field.name], other[field.name])
                let same = field == .gpusPerRank ? a?.doubleValue == b?.doubleValue : a == b
                if !same { differ(field.name, a, b) }
            }
            // Parents by the server's id; a parent removed since is named at both ends, and known at neither.
            let siteParents = (job["parent_ids"]?.arrayValue ?? []).compactMap(\.stringValue)
            let serverParents = (other["parent_ids"]?.arrayValue ?? []).compactMap(\.intValue)
            let known = Set(serverIDs.values)
            let parents = Set(siteParents.compactMap { serverIDs[$0] })
            let gone = (siteParents.count - parents.count, serverParents.filter { !known.contains($0) }.count)
            if parents != Set(serverParents.filter(known.contains)) || gone.0 != gone.1 {
                differ("parent_ids", job["parent_ids"], other["parent_ids"])
            }
        }
        guard deep, out.isEmpty else { return out }
        // Any job found by the server's id, as the original CLI shows it.
        if let job = pick(onServer), let serverID = job["id"]?.intValue, let siteJobID = job["site_job_id"]?.stringValue
        {
            let shown = try balsam(["show", String(serverID), "--json"], site: site.root)
            let found = (try? JSONValue.parse(shown.stdout))?.objectValue?["id"]?.stringValue
            if found != siteJobID {
                out.append("balsam show \(serverID) found \(found ?? shown.stderr), not \(siteJobID)")
            }
        }
        out += try await historiesDiffer(atSite, serverIDs: serverIDs, bySiteID: bySiteID)
        return out
    }

    /// Each job's history (its events), return code and batch job; and the batch jobs themselves.
    func historiesDiffer(
        _ atSite: [[String: JSONValue]], serverIDs: [String: Int], bySiteID: [String: [String: JSONValue]]
    ) async throws -> [String] {
        var out: [String] = []
        var siteEvents: [String: Set<String>] = [:]
        var ranIn: [String: (Int64, Int)] = [:]
        for name in entries(site.eventsPath) where name.hasSuffix(".jsonl") {
            for line in try read(site.eventsPath + "/" + name).split(separator: "\n") {
                guard let e = try? JSONValue.parse(String(line)).objectValue, let job = e["job"]?.stringValue,
                    let t = e["t"]?.stringValue.flatMap(ServerClock.parse)
                else { continue }
                let (from, to) = (e["from"]?.stringValue ?? "", e["to"]?.stringValue ?? "")
                guard JobState(rawValue: to) != nil else { continue }  // a removal or a change: not a move
                siteEvents[job, default: []].insert("\(t) \(from) \(to)")
                if to == "RUNNING", let batch = e["data"]?.objectValue?["batch_job"]?.intValue,
                    ranIn[job].map({ $0.0 <= t }) ?? true
                {
                    ranIn[job] = (t, batch)
                }
            }
        }
        var serverEvents: [Int: [(t: Int64, from: String, to: String, actor: Bool)]] = [:]
        for e in try await get("/events/?limit=100000")["results"]?.arrayValue ?? [] {
            guard let o = e.objectValue, let job = o["job_id"]?.intValue,
                let t = o["timestamp"]?.stringValue.flatMap(ServerClock.parse)
            else { continue }
            serverEvents[job, default: []].append(
                (
                    t, o["from_state"]?.stringValue ?? "", o["to_state"]?.stringValue ?? "",
                    o["data"]?.objectValue?["actor"] != nil
                ))
        }
        // The site's batch jobs, by its id, as the server has them (by scheduler id).
        let siteBatches = try BatchJobStore(site: site).all().jobs
        let serverBatches =
            try await get("/batch-jobs/?limit=10000")["results"]?.arrayValue?.compactMap(\.objectValue) ?? []
        var serverBatchOf: [Int: Int] = [:]
        for b in siteBatches {
            let match = serverBatches.first { $0["scheduler_id"]?.intValue == b.schedulerID.flatMap { Int($0) } }
            guard let match else {
                out.append("batch job \(b.id) (scheduler id \(b.schedulerID ?? "none")) is not on the server")
                continue
            }
            serverBatchOf[b.id] = match["id"]?.intValue
            let (a, z) = (b.state.rawValue, match["state"]?.stringValue ?? "")
            if a != z { out.append("batch job \(b.id): state \(a) at the site, \(z) on the server") }
        }
        // The failure reports (issue 35, item 10): the same jobs at both ends, by one rule (a job finished or
        // removed since is none); the server's jobs that never reached the site (killed before it took them, or
        // refused by it) are the server's own.
        // Each job once, with its runs (a killed run counts: `endsARun`) and its reason, by one rule.
        func rows(_ lines: [JSONValue]) -> [String: String] {
            var out: [String: String] = [:]
            for case .object(let o) in lines {
                let id = o["job_id"].map { $0.stringValue ?? String($0.intValue ?? -1) } ?? ""
                out[id] = "runs \(o["attempts"]?.intValue ?? -1), reason \(o["reason"]?.stringValue ?? "")"
            }
            return out
        }
        let siteRows = rows(
            try balsam(["report", "failures", "--json", "--limit", "1000"], site: site.root).stdout.split(
                separator: "\n"
            ).compactMap { try? JSONValue.parse(String($0)) })
        let taken = Set(serverIDs.values.map(String.init))
        // A failure only the server wrote (a kill through the API before the site took the job) is the server's
        // own, as in the history above.
        let failing: Set<String> = ["FAILED", "RUN_ERROR", "RUN_TIMEOUT"]
        let serverOwn = Set(
            serverEvents.filter { _, events in
                !events.contains { failing.contains($0.to) && $0.actor }
            }.keys.map(String.init))
        let serverRows = rows(try await getArray("/reports/failures?limit=1000&site_id=\(siteID)"))
            .filter { taken.contains($0.key) && !serverOwn.contains($0.key) }
        let siteByServerID = Dictionary(
            siteRows.compactMap { id, row in serverIDs[id].map { (String($0), row) } }, uniquingKeysWith: { a, _ in a })
        if siteByServerID != serverRows || siteRows.count != serverRows.count {
            out.append(
                "failure reports: \(siteByServerID.sorted { $0.key < $1.key }) at the site (by server id), "
                    + "\(serverRows.sorted { $0.key < $1.key }) on the server")
        }
        // The site's report and the server's for the site: each batch job's busy node-seconds, and the total.
        let report = try JSONValue.parse(try balsam(["report", "utilization", "--json"], site: site.root).stdout)
        let serverReport = JSONValue.object(try await get("/reports/utilization?site_id=\(siteID)"))
        func busy(_ r: JSONValue) -> [Int: Double] {
            var out: [Int: Double] = [:]
            for b in r.objectValue?["batch_jobs"]?.arrayValue ?? [] {
                guard let o = b.objectValue, let id = o["id"]?.intValue else { continue }
                out[id] = o["busy_node_seconds"]?.doubleValue
            }
            return out
        }
        let serverBusy = busy(serverReport)
        for (batch, seconds) in busy(report) {
            let there = serverBatchOf[batch].flatMap { serverBusy[$0] }
            if there.map({ abs($0 - seconds) > 0.01 + seconds / 100 }) ?? true {
                out.append("batch job \(batch): \(seconds) busy node-seconds at the site, \(there ?? -1) on the server")
            }
        }
        let (total, serverTotal) = (
            report.objectValue?["busy_node_seconds"]?.doubleValue ?? 0,
            serverReport.objectValue?["busy_node_seconds"]?.doubleValue ?? 0
        )
        if abs(total - serverTotal) > 0.01 + total / 100 {
            out.append("busy node-seconds: \(total) at the site, \(serverTotal) on the server")
        }
        for job in atSite {
            guard let id = job["id"]?.stringValue, let serverID = serverIDs[id], let other = bySiteID[id] else {
                continue
            }
            // One history: the server's creation of a job made through the API, then the site's, its CREATED
            // step recorded from the server's state.
            var events = serverEvents[serverID] ?? []
            events.sort { $0.t < $1.t }
            var expected = siteEvents[id] ?? []
            if let made = events.first(where: { $0.from == "CREATED" && !$0.actor }) {
                // The server's part of it: the creation, and what a user did through the API before the site
                // took the job (a kill, a retry), events the server wrote itself (a site's all name an actor).
                events.removeAll { !$0.actor }
                expected = Set(expected.map { $0.replacingOccurrences(of: " CREATED ", with: " \(made.to) ") })
            }
            let recorded = Set(events.map { "\($0.t) \($0.from) \($0.to)" })
            if recorded != expected {
                out.append(
                    "job \(id): history differs: only at the site \(expected.subtracting(recorded).sorted()), "
                        + "only on the server \(recorded.subtracting(expected).sorted())")
            }
            let shown = try JSONValue.parse(try balsam(["show", id, "--json"], site: site.root).stdout).objectValue
            if shown?["return_code"] != other["return_code"] {
                out.append(
                    "job \(id): return_code \(shown?["return_code"] ?? .null) at the site, \(other["return_code"] ?? .null) on the server"
                )
            }
            let batch = ranIn[id].flatMap { serverBatchOf[$0.1] }
            if let batch, other["batch_job_id"]?.intValue != batch {
                out.append(
                    "job \(id): ran in batch job \(batch) (server id), the server says \(other["batch_job_id"] ?? .null)"
                )
            }
        }
        return out
    }
}
