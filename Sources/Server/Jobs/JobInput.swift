import Spool
import Wire

/// What a client sends about jobs, read and checked: a new job of a bulk create (`NewJob`), a change (`Patch`).
/// Every refusal names the field, with its place in the request.
extension Jobs {
    static let maxCount = Job.Limits.count

    static let payloadBytes = Job.Limits.parametersBytes

    /// One job of a bulk create, checked.
    struct NewJob {
        var appID = 0
        var workdir = ""
        /// Tags and launch parameters as the JSON text stored and replied.
        var tags = "{}"
        var serializedParameters = ""
        /// `serializedParameters` read, when they are plain values (nil: objects only Python can load).
        var parameters: JSONValue?
        var data = "{}"
        var returnCode: Int?
        var numNodes = 1
        var ranksPerNode = 1
        var threadsPerRank = 1
        var threadsPerCore = 1
        var launchParams = "{}"
        var gpusPerRank = 0.0
        var nodePackingCount = 1
        var wallTimeMin = 0
        var parentIDs: [Int] = []
        var transfers: [(slot: String, alias: String, path: String)] = []
        var state = JobState.stagedIn
        var siteID = 0
        /// The site's own id of a job a site pushed (none for a job made through the API).
        var siteJobID: String?

        init() {}

        /// What a new job's row holds of `field`.
        func value(_ field: JobField, id: Int = 0, now: Int64) -> SQLValue {
            switch field {
            case .id: .of(id)
            case .appID: .of(appID)
            case .workdir: .text(workdir)
            case .tags: .text(tags)
            case .serializedParameters: .text(serializedParameters)
            case .data: .text(data)
            case .returnCode: .of(returnCode)
            case .numNodes: .of(numNodes)
            case .ranksPerNode: .of(ranksPerNode)
            case .threadsPerRank: .of(threadsPerRank)
            case .threadsPerCore: .of(threadsPerCore)
            case .launchParams: .text(launchParams)
            case .gpusPerRank: .double(gpusPerRank)
            case .nodePackingCount: .of(nodePackingCount)
            case .wallTimeMin: .of(wallTimeMin)
            case .parentIDs: .text(JSONValue.array(parentIDs.map { .int($0) }).serialized())
            case .batchJobID: .null
            case .siteJobID: siteJobID.map { .text($0) } ?? .null
            case .state: .of(state)
            case .lastUpdate: .int(now)
            case .pendingFileCleanup: .of(true)
            case .serializedReturnValue, .serializedException: .text("")
            }
        }

        /// The job as the reply to its creation shows it.
        func row(id: Int, now: Int64) -> SQLRow {
            SQLRow(values: JobField.allCases.map { value($0, id: id, now: now) }, names: JobField.rowNames)
        }

        /// A site's job with `spec`, pushed in `state`.
        init(_ spec: JobSpec, appID: Int, siteID: Int, state: JobState) {
            self.appID = appID
            self.siteID = siteID
            self.state = state
            workdir = spec.workdir
            tags = jsonText(spec.tags)
            data = jsonText(spec.data)
            numNodes = spec.numNodes
            ranksPerNode = spec.ranksPerNode
            threadsPerRank = spec.threadsPerRank
            threadsPerCore = spec.threadsPerCore
            launchParams = jsonText(spec.launchParams)
            gpusPerRank = spec.gpusPerRank
            nodePackingCount = spec.nodePackingCount
            wallTimeMin = spec.wallTimeMin
            for (slot, value) in spec.transfers.sorted(by: { $0.key < $1.key }) {
                guard let (alias, path) = try? Job.transferTarget(slot: slot, value) else { continue }
                transfers.append((slot, alias, path))
            }
        }
    }

