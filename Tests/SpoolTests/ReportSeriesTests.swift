import Foundation
import Spool
import TestSupport
import Testing

/// The reports' arithmetic, shared by `balsam report` and the server's routes.
@Suite struct ReportSeriesTests {
    /// Every bin a user can write either is refused with a usage error or lies in the documented range, and every
    /// accepted one, over any span of times a site or a server holds (a clock in year 0001 or 9999 included),
    /// gives a report or a usage error: nothing traps (a trap ends this test process, which fails the suite).
    @Test func noBinAndNoSpanTraps() throws {
        var random = SplitMix(seed: 31)
        var texts = hostileNumbers + ["\u{0}1"]
        for _ in 0..<300 {
            let mantissa = Double(random.next() % 10_000) / 1000
            let exponent = Int(random.next() % 700) - 350
            texts.append("\(mantissa)e\(exponent)")
        }
        let spans: [(Double, Double)] = [
            (0, 0), (0, 1), (1.7e9, 1.7e9 + 86400), (-62_135_596_800, 253_402_300_799), (-1e300, 1e300),
            (1.7e9, 1.7e9 + 1e-6),
        ]
        for text in texts {
            let bin: Double
            do { bin = try ReportSeries.bin(text) } catch {
                #expect(error.code == .usage)
                continue
            }
            #expect(ReportSeries.binRange.contains(bin), "\(text) gave \(bin)")
            for (first, last) in spans {
                for width in [bin, nil] {
                    do {
                        let t = try ReportSeries.throughput(times: [first, (first + last) / 2, last], bin: width)
                        #expect(t.bins.count <= ReportSeries.maxBins)
                        let runs = [ReportSeries.Run(start: first, end: last, share: 1, batchJob: 1)]
                        let held = [ReportSeries.Held(id: 1, nodes: 2, start: first, end: last)]
                        let u = try ReportSeries.utilization(runs: runs, held: held, bin: width, now: last)
                        #expect(u.bins.count <= ReportSeries.maxBins)
                    } catch {
                        #expect(error.code == .usage, "\(text) over \(first)...\(last): \(error.message)")
                    }
                }
            }
        }
    }

    @Test func utilizationBinsTheRunsAgainstTheNodesHeld() throws {
        let held = [ReportSeries.Held(id: 1, nodes: 2, start: 0, end: 1000)]
        let runs = [
            ReportSeries.Run(start: 100, end: 900, share: 1, batchJob: 1),
            ReportSeries.Run(start: 200, end: 400, share: 0.5, batchJob: 1),
            ReportSeries.Run(start: 950, end: nil, share: 0.25, batchJob: nil),  // still running at 1000
        ]
        let u = try ReportSeries.utilization(runs: runs, held: held, bin: 100, now: 1000)
        #expect(u.bins.count == 10 && u.bins.first?.start == 0)
        #expect(u.bins.map(\.available) == Array(repeating: 2, count: 10))
        #expect(u.bins[2].busy == 1.5 && u.bins[5].busy == 1 && u.bins[9].busy == 0.125)
        #expect(abs(u.busyNodeSeconds - (800 + 100 + 12.5)) < 1e-9)
        let use = try #require(u.batchJobs.first)
        #expect(abs(use.busyNodeSeconds - 912.5) < 1e-9, "the unnamed run overlaps it and counts for it")
        #expect(abs(use.mean - 912.5 / 2000) < 1e-9)
    }

    @Test func aPeriodClipsTheBinsAndTheIntegralButNotTheBatchJobs() throws {
        let held = [ReportSeries.Held(id: 1, nodes: 2, start: 0, end: 1000)]
        let runs = [
            ReportSeries.Run(start: 100, end: 900, share: 1, batchJob: 1),
            ReportSeries.Run(start: 10, end: 50, share: 1, batchJob: 1),  // before the period
        ]
        let u = try ReportSeries.utilization(runs: runs, held: held, bin: 100, now: 1000, from: 500, to: 1000)
        #expect(u.bins.first?.start == 500 && u.bins.count == 5, "\(u.bins.map(\.start))")
        #expect(u.bins.prefix(4).allSatisfy { $0.busy == 1 && $0.available == 2 } && u.bins[4].busy == 0)
        #expect(abs(u.busyNodeSeconds - 400) < 1e-9)
        #expect(abs((u.batchJobs.first?.busyNodeSeconds ?? 0) - 840) < 1e-9, "the batch job's own figures stay whole")
        let empty = try ReportSeries.utilization(runs: runs, held: held, bin: 100, now: 1000, from: 2000, to: 3000)
        #expect(empty.bins.isEmpty && empty.busyNodeSeconds == 0)
    }

