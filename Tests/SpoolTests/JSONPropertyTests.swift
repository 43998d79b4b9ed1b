import Foundation
import TestSupport
import Testing

@testable import Spool

/// The JSON parser everything depends on, checked against Foundation's `JSONSerialization` on generated documents
/// and on mutations of them: both must accept the same texts (but for the differences listed in `knownDifference`)
/// and read the same values. A fixed number of cases from a seed that a failure prints, so a failure can be
/// replayed (`BALSAM_JSON_SEED=N`) and the run stays bounded.
@Suite struct JSONPropertyTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_JSON_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)
    static let cases = Int(ProcessInfo.processInfo.environment["BALSAM_JSON_CASES"] ?? "") ?? 3000

    @Test func validDocumentsReadAsFoundationReadsThem() throws {
        var rng = SplitMix(seed: Self.seed)
        for n in 0..<Self.cases {
            let text = Generator(rng: &rng).document()
            let ours = try #require(
                try? JSONValue.parse(text),
                "seed \(Self.seed) case \(n): we refused a valid document: \(text.debugDescription)")
            let theirs = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
            #expect(same(ours, theirs), "seed \(Self.seed) case \(n): \(text.debugDescription)")
            // Our own writer's output reads back as the same value.
            #expect(
                try JSONValue.parse(ours.serialized()) == ours, "seed \(Self.seed) case \(n): \(text.debugDescription)")
        }
    }

    @Test func mutatedDocumentsAreAcceptedOrRefusedAsFoundationDoes() throws {
        var rng = SplitMix(seed: Self.seed &+ 1)
        var refused = 0
        for n in 0..<Self.cases {
            let valid = Array(Generator(rng: &rng).document().utf8)
            let bytes = mutate(valid, &rng)
            let ours = try? JSONValue.parse(bytes)
            let theirs = try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
            if ours == nil { refused += 1 }
            let text = String(decoding: bytes, as: UTF8.self)
            switch (ours, theirs) {
            case (let ours?, let theirs?):
                #expect(same(ours, theirs), "seed \(Self.seed) case \(n): read differently: \(text.debugDescription)")
            case (nil, nil):
                break
            case (nil, _?):
                #expect(
                    knownDifference(bytes), "seed \(Self.seed) case \(n): only we refused: \(text.debugDescription)")
            case (_?, nil):
                #expect(
                    knownDifference(bytes),
                    "seed \(Self.seed) case \(n): only Foundation refused: \(text.debugDescription)")
            }
        }
        #expect(refused > Self.cases / 10, "the mutations must produce invalid documents too")
    }

    /// A document read in parts (`JSONMembers`: what the server does with a push or a bulk list) reads as the whole
    /// document does: valid documents give the same members and items, and a document the parts accept whole is
    /// one the parser accepts.
    @Test func documentsReadInPartsReadAsTheWhole() throws {
        var rng = SplitMix(seed: Self.seed &+ 2)
        var readInParts = 0
        for n in 0..<Self.cases {
            let generator = Generator(rng: &rng)
            let valid = Array(
                ("{\"a\":" + generator.document() + ",\"l\":[" + generator.document() + "," + generator.document()
                    + "]}").utf8)
            let list = Array(("[" + generator.document() + "," + generator.document() + "]").utf8)
            for bytes in [valid, mutate(valid, &rng), list, mutate(list, &rng)] {
                let whole = try? JSONValue.parse(bytes)
                var parts: JSONValue?
                switch try? JSONMembers.object(bytes, maxListItems: 100) {
                case .members(let document)?:
                    var object: [String: JSONValue] = [:]
                    for (key, range) in document.ranges { object[key] = try? document.value(at: range) }
                    let items = document.lists["l"].map { $0.compactMap { try? document.value(at: $0) } }
                    if object.count == document.ranges.count, items?.count ?? 0 == document.lists["l"]?.count ?? 0 {
                        parts = .object(object)
                        if let items { #expect(object["l"] == .array(items), "seed \(Self.seed) case \(n)") }
                    }
                default:
                    if case .items(let ranges)? = try? JSONMembers.list(bytes, max: 100) {
                        let items = ranges.compactMap { try? JSONMembers.value(bytes, at: $0) }
                        if items.count == ranges.count { parts = .array(items) }
                    }
                }
                if parts != nil { readInParts += 1 }
                #expect(
                    parts == whole,
                    "seed \(Self.seed) case \(n): \(String(decoding: bytes, as: UTF8.self).debugDescription)")
            }
        }
        #expect(readInParts > Self.cases, "most generated documents must be read in parts")
    }

    /// Where we differ from Foundation on purpose, all of them inputs we refuse and Foundation accepts: duplicate
    /// keys (a job spec with two values for one key is ambiguous; Foundation keeps the last), a trailing comma
    /// (`[1,]`, not JSON), a NUL byte outside strings (Foundation stops reading at it: `8\0garbage` reads as 8; in a
    /// spool file it means corruption), and bytes that are not valid UTF-8 or lone surrogates.
    func knownDifference(_ bytes: [UInt8]) -> Bool {
        let text = String(decoding: bytes, as: UTF8.self)
        if String(validating: bytes, as: UTF8.self) == nil || text.contains("\\ud") || text.contains("\\uD") {
            return true
        }
        if bytes.contains(0) { return true }
        if text.range(of: #",[ \t\r\n]*[\]}]"#, options: .regularExpression) != nil { return true }
        // A duplicate key anywhere: Foundation keeps the last value.
        return (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
            && hasDuplicateKey(bytes)
    }

    func hasDuplicateKey(_ bytes: [UInt8]) -> Bool {
        do {
            _ = try JSONValue.parse(bytes)
            return false
        } catch {
            return error.reason.contains("duplicate key")
        }
    }

    func mutate(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var out = bytes
        let alphabet = Array(#"{}[]:,"\ 0123456789.eE+-tfnulrsa"#.utf8) + [0x00, 0x1F, 0x7F, 0xC3, 0xA9, 0xFF]
        for _ in 0..<(1 + Int(rng.next() % 3)) {
            let at = out.isEmpty ? 0 : Int(rng.next() % UInt64(out.count))
            switch rng.next() % 3 {
            case 0 where !out.isEmpty: out.remove(at: at)
            case 1: out.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
            default: if !out.isEmpty { out[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            }
        }
        return out
    }

    /// Whether Foundation's reading of a document is ours.
    func same(_ ours: JSONValue, _ theirs: Any) -> Bool {
        switch ours {
        case .null: return theirs is NSNull
        case .bool(let b):
            return (theirs as? Bool) == b || (theirs as? NSNumber)?.boolValue == b
        case .int(let i):
            guard let n = theirs as? NSNumber else { return false }
            return n.int64Value == Int64(i) || n.doubleValue == Double(i)
        case .double(let d):
            guard let n = theirs as? NSNumber else { return false }
            return n.doubleValue == d || abs(n.doubleValue - d) <= abs(d) * 1e-15
        case .string(let s): return (theirs as? String) == s
        case .array(let a):
            guard let t = theirs as? [Any], t.count == a.count else { return false }
            return zip(a, t).allSatisfy { same($0, $1) }
        case .object(let o):
            guard let t = theirs as? [String: Any], t.count == o.count else { return false }
            return o.allSatisfy { key, value in t[key].map { same(value, $0) } ?? false }
        }
    }
}

/// Random JSON text, written by hand (not by our serializer): random whitespace, escapes of every kind, numbers
/// in every notation, nesting up to 5 levels, keys unique per object.
struct Generator {
    var rng: UnsafeMutablePointer<SplitMix>

    init(rng: inout SplitMix) { self.rng = withUnsafeMutablePointer(to: &rng) { $0 } }

    func roll(_ n: Int) -> Int { Int(rng.pointee.next() % UInt64(n)) }

    func space() -> String { [" ", "", "", "\n", "\t", "\r\n  "][roll(6)] }

    func document() -> String { space() + value(depth: 0) + space() }

    func value(depth: Int) -> String {
        switch roll(depth >= 5 ? 5 : 7) {
        case 0: return "null"
        case 1: return roll(2) == 0 ? "true" : "false"
        case 2: return number()
        case 3, 4: return string()
        case 5:
            return "[" + (0..<roll(5)).map { _ in space() + value(depth: depth + 1) + space() }.joined(separator: ",")
                + "]"
        default:
            // Unique by what they decode to: "\u00e9" and "é" are one key.
            var keys: [String: String] = [:]
            for _ in 0..<roll(5) {
                let key = string()
                if let decoded = try? JSONSerialization.jsonObject(
                    with: Data(key.utf8), options: [.fragmentsAllowed]) as? String
                {
                    keys[decoded] = key
                }
            }
            return "{"
                + keys.values.sorted().map { space() + $0 + space() + ":" + space() + value(depth: depth + 1) }
                .joined(separator: ",") + "}"
        }
    }

    func number() -> String {
        let sign = roll(3) == 0 ? "-" : ""
        let int = roll(4) == 0 ? "0" : String(1 + roll(9)) + (0..<roll(12)).map { _ in String(roll(10)) }.joined()
        let fraction = roll(3) == 0 ? "." + (0..<(1 + roll(6))).map { _ in String(roll(10)) }.joined() : ""
        let exponent =
            roll(4) == 0 ? ["e", "E"][roll(2)] + ["", "+", "-"][roll(3)] + String(roll(30)) : ""
        return sign + int + fraction + exponent
    }

    func string() -> String {
        let pieces = [
            "a", "Z", "job", " ", "é", "日本", "🚀", "\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r",
            "\\u00e9", "\\u0041", "\\u001f", "\\ud83d\\ude80", "\\u2028", "$", "{{ x }}",
        ]
        return "\"" + (0..<roll(6)).map { _ in pieces[roll(pieces.count)] }.joined() + "\""
    }
}
