import Foundation
import Spool
import TestSupport
import Testing
import Wire

@testable import Server

/// One verdict on a job's spec (issue 34): random and hostile values of every spec field, read by the four
/// readers of a job (the site's `job.json`, the push a site sends, the server's create and its update), are taken
/// by all or refused by all, naming the same field; what they take is the same job, and what the server stores
/// of it reads back as the site has it.
@Suite struct SpecAgreementTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_SPEC_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)
    static let cases = 3000

    static func pick<T>(_ items: [T], _ rng: inout SplitMix) -> T { items[Int(rng.next() % UInt64(items.count))] }

    static func text(_ rng: inout SplitMix) -> String {
        pick(
            [
                "x", "", "é✓", "a\u{0}b", String(repeating: "k", count: 256), String(repeating: "k", count: 257),
                "--cpu-bind", "-d", "=x", "---x", "--env=A", "a b", "ALIAS:/abs/p", "alias:rel", ":/p", "3", "-1",
                "1e3", "nan",
            ], &rng)
    }

    static func map(_ rng: inout SplitMix) -> JSONValue {
        var members: [String: JSONValue] = [:]
        let count = pick([0, 1, 2, 3, 101], &rng)
        for i in 0..<count {
            let key = count > 3 ? "k\(i)" : text(&rng)
            let item = text(&rng)
            members[key] = pick([.string(item), .int(7), .bool(true), .null, .array([]), .object([:])], &rng)
        }
        return .object(members)
    }

    static let generic: [JSONValue] = [
        .null, .int(0), .int(1), .int(-1), .int(1_000_000), .int(1_000_001), .int(Int.max), .double(0.5),
        .double(2), .string("4"), .string("x"), .bool(true), .array([.int(1)]), .object([:]),
    ]

    /// A value for `field`: often a good one, else one near a limit or of the wrong kind.
    static func value(for field: JobField, _ rng: inout SplitMix) -> JSONValue {
        switch field.check {
        case .count?, .gpus?:
            return rng.next() % 3 == 0 ? pick(generic, &rng) : .int(Int(rng.next() % 2000) - 2)
        case .labels?, .flags?, .object?:
            return rng.next() % 4 == 0 ? pick(generic, &rng) : map(&rng)
        case .slots?:
            if rng.next() % 4 == 0 { return pick(generic, &rng) }
            let slot = text(&rng)
            let alias = text(&rng)
            let path = pick(["/p", "p", ""], &rng)
            let plain = text(&rng)
            return .object([
                slot: pick(
                    [
                        .string(plain), .string("dtn:/data/in"),
                        .object(["location_alias": .string(alias), "path": .string(path)]),
                        .object(["location_alias": .string("dtn")]), .int(3),
                    ], &rng)
            ])
        default:
            return .string(pick(["ok/1", "", "/abs", "a/../b", ".balsam/x", "a//b", "a\u{0}", "a\u{202E}b"], &rng))
        }
    }

    /// What each reader made of one object: the spec taken, or the field it named.
    enum Verdict: Equatable {
        case took(Job)
        case refused(String)
    }

    @Test("every reader of a job gives the same verdict on the same spec, and takes the same job")
    func everyReaderAgrees() throws {
        var rng = SplitMix(seed: Self.seed)
        var taken = 0
        var refused = 0
        for n in 0..<Self.cases {
            var members: [String: JSONValue] = [JobField.workdir.name: .string("w/\(n)")]
            let fields = [JobField.workdir] + JobField.spec
            for _ in 0..<1 + rng.next() % 3 {
                let field = fields[Int(rng.next() % UInt64(fields.count))]
                members[field.name] = Self.value(for: field, &rng)
            }
            let where_ = "seed \(Self.seed), case \(n): \(JSONValue.object(members).serialized().prefix(400))"

            // The site: job.json.
            var site = members
            site[JobField.app.name] = .string("sim")
            let atSite: Verdict
            do { atSite = .took(try Job(json: .object(site)).spec) } catch {
                atSite = .refused(Self.field(of: error.message))
            }
            // A site's push.
            var pushed = site
            pushed["site_job_id"] = .string("01A")
            pushed["state"] = .string("READY")
            let inPush: Verdict
            do { inPush = .took(try PushedJob(.object(pushed), at: "jobs[0]").spec) } catch {
                inPush = .refused(String((error.field ?? "").dropFirst("jobs[0].".count)))
            }
            // The server's create.
            var created = members
            created[JobField.appID.name] = .int(1)
            let onServer: Verdict
            do {
                var job = try Jobs.parseNew(.object(created), index: 0)
                job.spec.app = "sim"
                onServer = .took(job.spec)
                // What the server stores reads back as the site has it (its slots are items: compared apart).
                var stored = JobField.spec(job.row(id: 1, now: 0), app: "sim")
                stored.transfers = job.spec.transfers
                #expect(stored == job.spec, "\(where_): stored \(stored), taken \(job.spec)")
                #expect(
                    Jobs.NewJob.items(job.spec.transfers).count == job.spec.transfers.count,
                    "\(where_): a slot taken is kept as an item")
            } catch {
                let named = (error as? WireError)?.field ?? (error as? ServerError)?.field ?? "\(error)"
                onServer = .refused(String(named.dropFirst("[0].".count)))
            }
            #expect(atSite == inPush, "\(where_): the site \(atSite), a push \(inPush)")
            #expect(atSite == onServer, "\(where_): the site \(atSite), the server \(onServer)")
            if case .took = atSite { taken += 1 } else { refused += 1 }

            // The server's update takes each forwarded field as the site's `modify` does.
            for (key, value) in members {
                guard let field = JobField(rawValue: key), field.forwarded else { continue }
                var input = try FieldReader(.object([key: value]))
                var job = Job(workdir: "w", app: "sim")
                let update = Result { try Jobs.parsePatch(&input) }
                let change = Result { () throws(SpoolError) in try job.apply(change: [key: value]) }
                #expect(
                    (try? update.get()) != nil && (try? change.get()) != nil
                        || (try? update.get()) == nil && (try? change.get()) == nil,
                    "\(where_): the server's update and the site's modify disagree on \(key)")
            }
        }
        #expect(taken > Self.cases / 10 && refused > Self.cases / 10, "taken \(taken), refused \(refused)")
    }

    /// The field a site's error names (`field 'x' ...`), relative to the job.
    static func field(of message: String) -> String {
        guard let start = message.range(of: "field '"), let end = message[start.upperBound...].firstIndex(of: "'")
        else { return message }
        return String(message[start.upperBound..<end])
    }
}
