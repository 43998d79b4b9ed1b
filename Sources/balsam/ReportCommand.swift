import ArgumentParser
import BalsamCLI
import Spool

#if canImport(Glibc)
    import Glibc
#endif

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Recent failures, throughput and node utilization, from the event logs and batch-job records.",
        discussion: "See balsam(1), section REPORTS.",
        subcommands: [ReportFailures.self, ReportThroughput.self, ReportUtilization.self])
}

/// `--since` as seconds since the epoch: a timestamp (2026-11-29T12:00:00Z) or an age (90s, 15m, 2h, 1d).
func parseSince(_ text: String?) throws(SpoolError) -> Double? {
    guard let text else { return nil }
    if let t = Timestamp.seconds(text) { return t }
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    guard let unit = text.last, let scale = units[unit], let n = Double(text.dropLast()), n >= 0 else {
        throw SpoolError(.usage, "--since \(text): a time (2026-11-29T12:00:00Z) or an age (90s, 15m, 2h, 1d)")
    }
    let now = Posix.wallClock()
    return Double(now.tv_sec) - n * scale
}

/// `--bin`: seconds within `ReportSeries.binRange`, read as the server reads `?bin=`; nil for automatic.
func checkBin(_ bin: String?) throws(SpoolError) -> Double? {
    guard let bin else { return nil }
    do { return try ReportSeries.bin(bin) } catch { throw SpoolError(.usage, "--bin: \(error.message)") }
}

struct ReportFailures: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failures",
        abstract: "Failed jobs, newest first: one row per job, its failed runs, reason and last line of output.")

    @OptionGroup var siteOption: SiteOption
    @Option(name: .long, help: "Only since this time or age (90s, 15m, 2h, 1d).") var since: String?
    @Option(name: .long, help: ArgumentHelp("Only jobs with this tag (repeatable).", valueName: "key=value"))
    var tag: [String] = []
    @Option(name: .shortAndLong, help: "Only jobs of this app.") var app: String?
    @Option(name: .shortAndLong, help: "At most this many (default 20).") var limit = 20
    @Flag(name: .long, help: "Print JSON: one object per failure per line.") var json = false

    func run() throws {
        try reportingErrors("balsam report failures") {
            var tags: [String: String] = [:]
            for t in tag {
                guard let eq = t.firstIndex(of: "=") else { throw SpoolError(.usage, "--tag \(t): KEY=VALUE") }
                tags[String(t[..<eq])] = String(t[t.index(after: eq)...])
            }
            let found = try Reports(site: try siteOption.open()).failures(
                since: try parseSince(since), app: app, tags: tags, limit: limit)
            var rows: [[String]] = []
            for f in found {
                let reason = f.data["reason"]?.stringValue ?? f.data["error"]?.stringValue ?? ""
                let tail = f.data["tail"]?.stringValue ?? ""
                if json {
                    print(
                        failureJSON(
                            job: .string(f.job), state: f.state, time: f.timestamp, workdir: f.workdir, app: f.app,
                            tags: f.tags, data: f.data, extra: ["attempts": .int(f.attempts)]
                        ).serialized())
                } else {
                    let code = f.data["return_code"]?.intValue.map(String.init) ?? ""
                    let lastLine = tail.split(separator: "\n").last.map(String.init) ?? ""
                    rows.append([
                        f.timestamp, f.job, f.workdir ?? "?", f.state, String(f.attempts), code, reason, lastLine,
                    ])
                }
            }
            if !json {
                print(table(["TIME", "JOB", "WORKDIR", "STATE", "RUNS", "RC", "REASON", "LAST OUTPUT LINE"], rows))
            }
        }
    }
}

