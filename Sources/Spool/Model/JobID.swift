import CLinux
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Job identifiers: 26 characters of Crockford base32, a 48-bit millisecond timestamp then 80 random bits
/// (the ULID layout). Unique without coordination between hosts, and string order is creation order.
/// Within one process, IDs are strictly increasing even inside one millisecond.
public enum JobID {
    static let alphabet: [UInt8] = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    private struct State {
        var lastMillis: UInt64 = 0
        var random: (high: UInt16, low: UInt64) = (0, 0)
    }

    private static let state = Mutex(State())

    /// A new identifier, greater than every one this process made before.
    public static func make() -> String {
        let ts = Posix.wallClock()
        let now = UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
        let (millis, high, low) = state.withLock { s -> (UInt64, UInt16, UInt64) in
            if now > s.lastMillis {
                var rng = SystemRandomNumberGenerator()
                s.lastMillis = now
                // Leave headroom in the top bit so increments within one millisecond never overflow.
                s.random = (UInt16.random(in: 0...0x7FFF, using: &rng), rng.next())
            } else {
                let (low, carry) = s.random.low.addingReportingOverflow(1)
                s.random = (s.random.high &+ (carry ? 1 : 0), low)
            }
            return (s.lastMillis, s.random.high, s.random.low)
        }
        return encode(millis: millis, high: high, low: low)
    }

    static func encode(millis: UInt64, high: UInt16, low: UInt64) -> String {
        var out = [UInt8](repeating: 0, count: 26)
        var t = millis
        for i in stride(from: 9, through: 0, by: -1) {
            out[i] = alphabet[Int(t & 31)]
            t >>= 5
        }
        // 80 random bits = 16 characters: the low 64 bits, then the high 16.
        var lo = low
        var hi = UInt64(high)
        for i in stride(from: 25, through: 10, by: -1) {
            out[i] = alphabet[Int(lo & 31)]
            lo = (lo >> 5) | ((hi & 31) << 59)
            hi >>= 5
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether `text` has the shape of a job ID (26 Crockford base32 characters).
    public static func isValid(_ text: String) -> Bool {
        let utf8 = text.utf8
        return utf8.count == 26 && utf8.allSatisfy { alphabet.contains($0) }
    }
}

/// Timestamps as the spool writes them: UTC, ISO 8601, milliseconds (`2026-11-25T09:41:02.123Z`).
public enum Timestamp {
    /// The current time, formatted.
    public static func now() -> String {
        let ts = Posix.wallClock()
        return format(seconds: Int(ts.tv_sec), millis: Int(ts.tv_nsec) / 1_000_000)
    }

    /// Seconds since the epoch of a timestamp in this format; nil if it is not one.
    package static func epochSeconds(_ text: String) -> Double? {
        var parts = tm()
        guard
            let rest = text.withCString({ p -> String? in
                guard let end = clinux_strptime(p, "%Y-%m-%dT%H:%M:%S", &parts) else { return nil }
                return String(cString: end)
            })
        else { return nil }
        var seconds = Double(clinux_timegm(&parts))
        if rest.hasPrefix("."), let fraction = Double("0" + rest.dropLast(rest.hasSuffix("Z") ? 1 : 0)) {
            seconds += fraction
        }
        return seconds
    }

    package static func format(seconds: Int, millis: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }
}
