import Foundation
import Spool
import TestSupport
import Testing

/// The plain-value pickles, against Python's own `pickle` (the original client uses dill, which writes and reads
/// these as pickle does).
@Suite struct PickleTests {
    static let values: [JSONValue] = [
        .object(["name": .string("world!")]),
        .object([:]),
        .object([
            "n": .int(7), "big": .int(70000), "neg": .int(-3), "huge": .int(1 << 40), "min": .int(Int.min + 1),
            "x": .double(2.5), "t": .bool(true), "f": .bool(false), "none": .null,
            "list": .array([.int(1), .string("é ✓"), .array([])]), "nested": .object(["k": .string("v")]),
            "long": .string(String(repeating: "a", count: 300)),
        ]),
    ]

    @Test("the original client's pickle of {'name': 'world!'} reads as that dict")
    func decodesTheClientsPayload() throws {
        #expect(
            try Pickle.decodeBase64("gASVFAAAAAAAAAB9lIwEbmFtZZSMBndvcmxkIZRzLg==")
                == .object(["name": .string("world!")]))
        #expect(try Pickle.decodeBase64("") == .object([:]))
    }

    @Test("what we pickle, Python reads as the same value; what Python pickles, we read", arguments: values)
    func roundTripsThroughPython(_ value: JSONValue) throws {
        let encoded = Pickle.encodeBase64(value)
        #expect(try Pickle.decodeBase64(encoded) == value)
        let script = """
            import base64, json, pickle, sys
            value = pickle.loads(base64.b64decode(sys.argv[1]))
            print(json.dumps(value, sort_keys=True))
            print(base64.b64encode(pickle.dumps(value, protocol=4)).decode())
            """
        let result = try run("/usr/bin/env", ["python3", "-c", script, encoded])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        try #require(lines.count == 2)
        #expect(try JSONValue.parse(lines[0]) == value)
        #expect(try Pickle.decodeBase64(lines[1]) == value)
    }

    /// Shared objects, as Python pickles them (the memo: `{"x": [cfg, cfg]}` writes cfg once and names it again),
    /// generated at random and pickled by the original client's serializer (dill, from the client's venv, when
    /// the test command made one; else Python's pickle, which dill uses underneath) with protocols 2 to 5: each
    /// reads as the value Python's json writes for it (issue 31, item 6).
    @Test func sharedObjectsReadAsPythonWroteThem() throws {
        let python = ProcessInfo.processInfo.environment["BALSAM_CLIENT_PYTHON"] ?? "python3"
        let script = """
            import base64, json, random, sys
            try:
                import dill as serializer
            except ImportError:
                import pickle as serializer
            rng = random.Random(31)
            def value(depth, pool):
                r = rng.random()
                if pool and r < 0.3:
                    return rng.choice(pool)
                if depth > 3 or r < 0.5:
                    return rng.choice([1, -7, 2.5, "s", "é", None, True, 70000, 1 << 40])
                if r < 0.75:
                    made = [value(depth + 1, pool) for _ in range(rng.randrange(4))]
                else:
                    made = {f"k{i}": value(depth + 1, pool) for i in range(rng.randrange(4))}
                pool.append(made)
                if isinstance(made, list) and rng.random() < 0.3:
                    made.append(value(depth + 1, pool[:-1]))  # added after it is shared (no cycle)
                return made
            for n in range(200):
                pool = []
                cfg = {"k": "v", "n": [1, 2]}
                top = {"x": [cfg, cfg], "y": cfg, "z": value(0, pool), "w": value(0, pool)}
                protocol = 2 + n % 4
                print(base64.b64encode(serializer.dumps(top, protocol=protocol)).decode() + "\t" + json.dumps(top))
            """
        let result = try run("/usr/bin/env", [python, "-c", script])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.count == 200)
        for line in lines {
            let parts = line.split(separator: "\t", maxSplits: 1).map(String.init)
            try #require(parts.count == 2)
            #expect(try Pickle.decodeBase64(parts[0]) == JSONValue.parse(parts[1]), "\(parts[1])")
        }
    }

    @Test("a list that holds itself, and one value named a billion times, are refused, not built")
    func cyclesAndLaughsAreRefused() throws {
        let script = """
            import base64, pickle
            a = []; a.append(a)
            print(base64.b64encode(pickle.dumps({"a": a}, protocol=4)).decode())
            x = ["lol" * 10]
            for _ in range(40): x = [x, x]
            print(base64.b64encode(pickle.dumps({"x": x}, protocol=4)).decode())
            """
        let result = try run("/usr/bin/env", ["python3", "-c", script])
        let lines = result.stdout.split(separator: "\n").map(String.init)
        try #require(lines.count == 2)
        #expect { try Pickle.decodeBase64(lines[0]) } throws: { "\($0)".contains("deeper") }
        #expect { try Pickle.decodeBase64(lines[1]) } throws: { "\($0)".contains("larger") }
    }

    @Test("objects only Python can load are refused with the opcode, never run")
    func refusesObjects() {
        // pickle.dumps(complex(1, 2), protocol=4): a GLOBAL builtins.complex and a REDUCE.
        let complex = "gASVLgAAAAAAAACMCGJ1aWx0aW5zlIwHY29tcGxleJSTlEc/8AAAAAAAAEdAAAAAAAAAAIaUUpQu"
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64(complex) }
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64("not base64!") }
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64("gAR9lA==") }  // no STOP
    }
}

@Suite struct PickleClassTests {
    @Test("the command_template of a class the original client pickled is read without running anything")
    func readsCommandTemplate() throws {
        // What dill wrote for: class Hello(ApplicationDefinition): site = "my-laptop";
        // command_template = "echo hello {{ name }}"; def handle_timeout(self): self.job.state = "RESTART_READY"
        // (the opening of the pickle, with the class dict; the rest is the method's code).
        var bytes: [UInt8] = [0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0]
        for text in ["__module__", "__main__", "site", "my-laptop", "command_template", "echo hello {{ name }}"] {
            bytes += [0x8C, UInt8(text.utf8.count)] + Array(text.utf8) + [0x94]
        }
        bytes += [0x8C, 4] + Array("job".utf8) + [0x8C, 5] + Array("state".utf8) + [UInt8(ascii: ".")]
        let text = Data(bytes).base64EncodedString()
        #expect(Pickle.classAttribute("command_template", inBase64: text) == "echo hello {{ name }}")
        #expect(Pickle.classAttribute("site", inBase64: text) == "my-laptop")
        #expect(Pickle.classAttribute("run", inBase64: text) == nil)
        #expect(Pickle.classAttribute("command_template", inBase64: "") == nil)
    }
}