    /// A launcher started by hand holds its nodes while it runs: they are available, and its runs (no batch job
    /// named) count for it, not for a batch job it overlaps (whose mean utilization stays at most 1).
    @Test func aLauncherStartedByHandHoldsItsNodesAndKeepsItsRuns() throws {
        let held = [ReportSeries.Held(id: 1, nodes: 1, start: 0, end: 1000)]
        let launchers = [ReportSeries.Held(id: -1, nodes: 1, start: 0, end: 1000)]
        let runs = [
            ReportSeries.Run(start: 0, end: 1000, share: 1, batchJob: 1),
            ReportSeries.Run(start: 10, end: 1000, share: 0.5, batchJob: nil),
        ]
        let u = try ReportSeries.utilization(runs: runs, held: held, launchers: launchers, bin: 100, now: 1000)
        #expect(u.bins.allSatisfy { $0.available == 2 }, "\(u.bins.map(\.available))")
        #expect(u.batchJobs.count == 1 && abs((u.batchJobs.first?.mean ?? 0) - 1) < 1e-9, "\(u.batchJobs)")
        // Alone, it is what holds the nodes: available is not 0 under busy.
        let alone = try ReportSeries.utilization(
            runs: [ReportSeries.Run(start: 0, end: 500, share: 0.2, batchJob: nil)], held: [], launchers: launchers,
            bin: 100, now: 1000)
        #expect(alone.bins.allSatisfy { $0.available == 1 && $0.busy <= $0.available }, "\(alone.bins)")
        // Without the launcher's session (before), the batch job was counted 1.5 busy of 1 held.
        let before = try ReportSeries.utilization(runs: runs, held: held, bin: 100, now: 1000)
        #expect((before.batchJobs.first?.mean ?? 0) > 1.4)
    }

    @Test func throughputCountsInBinsAndRefusesTooManyBins() throws {
        let t = try ReportSeries.throughput(times: [10, 11, 19, 35], bin: 10)
        #expect(t.bins.map(\.count) == [3, 0, 1] && t.bins.first?.start == 10 && t.total == 4)
        #expect(abs(t.rate - 4.0 / 25) < 1e-12)
        #expect(try ReportSeries.throughput(times: [], bin: nil).bins.isEmpty)
        #expect(throws: SpoolError.self) { try ReportSeries.throughput(times: [0, 1e9], bin: 1) }
        #expect(ReportSeries.autoBin(span: 3600) == 60 && ReportSeries.autoBin(span: 86400) == 1800)
    }
}

/// One site's time is never another's (issue 34, item 2): random runs, batch jobs and hand-started launchers at
/// several sites, reported all together (the server without a site filter) give each batch job exactly what its
/// own site's report gives it.
@Suite struct UtilizationBySiteTests {
    @Test func everyBatchJobGetsWhatItsOwnSiteGivesIt() throws {
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        var rng = SplitMix(seed: seed)
        func time() -> Double { Double(rng.next() % 1000) }
        for _ in 0..<300 {
            var runs: [ReportSeries.Run] = []
            var held: [ReportSeries.Held] = []
            var launchers: [ReportSeries.Held] = []
            for id in 0..<Int(rng.next() % 4) {
                let start = time()
                held.append(
                    .init(
                        id: id, nodes: 1 + Int(rng.next() % 4), start: start, end: start + time(),
                        site: Int(rng.next() % 3)))
            }
            for id in 0..<Int(rng.next() % 3) {
                let start = time()
                launchers.append(
                    .init(id: -1 - id, nodes: 1, start: start, end: start + time(), site: Int(rng.next() % 3)))
            }
            for _ in 0..<Int(rng.next() % 12) {
                let start = time()
                let named = rng.next() % 3 == 0 ? held.randomElement(using: &rng) : nil
                runs.append(
                    .init(
                        start: start, end: start + time(), share: Double(1 + rng.next() % 4) / 4,
                        batchJob: named?.id, site: named?.site ?? Int(rng.next() % 3)))
            }
            let all = try ReportSeries.utilization(runs: runs, held: held, launchers: launchers, bin: 60, now: 2000)
            for site in 0..<3 {
                let own = try ReportSeries.utilization(
                    runs: runs.filter { $0.site == site }, held: held.filter { $0.site == site },
                    launchers: launchers.filter { $0.site == site }, bin: 60, now: 2000)
                for use in own.batchJobs {
                    let together = all.batchJobs.first { $0.id == use.id }
                    #expect(
                        together.map { abs($0.busyNodeSeconds - use.busyNodeSeconds) < 1e-6 } == true,
                        "seed \(seed): batch job \(use.id) at site \(site): \(use.busyNodeSeconds) alone, \(together?.busyNodeSeconds ?? -1) together"
                    )
                }
            }
        }
    }
}

/// Utilization's step series is the original's `utilization_report`: every run's (start, +share) and
/// (end, −share) sorted as tuples and accumulated. Random runs on a coarse clock (so that starts and ends share
/// instants, as runs recorded in one millisecond do), given in random orders, give that series exactly.
@Suite struct UtilizationStepsTests {
    @Test func stepsAreTheOriginalsSeriesWhateverOrderTheRunsComeIn() throws {
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        var rng = SplitMix(seed: seed)
        for round in 0..<500 {
            var runs: [ReportSeries.Run] = []
            for _ in 0..<Int(rng.next() % 16) {
                let start = Double(rng.next() % 8)
                let end: Double? = rng.next() % 5 == 0 ? nil : start + Double(rng.next() % 4)
                runs.append(.init(start: start, end: end, share: Double(1 + rng.next() % 4) / 4, batchJob: nil))
            }
            var pairs: [(Double, Double)] = []
            for r in runs {
                pairs.append((r.start, r.share))
                if let end = r.end { pairs.append((end, -r.share)) }
            }
            pairs.sort { $0 < $1 }
            var level = 0.0
            let original = pairs.map { p -> (Double, Double) in
                level += p.1
                return (p.0, level)
            }
            for _ in 0..<3 {
                runs.shuffle(using: &rng)
                let steps = try #require(
                    try ReportSeries.utilization(runs: runs, held: [], bin: 1, now: 20, steps: true).steps)
                #expect(
                    steps.map(\.time) == original.map(\.0) && steps.map(\.busy) == original.map(\.1),
                    "seed \(seed), round \(round): \(steps) against \(original)")
            }
        }
    }
}
