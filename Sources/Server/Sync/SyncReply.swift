import Spool
import Wire

/// What goes down in the reply to a push: jobs, apps and batch jobs made through the API for the site, and
/// users' deletions of its batch jobs. One round trip a period carries both directions.
extension SyncRoutes {
    /// Jobs made through the API for this site that the site has not adopted yet (oldest first, so parents come
    /// before their children), as `remote_jobs`: the reply to every push, so one round trip a period carries both
    /// directions. Each names its app and its parents by the server's ids and, where adopted, the site's.
    static func writeRemoteJobs(siteID: Int, call: Call, to out: inout JSONWriter) throws {
        let rows = try call.connection.query(
            """
            SELECT j.id, a.name, j.workdir, j.tags, j.serialized_parameters, j.data, j.num_nodes, j.ranks_per_node,
            j.threads_per_rank, j.threads_per_core, j.launch_params, j.gpus_per_rank, j.node_packing_count,
            j.wall_time_min, j.parent_ids, a.transfers FROM jobs j JOIN apps a ON a.id = j.app_id
            WHERE j.site_id = \(.of(siteID)) AND j.owner_id = \(.of(call.user.id)) AND j.site_job_id IS NULL AND j.state NOT IN (\(.of(JobState.failed)), \(.of(JobState.jobFinished)))
            ORDER BY j.id LIMIT 1000
            """)
        // Their transfer items, as the job's slots ({slot: "ALIAS:/path"}): the server keeps no slot name, so the
        // app's slot of that direction and local path is the one.
        var transfers: [Int: [String: JSONValue]] = [:]
        let slotsByApp = Dictionary(
            rows.map { ($0.int(0), (try? JSONValue.parse($0.text(15)))?.objectValue ?? [:]) },
            uniquingKeysWith: { a, _ in a })
        for chunk in rows.map({ $0.int(0) }).chunked(5000) where !chunk.isEmpty {
            for r in try call.connection.query(
                """
                SELECT job_id, direction, local_path, remote_path, location_alias FROM transfer_items
                WHERE job_id IN (\(list: chunk.map { .of($0) }))
                """)
            {
                let slot = slotsByApp[r.int(0)]?.first { _, spec in
                    spec.objectValue?["direction"]?.stringValue == r.text(1)
                        && spec.objectValue?["local_path"]?.stringValue == r.text(2)
                }
                guard let name = slot?.key else { continue }
                transfers[r.int(0), default: [:]][name] = .string(r.text(4) + ":" + r.text(3))
            }
        }
        var parents = Set<Int>()
        for r in rows {
            for case .int(let p) in (try? JSONValue.parse(r.text(14)))?.arrayValue ?? [] { parents.insert(p) }
        }
        var parentSiteIDs: [Int: String] = [:]
        for chunk in Array(parents).chunked(5000) where !chunk.isEmpty {
            for r in try call.connection.query(
                "SELECT id, site_job_id FROM jobs WHERE site_job_id IS NOT NULL AND id IN (\(list: chunk.map { .of($0) }))"
            ) {
                parentSiteIDs[r.int(0)] = r.text(1)
            }
        }
        func object(_ text: String) -> [String: JSONValue] { (try? JSONValue.parse(text))?.objectValue ?? [:] }
        let remote = rows.map { r in
            var spec = JobSpec(workdir: r.text(2), app: r.text(1))
            spec.tags = object(r.text(3)).compactMapValues(\.stringValue)
            spec.data = object(r.text(5))
            spec.transfers = transfers[r.int(0)] ?? [:]
            spec.numNodes = r.int(6)
            spec.ranksPerNode = r.int(7)
            spec.threadsPerRank = r.int(8)
            spec.threadsPerCore = r.int(9)
            spec.launchParams = object(r.text(10)).compactMapValues(\.stringValue)
            spec.gpusPerRank = r.double(11)
            spec.nodePackingCount = r.int(12)
            spec.wallTimeMin = r.int(13)
            var job = RemoteJob(id: r.int(0), spec: spec)
            job.serializedParameters = r.text(4)
            job.parentIDs = ((try? JSONValue.parse(r.text(14)))?.arrayValue ?? []).compactMap(\.intValue)
            job.parentSiteIDs = job.parentIDs.reduce(into: [:]) { ids, id in ids[id] = parentSiteIDs[id] }
            return job.json
        }
        out.value("remote_jobs", .array(remote))
    }

    /// Apps defined in Python through the API (a pickled class), as `remote_apps`, only those whose digest
    /// differs from the site's `app_digests`: `{name, serialized_class, command_template, parameters,
    /// description, digest}`. `command_template` is read out of the pickle without running it
    /// (`Pickle.classAttribute`); null means a Python app, whose `run()` the site's Python runs.
    static func writeRemoteApps(siteID: Int, known: [String: String], call: Call, to out: inout JSONWriter) throws {
        let rows = try call.connection.query(
            "SELECT name, serialized_class, parameters, description FROM apps WHERE site_id = \(.of(siteID)) AND serialized_class <> ''"
        )
        out.beginArray("remote_apps")
        for r in rows {
            // "2": apps are sent with their class since issue #14 (sites that had only the template get it).
            let digest = String(FNV1a.hash64("2\u{0}" + r.text(1) + "\u{0}" + r.text(2)), radix: 16)
            guard known[r.text(0)] != digest else { continue }
            out.beginObject()
            out.field("name", r.text(0))
            out.field("serialized_class", r.text(1))
            if let template = Pickle.classAttribute("command_template", inBase64: r.text(1)) {
                out.field("command_template", template)
            } else {
                out.raw("command_template", "null")
            }
            out.raw("parameters", r.text(2))
            out.field("description", r.text(3))
            out.field("digest", digest)
            out.endObject()
        }
        out.endArray()
    }

    /// Batch jobs asked for through the API that the site has not taken (`remote_batch_jobs`), and the site's
    /// batch jobs a user asked to delete (`batch_deletions`, by the site's ids).
    static func writeRemoteBatchJobs(siteID: Int, call: Call, to out: inout JSONWriter) throws {
        let rows = try call.connection.query(
            """
            SELECT id, project, queue, num_nodes, wall_time_min, job_mode, filter_tags, optional_params
            FROM batch_jobs WHERE site_id = \(.of(siteID)) AND owner_id = \(.of(call.user.id)) AND site_batch_id IS NULL
            AND state = 'pending_submission' ORDER BY id LIMIT 100
            """)
        out.beginArray("remote_batch_jobs")
        for r in rows {
            out.beginObject()
            out.field("id", r.int(0))
            out.field("project", r.text(1))
            out.field("queue", r.text(2))
            out.field("num_nodes", r.int(3))
            out.field("wall_time_min", r.int(4))
            out.field("job_mode", r.text(5))
            out.raw("filter_tags", r.text(6))
            out.raw("optional_params", r.text(7))
            out.endObject()
        }
        out.endArray()
        let deletions = try call.connection.query(
            "SELECT site_batch_id FROM batch_jobs WHERE site_id = \(.of(siteID)) AND state = 'pending_deletion' AND site_batch_id IS NOT NULL"
        )
        out.value("batch_deletions", .array(deletions.map { .int($0.int(0)) }))
    }
}
