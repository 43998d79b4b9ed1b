import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Apps defined as Python classes with the original client: class hooks, `run()` with results back, warm workers,
/// MPI ranks, failures of every kind. The client runs Tests/client/python_apps_test.py; this side looks at the site.
@Suite struct PythonAppTests {
    /// Sets `key: old` to `key: new` in the site's settings.yml.
    func setting(_ site: Site, _ old: String, _ new: String) throws {
        let text = try read(site.settingsPath)
        #expect(text.contains(old), "settings.yml has no '\(old)'")
        try text.replacingOccurrences(of: old, with: new).write(
            toFile: site.settingsPath, atomically: true, encoding: .utf8)
    }

    func shown(_ site: Site, _ workdir: String) throws -> [String: JSONValue] {
        try JSONValue.parse(try balsam(["show", workdir, "--json"], site: site.root).stdout).objectValue ?? [:]
    }

    @Test(
        "the seed's Hello and MyApp, class hooks, results and exceptions, warm workers, kills and crashes",
        .enabled(if: PythonTools.clientPython != nil || PythonTools.required, "dev/test makes the client's venv"))
    func pythonApps() async throws {
        let python = try #require(PythonTools.clientPython, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let site = try Site.create(at: dir.path + "/site")
        let token = try await syncing(site, to: server, user: "ada", period: 0.2)
        try setting(site, "executable: python3", "executable: \(python)")
        // The seed asks for 4 ranks per node; this machine may have 2 cores.
        try setting(site, "oversubscribe: false", "oversubscribe: true")
        // A class hook that hangs (Stuck) is stopped after this long.
        try setting(site, "hook_timeout_sec: 600", "hook_timeout_sec: 5")
        // A location for the transfer slot of an app defined only in Python (Staged), and the file cleaner on.
        let input = "/inp.txt"  // under the location's root
        try dir.file("inputs/inp.txt", "staged input arrived\n")
        try setting(
            site, "file_cleaner:\n  cleanup_batch_size: 180\n  service_period: 30",
            "file_cleaner:\n  cleanup_batch_size: 180\n  service_period: 1")
        try (try read(site.settingsPath) + "\ntransfer_locations:\n  here: file://\(dir.path)/inputs\n").write(
            toFile: site.settingsPath, atomically: true, encoding: .utf8)
        #expect(try await runOffPool(binDirectory + "/balsam", ["sync", "push", "--site", site.root]).status == 0)

        var env = ProcessInfo.processInfo.environment
        env["BALSAM_SITE"] = nil
        // Root in CI; no ssh: every rank is local.
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        env["OMPI_MCA_plm_rsh_agent"] = "false"
        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"], env: env)
        // Launchers of about 25 s each, one after another: a job longer than that times out once.
        let launcherLog = dir.path + "/launcher.log"
        let launcher = CommandTemplate.shellQuote(binDirectory + "/balsam-launcher")
        let loop = try Spawned(
            "/bin/sh",
            [
                "-c",
                "while :; do \(launcher) --site \(CommandTemplate.shellQuote(site.root)) --wall-time-min 0.5 "
                    + "--idle-timeout 120 || sleep 1; done",
            ], environment: env, stdout: .file(launcherLog), stderr: .file(launcherLog))
        defer {
            kill(-loop.processIdentifier, SIGTERM)
            if loop.wait(timeout: 20) == nil { kill(-loop.processIdentifier, SIGKILL) }
        }

        let script = URL(fileURLWithPath: PythonTools.scriptPath).deletingLastPathComponent()
            .appendingPathComponent("python_apps_test.py").path
        let result = try await runOffPool(
            python, [script],
            env: [
                "BALSAM_TEST_SERVER": server.url, "BALSAM_TEST_TOKEN": token, "BALSAM_TEST_SITE": site.name,
                "BALSAM_TEST_INPUT": input,
            ],
            timeout: 600)
        let logs = { "\((try? read(dir.path + "/watch.log")) ?? "")\n\((try? read(launcherLog)) ?? "")" }
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)\n\(logs())")
        #expect(result.stdout.contains("python apps: every check held"))

        // The class hooks are hook files for the methods each class defines, and only those.
        #expect(FileManager.default.isExecutableFile(atPath: site.appsPath + "/Hello/on-timeout"))
        #expect(!exists(site.appsPath + "/Hello/preprocess") && !exists(site.appsPath + "/Hello/on-error"))
        #expect(FileManager.default.isExecutableFile(atPath: site.appsPath + "/Flaky/on-error"))
        #expect(try read(site.appsPath + "/MyApp/app.yml").contains("python_app: true"))
        #expect(exists(site.appsPath + "/MyApp/" + App.classFileName))
        // Staged's slot and cleanup_files, defined only in the class, are the site's app's: its input was staged
        // in, it ran, and the file cleaner took its scratch file.
        let staged = try App.parse(yaml: try read(site.appsPath + "/Staged/app.yml"), name: "Staged")
        #expect(staged.transfers["inp"] != nil && staged.cleanupFiles == ["*.tmp"], "\(staged)")
        #expect(try read(site.jobDirectory("py/staged") + "/job.out").contains("staged input arrived"))
        try await waitFor("the file cleaner removes the staged job's scratch file", timeout: 60) {
            !exists(site.jobDirectory("py/staged") + "/scratch.tmp")
        }
        // The seed's MyApp ran on four ranks (their prints may interleave); only rank 0 reported.
        let out = (try? read(site.jobDirectory("test/0") + "/job.out")) ?? ""
        #expect(out.components(separatedBy: "Hello from rank").count - 1 == 4, "\(out)")
        // What the site recorded of the failures.
        let segv = try shown(site, "py/segv")
        #expect(segv["return_code"]?.intValue == 139, "\(segv)")
        let killed = try shown(site, "py/sleeper")
        #expect(killed["state"]?.stringValue == "FAILED")
        #expect(killed.description.contains("killed"), "\(killed)")
        let orphan = try shown(site, "py/orphan")
        #expect(orphan.description.contains("userlib_only_here"), "\(orphan)")
        #expect(try read(site.jobDirectory("py/hello") + "/job.out").contains("hello world!"))
        let greeted = (try? read(site.jobDirectory("py/preamble") + "/job.out")) ?? ""
        #expect(greeted.contains("preamble ran") && greeted.contains("salut monde"), "\(greeted)")
    }
}
