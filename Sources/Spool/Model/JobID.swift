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

extension Timestamp {
    /// Seconds since the epoch of a timestamp in this format (`2026-11-29T12:55:50.350Z`; the fraction and the `Z`
    /// may be left out), UTC, parsed by hand: the reports read millions; nil if it is not one.
    public static func seconds(_ text: String) -> Double? {
        var text = text
        return text.withUTF8 { seconds($0) }
    }

    public static func seconds(_ b: UnsafeBufferPointer<UInt8>) -> Double? {
        guard b.count >= 19 else { return nil }
        func n(_ from: Int, _ count: Int) -> Int? {
            var v = 0
            for k in from..<(from + count) {
                guard b[k] >= 0x30 && b[k] <= 0x39 else { return nil }
                v = v * 10 + Int(b[k] - 0x30)
            }
            return v
        }
        guard let y = n(0, 4), let mo = n(5, 2), let d = n(8, 2), let h = n(11, 2), let mi = n(14, 2), let s = n(17, 2)
        else { return nil }
        var fraction = 0.0
        if b.count > 20 && b[19] == 0x2E {
            var scale = 0.1
            var k = 20
            while k < b.count, b[k] >= 0x30 && b[k] <= 0x39 {
                fraction += Double(b[k] - 0x30) * scale
                scale /= 10
                k += 1
            }
        }
        // Days from the civil date (Howard Hinnant's algorithm).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Double(days * 86_400 + h * 3600 + mi * 60 + s) + fraction
    }

    /// Seconds since the epoch as the event logs write them.
    public static func format(seconds: Double) -> String {
        let whole = seconds.rounded(.down)
        return Timestamp.format(
            seconds: Int(saturating: whole), millis: Int(saturating: ((seconds - whole) * 1000).rounded(.down)))
    }

    /// Now, seconds since the epoch.
    public static func nowSeconds() -> Double {
        let now = Posix.wallClock()
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
