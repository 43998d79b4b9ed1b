import Foundation
import Spool
import TestSupport
import Testing

/// `balsam report` over events made by running jobs (a real launcher and watcher), checked against the events
/// parsed whole.
@Suite(.serialized) struct ReportTests {
    @Test func throughputFailuresAndTheUtilizationIntegralMatchTheEvents() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        try "launcher:\n  cpus_per_node: 4\n".write(toFile: site.settingsPath, atomically: false, encoding: .utf8)
        try site.createApp(try App(name: "nap", commandTemplate: "sleep 0.2"))
        try site.createApp(try App(name: "bad", commandTemplate: "echo broken; exit 3"))
        var lines = (0..<12).map { #"{"app":"nap","workdir":"n/\#($0)","node_packing_count":4,"tags":{"k":"v"}}"# }
        lines += (0..<3).map { #"{"app":"bad","workdir":"b/\#($0)","tags":{"k":"w"}}"# }
        let submitted = try balsamSubmit(
            ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "2"], logDirectory: dir.path)
        try waitUntil("every job has ended", timeout: 60) {
            let counts = try Query(site: site).countByState()
            return (counts[.jobFinished] ?? 0) == 12 && (counts[.failed] ?? 0) == 3
        }
        _ = launcher.wait(timeout: 30)
        #expect(watcher.terminate() == 0)

        // The events, parsed whole.
        var events: [[String: JSONValue]] = []
        for name in entries(site.eventsPath) where name.hasSuffix(".jsonl") {
            for line in try read(site.eventsPath + "/" + name).split(separator: "\n") {
                events.append(try JSONValue.parse(String(line)).objectValue ?? [:])
            }
        }
        let finished = events.filter { $0["to"]?.stringValue == "JOB_FINISHED" }.count
        let throughput =
            try JSONValue.parse(
                try balsam(["report", "throughput", "--json", "--bin", "1"], site: site.root).stdout
            ).objectValue ?? [:]
        #expect(throughput["total"]?.intValue == finished && finished == 12)
        let binned = (throughput["bins"]?.arrayValue ?? []).compactMap { $0.objectValue?["count"]?.intValue }
        #expect(binned.reduce(0, +) == 12)

        // Busy node-seconds: each run's time times its node share (1/4 here, 1 for the failing ones).
        var started: [String: (Double, Double)] = [:]
        var expected = 0.0
        for e in events {
            let job = e["job"]?.stringValue ?? ""
            let t = Timestamp.seconds(e["t"]?.stringValue ?? "") ?? 0
            if e["to"]?.stringValue == "RUNNING" {
                started[job] = (t, e["data"]?.objectValue?["num_nodes"]?.doubleValue ?? -1)
            } else if e["from"]?.stringValue == "RUNNING", let (since, share) = started.removeValue(forKey: job) {
                expected += (t - since) * share
            }
        }
        #expect(expected > 0)
        let utilization =
            try JSONValue.parse(
                try balsam(["report", "utilization", "--json"], site: site.root).stdout
            ).objectValue ?? [:]
        let measured = utilization["busy_node_seconds"]?.doubleValue ?? -1
        #expect(abs(measured - expected) < 1e-6, "\(measured) vs \(expected)")
        #expect(events.contains { $0["data"]?.objectValue?["num_nodes"]?.doubleValue == 0.25 })

        // Failures: one row per failing job (its RUN_ERROR, and its FAILED once the watcher saw it), newest first,
        // with the workdir, the run's exit status, reason and output; filters apply.
        let failures = try balsam(["report", "failures", "--json", "--limit", "100"], site: site.root).stdout
            .split(separator: "\n").compactMap { try? JSONValue.parse(String($0)).objectValue }
        #expect(failures.count == 3, "one per failing job: \(failures)")
        if let failed = failures.first(where: { $0["state"]?.stringValue == "FAILED" }) {
            #expect(failed["reason"]?.stringValue?.hasPrefix("exit status 3; ") == true, "the run's, then why FAILED")
        }
        let times = failures.compactMap { $0["time"]?.stringValue }
        #expect(times == times.sorted(by: >))
        #expect(failures.allSatisfy { ($0["workdir"]?.stringValue ?? "").hasPrefix("b/") })
        #expect(
            failures.allSatisfy {
                $0["attempts"]?.intValue == 1 && $0["return_code"]?.intValue == 3
                    && $0["tail"]?.stringValue?.contains("broken") == true
                    && $0["reason"]?.stringValue?.hasPrefix("exit status 3") == true
            }, "\(failures)")
        // balsam show gives a failed run's output too.
        let shown = try balsam(["show", "b/0"], site: site.root).stdout
        #expect(shown.contains("output (the last lines of job.out):\n  broken\n"), "\(shown)")
        let shownJSON = try JSONValue.parse(try balsam(["show", "b/0", "--json"], site: site.root).stdout)
        #expect(shownJSON.objectValue?["output_tail"] == .string("broken"))
        let none = try balsam(["report", "failures", "--json", "--tag", "k=v"], site: site.root).stdout
        #expect(none.isEmpty)
        let table = try balsam(["report", "failures", "--app", "bad", "--limit", "2"], site: site.root).stdout
        let rows = table.split(separator: "\n")
        #expect(rows.count == 3, "a header and two rows: \(table)")
        #expect(rows.first?.contains("LAST OUTPUT LINE") == true && rows.last?.contains("broken") == true, "\(table)")