struct ReportThroughput: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throughput", abstract: "Jobs reaching a state over time, in bins, and the rate.")

    @OptionGroup var siteOption: SiteOption
    @Option(name: .long, help: "The state counted (default JOB_FINISHED).") var state = "JOB_FINISHED"
    @Option(name: .long, help: "Only since this time or age (90s, 15m, 2h, 1d).") var since: String?
    @Option(
        name: .long, help: "Seconds per bin, from 0.001 to 31622400 (default: about 60 bins over the span).")
    var bin: String?
    @Option(name: .long, help: ArgumentHelp("Also draw the series into FILE.png or FILE.svg.", valueName: "FILE"))
    var plot: String?
    @Flag(name: .long, help: "Print JSON: {state, total, rate, bin_seconds, bins: [{start, count}]}.") var json = false

    func run() throws {
        try reportingErrors("balsam report throughput") {
            guard JobState(rawValue: state) != nil else { throw SpoolError(.usage, "--state \(state): not a state") }
            if let plot { _ = try ReportPlot.terminal(for: plot) }
            let site = try siteOption.open()
            let t = try Reports(site: site).throughput(
                state: state, since: try parseSince(since), bin: try checkBin(bin))
            if let plot {
                try ReportPlot(
                    title: "\(state) per \(seconds(t.bin)) at \(site.root)", yLabel: "jobs per bin",
                    series: [
                        .bins(state, style: "steps lw 2", t.bins.map { ($0.start, Double($0.count)) }, width: t.bin)
                    ], counts: true
                ).write(to: plot)
            }
            if json {
                print(t.json(state: state).serialized())
                return
            }
            print(
                table(["BIN START", "COUNT"], t.bins.map { [Timestamp.format(seconds: $0.start), String($0.count)] }))
            print(
                "\(t.total) jobs reached \(state); \(format2(t.rate)) jobs/s from the first to the last; "
                    + "bins of \(seconds(t.bin))")
        }
    }
}

func format2(_ value: Double) -> String {
    let scaled = (value * 100).rounded() / 100
    return String(scaled)
}

/// A bin width for people: 10 s, 5 min, 2 h, 1 d.
func seconds(_ width: Double) -> String {
    if width >= 86400, width.truncatingRemainder(dividingBy: 86400) == 0 {
        return "\(Int(saturating: width / 86400)) d"
    }
    if width >= 3600, width.truncatingRemainder(dividingBy: 3600) == 0 { return "\(Int(saturating: width / 3600)) h" }
    if width >= 60, width.truncatingRemainder(dividingBy: 60) == 0 { return "\(Int(saturating: width / 60)) min" }
    return width.rounded() == width ? "\(Int(saturating: width)) s" : "\(format2(width)) s"
}

struct ReportUtilization: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "utilization",
        abstract: "Nodes busy over time (each job weighted by its node share) against the nodes batch jobs held.")

    @OptionGroup var siteOption: SiteOption
    @Option(name: .long, help: "Only this batch job's nodes and runs.") var batchJob: Int?
    @Option(
        name: .long, help: "Seconds per bin, from 0.001 to 31622400 (default: about 60 bins over the span).")
    var bin: String?
    @Flag(name: .long, help: "With --json: also every change of busy nodes (the original's utilization_report).")
    var steps = false
    @Option(name: .long, help: ArgumentHelp("Also draw the series into FILE.png or FILE.svg.", valueName: "FILE"))
    var plot: String?
    @Flag(
        name: .long,
        help: "Print JSON: {bin_seconds, busy_node_seconds, bins: [{start, busy, available}], batch_jobs, steps?}.")
    var json = false

    func run() throws {
        try reportingErrors("balsam report utilization") {
            if let plot { _ = try ReportPlot.terminal(for: plot) }
            let site = try siteOption.open()
            let u = try Reports(site: site).utilization(batchJob: batchJob, bin: try checkBin(bin), steps: steps)
            if let plot {
                try ReportPlot(
                    title: "nodes busy and held, mean per \(seconds(u.bin)), at \(site.root)", yLabel: "nodes",
                    series: [
                        .bins("busy", style: "steps lw 2", u.bins.map { ($0.start, $0.busy) }, width: u.bin),
                        .bins(
                            "available", style: "steps lw 1 dt 2", u.bins.map { ($0.start, $0.available) },
                            width: u.bin),
                    ]
                ).write(to: plot)
            }
            if json {
                print(u.json().serialized())
                return
            }
            print(
                table(
                    ["BIN START", "BUSY", "AVAILABLE"],
                    u.bins.map { [Timestamp.format(seconds: $0.start), format2($0.busy), format2($0.available)] }))
            for b in u.batchJobs {
                print(
                    "batch job \(b.id): \(b.nodes) node(s), \(format2(b.busyNodeSeconds)) busy node-seconds, "
                        + "mean utilization \(format2(b.mean * 100)) %")
            }
            print("busy node-seconds: \(format2(u.busyNodeSeconds)); bins of \(seconds(u.bin))")
        }
    }
}
