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

    @Test("objects only Python can load are refused with the opcode, never run")
    func refusesObjects() {
        // pickle.dumps(complex(1, 2), protocol=4): a GLOBAL builtins.complex and a REDUCE.
        let complex = "gASVLgAAAAAAAACMCGJ1aWx0aW5zlIwHY29tcGxleJSTlEc/8AAAAAAAAEdAAAAAAAAAAIaUUpQu"
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64(complex) }
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64("not base64!") }
        #expect(throws: Pickle.Unsupported.self) { try Pickle.decodeBase64("gAR9lA==") }  // no STOP
    }
}
