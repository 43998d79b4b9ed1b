import Foundation
import Spool
import Testing
import Wire

/// Every push a site, or anyone holding a token, sends is read by `PushRequest` on the server: it must be total.
/// Valid pushes mutated at random (a member dropped, retyped, replaced by a deep or odd value; an item of a list
/// broken) always give a push or a `WireError` naming a field, never a trap; the same for a reply at the site.
/// From a seed that a failure prints (`BALSAM_WIRE_SEED=N`, `BALSAM_WIRE_CASES=N`).
@Suite struct PushPropertyTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_WIRE_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)
    static let cases = Int(ProcessInfo.processInfo.environment["BALSAM_WIRE_CASES"] ?? "") ?? 3000

    /// SplitMix64: small, seedable, enough for picking mutations.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(1, n))) }
    }

    static let odd: [JSONValue] = [
        .null, .bool(true), .int(-1), .int(0), .int(Int.max), .double(1e308), .double(-0.5), .string(""),
        .string("\u{0}"), .string(String(repeating: "x", count: 70_000)), .array([]), .object([:]),
        .string("2026-13-45T99:99:99Z"), .string("JOB_FINISHED"), .array([.object(["site_job_id": .int(1)])]),
    ]

    static func deep(_ n: Int) -> JSONValue { (0..<n).reduce(JSONValue.int(1)) { v, _ in .array([v]) } }

    func mutate(_ value: JSONValue, _ rng: inout Random, depth: Int = 0) -> JSONValue {
        switch value {
        case .object(var o) where !o.isEmpty && rng.below(3) > 0 && depth < 6:
            let keys = o.keys.sorted()
            let key = keys[rng.below(keys.count)]
            switch rng.below(5) {
            case 0: o[key] = nil
            case 1: o[key] = Self.odd[rng.below(Self.odd.count)]
            case 2: o[key] = Self.deep(1 + rng.below(200))
            case 3: o["unknown_\(rng.below(3))"] = .int(1)
            default: o[key] = mutate(o[key] ?? .null, &rng, depth: depth + 1)
            }
            return .object(o)
        case .array(var items) where !items.isEmpty && depth < 6:
            let i = rng.below(items.count)
            items[i] =
                rng.below(2) == 0 ? Self.odd[rng.below(Self.odd.count)] : mutate(items[i], &rng, depth: depth + 1)
            return .array(items)
        default:
            return Self.odd[rng.below(Self.odd.count)]
        }
    }

    @Test func mutatedPushesAreReadOrRefusedNamingAFieldNeverATrap() throws {
        var rng = Random(state: Self.seed)
        let valid = PushTests.push().json
        var refused = 0
        var unreadableItems = 0
        for n in 0..<Self.cases {
            var value = valid
            for _ in 0...rng.below(3) { value = mutate(value, &rng) }
            // Through its text, as the server gets it.
            let text = value.serialized()
            guard let parsed = try? JSONValue.parse(Array(text.utf8)) else { continue }
            // The server's reading (from the text, item by item) agrees with the tree's: the same push, or a
            // refusal of the same field.
            let fromText = Result { () throws(WireError) in try PushRequest(body: Array(text.utf8), maxItems: 20_000) }
            let fromTree = Result { () throws(WireError) in try PushRequest(parsed) }
            switch (fromText, fromTree) {
            case (.success(let a), .success(let b)): #expect(a == b, "seed \(Self.seed) case \(n)")
            case (.failure(let a), .failure(let b)):
                #expect(a.field == b.field, "seed \(Self.seed) case \(n): \(a) / \(b)")
            default: Issue.record("seed \(Self.seed) case \(n): \(fromText) / \(fromTree)")
            }
            do {
                let push = try PushRequest(parsed)
                unreadableItems += push.jobs.filter { $0.value == nil }.count
                unreadableItems += push.events.filter { $0.value == nil }.count
                // What was read writes back to a push that reads the same (its unreadable items are not written).
                var readable = push
                readable.jobs.removeAll { $0.value == nil }
                readable.events.removeAll { $0.value == nil }
                #expect(try PushRequest(push.json) == readable, "seed \(Self.seed) case \(n)")
            } catch {
                refused += 1
                // Every refusal names its field, but for a push that is not an object at all.
                let named = error.field != nil || parsed.objectValue == nil
                #expect(!error.message.isEmpty && named, "seed \(Self.seed) case \(n): \(error)")
            }
        }
        #expect(refused > Self.cases / 10 && unreadableItems > 0, "the mutations must reach both kinds of refusal")
    }

    @Test func mutatedRepliesNeverTrapTheSite() {
        var rng = Random(state: Self.seed &+ 1)
        var reply = PushReply(siteID: 5)
        reply.pushFields = PushRequest.laterFields
        reply.remoteJobs = [.read(RemoteJob(id: 12, spec: Job(workdir: "w", app: "sim")))]
        reply.requests = [JobRequest(id: 1, siteJobID: "01A", kind: .state, target: "FAILED")]
        reply.remoteApps = [
            RemoteApp(
                name: "Hello", serializedClass: "", commandTemplate: "echo", parameters: [:], description: "",
                digest: "1")
        ]
        for _ in 0..<Self.cases {
            _ = PushReply(mutate(reply.json, &rng))
        }
    }
}
