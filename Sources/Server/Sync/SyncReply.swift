import Spool
import Wire

/// What goes down in the reply to a push: jobs, apps and batch jobs made through the API for the site, and
/// users' deletions of its batch jobs. One round trip a period carries both directions.
extension SyncRoutes {
    /// Jobs made through the API for this site that the site has not adopted yet (oldest first, so parents come
    /// before their children), as `remote_jobs`: the reply to every push, so one round trip a period carries both
    /// directions. Each names its app and its parents by the server's ids and, where adopted, the site's.
    static func remoteJobs(siteID: Int, call: Call) throws -> [RemoteJob] {
        let rows = try call.connection.query(
            """
            SELECT j.id, a.name, \(raw: JobField.specList("j")), j.serialized_parameters, j.parent_ids, a.transfers
            FROM jobs j JOIN apps a ON a.id = j.app_id
            WHERE j.site_id = \(.of(siteID)) AND j.owner_id = \(.of(call.user.id)) AND j.site_job_id IS NULL AND j.state NOT IN (\(.of(JobState.failed)), \(.of(JobState.jobFinished)))
            ORDER BY j.id LIMIT 1000
            """)
        // Their transfer items, as the job's slots ({slot: "ALIAS:/path"}): the server keeps no slot name, so the
        // app's slot of that direction and local path is the one.
        var transfers: [Int: [String: JSONValue]] = [:]
        let slotsByApp = Dictionary(
            rows.map { ($0.int("id"), (try? JSONValue.parse($0.text("transfers")))?.objectValue ?? [:]) },
            uniquingKeysWith: { a, _ in a })
        for chunk in rows.map({ $0.int(0) }).chunked(5000) where !chunk.isEmpty {
            for r in try call.connection.query(
                """
                SELECT job_id, direction, local_path, remote_path, location_alias FROM transfer_items
                WHERE job_id IN (\(list: chunk.map { .of($0) }))
                """)
            {
                let slot = slotsByApp[r.int("job_id")]?.first { _, spec in
                    spec.objectValue?["direction"]?.stringValue == r.text("direction")
                        && spec.objectValue?["local_path"]?.stringValue == r.text("local_path")
                }
                guard let name = slot?.key else { continue }
                transfers[r.int("job_id"), default: [:]][name] = .string(
                    r.text("location_alias") + ":" + r.text("remote_path"))
            }
        }
        var parents = Set<Int>()
        for r in rows {
            for case .int(let p) in (try? JSONValue.parse(r.text("parent_ids")))?.arrayValue ?? [] { parents.insert(p) }
        }
        var parentSiteIDs: [Int: String] = [:]
        // Parents a site will still have: those it took, and those waiting for it (not failed here first).
        var coming = Set<Int>()
        for chunk in Array(parents).chunked(5000) where !chunk.isEmpty {
            for r in try call.connection.query(
                "SELECT id, site_job_id, state FROM jobs WHERE id IN (\(list: chunk.map { .of($0) }))"
            ) {
                if let site = r.optionalText(1) {
                    parentSiteIDs[r.int("id")] = site
                    coming.insert(r.int("id"))
                } else if r.text(2) != JobState.failed.rawValue {
                    coming.insert(r.int("id"))
                }
            }
        }
        return rows.map { r in
            var spec = JobField.spec(r, app: r.text("name"))
            spec.transfers = transfers[r.int("id")] ?? [:]
            var job = RemoteJob(id: r.int("id"), spec: spec)
            job.serializedParameters = r.text("serialized_parameters")
            job.parentIDs = ((try? JSONValue.parse(r.text("parent_ids")))?.arrayValue ?? []).compactMap(\.intValue)
            job.parentSiteIDs = job.parentIDs.reduce(into: [:]) { ids, id in ids[id] = parentSiteIDs[id] }
            job.lostParentIDs = job.parentIDs.filter { !coming.contains($0) }
            return job
        }
    }

    /// Apps defined in Python through the API (a pickled class), only those whose digest differs from the site's
    /// `app_digests`. The command template is read out of the pickle without running it
    /// (`Pickle.classAttribute`); none means a Python app, whose `run()` the site's Python runs.
    static func remoteApps(siteID: Int, known: [String: String], call: Call) throws -> [RemoteApp] {
        let rows = try call.connection.query(
            """
            SELECT name, serialized_class, parameters, description, transfers FROM apps WHERE site_id = \(.of(siteID))
            AND serialized_class <> ''
            """)
        return rows.compactMap { r in
            // "3": apps are sent with their class since issue #14, with their transfer slots and cleanup_files
            // since #34 (sites that had the app without them get it again).
            let pickled = r.text("serialized_class")
            let digest = String(
                FNV1a.hash64("3\u{0}" + pickled + "\u{0}" + r.text("parameters") + "\u{0}" + r.text("transfers")),
                radix: 16)
            guard known[r.text("name")] != digest else { return nil }
            var app = RemoteApp(
                name: r.text("name"), serializedClass: pickled,
                commandTemplate: Pickle.classAttribute("command_template", inBase64: pickled),
                parameters: (try? JSONValue.parse(r.text("parameters")))?.objectValue ?? [:],
                description: r.text("description"), digest: digest)
            app.transfers = (try? JSONValue.parse(r.text("transfers")))?.objectValue ?? [:]
            app.cleanupFiles = Pickle.classStringList("cleanup_files", inBase64: pickled) ?? []
            return app
        }
    }

    /// Batch jobs asked for through the API that the site has not taken, and the site's batch jobs a user asked
    /// to delete (by the site's ids).
    static func remoteBatchJobs(siteID: Int, call: Call) throws -> ([RemoteBatchJob], [Int]) {
        let rows = try call.connection.query(
            """
            SELECT id, project, queue, num_nodes, wall_time_min, job_mode, filter_tags, optional_params
            FROM batch_jobs WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_batch_id IS NULL
            AND state = 'pending_submission' ORDER BY id LIMIT 100
            """)
        func strings(_ text: String) -> [String: String] {
            ((try? JSONValue.parse(text))?.objectValue ?? [:]).compactMapValues(\.stringValue)
        }
        let requested = rows.map { r in
            RemoteBatchJob(
                id: r.int("id"), project: r.text("project"), queue: r.text("queue"), numNodes: r.int("num_nodes"),
                wallTimeMinutes: r.int("wall_time_min"), jobMode: r.text("job_mode"),
                filterTags: strings(r.text("filter_tags")), optionalParams: strings(r.text("optional_params")))
        }
        let deletions = try call.connection.query(
            """
            SELECT site_batch_id FROM batch_jobs WHERE site_id = \(.of(siteID)) AND state = 'pending_deletion'
            AND site_batch_id IS NOT NULL
            """)
        return (requested, deletions.map { $0.int("site_batch_id") })
    }
}
