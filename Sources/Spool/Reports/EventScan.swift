import Dispatch

#if canImport(Glibc)
    import Glibc
#endif

/// The event logs read for reports: each `events/*.jsonl` mapped into memory, cut at line ends into pieces, and
/// the pieces scanned on as many threads as there are cores. A piece's scan sees raw bytes and builds its own
/// partial result; the caller merges them in file and line order.
///
/// The writer sorts each event's keys and `data` comes before the last four (`from`, `job`, `t`, `to`), so a
/// line's own fields are found by searching back from its end: nothing in `data` can be mistaken for them.
public struct EventLine {
    public let base: UnsafePointer<UInt8>
    /// The line's bytes, without its newline.
    public let start: Int
    public let end: Int

    static let to = Array(#""to":""#.utf8)
    static let time = Array(#""t":""#.utf8)
    static let job = Array(#""job":""#.utf8)
    static let from = Array(#""from":""#.utf8)

    /// The value of `"key":"..."` searched backwards from `before` (a string value: ends at its closing quote),
    /// and where the key starts; nil when the line has no such key there or the value is cut short.
    @inline(__always)
    func value(_ key: [UInt8], before: Int) -> (Range<Int>, Int)? {
        key.withUnsafeBufferPointer { k -> (Range<Int>, Int)? in
            guard let kp = k.baseAddress else { return nil }
            let n = k.count
            var i = before - n
            let first = k[0]
            while i >= start {
                if base[i] == first && memcmp(base + i, kp, n) == 0 {
                    let from = i + n
                    var j = from
                    while j < end && base[j] != 0x22 { j += 1 }
                    return j < end ? (from..<j, i) : nil
                }
                i -= 1
            }
            return nil
        }
    }

    @inline(__always)
    func equals(_ range: Range<Int>, _ bytes: [UInt8]) -> Bool {
        range.count == bytes.count
            && bytes.withUnsafeBufferPointer { b in
                b.baseAddress.map { memcmp(base + range.lowerBound, $0, b.count) == 0 } ?? range.isEmpty
            }
    }

    func string(_ range: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(start: base + range.lowerBound, count: range.count), as: UTF8.self)
    }

    /// The whole line as bytes, for the few lines a report parses whole.
    var bytes: [UInt8] { Array(UnsafeBufferPointer(start: base + start, count: end - start)) }

    /// `2026-11-29T12:55:50.350Z` at `range` as seconds since the epoch (UTC), without a calendar library.
    func seconds(_ range: Range<Int>) -> Double? {
        Timestamp.seconds(UnsafeBufferPointer(start: base + range.lowerBound, count: range.count))
    }

    /// A number value `"key":N` anywhere in the line, or nil.
    func number(_ key: [UInt8]) -> Double? {
        let n = key.count
        var i = start
        while i + n <= end {
            if base[i] == key[0]
                && key.withUnsafeBufferPointer({ k in k.baseAddress.map { memcmp(base + i, $0, n) } }) == 0
            {
                var j = i + n
                while j < end,
                    (base[j] >= 0x30 && base[j] <= 0x39) || base[j] == 0x2E || base[j] == 0x2D
                        || base[j] == 0x2B || base[j] == 0x65 || base[j] == 0x45
                {
                    j += 1
                }
                return Double(string((i + n)..<j))
            }
            i += 1
        }
        return nil
    }
}

enum EventScan {
    /// Scans every line of every event log in `directory` (oldest name first) in pieces on threads; `scan` is
    /// called once per piece with each of its lines and returns the piece's partial result. Results come back in
    /// file and line order.
    static func pieces<Part>(_ directory: String, _ scan: @escaping @Sendable (Piece) -> Part) throws(SpoolError)
        -> [Part]
    {
        let names = try Posix.listDirectory(directory).filter { $0.hasSuffix(".jsonl") }.sorted()
        let maps = Maps()
        defer { maps.unmapAll() }
        var tasks: [(base: UnsafePointer<UInt8>, range: Range<Int>)] = []
        let cpus = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        for name in names {
            let path = directory + "/" + name
            let fd: Int32
            do { fd = try Posix.open(path, O_RDONLY | O_NOFOLLOW) } catch  where error.cause == ENOENT { continue }
            defer { close(fd) }
            var st = stat()
            try Posix.call("stat", path: path) { fstat(fd, &st) }
            let size = Int(st.st_size)
            guard size > 0 else { continue }
            guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
                throw .system("mmap", path: path, errno: errno)
            }
            maps.add(mapped, size)
            _ = madvise(mapped, size, MADV_SEQUENTIAL)
            let base = UnsafePointer(mapped.assumingMemoryBound(to: UInt8.self))
            // Pieces of 8 MB or more, at least one per core for a big file; each ends after a newline.
            let count = max(1, min(cpus * 4, size / (8 << 20)))
            var start = 0
            for k in 1...count where start < size {
                var end = k == count ? size : max(start, size / count * k)
                if end < size, let nl = memchr(base + end, 0x0A, size - end) {
                    end = base.distance(to: nl.assumingMemoryBound(to: UInt8.self)) + 1
                } else {
                    end = size
                }
                tasks.append((base, start..<end))
                start = end
            }
        }
        let results = Results<Part>(count: tasks.count)
        let work = tasks.map { Piece(base: $0.base, range: $0.range) }
        DispatchQueue.concurrentPerform(iterations: work.count) { i in
            results.set(i, scan(work[i]))
        }
        return results.all()
    }

    /// Whole lines of one mapped file.
    struct Piece: @unchecked Sendable {
        let base: UnsafePointer<UInt8>
        let range: Range<Int>

        func lines(_ visit: (EventLine) -> Void) {
            var start = range.lowerBound
            let end = range.upperBound
            while start < end {
                let stop: Int
                if let nl = memchr(base + start, 0x0A, end - start) {
                    stop = base.distance(to: nl.assumingMemoryBound(to: UInt8.self))
                } else {
                    stop = end
                }
                if stop > start { visit(EventLine(base: base, start: start, end: stop)) }
                start = stop + 1
            }
        }
    }

    /// The files mapped for one scan, unmapped when it ends.
    final class Maps {
        var maps: [(UnsafeMutableRawPointer, Int)] = []
        func add(_ p: UnsafeMutableRawPointer, _ n: Int) { maps.append((p, n)) }
        func unmapAll() { for (p, n) in maps { munmap(p, n) } }
    }

    /// One slot per piece, each written by one thread.
    final class Results<Part>: @unchecked Sendable {
        let slots: UnsafeMutablePointer<Part?>
        let count: Int
        init(count: Int) {
            self.count = count
            slots = .allocate(capacity: max(1, count))
            slots.initialize(repeating: nil, count: count)
        }
        deinit {
            slots.deinitialize(count: count)
            slots.deallocate()
        }
        func set(_ i: Int, _ part: Part) { slots[i] = part }
        func all() -> [Part] { (0..<count).compactMap { slots[$0] } }
    }
}
