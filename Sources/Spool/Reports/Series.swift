/// The reports' arithmetic, shared by the site (`balsam report`, from its event logs) and the server (`/reports/`,
/// from its tables), so both give the same numbers for the same events.
public enum ReportSeries {
    /// A bin width for about 60 bins over `span` seconds, rounded to a width people read easily.
    public static func autoBin(span: Double) -> Double {
        let widths: [Double] = [
            1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172_800,
            604_800,
        ]
        let want = span / 60
        return widths.first { $0 >= want } ?? (want / 86400).rounded(.up) * 86400
    }

    /// The most bins a report makes; a narrower `--bin` over a long span is refused.
    public static let maxBins = 1_000_000

    /// The bin widths a user may ask for, in seconds: from a millisecond (event times are kept to the microsecond)
    /// to a leap year.
    public static let binRange: ClosedRange<Double> = 0.001...(366 * 86400)

    /// A bin width as a user writes it (`--bin`, `?bin=`): a decimal number of seconds within `binRange`. Not
    /// `Double(text)`'s whole grammar: hexadecimal, `nan` and `inf` are refused with the rest.
    public static func bin(_ text: String) throws(SpoolError) -> Double {
        let decimal = text.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x65 || $0 == 0x45 || $0 == 0x2B || $0 == 0x2D
        }
        guard decimal, text.utf8.count <= 32, let value = Double(text), binRange.contains(value) else {
            throw SpoolError(
                .usage,
                "'\(text)' is not a number of seconds from \(binRange.lowerBound) to \(Int(saturating: binRange.upperBound))"
            )
        }
        return value
    }

    public struct Throughput: Sendable {
        public var bin: Double
        /// Start of each bin (seconds since the epoch) and the events in it.
        public var bins: [(start: Double, count: Int)]
        public var total: Int
        /// Events per second from the first to the last.
        public var rate: Double
    }

    /// `times` (in any order) counted in bins of `bin` seconds (automatic when nil).
    public static func throughput(times: [Double], bin: Double?) throws(SpoolError) -> Throughput {
        guard let first = times.min(), let last = times.max() else {
            return Throughput(bin: bin ?? 1, bins: [], total: 0, rate: 0)
        }
        return try throughput(counted: times.lazy.map { ($0, 1) }, first: first, last: last, bin: bin)
    }

    /// Counts at times (the server's per-minute sums) in bins of `bin` seconds (automatic when nil: at least
    /// `minimumBin`); the rate is the total over `first` to `last`, the first and last events' times.
    public static func throughput(
        counted: some Sequence<(Double, Int)>, first: Double, last: Double, bin: Double?, minimumBin: Double = 0
    ) throws(SpoolError) -> Throughput {
        let width = bin ?? roundUp(max(minimumBin, autoBin(span: last - first)), to: minimumBin)
        let origin = (first / width).rounded(.down) * width
        let count = try binCount(from: origin, to: last, width: width)
        var counts = [Int](repeating: 0, count: count)
        var total = 0
        for (t, n) in counted {
            counts[max(0, min(count - 1, Int(saturating: (t - origin) / width)))] += n
            total += n
        }
        let span = last - first
        return Throughput(
            bin: width, bins: counts.enumerated().map { (origin + Double($0.offset) * width, $0.element) },
            total: total, rate: span > 0 ? Double(total) / span : Double(total))
    }

    /// `value` rounded up to a multiple of `unit` (unchanged when `unit` is 0).
    public static func roundUp(_ value: Double, to unit: Double) -> Double {
        unit > 0 ? (value / unit).rounded(.up) * unit : value
    }

    /// Bins from `origin` holding `last`: an event at a bin's start belongs to it; intervals that end exactly at a
    /// bin's start (`intervals`) do not reach into it.
    static func binCount(from origin: Double, to last: Double, width: Double, intervals: Bool = false)
        throws(SpoolError) -> Int
    {
        let n =
            intervals ? max(1, ((last - origin) / width).rounded(.up)) : ((last - origin) / width).rounded(.down) + 1
        // NaN (a width of 0 or an infinite span) fails the test as well as a count past the bound.
        guard n >= 1, n <= Double(maxBins) else {
            let shown = n.isFinite ? "\(Int(saturating: n))" : "too many"
            throw SpoolError(.usage, "\(shown) bins of \(width) s: more than \(maxBins); give a wider --bin")
        }
        return Int(saturating: n)
    }

    /// One run of a job: from its RUNNING event to the event that took it out of RUNNING (nil: still running).
    public struct Run: Sendable {
        public var start: Double
        public var end: Double?
        /// The job's share of nodes (`num_nodes` of its RUNNING event).
        public var share: Double
        /// The batch job whose launcher ran it, when the launcher said.
        public var batchJob: Int?
        /// The site it ran at (the server's reports; nil at a site, which has only its own).
        public var site: Int?
        public init(start: Double, end: Double?, share: Double, batchJob: Int?, site: Int? = nil) {
            self.start = start
            self.end = end
            self.share = share
            self.batchJob = batchJob
            self.site = site
        }
    }

    /// A batch job's nodes and when it held them (nil end: still holding them).
    public struct Held: Sendable {
        public var id: Int
        public var nodes: Int
        public var start: Double
        public var end: Double?
        /// The site whose nodes these are (the server's reports; nil at a site).
        public var site: Int?
        public init(id: Int, nodes: Int, start: Double, end: Double?, site: Int? = nil) {
            self.id = id
            self.nodes = nodes
            self.start = start
            self.end = end
            self.site = site
        }
    }

    public struct Utilization: Sendable {
        public var bin: Double
        /// Per bin: the mean nodes busy (weighted by each job's share) and the mean nodes batch jobs held.
        public var bins: [(start: Double, busy: Double, available: Double)]
        /// The integral of busy nodes over time: each run's length times its node share, summed.
        public var busyNodeSeconds: Double
        public var batchJobs: [BatchJobUse]
        /// Every change of busy nodes, in time order (asked for: the original's `utilization_report` series).
        public var steps: [(time: Double, busy: Double)]?
    }

    public struct BatchJobUse: Sendable {
        public var id: Int
        public var nodes: Int
        public var start: Double
        public var end: Double?
        public var busyNodeSeconds: Double
        /// Busy node-seconds of its runs over the node-seconds it held.
        public var mean: Double
    }

    /// Nodes busy against nodes held. A run counts for the batch job its launcher named; a run whose launcher
    /// named none counts, when it started while a launcher started by hand ran (`launchers`: their nodes are
    /// held too, from their start to their end), for that launcher alone, else for every batch job it overlaps.
    /// With `batchJob`, only that batch job and its runs.
    /// With `from` and `to`, the bins and busy node-seconds cover that period only (a batch job or run that
    /// began before it counts from its start); batch jobs' own figures stay whole.
    // Over 100 lines: one sweep over runs and holdings that the batch-job and bin figures share.
    public static func utilization(
        runs allRuns: [Run], held allHeld: [Held], launchers allLaunchers: [Held] = [], batchJob: Int? = nil,
        bin: Double?, now: Double, steps: Bool = false, from: Double? = nil, to: Double? = nil
    ) throws(SpoolError) -> Utilization {
        var held = allHeld
        var runs = allRuns
        var launchers = allLaunchers
        /// Whether a run (of a launcher that named no batch job) started while a launcher started by hand ran.
        /// A run is only ever charged to its own site's batch jobs and launchers: one site's time is never
        /// another's, with or without a site filter (the server's reports are the sites' own, added up).
        func byHand(_ r: Run) -> Bool {
            r.batchJob == nil
                && allLaunchers.contains { $0.site == r.site && r.start >= $0.start && r.start <= ($0.end ?? now) }
        }
        if let batchJob {
            held = allHeld.filter { $0.id == batchJob }
            let window = held.first.map { ($0.start, $0.end ?? now) }
            runs = allRuns.filter { r in
                if let b = r.batchJob { return b == batchJob }
                guard let (a, b) = window, held.first?.site == r.site, !byHand(r) else { return false }
                return r.start < b && (r.end ?? now) > a
            }
            launchers = []
        }
        var first = Double.infinity
        var last = -Double.infinity
        var integral = 0.0
        let windowFrom = from ?? -Double.infinity
        let windowTo = to ?? Double.infinity
        for r in runs {
            let end = r.end ?? now
            first = min(first, r.start)
            last = max(last, end)
            integral += r.share * overlap(r.start, end, windowFrom, windowTo)
        }
        for h in held + launchers {
            first = min(first, h.start)
            last = max(last, h.end ?? now)
        }
        first = max(first, windowFrom)
        last = min(last, windowTo)
        var uses: [BatchJobUse] = []
        let byID = Dictionary(held.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { a, _ in a })
        var area = [Double](repeating: 0, count: held.count)
        for r in runs {
            let end = r.end ?? now
            if let b = r.batchJob {
                if let k = byID[b] { area[k] += r.share * overlap(r.start, end, held[k].start, held[k].end ?? now) }
            } else if !byHand(r) {
                for (k, h) in held.enumerated() where h.site == r.site {
                    area[k] += r.share * overlap(r.start, end, h.start, h.end ?? now)
                }
            }
        }
        for (k, h) in held.enumerated() {
            let span = (h.end ?? now) - h.start
            let capacity = Double(h.nodes) * span
            uses.append(
                BatchJobUse(
                    id: h.id, nodes: h.nodes, start: h.start, end: h.end, busyNodeSeconds: area[k],
                    mean: capacity > 0 ? area[k] / capacity : 0))
        }
        guard first <= last else {
            return Utilization(bin: bin ?? 1, bins: [], busyNodeSeconds: 0, batchJobs: uses, steps: steps ? [] : nil)
        }
        let width = bin ?? autoBin(span: last - first)
        let origin = (first / width).rounded(.down) * width
        let count = try binCount(from: origin, to: last, width: width, intervals: true)
        var busy = [Double](repeating: 0, count: count)
        var available = [Double](repeating: 0, count: count)
        func spread(_ a: Double, _ b: Double, _ weight: Double, into series: inout [Double]) {
            guard b > a else { return }
            // A run or batch job that began before the period starts at its first bin.
            var k = max(0, min(count - 1, Int(saturating: ((a - origin) / width).rounded(.down))))
            while k < count {
                let lo = origin + Double(k) * width
                let hi = lo + width
                if lo >= b { break }
                series[k] += weight * overlap(a, b, lo, hi)
                k += 1
            }
        }
        for r in runs { spread(r.start, r.end ?? now, r.share, into: &busy) }
        for h in held + launchers { spread(h.start, h.end ?? now, Double(h.nodes), into: &available) }
        var stepSeries: [(time: Double, busy: Double)]?
        if steps {
            var changes: [(Double, Double)] = []
            changes.reserveCapacity(runs.count * 2)
            for r in runs {
                changes.append((r.start, r.share))
                if let end = r.end { changes.append((end, -r.share)) }
            }
            // The original's order: its (time, change) pairs sorted as tuples, so at one instant the runs that
            // end come before those that start (the level never counts both), whatever order the runs came in.
            changes.sort { ($0.0, $0.1) < ($1.0, $1.1) }
            var level = 0.0
            stepSeries = changes.map {
                level += $0.1
                return ($0.0, level)
            }
        }
        return Utilization(
            bin: width,
            bins: (0..<count).map { (origin + Double($0) * width, busy[$0] / width, available[$0] / width) },
            busyNodeSeconds: integral, batchJobs: uses, steps: stepSeries)
    }

    static func overlap(_ a: Double, _ b: Double, _ c: Double, _ d: Double) -> Double { max(0, min(b, d) - max(a, c)) }
}
