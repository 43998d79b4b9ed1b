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
        /// Its spec (workdir, tags, resources, transfer slots), read by the job's one declaration.
        var spec = Job(workdir: "", app: "")
        var serializedParameters = ""
        /// `serializedParameters` read, when they are plain values (nil: objects only Python can load).
        var parameters: JSONValue?
        var returnCode: Int?
        var parentIDs: [Int] = []
        var transfers: [(slot: String, alias: String, path: String)] = []
        var state = JobState.stagedIn
        var siteID = 0
        /// The site's own id of a job a site pushed (none for a job made through the API).
        var siteJobID: String?

        init() {}

        var workdir: String { spec.workdir }

        /// What a new job's row holds of `field`.
        func value(_ field: JobField, id: Int = 0, now: Int64) -> SQLValue {
            if field == .workdir || field.check != nil { return field.stored(spec) }
            switch field {
            case .id: return .of(id)
            case .appID: return .of(appID)
            case .serializedParameters: return .text(serializedParameters)
            case .returnCode: return .of(returnCode)
            case .parentIDs: return .text(JSONValue.array(parentIDs.map { .int($0) }).serialized())
            case .siteJobID: return siteJobID.map { .text($0) } ?? .null
            case .state: return .of(state)
            case .lastUpdate: return .int(now)
            case .pendingFileCleanup: return .of(true)
            case .serializedReturnValue, .serializedException: return .text("")
            default: return .null
            }
        }

        /// The job as the reply to its creation shows it.
        func row(id: Int, now: Int64) -> SQLRow {
            SQLRow(values: JobField.columns.map { value($0, id: id, now: now) }, names: JobField.rowNames)
        }

        /// A site's job with `spec`, pushed in `state`.
        init(_ spec: Job, appID: Int, siteID: Int, state: JobState) {
            self.appID = appID
            self.siteID = siteID
            self.state = state
            self.spec = spec
            transfers = NewJob.items(spec.transfers)
        }

        /// Transfer slots as the server keeps them: items by slot, alias and path (checked when read).
        static func items(_ slots: [String: JSONValue]) -> [(slot: String, alias: String, path: String)] {
            slots.sorted(by: { $0.key < $1.key }).compactMap { slot, value in
                guard let (alias, path) = try? Job.transferTarget(slot: slot, value) else { return nil }
                return (slot, alias, path)
            }
        }
    }

    static func parseNew(_ value: JSONValue, index: Int) throws -> NewJob {
        var input = try FieldReader(value, prefix: "[\(index)]")
        var job = NewJob()
        job.appID = try input.requiredInt(JobField.appID.name, in: 1...Int.max)
        job.spec.workdir = try input.requiredString(JobField.workdir.name, maxBytes: Job.Limits.workdirBytes)
        do { try Job.validateWorkdir(job.workdir) } catch { throw input.bad(JobField.workdir.name, error.message) }
        try job.spec.readSpec(&input)
        job.transfers = NewJob.items(job.spec.transfers)
        job.serializedParameters = try input.string(JobField.serializedParameters.name, maxBytes: payloadBytes) ?? ""
        job.parameters = try checkPickle(job.serializedParameters, input: input)
        job.returnCode = try input.int(JobField.returnCode.name, in: Int(Int32.min)...Int(Int32.max))
        job.parentIDs = Array(Set(try input.intList(JobField.parentIDs.name, maxCount: Job.Limits.parents) ?? []))
            .sorted()
        // Sent by the original client on every create; the server decides them.
        for ignored in [JobField.parameters, .state, .id, .lastUpdate, .batchJobID] { _ = input.value(ignored.name) }
        _ = input.value("site_name")
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

    /// The change a site carries out with its own `modify`, from the columns an update sets: the forwarded
    /// ones by name, and the parameters read out of their pickle.
    static func forwardedChange(_ sets: [(String, SQLValue)]) -> [String: JSONValue] {
        var change: [String: JSONValue] = [:]
        for (column, value) in sets where JobField.forwardedNames.contains(column) {
            switch (column, value) {
            case (JobField.serializedParameters.name, .text(let text)):
                if case .object(let p)? = try? Pickle.decodeBase64(text) {
                    change[JobField.parameters.name] = .object(p)
                }
            case (_, .text(let text)): change[column] = (try? JSONValue.parse(text)) ?? .string(text)
            case (_, .int(let n)): change[column] = .int(Int(n))
            case (_, .double(let d)): change[column] = .double(d)
            default: break
            }
        }
        return change
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
        if let workdir = try input.string(JobField.workdir.name, maxBytes: Job.Limits.workdirBytes) {
            do { try Job.validateWorkdir(workdir) } catch { throw input.bad(JobField.workdir.name, error.message) }
            p.sets.append((JobField.workdir.name, .text(workdir)))
        }
        // The spec's fields a user may change, each by its one check (the site's too, when forwarded).
        for field in JobField.spec where field.forwarded {
            guard let value = input.value(field.name) else { continue }
            var job = Job(workdir: "", app: "")
            do { try field.read(value, into: &job) } catch {
                throw input.bad(error.field, error.problem)
            }
            p.sets.append((field.name, field.stored(job)))
        }
        for key in [JobField.serializedParameters, .serializedReturnValue, .serializedException].map(\.name) {
            if let text = try input.string(key, maxBytes: payloadBytes) {
                if key == JobField.serializedParameters.name {
                    if try checkPickle(text, input: input) == nil { p.pythonOnlyParameters = text }
                } else if !text.isEmpty {
                    // What the original client's `result()` unpickles: a pickle Python can load, or nothing.
                    do { try Pickle.check(base64: text) } catch { throw input.bad(key, "cannot be read: \(error)") }
                }
                p.sets.append((key, .text(text)))
            }
        }
        let returnCode = JobField.returnCode.name
        if input.has(returnCode) {
            p.sets.append((returnCode, .of(try input.int(returnCode, in: Int(Int32.min)...Int(Int32.max)))))
        } else {
            _ = input.value(returnCode)
        }
        if let batch = try input.int(JobField.batchJobID.name, in: 1...Int.max) {
            p.sets.append((JobField.batchJobID.name, .of(batch)))
        }
        if let pending = try input.bool(JobField.pendingFileCleanup.name) {
            p.sets.append((JobField.pendingFileCleanup.name, .of(pending)))
        }
        let state = JobField.state.name
        if input.has(state) { p.state = try input.jobState(state) } else { _ = input.value(state) }
        p.stateTimestamp = try input.time("state_timestamp")
        if let data = try input.object("state_data", maxBytes: Job.Limits.dataBytes) { p.stateData = jsonText(data) }
        // Fixed at creation: the client's `save()` sends them back as they are, so the same value is taken and a
        // different one refused (`apply` compares), never dropped in silence.
        p.appID = try input.int(JobField.appID.name, in: 1...Int.max)
        p.parentIDs = try input.intList(JobField.parentIDs.name, maxCount: Job.Limits.parents).map { Set($0) }
        // Read-only members the client may echo back.
        for ignored in [JobField.id, .lastUpdate, .parameters, .transfers] { _ = input.value(ignored.name) }
        _ = input.value("site_name")
        try input.finish()
        return p
    }
}
