import BalsamCLI
import Foundation
import Logging
import Spool
import TestSupport
import Testing

/// Issue #37, item 4: the programs' log lines, as text or as JSON (`--log-format json`), and a log reopened on
/// SIGHUP after logrotate moved it.
@Suite struct LogFormatTests {
    /// Undoes `oneLine`'s escapes (the test's reading of the text format).
    static func unescape(_ text: String) -> String {
        var out = ""
        var scalars = Array(text.unicodeScalars)[...]
        while let c = scalars.popFirst() {
            guard c == "\\", let next = scalars.popFirst() else {
                out.unicodeScalars.append(c)
                continue
            }
            switch next {
            case "n": out += "\n"
            case "r": out += "\r"
            case "t": out += "\t"
            case "u":
                _ = scalars.popFirst()  // {
                var hex = ""
                while let h = scalars.popFirst(), h != "}" { hex.unicodeScalars.append(h) }
                out.unicodeScalars.append(Unicode.Scalar(UInt32(hex, radix: 16) ?? 0) ?? "?")
            default: out.unicodeScalars.append(next)
            }
        }
        return out
    }

    /// Whatever a message or a value holds (newlines, quotes, backslashes, escapes, other control characters,
    /// line and paragraph separators), a line is one line, and reads back to what was logged.
    @Test func everyLineIsOneLineAndReadsBackToWhatWasLogged() throws {
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        var rng = SplitMix(seed: seed)
        let alphabet: [Unicode.Scalar] = [
            "a", "Z", "0", " ", "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{1b}", "\u{7f}", "=", "[", "]", "{", "}",
            "\u{2028}", "\u{2029}", "é", "😀", "u", "n",
        ]
        func text() -> String {
            var s = ""
            for _ in 0..<Int(rng.next() % 24) {
                s.unicodeScalars.append(alphabet[Int(rng.next() % UInt64(alphabet.count))])
            }
            return s
        }
        for round in 0..<2000 {
            let message = text()
            var fields: [String: String] = [:]
            for _ in 0..<Int(rng.next() % 3) { fields["k" + String(rng.next() % 5)] = text() }
            let json = LineLogHandler.line(
                time: "T", program: "p", level: .warning, message: message, fields: fields, format: .json)
            let plain = LineLogHandler.line(
                time: "T", program: "p", level: .warning, message: message, fields: fields, format: .text)
            for line in [json, plain] {
                #expect(
                    !line.unicodeScalars.contains { $0.value < 0x20 },
                    "seed \(seed), round \(round): \(line.debugDescription)")
            }
            let object = try JSONValue.parse(json).objectValue ?? [:]
            #expect(object["message"]?.stringValue == message && object["level"]?.stringValue == "warning")
            for (key, value) in fields { #expect(object[key]?.stringValue == value, "seed \(seed): \(key)") }
            let prefix = "T p: warning: "
            #expect(plain.hasPrefix(prefix))
            if fields.isEmpty {
                #expect(Self.unescape(String(plain.dropFirst(prefix.count))) == message, "seed \(seed): \(plain)")
            }
        }
    }

    @Test func theWatchersJSONLinesCarryTheJobAndALogMovedAwayIsOpenedAgainOnSIGHUP() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let id = try submission.submit(helloJob("j")).0.id
        let once = dir.path + "/once.log"
        let ran = try run(
            binDirectory + "/balsam-watch",
            ["--site", site.root, "--once", "-v", "--log-format", "json", "--log", once])
        #expect(ran.status == 0, "\(ran.stderr)")
        let lines = try String(contentsOfFile: once, encoding: .utf8).split(separator: "\n")
        #expect(!lines.isEmpty)
        var aboutTheJob = 0
        for line in lines {
            let object = try #require(try JSONValue.parse(String(line)).objectValue, "\(line)")
            #expect(object["program"]?.stringValue == "balsam-watch" && object["time"]?.stringValue != nil)
            if object["job.id"]?.stringValue == id { aboutTheJob += 1 }
        }
        #expect(aboutTheJob > 0, "\(lines)")