        try checkPlots(site, dir, throughput: throughput)
    }

    /// `--plot`: a PNG and an SVG made by gnuplot, the SVG's drawn levels matching the JSON's counts; a missing
    /// gnuplot or a wrong extension is a clear error and leaves no file.
    func checkPlots(_ site: Site, _ dir: TempDir, throughput: [String: JSONValue]) throws {
        let png = dir.path + "/u.png"
        let u = try balsam(["report", "utilization", "--plot", png], site: site.root)
        #expect(u.status == 0, "\(u.stderr)")
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: png)))
        #expect(bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), "a PNG signature")
        // IHDR: width and height, big-endian, at bytes 16 and 20.
        func word(_ at: Int) -> Int { bytes[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
        #expect(bytes.count > 5000 && word(16) == 1000 && word(20) == 500, "\(bytes.count) bytes")

        let svg = dir.path + "/t.svg"
        let t = try balsam(["report", "throughput", "--bin", "1", "--plot", svg], site: site.root)
        #expect(t.status == 0, "\(t.stderr)")
        let text = try read(svg)
        #expect(text.hasPrefix("<?xml") && text.contains("<svg") && text.contains("</svg>"))
        // The series' path: its horizontal levels, in pixels, are a linear function of the bins' counts.
        let counts = Set((throughput["bins"]?.arrayValue ?? []).compactMap { $0.objectValue?["count"]?.intValue })
        let levels = try svgLevels(text, series: "JOB_FINISHED")
        #expect(levels.count == counts.count, "\(levels) against \(counts)")
        let c = counts.sorted()
        let y = levels.sorted(by: >)  // more jobs: higher up, smaller y
        if c.count >= 2 {
            let scale = (y[0] - y[y.count - 1]) / Double(c[0] - c[c.count - 1])
            for k in 0..<min(c.count, y.count) {
                #expect(abs((y[0] - y[k]) - scale * Double(c[0] - c[k])) < 0.05, "level \(k): \(y) against \(c)")
            }
        }

        let none = dir.path + "/none.svg"
        let missing = try run(
            binDirectory + "/balsam", ["report", "throughput", "--plot", none],
            env: ["BALSAM_SITE": site.root, "PATH": "/nonexistent"])
        #expect(missing.status != 0 && missing.stderr.contains("gnuplot-nox"), "\(missing.stderr)")
        #expect(!FileManager.default.fileExists(atPath: none))
        let wrong = try balsam(["report", "throughput", "--plot", dir.path + "/t.jpg"], site: site.root)
        #expect(wrong.status == 64 && wrong.stderr.contains(".png or .svg"), "\(wrong.stderr)")
    }

    /// The distinct y coordinates of the horizontal segments gnuplot drew for `series` (its legend sample left out).
    func svgLevels(_ svg: String, series: String) throws -> Set<Double> {
        let group = try #require(svg.range(of: "<title>\(series)</title>"))
        let rest = svg[group.upperBound...]
        let pathStart = try #require(rest.range(of: "<path stroke='rgb"))
        let d = try #require(rest[pathStart.upperBound...].range(of: "d='"))
        let end = try #require(rest[d.upperBound...].firstIndex(of: "'"))
        let points = rest[d.upperBound..<end].split(whereSeparator: { " \n\t".contains($0) }).compactMap {
            step -> (Bool, Double, Double)? in
            let move = step.first == "M"
            let xy = step.dropFirst().split(separator: ",").compactMap { Double($0) }
            return xy.count == 2 ? (move, xy[0], xy[1]) : nil
        }
        // The legend's sample is the first move and line; the data start at the second move.
        let data = points.drop { !$0.0 }.dropFirst().drop { !$0.0 }
        var levels: Set<Double> = []
        var previous: (Double, Double)?
        for (_, x, y) in data {
            if let (px, py) = previous, py == y, px != x { levels.insert(y) }
            previous = (x, y)
        }
        return levels
    }
}
