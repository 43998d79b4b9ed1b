import Foundation
import Spool

/// Pickles to test the readers with: what Python itself writes for values of many kinds (plain, objects only
/// Python can load, top-level lists and None), with every protocol, and mutations of them.
public enum PickleCorpus {
    /// The Python that writes them: the original client's venv when the test command made one (with dill, its
    /// serializer), else the system's python3.
    public static var python: String { ProcessInfo.processInfo.environment["BALSAM_CLIENT_PYTHON"] ?? "python3" }

    /// Pickles Python writes of ~20 values of different kinds, with protocols 0 to 5, by `pickle` and by `dill`
    /// when it is there.
    public static func fromPython() throws -> [[UInt8]] {
        let script = """
            import base64, collections, datetime, decimal, fractions, pickle
            try:
                import dill
            except ImportError:
                dill = None
            cfg = {"k": "v", "n": [1, 2]}
            values = [
                {"name": "world"}, {"n": 1, "l": [1, 2.5, None, True, False, "é ✓"]}, {"c": complex(1, 2)},
                {"s": {1, 2}}, {"fs": frozenset([3])}, {"b": b"\\x00\\xff", "ba": bytearray(b"ab")},
                {"t": (1, (2, 3))}, {1: "an int key"}, {"d": datetime.datetime(2024, 1, 2, 3, 4, 5)},
                {"dec": decimal.Decimal("1.5")}, {"od": collections.OrderedDict(a=1)}, {"big": 1 << 100},
                {"neg": -(1 << 70)}, [1, 2], None, 7, "text", {"x": [cfg, cfg], "y": cfg},
                {"e": ValueError("boom")}, {"r": range(3)}, {"fr": fractions.Fraction(1, 3)},
                {"inf": float("inf"), "latin": "\\xe9\\xff", "long": "a" * 300},
            ]
            for v in values:
                for proto in range(6):
                    print(base64.b64encode(pickle.dumps(v, protocol=proto)).decode())
                    if dill:
                        print(base64.b64encode(dill.dumps(v, protocol=proto)).decode())
            """
        let result = try run("/usr/bin/env", [python, "-c", script])
        guard result.status == 0 else { throw CorpusError(description: result.stderr) }
        return result.stdout.split(separator: "\n").compactMap { Base64.decode(String($0)) }
    }

    /// Whether Python's own opcode table (`pickletools.genops` for the arguments, each opcode's `stack_before`
    /// and `stack_after` for the stack, MARKs and memo) finds each pickle well formed, and its loader needs
    /// nothing a site does not give: an oracle written from Python's description of the format, not ours.
    public static func pythonVerdicts(_ pickles: [[UInt8]]) throws -> [Bool] {
        let script = """
            import base64, pickletools, sys
            from pickletools import markobject
            NEEDS = {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER"}
            PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
            def verdict(data):
                stack, memo = [], set()
                try:
                    for op, arg, _ in pickletools.genops(data):
                        if op.name in NEEDS or (op.name == "PROTO" and arg > 5):
                            return False
                        if op.name in PUTS:
                            if not stack or stack[-1] is markobject:
                                return False
                            memo.add(len(memo) if op.name == "MEMOIZE" else arg)
                        before = op.stack_before
                        if markobject in before or (op.name == "POP" and stack and stack[-1] is markobject):
                            if markobject not in stack:
                                return False
                            while stack[-1] is not markobject:
                                stack.pop()
                            stack.pop()
                            below = before.index(markobject) if markobject in before else 0
                        else:
                            below = len(before)
                        if len(stack) < below or markobject in stack[len(stack) - below:]:
                            return False
                        del stack[len(stack) - below:]
                        if op.name in ("GET", "BINGET", "LONG_BINGET") and arg not in memo:
                            return False
                        stack.extend(op.stack_after)
                        if op.name == "STOP":
                            return not stack
                except Exception:
                    return False
                return False
            for line in sys.stdin:
                print("ok" if verdict(base64.b64decode(line.strip())) else "bad")
            """
        let input = pickles.map { Base64.encode($0) }.joined(separator: "\n") + "\n"
        let result = try run("/usr/bin/env", [python, "-c", script], stdin: Data(input.utf8))
        guard result.status == 0 else { throw CorpusError(description: result.stderr) }
        let lines = result.stdout.split(separator: "\n")
        guard lines.count == pickles.count else { throw CorpusError(description: "\(lines.count) verdicts") }
        return lines.map { $0 == "ok" }
    }

    /// Opcodes and length bytes a mutation draws from: every opcode of protocols 0 to 5, and bytes that make
    /// lengths huge, negative or zero.
    public static let opcodes: [UInt8] =
        Array("}])(0123usteatKMJNqrhj.XGcipILFSVgPRbdlosBCTUQ".utf8) + Array(0x80...0x98) + [0x00, 0x7F, 0xFF, 0x0A]

    /// `bytes` with one to four random edits: a byte removed, inserted or replaced, or a huge length inserted.
    public static func mutate(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var out = bytes
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            let at = out.isEmpty ? 0 : Int(rng.next() % UInt64(out.count))
            let byte = opcodes[Int(rng.next() % UInt64(opcodes.count))]
            switch rng.next() % 4 {
            case 0 where !out.isEmpty: out.remove(at: at)
            case 1: out.insert(byte, at: at)
            case 2: out.insert(contentsOf: [0x8D, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], at: at)
            default: if !out.isEmpty { out[at] = byte }
            }
        }
        return out
    }

    struct CorpusError: Error, CustomStringConvertible {
        var description: String
    }
}
