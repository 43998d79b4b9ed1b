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
    if let t = Reports.seconds(text.count == 20 ? String(text.dropLast()) + ".000Z" : text) { return t }
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    guard let unit = text.last, let scale = units[unit], let n = Double(text.dropLast()), n >= 0 else {
        throw SpoolError(.usage, "--since \(text): a time (2026-11-29T12:00:00Z) or an age (90s, 15m, 2h, 1d)")
    }
    let now = Posix.wallClock()
    return Double(now.tv_sec) - n * scale
}

/// A time as the event logs write it.
func timestamp(_ seconds: Double) -> String {
    let whole = seconds.rounded(.down)
    return Timestamp.format(seconds: Int(whole), millis: Int(((seconds - whole) * 1000).rounded(.down)))
}

struct ReportFailures: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failures", abstract: "The latest RUN_ERROR, RUN_TIMEOUT and FAILED events, newest first.")

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
                        JSONValue.object([
                            "job_id": .string(f.job), "state": .string(f.state), "time": .string(f.timestamp),
                            "workdir": f.workdir.map(JSONValue.string) ?? .null,
                            "app": f.app.map(JSONValue.string) ?? .null,
                            "tags": .object(f.tags.mapValues(JSONValue.string)),
                            "return_code": f.data["return_code"] ?? .null, "reason": .string(reason),
                            "tail": .string(tail),
                        ]).serialized())
                } else {
                    let code = f.data["return_code"]?.intValue.map(String.init) ?? ""
                    let lastLine = tail.split(separator: "\n").last.map(String.init) ?? ""
                    rows.append([
                        f.timestamp, f.job, f.workdir ?? "?", f.state, code, reason.isEmpty ? lastLine : reason,
                    ])
                }
            }
            if !json { print(table(["TIME", "JOB", "WORKDIR", "STATE", "RC", "REASON"], rows)) }
        }
    }
}

struct ReportThroughput: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throughput", abstract: "Jobs reaching a state over time, in bins, and the rate.")

    @OptionGroup var siteOption: SiteOption
    @Option(name: .long, help: "The state counted (default JOB_FINISHED).") var state = "JOB_FINISHED"
    @Option(name: .long, help: "Only since this time or age (90s, 15m, 2h, 1d).") var since: String?
    @Option(name: .long, help: "Seconds per bin (default 10).") var bin = 10.0
    @Flag(name: .long, help: "Print JSON: {total, rate, bins: [{start, count}]}.") var json = false

    func run() throws {
        try reportingErrors("balsam report throughput") {
            guard JobState(rawValue: state) != nil else { throw SpoolError(.usage, "--state \(state): not a state") }
            guard bin > 0 else { throw SpoolError(.usage, "--bin must be positive") }
            let t = try Reports(site: try siteOption.open()).throughput(
                state: state, since: try parseSince(since), bin: bin)
            if json {
                print(
                    JSONValue.object([
                        "state": .string(state), "total": .int(t.total), "rate": .double(t.rate),
                        "bins": .array(
                            t.bins.map { .object(["start": .string(timestamp($0.start)), "count": .int($0.count)]) }),
                    ]).serialized())
                return
            }
            print(table(["BIN START", "COUNT"], t.bins.map { [timestamp($0.start), String($0.count)] }))
            print("\(t.total) jobs reached \(state); \(format2(t.rate)) jobs/s from the first to the last")
        }
    }
}

func format2(_ value: Double) -> String {
    let scaled = (value * 100).rounded() / 100
    return String(scaled)
}

struct ReportUtilization: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "utilization",
        abstract: "Nodes busy over time (each job weighted by its node share) against the nodes batch jobs held.")

    @OptionGroup var siteOption: SiteOption
    @Option(name: .long, help: "Only this batch job's nodes.") var batchJob: Int?
    @Flag(name: .long, help: "Print JSON: {busy_node_seconds, points: [{time, busy, available}], batch_jobs}.")
    var json = false

    func run() throws {
        try reportingErrors("balsam report utilization") {
            let u = try Reports(site: try siteOption.open()).utilization(batchJob: batchJob)
            if json {
                print(
                    JSONValue.object([
                        "busy_node_seconds": .double(u.busyNodeSeconds),
                        "points": .array(
                            u.points.map {
                                .object([
                                    "time": .string(timestamp($0.time)), "busy": .double($0.busy),
                                    "available": .double($0.available),
                                ])
                            }),
                        "batch_jobs": .array(
                            u.batchJobs.map {
                                .object([
                                    "id": .int($0.id), "num_nodes": .int($0.nodes),
                                    "mean_utilization": .double($0.mean),
                                ])
                            }),
                    ]).serialized())
                return
            }
            print(
                table(
                    ["TIME", "BUSY", "AVAILABLE"],
                    u.points.map { [timestamp($0.time), format2($0.busy), format2($0.available)] }))
            for b in u.batchJobs {
                print("batch job \(b.id): \(b.nodes) node(s), mean utilization \(format2(b.mean * 100)) %")
            }
            print("busy node-seconds: \(format2(u.busyNodeSeconds))")
        }
    }
}
