#if canImport(Glibc)
    import Glibc
#endif

/// The ticks of a chart's value axis, one rule for the server's dashboard and `balsam report --plot`.
public enum AxisTicks {
    /// The y axis's ticks for values up to `top`: 0 and round steps (1, 2, 2.5 or 5 times a power of ten; whole
    /// numbers for counts), at most 6, the last above `top` with room (5 %), so that a line at the largest value
    /// is never drawn along the frame.
    public static func upTo(_ top: Double, whole: Bool) -> [Double] {
        let wanted = max(top.isFinite ? top : 0, 0) * 1.05
        guard wanted > 0 else { return [0, 1] }
        let raw = wanted / 4
        let power = pow(10, (log10(raw)).rounded(.down))
        let steps = (whole ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10]).map { $0 * power }
        var step = steps.first { $0 >= raw } ?? steps[steps.count - 1]
        if whole { step = max(1, step.rounded(.up)) }
        let count = Int(saturating: (wanted / step).rounded(.up))
        return (0...max(1, count)).map { Double($0) * step }
    }
}