    static func parseNew(_ value: JSONValue, index: Int) throws -> NewJob {
        var input = try FieldReader(value, prefix: "[\(index)]")
        var job = NewJob()
        job.appID = try input.requiredInt("app_id", in: 1...Int.max)
        job.workdir = try input.requiredString("workdir", maxBytes: Job.Limits.workdirBytes)
        do { try Job.validateWorkdir(job.workdir) } catch { throw input.bad("workdir", error.message) }
        job.tags = jsonText(
            try input.stringMap("tags", maxEntries: Job.Limits.tags, maxBytes: Job.Limits.tagBytes) ?? [:])
        job.serializedParameters = try input.string("serialized_parameters", maxBytes: payloadBytes) ?? ""
        job.parameters = try checkPickle(job.serializedParameters, input: input)
        if let data = try input.object("data", maxBytes: Job.Limits.dataBytes) { job.data = jsonText(data) }
        job.returnCode = try input.int("return_code", in: Int(Int32.min)...Int(Int32.max))
        job.numNodes = try input.int("num_nodes", in: 1...maxCount) ?? 1
        job.ranksPerNode = try input.int("ranks_per_node", in: 1...maxCount) ?? 1
        job.threadsPerRank = try input.int("threads_per_rank", in: 1...maxCount) ?? 1
        job.threadsPerCore = try input.int("threads_per_core", in: 1...maxCount) ?? 1
        job.launchParams = jsonText(try input.launchParams() ?? [:])
        job.gpusPerRank = try input.double("gpus_per_rank", in: 0...1024) ?? 0
        job.nodePackingCount = try input.int("node_packing_count", in: 1...maxCount) ?? 1
        job.wallTimeMin = try input.int("wall_time_min", in: 0...maxCount) ?? 0
        job.parentIDs = Array(Set(try input.intList("parent_ids", maxCount: Job.Limits.parents) ?? [])).sorted()
        if let transfers = try input.object("transfers") {
            for (slot, item) in transfers.sorted(by: { $0.key < $1.key }) {
                let field = "transfers.\(slot)"
                var alias: String
                var path: String
                switch item {
                case .string(let text):
                    guard let colon = text.firstIndex(of: ":") else { throw input.bad(field, "must be ALIAS:/path") }
                    alias = String(text[..<colon])
                    path = String(text[text.index(after: colon)...])
                default:
                    var t = try FieldReader(item, prefix: input.name(field))
                    alias = try t.requiredString("location_alias")
                    path = try t.requiredString("path")
                    try t.finish()
                }
                if !path.hasPrefix("/") { throw input.bad(field, "the remote path '\(path)' must be absolute") }
                job.transfers.append((slot, alias, path))
            }
        }
        // Sent by the original client on every create; the server decides them.
        for ignored in ["parameters", "site_name", "state", "id", "last_update", "batch_job_id"] {
            _ = input.value(ignored)
        }
        try input.finish()
        return job
    }

    /// The verdict a site gives (`Pickle.jobParameters`) for a Python app: what no app's site could read is
    /// refused here, before the app is looked up. Returns the plain value, or nil for objects only Python can
    /// load (`checkParameters` refuses those for a shell app).
    @discardableResult
    static func checkPickle(_ text: String, input: FieldReader) throws -> JSONValue? {
        do {
            guard case .plain(let members) = try Pickle.jobParameters(base64: text, pythonApp: true) else { return nil }
            return .object(members)
        } catch {
            throw input.bad("serialized_parameters", "cannot be read: \(error)")
        }
    }

    /// The verdict a site gives for the app's kind: objects only Python can load are refused for a shell app
    /// (an app whose site has not said which it is is taken as a Python app, as before it said).
    static func checkAppKind(_ text: String, python: Bool?, field: String) throws {
        guard python == false else { return }
        do { _ = try Pickle.jobParameters(base64: text, pythonApp: false) } catch {
            throw ServerError.badRequest("cannot be read: \(error)", field: field)
        }
    }