        let log = dir.path + "/watch.log"
        let watcher = try Spawned(binDirectory + "/balsam-watch", ["--site", site.root, "--log", log])
        defer { if watcher.isRunning { watcher.signal(SIGKILL) } }
        try waitUntil("the watcher logs") { ((try? read(log)) ?? "").contains("watching") }
        try FileManager.default.moveItem(atPath: log, toPath: log + ".1")
        // logrotate's postrotate line (balsam-watch(1)).
        let reload = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--reload"])
        #expect(reload.status == 0 && reload.stdout.contains("sent SIGHUP"), "\(reload)")
        try waitUntil("the log is opened again at its path") {
            ((try? read(log)) ?? "").contains("reloaded settings.yml and apps")
        }
        #expect(!(try read(log + ".1")).contains("reloaded"))
        watcher.signal(SIGTERM)
        #expect(watcher.wait(timeout: 30) == 0)
        let none = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--reload"])
        #expect(none.status == 0 && none.stdout.contains("no watcher"), "\(none)")
    }
}

/// Issue #37, item 1, the site's side: `balsam-watch --metrics-file` writes the site in Prometheus's text format
/// (checked by Debian's `promtool`), its job counts the same as the site's own count, its sync's failure seen.
@Suite struct SiteMetricsFileTests {
    /// The value of the series `name` with `labels`, read from an exposition.
    static func value(_ text: String, _ name: String, _ labels: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + labels + " ") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool"), "dev/install-deps"))
    func theMetricsFileCountsWhatTheSiteCountsAndParses() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let jobs = 5
        let before = Timestamp.nowSeconds()
        for i in 0..<jobs { _ = try submission.submit(helloJob("m/\(i)")) }
        let submitted = Timestamp.nowSeconds()
        // A server that is not there: the sync fails, and the file says so.
        try dir.file("token", "not-a-token")
        try (try read(site.settingsPath) + "sync:\n  url: http://127.0.0.1:9\n  token_file: \(dir.path)/token\n").write(
            toFile: site.settingsPath, atomically: false, encoding: .utf8)
        let file = dir.path + "/site.prom"
        let watcher = try Spawned(
            binDirectory + "/balsam-watch",
            ["--site", site.root, "--log", dir.path + "/watch.log", "--metrics-file", file, "--metrics-interval", "1"])
        defer { if watcher.isRunning { watcher.signal(SIGKILL) } }
        let labels = "{site=\"\(site.name)\",state=\"PREPROCESSED\"}"
        try waitUntil("the file counts the jobs the watcher moved, and the sync failing", timeout: 60) {
            let text = (try? read(file)) ?? ""
            return Self.value(text, "balsam_site_jobs", labels) == Double(jobs)
                && Self.value(text, "balsam_site_sync_failing", "{site=\"\(site.name)\"}") == 1
        }
        let text = try read(file)
        let counts = try Query(site: site).countByState()
        for state in JobState.allCases {
            #expect(
                Self.value(text, "balsam_site_jobs", "{site=\"\(site.name)\",state=\"\(state.rawValue)\"}")
                    == Double(counts[state] ?? 0), "\(state)")
        }
        // Nothing reached the server: the lag is the age of the first job's first event when the file was written.
        let name = "{site=\"\(site.name)\"}"
        let written = try #require(Self.value(text, "balsam_site_metrics_time_seconds", name))
        let lag = try #require(Self.value(text, "balsam_site_sync_unpushed_lag_seconds", name), "\(text)")
        #expect(lag >= written - submitted - 1 && lag <= written - before + 1, "lag \(lag), written \(written)")
        let checked = try run("/usr/bin/promtool", ["check", "metrics"], stdin: Data(text.utf8))
        #expect(checked.status == 0, "\(checked.stdout)\(checked.stderr)\n\(text)")
        watcher.signal(SIGTERM)
        #expect(watcher.wait(timeout: 30) == 0)
    }
}
