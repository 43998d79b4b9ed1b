import Foundation
import TestSupport
import Testing

@testable import Spool

/// The pickle reader faces whatever a client sends (`serialized_parameters`, `serialized_class`), on the server
/// and again at every site. It must be total: any bytes give a value or `Pickle.Unsupported`, never a trap, a
/// stack overflow or unbounded memory. Random values pickled and read back, then mutations of them and random
/// bytes, from a seed that a failure prints (`BALSAM_PICKLE_SEED=N`, `BALSAM_PICKLE_CASES=N`), bounded in count.
@Suite struct PicklePropertyTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["BALSAM_PICKLE_SEED"].flatMap { UInt64($0) }
        ?? UInt64(saturating: Date().timeIntervalSince1970)
    static let cases = Int(ProcessInfo.processInfo.environment["BALSAM_PICKLE_CASES"] ?? "") ?? 3000

    /// Every way in: the value reader, and the string walkers the server and the site use on classes.
    func readAll(_ bytes: [UInt8]) -> JSONValue? {
        let text = Base64.encode(bytes)
        _ = Pickle.classAttribute("command_template", inBase64: text)
        _ = Pickle.classStringList("cleanup_files", inBase64: text)
        _ = Pickle.strings(inBase64: text)
        _ = try? Pickle.check(base64: text)
        return try? Pickle.decode(bytes)
    }

    @Test func valuesRoundTripAndMutationsNeverTrap() throws {
        var rng = SplitMix(seed: Self.seed)
        var refused = 0
        for n in 0..<Self.cases {
            let value = try JSONValue.parse(Generator(rng: &rng).document())
            let pickled = try #require(Base64.decode(Pickle.encodeBase64(value)))
            #expect(readAll(pickled) == value, "seed \(Self.seed) case \(n): \(value.serialized())")
            let mutated = mutate(pickled, &rng)
            if readAll(mutated) == nil { refused += 1 }
        }
        #expect(refused > Self.cases / 10, "the mutations must produce unreadable pickles too")
    }

    @Test func randomBytesNeverTrap() {
        var rng = SplitMix(seed: Self.seed &+ 7)
        for _ in 0..<Self.cases {
            let count = Int(rng.next() % 64)
            var bytes: [UInt8] = [0x80, 4]
            for _ in 0..<count { bytes.append(Self.opcodes[Int(rng.next() % UInt64(Self.opcodes.count))]) }
            _ = readAll(bytes)
        }
    }

    static let opcodes = PickleCorpus.opcodes

    func mutate(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8] { PickleCorpus.mutate(bytes, &rng) }

    /// One verdict (issue 31, item 7): every pickle Python writes, of plain values and of objects only Python
    /// can load, with protocols 0 to 5, passes `checkStructure`; and of their mutations and random plain ones,
    /// every pickle it passes is one Python's own opcode table calls well formed (`PickleCorpus.pythonVerdicts`:
    /// arguments, stack, MARKs, memo, one value at STOP). `jobParameters` refuses what fails it, for both kinds
    /// of app, and takes a dict of plain values for both.
    @Test func structureIsNoLooserThanPythonsOwnTable() throws {
        let written = try PickleCorpus.fromPython()
        #expect(written.count >= 20 * 6)
        for bytes in written {
            #expect(throws: Never.self, "\(Base64.encode(bytes))") { try Pickle.checkStructure(bytes) }
        }
        var rng = SplitMix(seed: Self.seed &+ 31)
        var cases: [[UInt8]] = []
        for n in 0..<min(Self.cases, 2000) {
            let base =
                n % 2 == 0
                ? written[Int(rng.next() % UInt64(written.count))]
                : Base64.decode(Pickle.encodeBase64(try JSONValue.parse(Generator(rng: &rng).document()))) ?? []
            let mutated = mutate(base, &rng)
            if !mutated.isEmpty { cases.append(mutated) }  // empty text is the original's empty dict
        }
        let python = try PickleCorpus.pythonVerdicts(cases)
        var (taken, refused) = (0, 0)
        for (bytes, pythonTakes) in zip(cases, python) {
            let text = Base64.encode(bytes)
            let ours = (try? Pickle.checkStructure(bytes)) != nil
            #expect(!ours || pythonTakes, "seed \(Self.seed): we take what Python's table refuses: \(text)")
            if ours { taken += 1 } else { refused += 1 }
            for python in [false, true] {
                let verdict = try? Pickle.jobParameters(base64: text, pythonApp: python)
                if !ours { #expect(verdict == nil, "\(text)") }
                if case .object(let members)? = try? Pickle.decode(bytes), ours {
                    // Compared as written (sorted keys): a mutation can make a float a NaN, which equals nothing, itself
                    // included.
                    guard case .plain(let given)? = verdict else {
                        Issue.record("\(text): \(String(describing: verdict))")
                        continue
                    }
                    #expect(JSONValue.object(given).serialized() == JSONValue.object(members).serialized(), "\(text)")
                }
            }
        }
        #expect(taken > 50 && refused > 50, "the mutations must give both: \(taken) taken, \(refused) refused")
    }

    @Test("crafted lengths are refused, not an arithmetic overflow (issue 23, 1 and 2)")
    func craftedLengths() throws {
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64("gASN/////////38u") }
        for cls in ["gASMEGNvbW1hbmRfdGVtcGxhdGWN/////////38u", "gASMEGNvbW1hbmRfdGVtcGxhdGWMB2VjaG8gaGmN/////////38u"]
        {
            _ = Pickle.strings(inBase64: cls)
            _ = Pickle.classAttribute("command_template", inBase64: cls)
            #expect(throws: Pickle.Unsupported.self) { try Pickle.check(base64: cls) }
        }
        // LONG1 and BINUNICODE with every length byte set.
        for bytes: [UInt8] in [[0x80, 4, 0x8A, 0xFF], [0x80, 4, 0x58, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E]] {
            #expect(throws: Pickle.Unsupported.self) { try Pickle.decode(bytes) }
        }
    }

    @Test("nesting 100,000 deep is refused at the limit, without recursion (issue 23, 3)")
    func deepNesting() throws {
        let depth = 100_000
        var bytes: [UInt8] = [0x80, 4]
        for _ in 0..<depth { bytes += [UInt8(ascii: "]"), UInt8(ascii: "(")] }
        bytes += Array(repeating: UInt8(ascii: "e"), count: depth) + [UInt8(ascii: ".")]
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decode(bytes) }
        // At the limit it reads.
        var value = JSONValue.array([])
        for _ in 1..<Job.Limits.parameterDepth { value = .array([value]) }
        let decoded = try Pickle.decodeBase64(Pickle.encodeBase64(value))
        #expect(decoded.depth == Job.Limits.parameterDepth)
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64(Pickle.encodeBase64(.array([value]))) }
    }

    @Test("a memo bomb (each level names the one before twice) is refused by size")
    func memoBomb() {
        // L0 = "x" * 100; Ln = [Ln-1, Ln-1]: 60 levels would be 2^60 strings once written out.
        var bytes: [UInt8] = [0x80, 4, 0x8C, 100] + Array(repeating: UInt8(ascii: "x"), count: 100) + [0x94]
        for level in 0..<60 {
            bytes += [UInt8(ascii: "("), UInt8(ascii: "h"), UInt8(level), UInt8(ascii: "h"), UInt8(level)]
            bytes += [UInt8(ascii: "t"), 0x94]
        }
        bytes.append(UInt8(ascii: "."))
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decode(bytes) }
    }
}

