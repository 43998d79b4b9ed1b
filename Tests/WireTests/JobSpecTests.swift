import Spool
import Testing
import Wire

/// The job as a site and the server exchange it: one writing, one reading, and the reading refuses what the other
/// end could not take, naming the field.
@Suite struct JobSpecTests {
    static func siteJob() -> Job {
        var job = Job(workdir: "runs/7", app: "sim")
        job.tags = ["experiment": "xpcs", "n": "3"]
        job.parameters = ["x": .int(3), "names": .array([.string("a"), .null])]
        job.data = ["note": .string("é\u{1}")]
        job.parentIDs = ["01PARENT"]
        job.numNodes = 2
        job.ranksPerNode = 4
        job.threadsPerRank = 2
        job.threadsPerCore = 1
        job.launchParams = ["cpu_bind": "depth"]
        job.gpusPerRank = 0.5
        job.nodePackingCount = 3
        job.wallTimeMin = 10
        job.transfers = ["input": .string("theta:/data/in.h5")]
        return job
    }

    @Test func aPushedJobReadsBackAsItWasWritten() throws {
        let pushed = PushedJob(id: "01CHILD", Self.siteJob(), state: .running)
        let text = pushed.json.serialized()
        let read = try PushedJob(try JSONValue.parse(Array(text.utf8)), at: "jobs[0]")
        #expect(read == pushed)
        #expect(read.spec.transfers == Self.siteJob().transfers)
        #expect(read.spec == Self.siteJob().spec)
    }

    @Test func anAdoptionCarriesOnlyTheIDs() throws {
        var pushed = PushedJob(id: "01CHILD", Self.siteJob(), state: .running, serverID: 42)
        pushed.spec.numNodes = -1  // not read: the server has the spec of a job it made
        let read = try PushedJob(pushed.json, at: "jobs[0]")
        #expect(read.serverID == 42 && read.siteJobID == "01CHILD")
    }

    @Test func aRemoteJobReadsBackAsItWasWritten() throws {
        var remote = RemoteJob(id: 9, spec: Self.siteJob().spec)
        remote.serializedParameters = Pickle.encodeBase64(.object(["x": .int(1)]))
        remote.parentIDs = [3, 4]
        remote.parentSiteIDs = [3: "01SITE3"]
        var o = remote.json.objectValue ?? [:]
        o["a_field_of_a_newer_server"] = .bool(true)
        #expect(try RemoteJob(.object(o), at: "remote_jobs[0]") == remote)
    }

    @Test(arguments: [
        ("num_nodes", JSONValue.int(0), "must be between 1 and 1000000, not 0"),
        ("workdir", .string(String(repeating: "w", count: 300)), "is 300 bytes; the limit is 256"),
        ("state", .string("DONE"), "'DONE' is not a job state"),
        ("tags", .object(["k": .array([])]), "must be a string, not an array"),
        ("transfers", .object(["input": .string("no-colon")]), #"must be "ALIAS:/absolute/path""#),
        ("parent_site_ids", .array([.int(1)]), "must be a string, not a number"),
        ("colour", .string("blue"), "is not a field of this resource"),
    ])
    func aWrongFieldIsNamed(field: String, value: JSONValue, message: String) throws {
        var o = PushedJob(id: "01CHILD", Self.siteJob(), state: .running).json.objectValue ?? [:]
        o[field] = value
        do {
            _ = try PushedJob(.object(o), at: "jobs[5]")
            Issue.record("\(field) = \(value) was taken")
        } catch {
            #expect(error.field?.hasPrefix("jobs[5].\(field)") == true, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
    }
}
