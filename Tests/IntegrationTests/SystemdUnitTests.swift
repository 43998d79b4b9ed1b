import Foundation
import Spool
import TestSupport
import Testing

/// packaging/systemd's units (issue #37, item 2), with the install paths pointed at this build: each passes
/// `systemd-analyze verify` without a word, and each command a unit runs is run here as systemd would run it
/// (its `Environment=`, `ExecStartPre=`, `ExecStart=`, `ExecReload=` and `KillSignal=`), so an option our
/// programs no longer take, or a reload they do not survive, fails here rather than on a facility's host.
@Suite struct SystemdUnitTests {
    static let units = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("packaging/systemd").path

    /// A unit's text with this build's programs and `replacements` in place of the installed paths.
    static func unit(_ name: String, _ replacements: [(String, String)] = []) throws -> String {
        var text = try String(contentsOfFile: units + "/" + name, encoding: .utf8)
            .replacingOccurrences(of: "/usr/local/bin/", with: binDirectory + "/")
            .replacingOccurrences(of: "%h/.local/bin/", with: binDirectory + "/")
        for (from, to) in replacements { text = text.replacingOccurrences(of: from, with: to) }
        return text
    }

    /// The values of `key=` lines, in order.
    static func values(_ key: String, in unit: String) -> [String] {
        unit.split(separator: "\n").compactMap { line in
            line.hasPrefix(key + "=") ? String(line.dropFirst(key.count + 1)) : nil
        }
    }

    /// A command line as systemd splits it (our units quote nothing).
    static func command(_ line: String) -> (String, [String]) {
        let words = line.split(separator: " ").map(String.init)
        return (words[0], Array(words.dropFirst()))
    }

    @Test func everyUnitVerifiesWithoutAWord() throws {
        let dir = try TempDir()
        // `Documentation=man:` is looked up with man(1): our pages, in a manual tree.
        for section in ["1", "5", "8"] {
            try FileManager.default.createDirectory(
                atPath: dir.path + "/man/man\(section)", withIntermediateDirectories: true)
        }
        let manuals = Self.units + "/../../man"
        for page in entries(manuals) where page.contains(".") {
            let section = String(page.split(separator: ".").last ?? "")
            try? FileManager.default.copyItem(
                atPath: manuals + "/" + page, toPath: dir.path + "/man/man\(section)/" + page)
        }
        try FileManager.default.createDirectory(atPath: dir.path + "/run", withIntermediateDirectories: true)
        chmod(dir.path + "/run", 0o700)
        let env = ["MANPATH": dir.path + "/man", "XDG_RUNTIME_DIR": dir.path + "/run", "SYSTEMD_PAGER": ""]
        let names = entries(Self.units).filter { $0.hasSuffix(".service") }
        #expect(names.count == 2, "\(names)")
        for name in names {
            // A template is verified as an instance of itself, as `systemctl enable NAME@INSTANCE` makes it.
            let file = dir.path + "/" + name.replacingOccurrences(of: "@.", with: "@tmp-site.")
            try Self.unit(name).write(toFile: file, atomically: false, encoding: .utf8)
            let user = name.contains("@") ? ["--user"] : []
            let verified = try run("/usr/bin/systemd-analyze", ["verify"] + user + [file], env: env)
            #expect(
                verified.status == 0 && verified.stdout.isEmpty && verified.stderr.isEmpty,
                "\(name): \(verified.status)\n\(verified.stdout)\(verified.stderr)")
        }
    }

    @Test func theServerUnitsCommandsMigrateServeAndStopOnItsSignal() throws {
        let dir = try TempDir()
        let unit = try Self.unit(
            "balsam-server.service",
            [("/var/lib/balsam-server", dir.path + "/state"), ("127.0.0.1:8080", "127.0.0.1:0")])
        var env: [String: String] = [:]
        for assignment in Self.values("Environment", in: unit) {
            let parts = assignment.split(separator: "=", maxSplits: 1).map(String.init)
            env[parts[0]] = parts[1]
        }
        #expect(env["BALSAM_SERVER_DB"] == "sqlite:\(dir.path)/state/balsam.db")
        try FileManager.default.createDirectory(atPath: dir.path + "/state", withIntermediateDirectories: true)
        for line in Self.values("ExecStartPre", in: unit) {
            let (program, args) = Self.command(line)
            let pre = try run(program, args, env: env)
            #expect(pre.status == 0, "\(line): \(pre.stderr)")
        }
        let start = try #require(Self.values("ExecStart", in: unit).first)
        let (program, args) = Self.command(start)
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        let server = try Spawned(
            program, args + ["--port-file", dir.path + "/port"], environment: environment,
            stderr: .file(dir.path + "/server.log"))
        defer { if server.isRunning { server.signal(SIGKILL) } }
        try waitUntil("the server listens", timeout: 30) {
            !((try? String(contentsOfFile: dir.path + "/port", encoding: .utf8)) ?? "").isEmpty
        }
        let port = try String(contentsOfFile: dir.path + "/port", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let answer = try run(
            "/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/openapi.json"])
        #expect(answer.stdout == "200", "\(answer)")
        #expect(FileManager.default.fileExists(atPath: dir.path + "/state/secret"))
        let signal = try #require(Self.values("KillSignal", in: unit).first)
        #expect(signal == "SIGTERM")
        server.signal(SIGTERM)
        let stopSeconds = Double(Self.values("TimeoutStopSec", in: unit).first ?? "") ?? 90
        #expect(server.wait(timeout: stopSeconds) == 0, "\((try? read(dir.path + "/server.log")) ?? "")")
    }

    @Test func theSiteUnitsCommandsWatchReloadAndStopOnItsSignal() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let unit = try Self.unit("balsam-watch@.service", [("%f", site.root)])
        let (program, args) = Self.command(try #require(Self.values("ExecStart", in: unit).first))
        let watcher = try Spawned(program, args, stderr: .file(dir.path + "/watch.log"))
        defer { if watcher.isRunning { watcher.signal(SIGKILL) } }
        try waitUntil("the watcher holds the site", timeout: 30) {
            (try? read(site.root + "/watcher.json"))?.contains("\"pid\":\(watcher.processIdentifier)") == true
        }
        let reload = try #require(Self.values("ExecReload", in: unit).first)
            .replacingOccurrences(of: "$MAINPID", with: String(watcher.processIdentifier))
        let (kill, killArgs) = Self.command(reload)
        #expect(try run(kill, killArgs).status == 0)
        try waitUntil("the watcher reread its settings", timeout: 30) {
            ((try? read(dir.path + "/watch.log")) ?? "").contains("reloaded settings.yml and apps")
        }
        #expect(watcher.isRunning)
        let restartless = Self.values("RestartPreventExitStatus", in: unit).first?.split(separator: " ") ?? []
        #expect(restartless.contains("69") && restartless.contains("65"))
        watcher.signal(SIGTERM)
        let stopSeconds = Double(Self.values("TimeoutStopSec", in: unit).first ?? "") ?? 90
        #expect(watcher.wait(timeout: stopSeconds) == 0, "\((try? read(dir.path + "/watch.log")) ?? "")")
    }
}
