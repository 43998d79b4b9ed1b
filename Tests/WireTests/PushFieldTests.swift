import Foundation
import Spool
import Testing
import Wire

/// Issue #37: a site newer than its server keeps pushing. A server refuses a push whole for a member it does not
/// know, so the rule is: a member added to the push after the handshake is a later field
/// (`PushRequest.laterFields`), sent only to a server whose reply names it (`PushReply.pushFields`). Two properties
/// over random pushes hold it:
///
/// 1. What a site sends a server that named none of the later fields (a server before the handshake, or any
///    server before its first reply) has only the members every server before the handshake reads: that schema is
///    frozen here, at the top level and in each object the server reads strictly. A member added to the push any
///    other way fails this test.
/// 2. For every set of later fields a server may read, a push sent to it is read (never refused for a member) and
///    says to it what the site said.
@Suite struct PushFieldTests {
    /// The members a server before the handshake (main at c5de5fc) reads, by where they are.
    static let before: [String: Set<String>] = [
        "": [
            "site", "apps", "jobs", "events", "removed", "rejected", "app_digests", "requests_done", "batch_jobs",
            "rejected_batch_jobs", "launcher_sessions", "refused_apps",
        ],
        "site": [
            "name", "path", "id", "transfer_locations", "allowed_queues", "allowed_projects",
            "optional_batch_job_params",
        ],
        "apps[]": ["name", "description", "parameters", "source_code", "transfers"],
        // A job's spec is every member of `JobField.spec`: a member added there is sent to every server.
        "jobs[]": [
            "site_job_id", "server_id", "state", "parameters", "parent_site_ids", "workdir", "app", "tags", "data",
            "transfers", "num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
            "node_packing_count", "launch_params", "wall_time_min",
        ],
        "events[]": ["site_job_id", "t", "from", "to", "data"],
        "rejected[]": ["server_id", "reason"],
        "requests_done[]": ["id", "outcome", "reason"],
        "batch_jobs[]": [
            "site_batch_id", "server_id", "state", "scheduler_id", "start_time", "end_time", "message", "project",
            "queue", "num_nodes", "wall_time_min", "filter_tags", "optional_params",
        ],
        "rejected_batch_jobs[]": ["server_id", "reason"],
        "launcher_sessions[]": ["lease", "nodes", "start", "end", "site_batch_id"],
    ]

    /// The members of `push`'s objects that a server reads strictly, by where they are (`site`, `jobs[]`, ...).
    static func members(_ push: JSONValue) -> [String: Set<String>] {
        var out: [String: Set<String>] = [:]
        let o = push.objectValue ?? [:]
        out[""] = Set(o.keys)
        if let site = o["site"]?.objectValue { out["site"] = Set(site.keys) }
        for (key, value) in o {
            for item in value.arrayValue ?? [] {
                if let members = item.objectValue?.keys { out[key + "[]", default: []].formUnion(members) }
            }
        }
        return out
    }

    /// A push with every list and optional member filled, its later fields set at random.
    static func push(_ rng: inout PushPropertyTests.Random) -> PushRequest {
        var push = PushTests.push()
        push.unpushedLagSeconds = rng.below(4) > 0 ? Double(rng.below(1_000_000)) / 1000 : nil
        if rng.below(3) == 0 { push.events = [] }
        return push
    }

    @Test func aServerThatNamedNoLaterFieldIsSentOnlyWhatEveryServerReads() {
        var rng = PushPropertyTests.Random(state: PushPropertyTests.seed)
        for n in 0..<200 {
            let sent = Self.members(Self.push(&rng).json(serverReads: []))
            for (place, members) in sent {
                let extra = members.subtracting(Self.before[place] ?? [])
                #expect(
                    extra.isEmpty,
                    """
                    seed \(PushPropertyTests.seed) case \(n): the push sends \(extra.sorted()) in '\(place)' to a \
                    server that does not read it; a member added to the push is a later field (PushRequest.laterFields)
                    """)
            }
        }
    }

    @Test func everyServerReadsWhatASiteSendsIt() throws {
        var rng = PushPropertyTests.Random(state: PushPropertyTests.seed &+ 2)
        let later = PushRequest.laterFields.sorted()
        // Every set of later fields a server may read: all of them, while they are few.
        let servers = (0..<(1 << min(later.count, 10))).map { bits in
            Set(later.enumerated().filter { bits & (1 << $0.offset) != 0 }.map(\.element))
        }
        var refusedByOlder = 0
        for n in 0..<200 {
            let push = Self.push(&rng)
            for reads in servers {
                let text = Array(push.json(serverReads: reads).serialized().utf8)
                let read = try PushRequest(body: text, maxItems: 20_000, reads: reads)
                #expect(
                    read.json(serverReads: reads) == push.json(serverReads: reads),
                    "seed \(PushPropertyTests.seed) case \(n), a server reading \(reads.sorted())")
                // What the site sends a server reading more would be refused by one reading less: the reader
                // does stand for an older server.
                let all = Array(push.json.serialized().utf8)
                if push.json != push.json(serverReads: reads) {
                    #expect(throws: WireError.self) { try PushRequest(body: all, maxItems: 20_000, reads: reads) }
                    refusedByOlder += 1
                }
            }
        }
        #expect(refusedByOlder > 0, "the random pushes must carry later fields")
    }

    @Test func aReplyNamesTheLaterFieldsItsServerReads() {
        var reply = PushReply(siteID: 3)
        reply.pushFields = PushRequest.laterFields
        #expect(PushReply(reply.json).pushFields == PushRequest.laterFields)
        // A reply of a server before the handshake names none.
        var old = reply.json.objectValue ?? [:]
        old["push_fields"] = nil
        #expect(PushReply(.object(old)).pushFields.isEmpty)
    }
}