/// A class's list attribute read out of dill's pickle of it, without running it (issue 34, item 4): random lists of
/// globs, empty, of one and of many, between other attributes of every kind, as dill writes them.
@Suite struct ClassListAttributeTests {
    @Test func cleanupFilesReadAsDillWroteThem() throws {
        let probe = try run("/usr/bin/env", [PickleCorpus.python, "-c", "import dill"])
        try #require(
            probe.status == 0 || ProcessInfo.processInfo.environment["CI"] == nil,
            "dill is not importable: \(probe.stderr)")
        guard probe.status == 0 else { return }
        var rng = SplitMix(seed: PicklePropertyTests.seed)
        var lists: [[String]] = []
        for _ in 0..<60 {
            let count = Int(rng.next() % 5)
            lists.append(
                (0..<count).map { i in
                    ["*.tmp", "core.*", "é✓/x\(i)", "", String(repeating: "g", count: 300)][Int(rng.next() % 5)]
                })
        }
        let input = lists.map { JSONValue.array($0.map(JSONValue.string)).serialized() }.joined(separator: "\n")
        let script = """
            import base64, dill, json, sys
            for n, line in enumerate(sys.stdin):
                globs = json.loads(line)
                body = {"site": "s", "command_template": "echo {{ x }}", "parameters": {"x": {"required": True}}}
                if n % 2:
                    body["transfers"] = {"inp": {"direction": "in", "local_path": "a.txt", "required": False}}
                body["cleanup_files"] = globs
                if n % 3:
                    body["after"] = ["not", "these"] if n % 2 else "a string"
                body["preprocess"] = lambda self: None
                cls = type("App%d" % n, (object,), body)
                cls.__module__ = "__main__"
                print(base64.b64encode(dill.dumps(cls)).decode())
            """
        let result = try run("/usr/bin/env", [PickleCorpus.python, "-c", script], stdin: Data(input.utf8))
        #expect(result.status == 0, "\(result.stderr)")
        let pickles = result.stdout.split(separator: "\n").map(String.init)
        #expect(pickles.count == lists.count)
        for (globs, text) in zip(lists, pickles) {
            #expect(
                Pickle.classStringList("cleanup_files", inBase64: text) == globs,
                "seed \(PicklePropertyTests.seed) \(text)")
        }
        #expect(Pickle.classStringList("no_such_attribute", inBase64: pickles[0]) == nil)
    }
}
