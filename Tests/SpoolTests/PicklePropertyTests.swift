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

    /// Opcodes and length bytes a mutation draws from: every opcode the reader and the walker know, and bytes
    /// that make lengths huge, negative or zero.
    static let opcodes: [UInt8] =
        Array("}])(usteatKMJNqrhj.XGcipILFSVgP".utf8) + [
            0x80, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x94, 0x95, 0x96, 0x00, 0x7F, 0xFF,
            0x0A,
        ]

    func mutate(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var out = bytes
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            let at = out.isEmpty ? 0 : Int(rng.next() % UInt64(out.count))
            let byte = Self.opcodes[Int(rng.next() % UInt64(Self.opcodes.count))]
            switch rng.next() % 4 {
            case 0 where !out.isEmpty: out.remove(at: at)
            case 1: out.insert(byte, at: at)
            case 2: out.insert(contentsOf: [0x8D, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], at: at)
            default: if !out.isEmpty { out[at] = byte }
            }
        }
        return out
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
