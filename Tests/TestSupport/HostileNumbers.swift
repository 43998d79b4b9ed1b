/// Numbers as a hostile user writes them (a query's value, an option, a field): the edges of Double, spellings that
/// `Double(_:)` takes besides decimals (hex, `nan`, `inf`), integers past 64 bits, and near misses. The route
/// fuzzer and the report tests share them.
public let hostileNumbers = [
    "0", "-0", "+0", "0.0", "-1", "1", "60", "1e3", "1e-300", "4.9e-324", "2.2250738585072014e-308", "1e-10", "1e-7",
    "0.001", "0.0009999", "1e308", "1.7976931348623157e308", "1e309", "-1e309", "-1e308", "NaN", "nan", "-nan", "inf",
    "-inf", "Infinity", "infinity", "0x10", "0x1p-1074", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551616", "31622400", "31622401",
    "1" + String(repeating: "0", count: 400), "", " ", "1 ", "1_000", "١", "1e", "e1", ".", "-", "+", "1..2",
]
