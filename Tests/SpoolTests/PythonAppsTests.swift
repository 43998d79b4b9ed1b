import Foundation
import TestSupport
import Testing

@testable import Spool

/// Apps defined as Python classes: what the site reads of the pickle, the app files it writes, the settings.
@Suite struct PythonAppsTests {
    /// The original client's `Hello` with `handle_timeout`: base64 of `dill.dumps(Hello, recurse=True)`, made by
    /// the client 0.7.0a24 with dill 0.4.1 under Python 3.11.
    static let hello =
        "gASVlAIAAAAAAACMCmRpbGwuX2RpbGyUjAxfY3JlYXRlX3R5cGWUk5QojA9iYWxzYW0uX2FwaS5hcHCUjBlBcHBsaWNhdGlvbkRlZmluaXRpb25NZXRhlJOUjAVIZWxsb5RoA4wVQXBwbGljYXRpb25EZWZpbml0aW9ulJOUhZR9lCiMCl9fbW9kdWxlX1+UjAhfX21haW5fX5SMBHNpdGWUjAF4lIwQY29tbWFuZF90ZW1wbGF0ZZSMFWVjaG8gaGVsbG8ge3sgbmFtZSB9fZSMDmhhbmRsZV90aW1lb3V0lGgAjBBfY3JlYXRlX2Z1bmN0aW9ulJOUKGgAjAxfY3JlYXRlX2NvZGWUk5QoQwICAZRLAUsASwBLAUsCSwNDHpcAZAF8AGoAAAAAAAAAAABfAQAAAAAAAAAAZABTAJROjA1SRVNUQVJUX1JFQURZlIaUjANqb2KUjAVzdGF0ZZSGlIwEc2VsZpSFlIwIPHN0cmluZz6UaBGMFEhlbGxvLmhhbmRsZV90aW1lb3V0lEsHQw+AANgZKIgEjAiMDogOiA6UQwCUKSl0lFKUfZSMCF9fbmFtZV9flGgMc2gRTk50lFKUfZR9lCiMD19fYW5ub3RhdGlvbnNfX5R9lIwMX19xdWFsbmFtZV9flGggdYaUYowKcGFyYW1ldGVyc5R9lIwEbmFtZZR9lCiMCHJlcXVpcmVklIiMB2RlZmF1bHSUTowEaGVscJSMAJR1c4wHX19kb2NfX5ROjAlfYXBwX3R5cGWUaAOMB0FwcFR5cGWUk5SMCVNIRUxMX0NNRJSFlFKUjA9fZGVmYXVsdF9wYXJhbXOUfZR1dJRSlIwIYnVpbHRpbnOUjAdzZXRhdHRylJOUaEFoLWgGh5RSMC4="

    @Test func theMethodsAClassDefinesAreReadFromItsPickle() {
        #expect(PythonApps.overriddenMethods(classText: PythonAppsTests.hello) == ["handle_timeout"])
        #expect(Pickle.classAttribute("command_template", inBase64: PythonAppsTests.hello) == "echo hello {{ name }}")
        #expect(PythonApps.overriddenMethods(classText: "not base64 at all") == [])
    }

    @Test func installWritesTheAppItsClassAndAHookPerMethodThenReplacesThemWhole() throws {
        let dir = try TempDir()
        let site = try Site.create(at: dir.path + "/s")
        var app = try App(name: "Hello", commandTemplate: "echo hello {{ name }}", python: false)
        app.parameters = ["name": .init(required: true)]
        try PythonApps.install(
            app, classText: PythonAppsTests.hello, overridden: ["handle_timeout", "shell_preamble"], site: site,
            python: "/opt/py/bin/python3")
        let loaded = try site.app("Hello")
        #expect(loaded.hasClass && !loaded.isPython)
        #expect(loaded.hooks == [.onTimeout, .shellPreamble])
        let hook = try read(site.appsPath + "/Hello/on-timeout")
        #expect(hook.contains("exec /opt/py/bin/python3 ") && hook.contains("balsam_runner.py hook on-timeout"))
        #expect(try read(PythonApps.runnerPath(site)).contains("def serve("))
        #expect(try read(site.appsPath + "/Hello/" + App.classFileName).hasPrefix(PythonAppsTests.hello))

        // A new definition replaces the old one whole: the hook the class no longer has is gone.
        var python = try App(name: "Hello", commandTemplate: "", python: true)
        python.parameters = ["vec": .init(required: true)]
        try PythonApps.install(python, classText: "gAQu", overridden: ["preprocess"], site: site, python: "python3")
        let again = try site.app("Hello")
        #expect(again.isPython && again.hooks == [.preprocess])
        #expect(!FileManager.default.fileExists(atPath: site.appsPath + "/Hello/on-timeout"))
        #expect(entries(site.tmpPath).isEmpty)
    }

