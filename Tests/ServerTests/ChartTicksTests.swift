import Foundation
import Spool
import TestSupport
import Testing

/// The charts' y axes (issue 35, item 10): for any largest value, counts or not, the ticks start at 0, go up in
/// one round step (1, 2, 2.5 or 5 times a power of ten; whole numbers for counts), are at most 6, and end above
/// the largest value with room, so that no line runs along the frame. Values from a seed, across 12 decades.
@Suite struct ChartTicksTests {
    @Test func ticksAreRoundAndLeaveRoomAboveTheData() {
        let seed = UInt64(saturating: Date().timeIntervalSince1970 * 1000)
        var random = SplitMix(seed: seed)
        for n in 0..<50_000 {
            let whole = Bool.random(using: &random)
            let decade = Double(Int.random(in: -4...8, using: &random))
            var top = Double.random(in: 0...10, using: &random) * pow(10, decade)
            if whole { top = top.rounded() }
            if n % 97 == 0 { top = [0, 1, 2, 4, 5, 100, 221, 1e6][n % 8] }
            let ticks = AxisTicks.upTo(top, whole: whole)
            let context = "seed \(seed), case \(n): top \(top), whole \(whole): \(ticks)"
            #expect(ticks.first == 0 && ticks.count >= 2 && ticks.count <= 7, "\(context)")
            guard ticks.count >= 2 else { return }
            let step = ticks[1]
            let mantissa = step / pow(10, log10(step).rounded(.down))
            #expect(
                [1, 2, 2.5, 5, 10].contains { abs($0 - mantissa) < 1e-9 * max(1, mantissa) }, "\(context): step \(step)"
            )
            if whole { #expect(step >= 1 && step == step.rounded(), "\(context)") }
            for (i, t) in ticks.enumerated() { #expect(abs(t - Double(i) * step) <= 1e-9 * max(1, t), "\(context)") }
            #expect((ticks.last ?? 0) >= top * 1.05, "\(context): the largest value would touch the frame")
        }
    }
}
