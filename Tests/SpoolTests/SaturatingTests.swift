import Spool
import TestSupport
import Testing

/// `init(saturating:)`, the conversion every float-to-integer in the project goes through (the shadowing rule in
/// `Saturating.swift`): never traps, and equals the standard library's wherever that one does not trap.
@Suite struct SaturatingTests {
    static let edges: [Double] = [
        .nan, -.nan, .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, 0.5, -0.5,
        0.999_999_999, 1, -1, 255.9, 256, -129, 2_147_483_647.5, 2_147_483_648, -2_147_483_649, 4_294_967_296,
        9_223_372_036_854_774_784, 9_223_372_036_854_775_808, -9_223_372_036_854_775_808, -9_223_372_036_854_777_856,
        18_446_744_073_709_549_568, 18_446_744_073_709_551_616, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
    ]

    func check<I: FixedWidthInteger>(_ type: I.Type, _ value: Double) {
        let got = I(saturating: value)
        let inRange = value.isFinite && value > Double(I.min) - 1 && value < Double(I.max)
        if value.isNaN {
            #expect(got == 0)
        } else if inRange, let exact = I(exactly: value.rounded(.towardZero)) {
            #expect(got == exact, "\(I.self)(saturating: \(value))")
        } else {
            #expect(got == (value > 0 ? I.max : I.min), "\(I.self)(saturating: \(value))")
        }
    }

    @Test func edgesAndRandomValuesClampAndNeverTrap() {
        var random = SplitMix(seed: 9)
        var values = Self.edges
        for _ in 0..<2000 { values.append(Double(bitPattern: random.next())) }
        for value in values {
            check(Int.self, value)
            check(Int64.self, value)
            check(Int32.self, value)
            check(UInt64.self, value)
            check(UInt32.self, value)
            check(UInt.self, value)
        }
    }
}