    /// python.executable changed: the hooks the site wrote follow it; one a user edited stays as it is.
    @Test func hookFilesFollowAChangeOfTheSitesPython() throws {
        let dir = try TempDir()
        let site = try Site.create(at: dir.path + "/s")
        let app = try App(name: "Hello", commandTemplate: "echo hello", python: false)
        try PythonApps.install(
            app, classText: PythonAppsTests.hello, overridden: ["handle_timeout", "preprocess"], site: site,
            python: "/old/python3")
        try "#!/bin/sh\nexec /old/python3 my-own-hook\n".write(
            toFile: site.appsPath + "/Hello/preprocess", atomically: true, encoding: .utf8)
        #expect(try PythonApps.rewriteHooks(site, from: "/old/python3", to: "python3") == 1)
        let hook = try read(site.appsPath + "/Hello/on-timeout")
        #expect(hook.contains("exec python3 ") && !hook.contains("/old/"), "\(hook)")
        #expect(access(site.appsPath + "/Hello/on-timeout", X_OK) == 0)
        #expect(try read(site.appsPath + "/Hello/preprocess").contains("my-own-hook"))
        #expect(try PythonApps.rewriteHooks(site, from: "python3", to: "python3") == 0)
    }

    @Test func pythonAppFilesAreCheckedWithErrorsThatSayWhatIsWrong() throws {
        let dir = try TempDir()
        let site = try Site.create(at: dir.path + "/s")
        try Posix.makeDirectories(site.appsPath + "/P")
        try "python_app: true\npython_executable: /usr/bin/python3\nparameters: {x: {required: true}}\n".write(
            toFile: site.appsPath + "/P/app.yml", atomically: false, encoding: .utf8)
        #expect(throws: SpoolError.self) { try site.app("P") }  // no class.b64
        do { _ = try site.app("P") } catch { #expect(error.description.contains("class.b64")) }
        try "gAQu\n".write(toFile: site.appsPath + "/P/class.b64", atomically: false, encoding: .utf8)
        let app = try site.app("P")
        #expect(app.isPython && app.pythonExecutable == "/usr/bin/python3" && app.parameters["x"]?.required == true)
        // Pickled parameters are the runner's to check; plain ones are checked here.
        #expect(throws: Never.self) { try app.checkParameters([:], serialized: true) }
        #expect(throws: SpoolError.self) { try app.checkParameters([:]) }
        try "python_app: true\ncommand_template: echo\n".write(
            toFile: site.appsPath + "/P/app.yml", atomically: false, encoding: .utf8)
        do {
            _ = try site.app("P")
            Issue.record("a Python app with a command_template was accepted")
        } catch { #expect(error.description.contains("no command_template")) }
    }

    @Test func pythonAndOversubscribeSettings() throws {
        let dir = try TempDir()
        let site = try Site.create(at: dir.path + "/s")
        var settings = try SiteSettings.load(site)
        #expect(settings.python.executable == "python3" && settings.python.warmWorkers)
        #expect(!settings.launcher.oversubscribe)
        var text = try read(site.settingsPath)
        text = text.replacingOccurrences(of: "warm_workers: true", with: "warm_workers: false")
        text = text.replacingOccurrences(of: "oversubscribe: false", with: "oversubscribe: true")
        text = text.replacingOccurrences(of: "executable: python3", with: "executable: /opt/py")
        try text.write(toFile: site.settingsPath, atomically: false, encoding: .utf8)
        settings = try SiteSettings.load(site)
        #expect(settings.python.executable == "/opt/py" && !settings.python.warmWorkers)
        #expect(settings.launcher.oversubscribe)
        try text.replacingOccurrences(of: "warm_workers: false", with: "warm_workers: 3").write(
            toFile: site.settingsPath, atomically: false, encoding: .utf8)
        do {
            _ = try SiteSettings.load(site)
            Issue.record("a number for warm_workers was accepted")
        } catch { #expect(error.description.contains("python.warm_workers must be true or false")) }
    }

    @Test func aPythonJobKeepsItsPickledParameters() throws {
        var job = Job(workdir: "w", app: "P")
        job.serializedParameters = "gASVFAAAAAAAAAB9lIwEbmFtZZSMBndvcmxkIZRzLg=="
        let back = try Job(bytes: job.fileBytes())
        #expect(back.serializedParameters == job.serializedParameters)
        job.serializedParameters = "not base64!"
        #expect(throws: SpoolError.self) { try job.validate() }
    }
}
