/// No conversion from a floating-point value to an integer may trap.
///
/// The standard library's `Int(someDouble)` stops the process on NaN, on an infinity and on a value out of range,
/// and such values come from outside: a query's `bin=1e-300` divided into a span, a pushed time in year 9999, a
/// setting. These declarations shadow the standard library's for every module that imports `Spool` (and for
/// `Spool` itself) and are deprecated, so a trapping conversion is a warning, and `dev/test` fails a build with
/// warnings in the project's own code. Write `Int(saturating:)` (NaN is 0, out of range is the nearest bound), or
/// `Int(exactly:)` where an inexact value is an error to report. `dev/check-traps` keeps every source file that
/// converts numbers importing `Spool`, so the rule reaches it.
extension Int {
    @available(*, deprecated, message: "traps on NaN, infinity or out of range: use Int(saturating:) or Int(exactly:)")
    public init(_ value: Double) { self = stdlibConversion(value) }
}

extension Int64 {
    @available(*, deprecated, message: "traps on NaN, infinity or out of range: use Int64(saturating:)")
    public init(_ value: Double) { self = stdlibConversion(value) }
}

extension Int32 {
    @available(*, deprecated, message: "traps on NaN, infinity or out of range: use Int32(saturating:)")
    public init(_ value: Double) { self = stdlibConversion(value) }
}

extension UInt64 {
    @available(*, deprecated, message: "traps on NaN, infinity or out of range: use UInt64(saturating:)")
    public init(_ value: Double) { self = stdlibConversion(value) }
}

extension UInt32 {
    @available(*, deprecated, message: "traps on NaN, infinity or out of range: use UInt32(saturating:)")
    public init(_ value: Double) { self = stdlibConversion(value) }
}

extension UInt {
    @available(*, deprecated, message: "traps on NaN, infinity or out of range: use UInt(saturating:)")
    public init(_ value: Double) { self = stdlibConversion(value) }
}

extension FixedWidthInteger {
    /// `value` toward zero, NaN as 0, and values beyond the range as its nearest bound: never traps.
    public init(saturating value: Double) {
        if value.isNaN {
            self = 0
        } else if value >= Double(Self.max) {
            // Double(Self.max) rounds up to 2^bits for 64-bit types: a value at or past it is out of range.
            self = .max
        } else if value <= Double(Self.min) {
            self = .min
        } else {
            self = Self(exactly: value.rounded(.towardZero)) ?? (value > 0 ? .max : .min)
        }
    }
}

/// The standard library's conversion (generic, so it does not resolve to the shadowing declarations above).
private func stdlibConversion<I: FixedWidthInteger, F: BinaryFloatingPoint>(_ value: F) -> I { I(value) }
