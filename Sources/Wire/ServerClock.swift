import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Times as the server stores them (microseconds since the epoch, UTC) and as the original client reads them
/// (ISO 8601: naive UTC for most fields, with `+00:00` where the client compares with an aware time).
public enum ServerClock {
    /// Now, in microseconds since the epoch.
    public static func microseconds() -> Int64 {
        let now = Posix.wallClock()
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec / 1000)
    }

    /// How far before the server's time a site's event may be: a site that was cut off for long pushes old events,
    /// but not ones from before its software existed.
    public static let pastWindow: Int64 = 10 * 366 * 86_400 * 1_000_000
    /// How far after: a site's clock a little fast, not a year wrong.
    public static let futureWindow: Int64 = 86_400 * 1_000_000

    /// Why a site's time `micros` is refused (a site whose clock is wrong pushed it), or nil when it is taken.
    /// Taken, such times would draw reports over centuries (year 0001 to 9999 in 166-year bins).
    public static func outsideWindow(_ micros: Int64, now: Int64) -> String? {
        if micros < now - pastWindow { return "more than ten years before the server's time" }
        if micros > now + futureWindow { return "more than a day after the server's time" }
        return nil
    }

    /// `2026-11-29T10:00:00.123456`, with `+00:00` appended when `zone` is true.
    public static func iso(_ micros: Int64, zone: Bool = false) -> String {
        let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
        let fraction = Int(micros - seconds * 1_000_000)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = Int(seconds - days * 86_400)
        let (y, m, d) = civil(fromDays: days)
        var text = pad(y, 4) + "-" + pad(m, 2) + "-" + pad(d, 2) + "T"
        text += pad(secondOfDay / 3600, 2) + ":" + pad(secondOfDay / 60 % 60, 2) + ":" + pad(secondOfDay % 60, 2)
        text += "." + pad(fraction, 6)
        if zone { text += "+00:00" }
        return text
    }

    private static func pad(_ n: Int, _ width: Int) -> String {
        let s = String(n)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    /// Parses ISO 8601 date-times: `YYYY-MM-DD[Thh:mm[:ss[.ffffff]]][Z|±hh:mm]`, space allowed for `T`. A time
    /// without a zone is UTC (the original client sends naive UTC).
    public static func parse(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        var i = 0
        func number(_ digits: Int) -> Int? {
            guard i + digits <= b.count else { return nil }
            var v = 0
            for k in 0..<digits {
                let c = b[i + k]
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int(c - 48)
            }
            i += digits
            return v
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < b.count, b[i] == c else { return false }
            i += 1
            return true
        }
        guard let year = number(4), expect(45), let month = number(2), expect(45), let day = number(2),
            (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        var hour = 0
        var minute = 0
        var second = 0
        var micros = 0
        var offset = 0
        if i < b.count, b[i] == 84 || b[i] == 32 || b[i] == 116 {
            i += 1
            guard let h = number(2), expect(58), let mi = number(2), h < 24, mi < 60 else { return nil }
            hour = h
            minute = mi
            if expect(58) {
                guard let s = number(2), s < 61 else { return nil }
                second = s
                if expect(46) {
                    var digits = 0
                    while i < b.count, b[i] >= 48 && b[i] <= 57 {
                        if digits < 6 { micros = micros * 10 + Int(b[i] - 48) }
                        digits += 1
                        i += 1
                    }
                    guard digits > 0 else { return nil }
                    for _ in digits..<max(digits, 6) { micros *= 10 }
                }
            }
            if i < b.count {
                if b[i] == 90 || b[i] == 122 {
                    i += 1
                } else if b[i] == 43 || b[i] == 45 {
                    let sign = b[i] == 45 ? -1 : 1
                    i += 1
                    guard let oh = number(2) else { return nil }
                    _ = expect(58)
                    let om = number(2) ?? 0
                    offset = sign * (oh * 3600 + om * 60)
                }
            }
        }
        guard i == b.count else { return nil }
        let days = Int64(daysFromCivil(year, month, day))
        let seconds = days * 86_400 + Int64(hour * 3600 + minute * 60 + second - offset)
        return seconds * 1_000_000 + Int64(micros)
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    private static func daysFromCivil(_ y0: Int, _ m: Int, _ d: Int) -> Int {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private static func civil(fromDays z0: Int64) -> (Int, Int, Int) {
        let z = Int(z0) + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}