    /// Checks a job's parameters against its app as its site will (`Pickle.jobParameters`, `App.checkParameters`):
    /// their kind (`checkAppKind`), and for a shell app the app's required and known names. A Python app's
    /// parameters are its `run()`'s to check, at the site as here. An app whose kind is not known (made through
    /// the API without a class, its site not having said) has its names checked, as before kinds were known.
    static func checkParameters(_ job: NewJob, _ app: JobRepository.AppFacts, index: Int) throws {
        guard case .object(let given)? = job.parameters else {
            try checkAppKind(job.serializedParameters, python: app.python, field: "[\(index)].serialized_parameters")
            return
        }
        guard app.python != true else { return }
        var declared: [String: App.Parameter] = [:]
        for (name, spec) in app.parameters {
            declared[name] = App.Parameter(required: spec.objectValue?["required"].map { $0 != .bool(false) } ?? true)
        }
        do { try App.checkParameters(given, declared: declared, app: app.name) } catch {
            throw ServerError.badRequest(error.message, field: "[\(index)].parameters")
        }
    }

    /// The changes one update asks for.
    struct Patch {
        var sets: [(String, SQLValue)] = []
        var state: JobState?
        var stateTimestamp: Int64?
        var stateData = "{}"
        /// New parameters holding objects only Python can load: each job's app must be a Python app.
        var pythonOnlyParameters: String?
        /// The app and parents the client echoed: each must be the job's own.
        var appID: Int?
        var parentIDs: Set<Int>?
    }

    static func parsePatch(_ input: inout FieldReader) throws -> Patch {
        var p = Patch()
        if let workdir = try input.string("workdir", maxBytes: Job.Limits.workdirBytes) {
            do { try Job.validateWorkdir(workdir) } catch { throw input.bad("workdir", error.message) }
            p.sets.append(("workdir", .text(workdir)))
        }
        if let tags = try input.stringMap("tags", maxEntries: Job.Limits.tags, maxBytes: Job.Limits.tagBytes) {
            p.sets.append(("tags", .text(jsonText(tags))))
        }
        for key in ["serialized_parameters", "serialized_return_value", "serialized_exception"] {
            if let text = try input.string(key, maxBytes: payloadBytes) {
                if key == "serialized_parameters" {
                    if try checkPickle(text, input: input) == nil { p.pythonOnlyParameters = text }
                } else if !text.isEmpty {
                    // What the original client's `result()` unpickles: a pickle Python can load, or nothing.
                    do { try Pickle.check(base64: text) } catch { throw input.bad(key, "cannot be read: \(error)") }
                }
                p.sets.append((key, .text(text)))
            }
        }
        if let data = try input.object("data", maxBytes: Job.Limits.dataBytes) {
            p.sets.append(("data", .text(jsonText(data))))
        }
        if input.has("return_code") {
            p.sets.append(("return_code", .of(try input.int("return_code", in: Int(Int32.min)...Int(Int32.max)))))
        } else {
            _ = input.value("return_code")
        }
        for key in ["num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "node_packing_count"] {
            if let n = try input.int(key, in: 1...maxCount) { p.sets.append((key, .of(n))) }
        }
        if let n = try input.int("wall_time_min", in: 0...maxCount) { p.sets.append(("wall_time_min", .of(n))) }
        if let gpus = try input.double("gpus_per_rank", in: 0...1024) {
            p.sets.append(("gpus_per_rank", .double(gpus)))
        }
        if let params = try input.launchParams() {
            p.sets.append(("launch_params", .text(jsonText(params))))
        }
        if let batch = try input.int("batch_job_id", in: 1...Int.max) { p.sets.append(("batch_job_id", .of(batch))) }
        if let pending = try input.bool("pending_file_cleanup") {
            p.sets.append(("pending_file_cleanup", .of(pending)))
        }
        if input.has("state") { p.state = try input.jobState("state") } else { _ = input.value("state") }
        p.stateTimestamp = try input.time("state_timestamp")
        if let data = try input.object("state_data", maxBytes: Job.Limits.dataBytes) { p.stateData = jsonText(data) }
        // Fixed at creation: the client's `save()` sends them back as they are, so the same value is taken and a
        // different one refused (`apply` compares), never dropped in silence.
        p.appID = try input.int("app_id", in: 1...Int.max)
        p.parentIDs = try input.intList("parent_ids", maxCount: Job.Limits.parents).map { Set($0) }
        // Read-only members the client may echo back.
        for ignored in ["id", "last_update", "parameters", "transfers", "site_name"] {
            _ = input.value(ignored)
        }
        try input.finish()
        return p
    }
}
